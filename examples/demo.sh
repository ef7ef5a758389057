#!/usr/bin/env bash
# A self-contained demo of spipes on 127.0.0.1: an HTTP server, a decrypt
# pipe in front of it, an encrypt pipe in front of that, and one request
# through both. Everything lives in a temporary folder and is removed at
# the end.
#
#   client -> encrypt pipe -> (encrypted) -> decrypt pipe -> HTTP server
#
# Usage: bash examples/demo.sh   (set SPIPES=path to use a built binary)
set -euo pipefail

# The binary: the one given, or built in release mode from this checkout.
if [ -n "${SPIPES:-}" ]; then
  SPIPES=$(realpath "$SPIPES")
else
  cd "$(dirname "$0")/.."
  cargo build --release --quiet
  SPIPES=$(realpath "${CARGO_TARGET_DIR:-target}/release/spipes")
fi

# A temporary folder, and a cleanup that stops only what this script
# started.
work=$(mktemp -d)
server_pid=""
spipes_pid=""
cleanup() {
  for pid in "$spipes_pid" "$server_pid"; do
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      wait "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$work"
}
trap cleanup EXIT

# Three free ports on 127.0.0.1, held open together so they differ.
read -r encrypt_port decrypt_port server_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
')

# Waits up to 10 s for something to accept on 127.0.0.1:$1.
wait_for_port() {
  python3 - "$1" <<'PY'
import socket, sys, time
deadline = time.monotonic() + 10
while True:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("nothing listens on port %s" % sys.argv[1])
        time.sleep(0.05)
PY
}

# A page with content that differs on every run, served by python3.
mkdir "$work/www"
token=$(python3 -c 'import secrets; print(secrets.token_hex(8))')
echo "hello through spipes, token $token" >"$work/www/index.txt"
python3 -m http.server --bind 127.0.0.1 --directory "$work/www" \
  "$server_port" >"$work/server.log" 2>&1 &
server_pid=$!
wait_for_port "$server_port"

# The key, and one spipes config with both ends of the pipe, in a folder
# of their own: spipes watches it for changes, so the log goes elsewhere.
mkdir "$work/etc"
"$SPIPES" keygen "$work/etc/demo.key"
cat >"$work/etc/spipes.toml" <<EOF
[daemon]
drain_timeout = 5
control_socket = "$work/control.sock"

[pipes.demo-encrypt]
mode = "encrypt"
source = "127.0.0.1:$encrypt_port"
target = "127.0.0.1:$decrypt_port"
key = "demo.key"

[pipes.demo-decrypt]
mode = "decrypt"
source = "127.0.0.1:$decrypt_port"
target = "127.0.0.1:$server_port"
key = "demo.key"
EOF
echo "== spipes check"
"$SPIPES" check -c "$work/etc/spipes.toml"

# spipes in the background, logging each connection; it is ready once it
# logs that every pipe is bound (bounded: 10 s).
"$SPIPES" --log-level debug run -c "$work/etc/spipes.toml" \
  2>"$work/spipes.log" &
spipes_pid=$!
for _ in $(seq 200); do
  grep -q 'ready:' "$work/spipes.log" && break
  kill -0 "$spipes_pid" 2>/dev/null || break
  sleep 0.05
done
if ! grep -q 'ready:' "$work/spipes.log"; then
  echo "spipes did not start:" >&2
  cat "$work/spipes.log" >&2
  exit 1
fi

# One request through the encrypt pipe, with curl or python3.
url="http://127.0.0.1:$encrypt_port/index.txt"
echo "== GET $url"
if command -v curl >/dev/null; then
  response=$(curl -sS --max-time 10 "$url")
else
  response=$(python3 -c '
import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode(), end="")
' "$url")
fi
echo "$response"

# Both pipes log the connection's end once both directions are done; wait
# for that (bounded: 5 s), then ask the daemon what it carried.
for _ in $(seq 100); do
  [ "$(grep -c 'closed reason' "$work/spipes.log")" -ge 2 ] && break
  sleep 0.05
done
echo "== spipes status"
"$SPIPES" status -c "$work/etc/spipes.toml"

# Stop spipes, so that its log is complete, and show the log.
kill -TERM "$spipes_pid"
wait "$spipes_pid" || true
spipes_pid=""
echo "== spipes log"
cat "$work/spipes.log"

if [ "$response" = "$(cat "$work/www/index.txt")" ]; then
  echo "== ok: the page came through both pipes unchanged"
else
  echo "== the response differs from the page" >&2
  exit 1
fi
