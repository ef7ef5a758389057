#!/usr/bin/env python3
# How max_handshakes affects a stream while a handshake flood runs: for each
# cap, two spipes processes (encrypt, decrypt), 32 flood clients through
# one pipe pair and a hash-checked 32 MiB echo through another, on
# 127.0.0.1 ports from BASE. Run it from a scratch folder holding a key
# file "k" (head -c 32 /dev/urandom > k), after cargo build --release:
#   SPIPES=/path/to/target/release/spipes python3 handshake_cap.py 18100
import socket, subprocess, threading, time, sys, os, hashlib
B=os.environ.get("SPIPES", "target/release/spipes")
def cfg(name, text):
    open(name,"w").write('[daemon]\ncontrol_socket = ""\n'+text); return name
def echo_server(port):
    s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); s.bind(("127.0.0.1",port)); s.listen(1024)
    def h(c):
        try:
            while True:
                d=c.recv(65536)
                if not d: break
                c.sendall(d)
        except OSError: pass
        c.close()
    def loop():
        while True:
            c,_=s.accept(); threading.Thread(target=h,args=(c,),daemon=True).start()
    threading.Thread(target=loop,daemon=True).start()
def wait_port(p):
    for _ in range(200):
        try: socket.create_connection(("127.0.0.1",p)).close(); return
        except OSError: time.sleep(0.02)
def measure(cap, base):
    e1,e2,d1,d2,bk=base,base+1,base+2,base+3,base+4
    echo_server(bk)
    dec=cfg("d%d.toml"%base, f'[pipes.dec1]\nmode="decrypt"\nsource="127.0.0.1:{d1}"\ntarget="127.0.0.1:{bk}"\nkey="k"\nmax_handshakes={cap}\nmax_connections=0\n[pipes.dec2]\nmode="decrypt"\nsource="127.0.0.1:{d2}"\ntarget="127.0.0.1:{bk}"\nkey="k"\n')
    enc=cfg("e%d.toml"%base, f'[pipes.enc1]\nmode="encrypt"\nsource="127.0.0.1:{e1}"\ntarget="127.0.0.1:{d1}"\nkey="k"\nmax_handshakes=0\nmax_connections=0\n[pipes.enc2]\nmode="encrypt"\nsource="127.0.0.1:{e2}"\ntarget="127.0.0.1:{d2}"\nkey="k"\n')
    D=subprocess.Popen([B,"run","-c",dec],stderr=subprocess.DEVNULL); E=subprocess.Popen([B,"run","-c",enc],stderr=subprocess.DEVNULL)
    wait_port(e1); wait_port(e2); wait_port(d1); wait_port(d2)
    stop=[False]; done=[0]
    def flood():
        while not stop[0]:
            try:
                s=socket.create_connection(("127.0.0.1",e1)); s.sendall(b"x"); s.recv(1); s.close(); done[0]+=1
            except OSError: pass
    ts=[threading.Thread(target=flood,daemon=True) for _ in range(32)]; [t.start() for t in ts]
    time.sleep(0.5)
    data=os.urandom(32<<20); t0=time.time()
    s=socket.create_connection(("127.0.0.1",e2))
    got=[b""]
    def rd():
        h=hashlib.sha256(); n=0
        while n<len(data):
            d=s.recv(1<<16)
            if not d: break
            h.update(d); n+=len(d)
        got[0]=h.digest()
    r=threading.Thread(target=rd); r.start(); s.sendall(data); r.join(); el=time.time()-t0
    ok = got[0]==hashlib.sha256(data).digest()
    h0=done[0]; time.sleep(1.0); rate=done[0]-h0
    stop[0]=True; D.terminate(); E.terminate(); D.wait(); E.wait()
    print(f"max_handshakes={cap:3d}: 32 MiB echo under flood {el:.2f} s ({'ok' if ok else 'CORRUPT'}), flood {rate} handshakes/s", flush=True)
base=int(sys.argv[1])
for i,cap in enumerate([0,2,4,16,64]):
    measure(cap, base+10*i)
