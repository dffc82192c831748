//! Brings up the loopback interface.
//!
//! Two ioctls on a throwaway socket do it; a netlink crate would add a dependency tree to PID 1
//! for one flag. Addresses and routes of eth0 are the agent API's business, not init's.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

use super::error::Pid1Error;

fn ioctl_ifreq(sock: &OwnedFd, request: libc::Ioctl, ifr: &mut libc::ifreq) -> io::Result<()> {
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write only the `ifreq` passed by exclusive
    // reference, which lives for the whole call; the socket fd is open (owned by `sock`).
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), request, ifr as *mut libc::ifreq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets IFF_UP on `lo` (the kernel configures 127.0.0.1 and ::1 itself when it comes up).
pub fn loopback_up() -> Result<(), Pid1Error> {
    let err = |step: &'static str| move |source| Pid1Error::Loopback { step, source };
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| Pid1Error::Loopback {
        step: "socket",
        source: e.into(),
    })?;
    // SAFETY: ifreq is a plain C struct (a name array and a union of integers and sockaddrs) for
    // which all-zero bytes are a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    ioctl_ifreq(&sock, libc::SIOCGIFFLAGS as libc::Ioctl, &mut ifr).map_err(err("get flags"))?;
    // SAFETY: SIOCGIFFLAGS filled the `ifru_flags` member of the union.
    let flags = unsafe { ifr.ifr_ifru.ifru_flags };
    ifr.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    ioctl_ifreq(&sock, libc::SIOCSIFFLAGS as libc::Ioctl, &mut ifr).map_err(err("set flags"))
}
