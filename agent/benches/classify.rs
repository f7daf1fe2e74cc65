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
                let p = Packet {
                    src: *s,
                    dst: *d,
                    tcp: true,
                    seq: *seq,
                    syn: false,
                    syn_ack: false,
                    payload,
                };
                n += t.push(&p).len();
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
                let p = Packet {
                    src: *s,
                    dst: *d,
                    tcp: true,
                    seq: *seq,
                    syn: false,
                    syn_ack: false,
                    payload,
                };
                t.push(&p);
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
