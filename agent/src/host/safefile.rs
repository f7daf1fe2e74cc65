//! Reading a file that a watched process names (a miner config on its
//! command line, `config.json` in its cwd): hostile input.
//!
//! The path is resolved inside the process's own root (`/proc/PID/root`)
//! with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`, so `..` and
//! absolute symlinks cannot leave it; the file itself must not be a link
//! (`O_NOFOLLOW`); it is opened `O_NONBLOCK | O_NOCTTY`, so a FIFO or a
//! device cannot stall the pass; only regular files are read, at most `cap`
//! bytes; and only what the process's own uid could read becomes evidence
//! (a config.json linked to a root-only file is refused). Where `openat2`
//! is missing (kernels before 5.6), the path is walked one component at a
//! time with `O_NOFOLLOW` and no `..`.
//!
//! Files on the host that the persistence and hidden sensors read are just
//! as hostile where a user can write them (a unit in `~/.config/systemd/user`,
//! `~/.ssh/authorized_keys`): [`read_in_root`] with the host root and the
//! user's uid. Files in directories only root writes go through
//! [`read_host_file`]: links followed inside the host root, regular files
//! only, capped, never blocking.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

fn cstr(p: &Path) -> std::io::Result<std::ffi::CString> {
    std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

fn openat(dir: i32, name: &Path, flags: i32) -> std::io::Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: a valid NUL-terminated path; the fd is owned below.
    let fd = unsafe { libc::openat(dir, c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: just opened, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

const FILE_FLAGS: i32 = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY;

fn open_in_root(root: &OwnedFd, rel: &Path, follow: bool) -> std::io::Result<OwnedFd> {
    let c = cstr(rel)?;
    let flags = if follow { FILE_FLAGS & !libc::O_NOFOLLOW } else { FILE_FLAGS };
    // struct open_how (linux/openat2.h): flags, mode, resolve, all u64
    let how: [u64; 3] = [
        (flags | libc::O_CLOEXEC) as u64,
        0,
        libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS,
    ];
    // SAFETY: openat2 reads `how` (size given) and the NUL-terminated path.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c.as_ptr(),
            how.as_ptr(),
            std::mem::size_of_val(&how),
        )
    };
    if fd >= 0 {
        // SAFETY: just opened, owned by nobody else.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) });
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::ENOSYS) {
        return Err(e);
    }
    walk(root, rel)
}

/// The fallback: one component at a time, no symlinks, no `..`.
fn walk(root: &OwnedFd, rel: &Path) -> std::io::Result<OwnedFd> {
    let parts: Vec<&std::ffi::OsStr> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(Ok(n)),
            Component::ParentDir => Some(Err(())),
            _ => None,
        })
        .collect::<Result<_, ()>>()
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "`..` in a path named by a process"))?;
    let (last, dirs) = parts
        .split_last()
        .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let mut dir: Option<OwnedFd> = None;
    for d in dirs {
        let at = dir.as_ref().unwrap_or(root).as_raw_fd();
        dir = Some(openat(at, Path::new(d), libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW)?);
    }
    openat(dir.as_ref().unwrap_or(root).as_raw_fd(), Path::new(last), FILE_FLAGS)
}

/// Reads at most `cap` bytes of `path` as the process whose root directory
/// is `root` (`/proc/PID/root`) and whose uid is `uid` sees it. Errors say
/// why it was not read; nothing outside that root is ever opened.
///
/// The same serves files a user can plant on the host (a unit in their
/// `~/.config/systemd/user`, their `authorized_keys`): `root` is the host
/// root and `uid` the user's.
pub fn read_in_root(root: &Path, path: &Path, cap: u64, uid: u32) -> std::io::Result<Vec<u8>> {
    read(root, path, cap, Some(uid)).map(|(v, _)| v)
}

/// [`read_in_root`], with the file's metadata as opened (its owner, when
/// it was written), for a caller that believes a file only from its owner.
pub fn read_in_root_meta(root: &Path, path: &Path, cap: u64, uid: u32) -> std::io::Result<(Vec<u8>, std::fs::Metadata)> {
    read(root, path, cap, Some(uid))
}

/// Reads at most `cap` bytes of the host file `path` under `root` (the host
/// root, normally `/`) in a directory only root writes (`/etc/cron.d`,
/// `/etc/systemd/system`): symbolic links are followed, but only inside
/// `root` (a unit linked by `systemctl link`; in a container, an absolute
/// link resolves in the host's tree, not the container's). Still only a
/// regular file is read, opened `O_NONBLOCK | O_NOCTTY`: a FIFO or a device
/// in its place cannot stall the pass.
pub fn read_host_file(root: &Path, path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    read(root, path, cap, None).map(|(v, _)| v)
}

/// `uid`: as whom the file is read (it must not be a link); none: as the
/// host's root (links inside `root` are followed, except on kernels without
/// `openat2`, whose component walk follows none). `path` is as seen inside
/// `root` (a leading `/` or none).
fn read(root: &Path, path: &Path, cap: u64, uid: Option<u32>) -> std::io::Result<(Vec<u8>, std::fs::Metadata)> {
    let root_fd = openat(libc::AT_FDCWD, root, libc::O_PATH | libc::O_DIRECTORY)?;
    let rel = path.strip_prefix("/").unwrap_or(path);
    let fd = open_in_root(&root_fd, rel, uid.is_none())?;
    let mut f = std::fs::File::from(fd);
    let meta = f.metadata()?;
    use std::os::unix::fs::MetadataExt;
    if !meta.file_type().is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"));
    }
    let uid = uid.unwrap_or(0);
    let mode = meta.mode();
    let readable = uid == 0 || (meta.uid() == uid && mode & 0o400 != 0) || mode & 0o004 != 0;
    if !readable {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("uid {uid} could not read it"),
        ));
    }
    let mut v = Vec::new();
    f.by_ref().take(cap).read_to_end(&mut v)?;
    Ok((v, meta))
}

/// Whether a file carries the immutable attribute (FS_IMMUTABLE_FL, `chattr +i`),
/// as mining campaigns lock their crontabs, keys and binaries. The file
/// itself is not followed if it is a link, and only a regular file gets
/// the ioctl. Shared by the persistence and footprint sensors.
pub fn immutable(path: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    const FS_IOC_GETFLAGS: libc::c_ulong = 0x8008_6601;
    const FS_IMMUTABLE_FL: libc::c_int = 0x10;
    // O_NONBLOCK: a FIFO planted where a crontab should be must not block the pass
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_NOCTTY)
        .open(path)
    else {
        return false;
    };
    // the ioctl goes to regular files only, never to a device's driver
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return false;
    }
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int through the pointer, which lives for the call.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_GETFLAGS as _, &mut flags) };
    r == 0 && flags & FS_IMMUTABLE_FL != 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_regular_files_inside_the_root_that_the_uid_can_read() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("app")).unwrap();
        std::fs::write(root.join("app/config.json"), b"{\"pools\": []}").unwrap();
        std::fs::set_permissions(root.join("app/config.json"), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            read_in_root(&root, Path::new("/app/config.json"), 1 << 20, 1000).unwrap(),
            b"{\"pools\": []}"
        );
        assert_eq!(
            read_in_root(&root, Path::new("/app/config.json"), 4, 1000).unwrap(),
            b"{\"po",
            "capped"
        );

        // a secret outside the root, reached by `..`, an absolute symlink, a relative one
        std::fs::write(d.path().join("secret"), b"postgres://admin:hunter2@db").unwrap();
        assert!(
            read_in_root(&root, Path::new("/../secret"), 1 << 20, 0).is_err(),
            "`..` stays in the root"
        );
        std::os::unix::fs::symlink(d.path().join("secret"), root.join("app/abs.json")).unwrap();
        std::os::unix::fs::symlink("../../secret", root.join("app/rel.json")).unwrap();
        for p in ["/app/abs.json", "/app/rel.json"] {
            let e = read_in_root(&root, Path::new(p), 1 << 20, 0).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{p}: the file itself is a link: {e}");
        }

        // a FIFO does not block, a directory is not read
        nix::unistd::mkfifo(&root.join("app/fifo.json"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let e = read_in_root(&root, Path::new("/app/fifo.json"), 1 << 20, 0).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        assert!(read_in_root(&root, Path::new("/app"), 1 << 20, 0).is_err());

        // a file only root can read is not read for uid 1000
        std::fs::write(root.join("app/root-only.json"), b"{}").unwrap();
        std::fs::set_permissions(root.join("app/root-only.json"), std::fs::Permissions::from_mode(0o600)).unwrap();
        let owner = std::fs::metadata(root.join("app/root-only.json")).unwrap();
        use std::os::unix::fs::MetadataExt;
        if owner.uid() != 1000 {
            let e = read_in_root(&root, Path::new("/app/root-only.json"), 1 << 20, 1000).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
        }
    }

    #[test]
    fn the_component_walk_refuses_links_and_parent_dirs() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("a")).unwrap();
        std::fs::write(d.path().join("a/f"), b"x").unwrap();
        std::os::unix::fs::symlink("a", d.path().join("link")).unwrap();
        let root = openat(libc::AT_FDCWD, d.path(), libc::O_PATH | libc::O_DIRECTORY).unwrap();
        assert!(walk(&root, Path::new("a/f")).is_ok());
        assert!(walk(&root, Path::new("link/f")).is_err(), "a directory symlink is not followed");
        assert!(walk(&root, Path::new("a/../a/f")).is_err());
    }

    #[test]
    fn host_files_follow_links_only_inside_the_root_and_never_block() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("host");
        std::fs::create_dir_all(root.join("etc/systemd/system")).unwrap();
        std::fs::create_dir_all(root.join("opt/app")).unwrap();
        std::fs::write(root.join("opt/app/app.service"), b"[Service]\nExecStart=/opt/app/run\n").unwrap();
        // `systemctl link`: an absolute link, resolved in the host root
        std::os::unix::fs::symlink("/opt/app/app.service", root.join("etc/systemd/system/app.service")).unwrap();
        assert_eq!(
            read_host_file(&root, Path::new("etc/systemd/system/app.service"), 1 << 20).unwrap(),
            b"[Service]\nExecStart=/opt/app/run\n"
        );
        // a link out of the root does not leave it
        std::fs::write(d.path().join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink("../../../../secret", root.join("etc/systemd/system/out.service")).unwrap();
        assert!(read_host_file(&root, Path::new("/etc/systemd/system/out.service"), 1 << 20).is_err());
        // a FIFO does not block
        nix::unistd::mkfifo(
            &root.join("etc/systemd/system/fifo.service"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        let e = read_host_file(&root, Path::new("etc/systemd/system/fifo.service"), 1 << 20).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        // as a user's file, the link is not followed
        let e = read_in_root(&root, Path::new("etc/systemd/system/app.service"), 1 << 20, 0).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP), "{e}");
    }
}
