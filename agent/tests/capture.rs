//! The kernel filter of the capture socket, on real loopback traffic:
//! candidate segments and the handshake reach user space, bulk traffic and
//! loopback's outgoing copies do not.
//! Needs CAP_NET_RAW (root); skipped with a message otherwise.

use rigwatch_agent::sensors::capture::{open_socket, parse_ip, socket_stats};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

fn capture_or_skip() -> Option<std::os::fd::OwnedFd> {
    match open_socket() {
        Ok(fd) => Some(fd),
        Err(e) => {
            eprintln!("SKIP: capture needs CAP_NET_RAW here: {e}");
            None
        }
    }
}

/// Every packet the filter passes, as (payload first bytes, src port, dst port), until `until`.
fn drain(fd: &std::os::fd::OwnedFd, until: Instant) -> Vec<(Vec<u8>, u16, u16)> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 8192];
    while Instant::now() < until {
        // SAFETY: recv into an owned buffer; the socket has a 200 ms timeout.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
        if n <= 0 {
            continue;
        }
        if let Some(p) = parse_ip(&buf[..n as usize]) {
            out.push((p.payload.iter().take(16).copied().collect(), p.src.port(), p.dst.port()));
        }
    }
    out
}

#[test]
fn bulk_traffic_stays_in_the_kernel_and_stratum_gets_through() {
    let Some(fd) = capture_or_skip() else { return };
    let _ = socket_stats(&fd); // reset counters
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0usize;
        while let Ok(n) = s.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n;
        }
        total
    });
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_nodelay(true).unwrap();
    // 64 MiB of bulk data that never starts a segment with a candidate byte
    let block = vec![b'x'; 1 << 20];
    for _ in 0..64 {
        c.write_all(&block).unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    let line =
        b"{\"id\":1,\"jsonrpc\":\"2.0\",\"method\":\"login\",\"params\":{\"login\":\"x\",\"pass\":\"x\",\"agent\":\"XMRig/6.21.0\"}}\n";
    c.write_all(line).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    drop(c);
    let total = server.join().unwrap();
    assert_eq!(total, 64 * (1 << 20) + line.len());
    let seen = drain(&fd, Instant::now() + Duration::from_millis(500));
    let ours: Vec<_> = seen.iter().filter(|(_, s, d)| *s == port || *d == port).collect();
    assert!(
        ours.iter().any(|(p, _, _)| p.starts_with(b"{\"id\":1")),
        "the stratum segment reached user space: {ours:?}"
    );
    assert!(
        ours.iter().all(|(p, _, _)| !p.starts_with(b"xxxx")),
        "no bulk segment may reach user space, got {} of them",
        ours.iter().filter(|(p, _, _)| p.starts_with(b"xxxx")).count()
    );
    assert_eq!(
        ours.iter().filter(|(p, _, _)| p.starts_with(b"{\"id\":1")).count(),
        1,
        "loopback's outgoing copy is dropped in the kernel: {ours:?}"
    );
    assert_eq!(
        ours.iter().filter(|(p, _, _)| p.is_empty()).count(),
        2,
        "the SYN and the SYN-ACK (headers only) reach user space, nothing else without payload: {ours:?}"
    );
    assert!(
        seen.len() < 200,
        "the filter passed {} packets during 64 MiB of bulk traffic",
        seen.len()
    );
}

#[test]
fn dns_and_tls_starts_get_through() {
    let Some(fd) = capture_or_skip() else { return };
    let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    // a DNS-shaped datagram to port 53 on a loopback address nothing listens on
    let q = [0x12u8, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 4, b'p', b'o', b'o', b'l', 0, 0, 1, 0, 1];
    let _ = u.send_to(&q, "127.0.0.199:53");
    let _ = u.send_to(b"not dns, not port 53", "127.0.0.199:5300");
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (_s, _) = l.accept().unwrap();
    c.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 0, 0, 1, 0]).unwrap();
    let seen = drain(&fd, Instant::now() + Duration::from_millis(500));
    assert!(
        seen.iter().any(|(p, _, d)| *d == 53 && p.starts_with(&[0x12, 0x34])),
        "DNS query captured"
    );
    assert!(!seen.iter().any(|(_, _, d)| *d == 5300), "other UDP is filtered out");
    assert!(
        seen.iter().any(|(p, _, d)| *d == port && p.starts_with(&[0x16, 0x03])),
        "TLS record start captured"
    );
}
