//! systemd's readiness and watchdog protocol (`sd_notify(3)`): one datagram
//! to the socket named by `NOTIFY_SOCKET`. The unit (`Type=notify`,
//! `WatchdogSec=`) restarts the agent when the pings stop, i.e. when full
//! passes stop completing.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (`READY=1`, `WATCHDOG=1`…) to `socket`: a path, or an
/// abstract socket name written with a leading `@`.
pub fn notify_to(socket: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let sock = UnixDatagram::unbound()?;
    let name = socket.as_bytes();
    if let Some(abs) = name.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(abs)?;
        sock.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        sock.send_to(state.as_bytes(), std::path::Path::new(socket))?;
    }
    Ok(())
}

/// Sends `state` to systemd when the agent runs under it (`NOTIFY_SOCKET`
/// is set); `Ok(false)` when it does not.
pub fn notify(state: &str) -> std::io::Result<bool> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(s) if !s.is_empty() => notify_to(&s, state).map(|()| true),
        _ => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_datagram_reaches_a_path_and_an_abstract_socket() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        notify_to(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("rigwatch-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx = UnixDatagram::bind_addr(&addr).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        notify_to(std::ffi::OsStr::new(&format!("@{name}")), "WATCHDOG=1").unwrap();
        let n = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");

        // nobody listening: an error, not a hang
        assert!(notify_to(d.path().join("none").as_os_str(), "WATCHDOG=1").is_err());
    }
}
