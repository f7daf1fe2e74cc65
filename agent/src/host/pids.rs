//! Listing the pids of a proc root: with the raw `getdents64` system call
//! (which a preload hider cannot hook) and with libc's `readdir` (which it
//! can: the difference is what it hides).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Lists the numeric entries of a directory with the raw `getdents64`
/// system call: no libc `readdir`, so an `LD_PRELOAD` hider cannot filter it.
pub fn list_pids(root: &Path) -> std::io::Result<Vec<u32>> {
    let c = CString::new(root.as_os_str().as_bytes()).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid NUL-terminated path; the fd is owned below.
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut buf = vec![0u8; 64 * 1024];
    let mut pids = Vec::with_capacity(512);
    loop {
        // SAFETY: buf is writable for buf.len() bytes.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, fd.as_raw_fd(), buf.as_mut_ptr(), buf.len()) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if n == 0 {
            break;
        }
        parse_dirents(&buf[..n as usize], |name| {
            if let Some(pid) = parse_pid(name) {
                pids.push(pid);
            }
        });
    }
    Ok(pids)
}

/// Walks `struct linux_dirent64` records (d_ino u64, d_off i64, d_reclen u16, d_type u8, d_name).
pub fn parse_dirents(mut buf: &[u8], mut each: impl FnMut(&[u8])) {
    while buf.len() >= 19 {
        let reclen = u16::from_ne_bytes([buf[16], buf[17]]) as usize;
        if reclen < 19 || reclen > buf.len() {
            break;
        }
        let name = &buf[19..reclen];
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        each(&name[..end]);
        buf = &buf[reclen..];
    }
}

/// A pid from a directory entry name (digits only).
pub fn parse_pid(name: &[u8]) -> Option<u32> {
    if name.is_empty() || name.len() > 10 || !name.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(name).ok()?.parse().ok()
}

/// Lists the numeric entries of a directory through libc's `readdir`, as
/// every dynamically linked program on the host does (and as a preload
/// hider filters it).
pub fn list_pids_libc(root: &Path) -> std::io::Result<Vec<u32>> {
    let c = CString::new(root.as_os_str().as_bytes()).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid path; the DIR is closed below.
    let dir = unsafe { libc::opendir(c.as_ptr()) };
    if dir.is_null() {
        return Err(std::io::Error::last_os_error());
    }
    let mut pids = Vec::with_capacity(512);
    loop {
        // SAFETY: dir is a valid open DIR; the entry is read before the next call.
        let e = unsafe { libc::readdir(dir) };
        if e.is_null() {
            break;
        }
        // SAFETY: d_name is NUL-terminated.
        let name = unsafe { std::ffi::CStr::from_ptr((*e).d_name.as_ptr()) };
        if let Some(pid) = parse_pid(name.to_bytes()) {
            pids.push(pid);
        }
    }
    // SAFETY: opened above.
    unsafe { libc::closedir(dir) };
    Ok(pids)
}
