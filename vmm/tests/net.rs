//! Guest (4): virtio-net on a tap inside a network namespace this test creates. The test
//! sees the guest's frame on the tap through an AF_PACKET socket and sends one back.

mod common;

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const ETH_P_ALL: u16 = 0x0003;
const GUEST_MAC: [u8; 6] = [0x02, 0xec, 0x10, 0xaa, 0xbb, 0x01];

/// A network namespace with a tap in it; deleted (with the tap) on drop.
struct NetNs {
    name: String,
}

impl NetNs {
    fn create(name: &str) -> Result<NetNs, String> {
        let run = |args: &[&str]| -> Result<(), String> {
            let out = Command::new("ip")
                .args(args)
                .output()
                .map_err(|e| format!("ip: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!(
                    "ip {args:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        };
        run(&["netns", "add", name])?;
        let ns = NetNs { name: name.into() };
        run(&["-n", name, "tuntap", "add", "dev", "tap0", "mode", "tap"])?;
        run(&["-n", name, "link", "set", "tap0", "up"])?;
        Ok(ns)
    }

    /// An AF_PACKET socket bound to tap0 inside the namespace (opened from a thread that
    /// joins the namespace, so this process stays where it is).
    fn packet_socket(&self) -> OwnedFd {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on a valid namespace fd affects only this short-lived thread.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0);
            // SAFETY: plain socket(2) call; the fd is owned right below.
            let fd =
                unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, ETH_P_ALL.to_be() as i32) };
            assert!(fd >= 0, "{}", std::io::Error::last_os_error());
            // SAFETY: fd is a fresh socket we own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let name = std::ffi::CString::new("tap0").unwrap();
            // SAFETY: NUL-terminated interface name.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            assert!(ifindex > 0);
            // SAFETY: zeroed sockaddr_ll is a valid value that we then fill in.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = ETH_P_ALL.to_be();
            addr.sll_ifindex = ifindex as i32;
            // SAFETY: addr is a valid sockaddr_ll of the size given.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    &addr as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
            fd
        })
        .join()
        .unwrap()
    }
}

impl NetNs {
    /// Opens tap0 of the namespace (IFF_TAP | IFF_NO_PI) from a thread inside it.
    fn open_tap(&self) -> OwnedFd {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            // SAFETY: setns on a valid namespace fd affects only this short-lived thread.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0);
            let tun = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")
                .unwrap();
            #[repr(C)]
            struct IfReq {
                name: [u8; 16],
                flags: i16,
                pad: [u8; 22],
            }
            let mut req = IfReq {
                name: [0; 16],
                flags: 0x0002 | 0x1000, // IFF_TAP | IFF_NO_PI
                pad: [0; 22],
            };
            req.name[..4].copy_from_slice(b"tap0");
            // SAFETY: TUNSETIFF reads and writes the ifreq for the call's duration.
            let rc = unsafe { libc::ioctl(tun.as_raw_fd(), 0x4004_54ca, &mut req) };
            assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
            OwnedFd::from(tun)
        })
        .join()
        .unwrap()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn recv_frame(fd: &OwnedFd, deadline: Instant) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 2048];
    loop {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let left = deadline
            .saturating_duration_since(Instant::now())
            .as_millis() as i32;
        if left == 0 {
            return None;
        }
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, left) } <= 0 {
            continue;
        }
        // SAFETY: buf is writable for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n > 0 {
            return Some(buf[..n as usize].to_vec());
        }
    }
}

#[test]
fn guest_frame_reaches_the_tap_and_a_reply_reaches_the_guest() {
    let Some(_kind) = kvm_or_skip("net") else {
        return;
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eci_test_support::missing_prerequisite("root, for a network namespace and a tap");
        return;
    }
    let ns_name = format!("eci-vmm-net-{}", std::process::id());
    let ns = match NetNs::create(&ns_name) {
        Ok(ns) => ns,
        Err(e) => {
            eci_test_support::missing_prerequisite(&format!(
                "a network namespace with a tap (ip netns, /dev/net/tun): {e}"
            ));
            return;
        }
    };
    let sock = ns.packet_socket();
    let kernel = guest("net");
    let mac = GUEST_MAC
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    let vmm_args = [
        "netns",
        "exec",
        &ns_name,
        VMM,
        "--kernel",
        kernel.to_str().unwrap(),
        "--memory-mib",
        "64",
        "--net",
        &format!("tap0,mac={mac}"),
    ];
    let vmm = RunningVmm::spawn_program("ip", &vmm_args);
    exchange_frames(vmm, &sock, &mac);
    drop(sock);
    drop(ns);
    assert!(
        !std::path::Path::new(&format!("/run/netns/{ns_name}")).exists(),
        "namespace removed"
    );
}

/// The guest sends a frame, the test sees it on the tap and answers; the guest must get it.
fn exchange_frames(mut vmm: RunningVmm, sock: &OwnedFd, mac: &str) {
    vmm.wait_line(&format!("net: mac={mac}"), DEADLINE);

    let deadline = Instant::now() + DEADLINE;
    let guest_frame = loop {
        let f = recv_frame(sock, deadline).expect("guest frame on the tap");
        if f.len() >= 14 && f[12..14] == [0x88, 0xb5] && f[6..12] == GUEST_MAC {
            break f;
        }
    };
    assert_eq!(&guest_frame[..6], &[0xff; 6]);
    assert!(guest_frame[14..].starts_with(b"ECI-GUEST-FRAME"));

    let mut reply = Vec::new();
    reply.extend_from_slice(&GUEST_MAC);
    reply.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    reply.extend_from_slice(&[0x88, 0xb5]);
    reply.extend_from_slice(b"ECI-HOST-FRAME and some padding to 60 bytes.....");
    // SAFETY: reply is readable for its length.
    let n = unsafe { libc::send(sock.as_raw_fd(), reply.as_ptr().cast(), reply.len(), 0) };
    assert_eq!(
        n as usize,
        reply.len(),
        "{}",
        std::io::Error::last_os_error()
    );
    vmm.wait_line("net: got host frame (62 bytes)", DEADLINE);
    let (status, err) = vmm.wait(Duration::from_secs(60));
    assert!(status.success(), "{err}");
}

#[test]
fn tap_fd_handed_over_by_the_caller() {
    let Some(_kind) = kvm_or_skip("net-fd") else {
        return;
    };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eci_test_support::missing_prerequisite("root, for a network namespace and a tap");
        return;
    }
    let ns_name = format!("eci-vmm-netfd-{}", std::process::id());
    let ns = match NetNs::create(&ns_name) {
        Ok(ns) => ns,
        Err(e) => {
            eci_test_support::missing_prerequisite(&format!(
                "a network namespace with a tap (ip netns, /dev/net/tun): {e}"
            ));
            return;
        }
    };
    let sock = ns.packet_socket();
    let tap = ns.open_tap();
    // The VMM runs outside the namespace and only gets the descriptor, as from the shim.
    const CHILD_FD: i32 = 100;
    let mut cmd = Command::new(VMM);
    let mac = "02:ec:10:aa:bb:01";
    cmd.args([
        "--kernel",
        guest("net").to_str().unwrap(),
        "--memory-mib",
        "64",
        "--net",
        &format!("tap0,mac={mac},fd={CHILD_FD}"),
    ]);
    let raw = tap.as_raw_fd();
    // SAFETY: dup2 is async-signal-safe; it runs in the child between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            if libc::dup2(raw, CHILD_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let vmm = RunningVmm::spawn_command(cmd);
    drop(tap);
    exchange_frames(vmm, &sock, mac);
    drop(sock);
    drop(ns);
}
