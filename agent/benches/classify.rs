//! Flow classifier throughput on one core: a stratum-heavy stream (every
//! flow opens with a miner login and carries pool pushes and submits), fed
//! packet by packet through the flow table as the capture thread does.
//! Run: `cargo bench -p rigwatch-agent --bench classify`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rigwatch_agent::net::flows::{FlowTable, Packet};
use std::net::SocketAddr;

fn stream() -> Vec<(SocketAddr, SocketAddr, u32, Vec<u8>)> {
    let login = br#"{"id":1,"jsonrpc":"2.0","method":"login","params":{"login":"44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A","pass":"x","agent":"XMRig/6.21.0 (Linux x86_64) libuv/1.44.2 gcc/12.2.0","rigid":"","algo":["rx/0"]}}
"#;
    let subscribe = b"{\"id\": 1, \"method\": \"mining.subscribe\", \"params\": [\"cpuminer/2.5.1\"]}\n{\"id\": 2, \"method\": \"mining.authorize\", \"params\": [\"user\", \"pass\"]}\n";
    let job = br#"{"jsonrpc":"2.0","method":"job","params":{"blob":"0707f7a4e1e5a1c1f2e0b4c8a9d3e6f10000000000000000000000000000000000000000000000000000000000000000","job_id":"4a000004","target":"b88d0600","algo":"rx/0","height":3100004,"seed_hash":"f233ef741746be57204d255d74db46eb084c66adc5722aa65eefe3f2c9c0a773"}}
"#;
    let notify = b"{\"id\":null,\"method\":\"mining.notify\",\"params\":[\"j1\",\"00\",\"01\",\"02\",[],\"20000000\",\"1d00ffff\",\"5f5e1000\",true]}\n";
    let mut out = Vec::new();
    for i in 0..2000u32 {
        let client: SocketAddr = format!("10.{}.{}.{}:{}", i % 200, (i / 200) % 200, 2 + i % 250, 40000 + i % 20000)
            .parse()
            .unwrap();
        let server: SocketAddr = "10.0.0.1:3333".parse().unwrap();
        let (first, push): (&[u8], &[u8]) = if i % 2 == 0 { (login, job) } else { (subscribe, notify) };
        out.push((client, server, 1000, first.to_vec()));
        let mut seq = 5000;
        for _ in 0..8 {
            out.push((server, client, seq, push.to_vec()));
            seq += push.len() as u32;
        }
    }
    out
}

fn packet<'a>(src: SocketAddr, dst: SocketAddr, seq: u32, payload: &'a [u8]) -> Packet<'a> {
    Packet {
        src,
        dst,
        tcp: true,
        seq,
        syn: false,
        syn_ack: false,
        payload,
    }
}

fn bench(c: &mut Criterion) {
    let pkts = stream();
    let bytes: u64 = pkts.iter().map(|p| p.3.len() as u64).sum();
    let mut g = c.benchmark_group("classify");
    g.sample_size(20);
    g.throughput(Throughput::Bytes(bytes));
    g.bench_function("flow_table_bytes", |b| {
        b.iter(|| {
            let mut t = FlowTable::new();
            let mut n = 0;
            for (s, d, seq, payload) in &pkts {
                n += t.push(&packet(*s, *d, *seq, payload)).len();
            }
            assert_eq!(n, 2000, "one stratum event per flow");
            n
        })
    });
    g.throughput(Throughput::Elements(pkts.len() as u64));
    g.bench_function("flow_table_packets", |b| {
        b.iter(|| {
            let mut t = FlowTable::new();
            for (s, d, seq, payload) in &pkts {
                t.push(&packet(*s, *d, *seq, payload));
            }
        })
    });
    g.finish();
}

/// A TLS 1.3-style ClientHello without SNI (one record): 16 cipher suites,
/// supported_versions, signature_algorithms, ALPN.
fn client_hello() -> Vec<u8> {
    let mut exts = Vec::new();
    for (t, d) in [
        (0x002bu16, vec![2u8, 3, 4]),
        (0x000d, vec![0, 4, 4, 3, 8, 4]),
        (0x0010, vec![0, 3, 2, b'h', b'2']),
        (0x000a, vec![0, 2, 0, 29]),
    ] {
        exts.extend_from_slice(&t.to_be_bytes());
        exts.extend_from_slice(&(d.len() as u16).to_be_bytes());
        exts.extend_from_slice(&d);
    }
    let mut body = vec![3, 3];
    body.extend_from_slice(&[0x42; 32]);
    body.push(0);
    body.extend_from_slice(&32u16.to_be_bytes());
    for c in 0..16u16 {
        body.extend_from_slice(&(0x1301 + c).to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]);
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    let mut msg = vec![1];
    msg.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    msg.extend_from_slice(&body);
    let mut rec = vec![0x16, 3, 1];
    rec.extend_from_slice(&(msg.len() as u16).to_be_bytes());
    rec.extend_from_slice(&msg);
    rec
}

fn app(n: usize) -> Vec<u8> {
    let mut r = vec![0x17, 3, 3];
    r.extend_from_slice(&((n - 5) as u16).to_be_bytes());
    r.resize(n, 0xa5);
    r
}

/// 2,000 TLS sessions as the capture passes them up (ClientHello, then
/// small application-data packets, with times): half stratum-shaped (a job
/// pushed every 5 s, a submit answered between jobs), half request/response
/// (a call every second, answered at once). Sorted by time, as on the wire.
fn tls_stream() -> Vec<(u64, SocketAddr, SocketAddr, u32, Vec<u8>)> {
    let mut out = Vec::new();
    for i in 0..2000u32 {
        let client: SocketAddr = format!("10.{}.{}.{}:{}", i % 200, (i / 200) % 200, 2 + i % 250, 40000 + i % 20000)
            .parse()
            .unwrap();
        let server: SocketAddr = "10.0.0.1:443".parse().unwrap();
        let t0 = (i as u64) * 7;
        let (mut cs, mut ss) = (1000u32, 5000u32);
        let mut put = |t: u64, from_client: bool, payload: Vec<u8>, out: &mut Vec<_>| {
            let (src, dst, seq) = if from_client {
                (client, server, &mut cs)
            } else {
                (server, client, &mut ss)
            };
            out.push((t0 + t, src, dst, *seq, payload.clone()));
            *seq = seq.wrapping_add(payload.len() as u32);
        };
        put(0, true, client_hello(), &mut out);
        put(100, true, app(250), &mut out);
        put(130, false, app(420), &mut out);
        if i % 2 == 0 {
            for k in 1..=6u64 {
                put(k * 5000, false, app(352), &mut out);
                put(k * 5000 + 2500, true, app(190), &mut out);
                put(k * 5000 + 2530, false, app(90), &mut out);
            }
        } else {
            for k in 1..=18u64 {
                put(k * 1000, true, app(300), &mut out);
                put(k * 1000 + 30, false, app(800), &mut out);
            }
        }
    }
    out.sort_by_key(|p| p.0);
    out
}

fn bench_tls(c: &mut Criterion) {
    let pkts = tls_stream();
    let mut g = c.benchmark_group("classify_tls");
    g.sample_size(20);
    g.throughput(Throughput::Elements(pkts.len() as u64));
    g.bench_function("tls_sessions_packets", |b| {
        b.iter(|| {
            let mut t = FlowTable::new();
            let mut n = 0;
            for (at, s, d, seq, payload) in &pkts {
                t.advance(*at);
                n += t.push(&packet(*s, *d, *seq, payload)).len();
            }
            assert_eq!(n, 1000, "every stratum-shaped session once, no request/response one");
            n
        })
    });
    g.finish();
}

criterion_group!(benches, bench, bench_tls);
criterion_main!(benches);
