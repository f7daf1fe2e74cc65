//! Matcher throughput: binary content scanning (MB/s on one core), command
//! lines per second, pool-domain lookups per second.
//! Run: `cargo bench -p rigwatch-signatures --bench matchers`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rigwatch_signatures::load;

/// Up to 32 MiB of real executables from this host.
fn corpus() -> Vec<u8> {
    let mut out = Vec::new();
    for dir in ["/usr/bin", "/usr/lib/x86_64-linux-gnu"] {
        let Ok(rd) = std::fs::read_dir(dir) else { continue };
        let mut paths: Vec<_> = rd.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect();
        paths.sort();
        for p in paths {
            if out.len() >= 32 << 20 {
                return out;
            }
            if let Ok(b) = std::fs::read(&p) {
                out.extend_from_slice(&b[..b.len().min(4 << 20)]);
            }
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    let sig = load::load(&[], true).signatures;
    let data = corpus();
    let mut g = c.benchmark_group("content");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    g.bench_function("content_scan_1MiB_chunks", |b| {
        b.iter(|| {
            let mut s = sig.content_scanner();
            for chunk in data.chunks(1 << 20) {
                s.feed(chunk);
            }
            s.finish().len()
        })
    });
    g.bench_function("sha256", |b| {
        use sha2::Digest;
        b.iter(|| sha2::Sha256::digest(&data))
    });
    g.finish();
    let lines = [
        "/usr/sbin/sshd -D -o AuthorizedKeysCommand=/usr/bin/true",
        "python3 -m http.server 8080 --bind 127.0.0.1",
        "./xmrig -o stratum+tcp://pool.supportxmr.com:3333 -u 44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A -k --donate-level 1",
        "java -Xmx4g -jar /opt/app/service.jar --spring.profiles.active=prod",
    ];
    let mut g = c.benchmark_group("cmdline");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("scan_cmdline", |b| {
        b.iter(|| lines.iter().map(|l| sig.scan_cmdline(l).len()).sum::<usize>())
    });
    g.finish();
    let hosts = ["gulf.moneroocean.stream", "api.github.com", "deb.debian.org", "xmr.2miners.com"];
    let mut g = c.benchmark_group("domains");
    g.throughput(Throughput::Elements(hosts.len() as u64));
    g.bench_function("pool_domain", |b| {
        b.iter(|| hosts.iter().filter(|h| sig.pool_domain(h).is_some()).count())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
