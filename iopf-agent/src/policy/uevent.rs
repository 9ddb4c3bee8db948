//! Kernel uevents (`NETLINK_KOBJECT_UEVENT`): a device was added, removed, bound to or unbound
//! from a driver. Policy selectors are resolved again when that happens, so a device that
//! appears after the agent started gets its rule before its first fault.

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use tokio::io::unix::AsyncFd;

pub struct Uevents(AsyncFd<OwnedFd>);

impl Uevents {
    /// Joins the kernel's uevent multicast group.
    pub fn open() -> io::Result<Self> {
        // SAFETY: socket(2) with constant arguments; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_KOBJECT_UEVENT,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh socket this function owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: all-zero is a valid sockaddr_nl; the fields that matter are set below.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        // Group 1: the kernel's own events (udev's re-broadcasts are group 2).
        sa.nl_groups = 1;
        // SAFETY: `sa` is a valid sockaddr_nl and the length is its size.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const sa).cast::<libc::sockaddr>(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the AsyncFd owns `fd` (an OwnedFd), so the registered fd stays open and the
        // same for the registration's whole life.
        let afd = unsafe { AsyncFd::register(fd) }.map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Self(afd))
    }

    /// Waits for an event that changes which devices exist or which driver they have; the
    /// events already queued behind it (a device and its children announce themselves at
    /// once) are consumed with it. No waiting for the burst to end: a device can fault within
    /// milliseconds of appearing, and its rule must be there first.
    pub async fn changed(&mut self) -> io::Result<()> {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if self.read_one(&mut buf).await? {
                break;
            }
        }
        let fd = self.0.get_ref().as_raw_fd();
        loop {
            // SAFETY: `buf` is writable for its length; the fd is our socket; MSG_DONTWAIT
            // makes an empty queue return EAGAIN at once.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(()),
                    // Dropped events: the caller resolves again anyway.
                    _ if e.raw_os_error() == Some(libc::ENOBUFS) => Ok(()),
                    _ => Err(e),
                };
            }
        }
    }

    /// Reads one event; true when it is a device-set change.
    async fn read_one(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        loop {
            let mut guard = self.0.readable().await?;
            let r = guard.try_io(|fd| {
                // SAFETY: `buf` is writable for its length; the fd is a socket.
                let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
            });
            match r {
                Ok(Ok(n)) => return Ok(is_change(&buf[..n])),
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                // The kernel dropped events (receive queue full): resolve again to be safe.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => return Ok(true),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => {}
            }
        }
    }
}

/// A kernel uevent is `ACTION@DEVPATH` then NUL-separated `KEY=VALUE` pairs.
pub fn is_change(msg: &[u8]) -> bool {
    msg.split(|&b| b == 0)
        .filter_map(|kv| kv.strip_prefix(b"ACTION="))
        .any(|a| matches!(a, b"add" | b"remove" | b"bind" | b"unbind" | b"move"))
}

#[cfg(test)]
mod tests {
    use super::is_change;

    #[test]
    fn device_set_changes_are_recognised() {
        let add = b"add@/devices/pci0000:00/0000:00:04.0\0ACTION=add\0DEVPATH=/devices/pci0000:00/0000:00:04.0\0SUBSYSTEM=pci\0SEQNUM=7\0";
        let bind = b"bind@/devices/x\0ACTION=bind\0DRIVER=vfio-pci\0";
        let change = b"change@/devices/system/cpu/cpu1\0ACTION=change\0SUBSYSTEM=cpu\0";
        assert!(is_change(add));
        assert!(is_change(bind));
        assert!(!is_change(change));
        assert!(!is_change(b""));
    }
}
