//! Micro-benchmarks of the protocol's hot paths: sealing and opening
//! 64 KiB of packets, one Diffie-Hellman exponentiation, and one full
//! handshake over an in-memory stream.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use spipes::protocol::dh::PrivateValue;
use spipes::protocol::{
    ForwardSecrecy, Key, Opener, PACKET_LEN, Sealer, client_handshake,
    server_handshake_start,
};

/// Bytes sealed or opened per iteration.
const CHUNK: usize = 64 * 1024;

fn seal(c: &mut Criterion) {
    let msg = vec![0x5a; CHUNK];
    let mut sealer = Sealer::new(&[1; 32], &[2; 32]);
    let mut wire = Vec::with_capacity(CHUNK / 1024 * PACKET_LEN);

    let mut group = c.benchmark_group("packets");
    group.throughput(Throughput::Bytes(CHUNK as u64));
    group.bench_function("seal 64 KiB", |b| {
        b.iter(|| {
            wire.clear();
            sealer.seal(black_box(&msg), &mut wire);
        })
    });
    group.finish();
}

fn open(c: &mut Criterion) {
    // Openers count packets, so each iteration opens the same 64 KiB with
    // a fresh opener; its key setup is small next to 64 packets. All at
    // once, as the relay does, so that MACs go two at a time.
    let msg = vec![0x5a; CHUNK];
    let mut wire = Vec::new();
    Sealer::new(&[1; 32], &[2; 32]).seal(&msg, &mut wire);
    let mut out = Vec::with_capacity(CHUNK);

    let mut group = c.benchmark_group("packets");
    group.throughput(Throughput::Bytes(CHUNK as u64));
    group.bench_function("open 64 KiB", |b| {
        b.iter(|| {
            let mut opener = Opener::new(&[1; 32], &[2; 32]);
            out.clear();
            opener.open_all(&wire, &mut out).expect("opens");
        })
    });
    group.finish();
}

fn exponentiation(c: &mut Criterion) {
    let x = PrivateValue::generate().expect("OS random generator");
    let y = x.public_value();
    c.bench_function("dh shared value", |b| {
        b.iter(|| x.shared_value(black_box(&y)))
    });
    c.bench_function("dh public value (fixed-base table)", |b| {
        b.iter(|| black_box(&x).public_value())
    });
}

fn handshake(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
    let key = Arc::new(Key::from_file_contents(b"bench key"));
    let keys = [Arc::clone(&key)];

    c.bench_function("handshake (forward secrecy on)", |b| {
        b.iter(|| rt.block_on(one_handshake(&key, &keys)))
    });
}

/// Runs one client and one server handshake against each other.
async fn one_handshake(key: &Key, keys: &[Arc<Key>]) {
    let (mut a, mut b) = tokio::io::duplex(4096);
    let fs = ForwardSecrecy::On;
    let client = client_handshake(&mut a, key, fs);
    let server = async {
        let proven = server_handshake_start(&mut b, keys, fs).await?;
        proven.finish(&mut b).await
    };
    let (c, s) = tokio::join!(client, server);
    black_box((c.is_ok(), s.is_ok()));
}

criterion_group!(benches, seal, open, exponentiation, handshake);
criterion_main!(benches);
