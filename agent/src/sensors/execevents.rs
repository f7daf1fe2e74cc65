//! Exec events from the kernel's proc connector (netlink, CN_IDX_PROC): the
//! pid of every process that calls exec, within milliseconds, so a new miner
//! is checked at once instead of at the next periodic pass. Needs
//! CAP_NET_ADMIN; without it the periodic pass still finds everything.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::mpsc::Sender;

const NETLINK_CONNECTOR: i32 = 11;
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_EVENT_EXEC: u32 = 0x0000_0002;
const NLMSG_HDR: usize = 16;
const CN_MSG_HDR: usize = 20;

/// The exec'd pid (thread group id) in one netlink datagram, if it is an exec event.
pub fn parse_exec(buf: &[u8]) -> Option<u32> {
    let le32 = |o: usize| -> Option<u32> { Some(u32::from_ne_bytes(buf.get(o..o + 4)?.try_into().ok()?)) };
    let idx = le32(NLMSG_HDR)?;
    let val = le32(NLMSG_HDR + 4)?;
    if idx != CN_IDX_PROC || val != CN_VAL_PROC {
        return None;
    }
    let ev = NLMSG_HDR + CN_MSG_HDR;
    // struct proc_event { u32 what; u32 cpu; u64 timestamp_ns; union { exec: { pid, tgid } } }
    if le32(ev)? != PROC_EVENT_EXEC {
        return None;
    }
    le32(ev + 16 + 4) // process_tgid
}

/// Subscribes to the proc connector.
pub fn open() -> std::io::Result<OwnedFd> {
    // SAFETY: socket/bind/send with correctly sized, initialised structs.
    unsafe {
        let fd = libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, NETLINK_CONNECTOR);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut sa: libc::sockaddr_nl = std::mem::zeroed();
        sa.nl_family = libc::AF_NETLINK as u16;
        sa.nl_groups = CN_IDX_PROC;
        sa.nl_pid = 0;
        if libc::bind(
            fd.as_raw_fd(),
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        ) < 0
        {
            return Err(std::io::Error::last_os_error());
        }
        let mut msg = Vec::with_capacity(NLMSG_HDR + CN_MSG_HDR + 4);
        let total = (NLMSG_HDR + CN_MSG_HDR + 4) as u32;
        msg.extend(total.to_ne_bytes());
        msg.extend((libc::NLMSG_DONE as u16).to_ne_bytes());
        msg.extend(0u16.to_ne_bytes());
        msg.extend(0u32.to_ne_bytes()); // seq
        msg.extend(std::process::id().to_ne_bytes());
        msg.extend(CN_IDX_PROC.to_ne_bytes());
        msg.extend(CN_VAL_PROC.to_ne_bytes());
        msg.extend(0u32.to_ne_bytes()); // seq
        msg.extend(0u32.to_ne_bytes()); // ack
        msg.extend(4u16.to_ne_bytes()); // len
        msg.extend(0u16.to_ne_bytes()); // flags
        msg.extend(PROC_CN_MCAST_LISTEN.to_ne_bytes());
        if libc::send(fd.as_raw_fd(), msg.as_ptr() as *const libc::c_void, msg.len(), 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(fd)
    }
}

/// Reads exec events forever, sending pids; returns when the receiver is gone.
pub fn run(fd: OwnedFd, tx: Sender<u32>) {
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: recv into an owned buffer.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
        if n <= 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            // ENOBUFS: events were lost; the periodic pass covers them
            continue;
        }
        if let Some(pid) = parse_exec(&buf[..n as usize]) {
            if tx.send(pid).is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagram(what: u32, tgid: u32) -> Vec<u8> {
        let mut b = vec![0u8; NLMSG_HDR];
        b.extend(CN_IDX_PROC.to_ne_bytes());
        b.extend(CN_VAL_PROC.to_ne_bytes());
        b.extend([0u8; 12]);
        b.extend(what.to_ne_bytes());
        b.extend(0u32.to_ne_bytes());
        b.extend(0u64.to_ne_bytes());
        b.extend(tgid.to_ne_bytes());
        b.extend(tgid.to_ne_bytes());
        b
    }

    #[test]
    fn exec_events_parse_and_others_do_not() {
        assert_eq!(parse_exec(&datagram(PROC_EVENT_EXEC, 4242)), Some(4242));
        assert_eq!(parse_exec(&datagram(0x1, 4242)), None, "fork");
        assert_eq!(parse_exec(&datagram(PROC_EVENT_EXEC, 4242)[..30]), None, "truncated");
        assert_eq!(parse_exec(&[]), None);
    }

    #[test]
    fn live_exec_event_for_a_child() {
        let Ok(fd) = open() else {
            eprintln!("SKIP: proc connector needs CAP_NET_ADMIN");
            return;
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || run(fd, tx));
        std::thread::sleep(std::time::Duration::from_millis(100));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        let _ = child.wait();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        let mut got = false;
        while std::time::Instant::now() < deadline {
            if let Ok(p) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
                if p == pid {
                    got = true;
                    break;
                }
            }
        }
        assert!(got, "exec of pid {pid} reported");
    }
}
