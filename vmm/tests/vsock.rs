//! Guest (2): hybrid vsock in both directions, driven by a polling CPL3 guest.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use common::*;

fn accept_with_deadline(l: &UnixListener, deadline: Duration) -> UnixStream {
    l.set_nonblocking(true).unwrap();
    let end = Instant::now() + deadline;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                return s;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < end, "guest never connected");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

#[test]
fn guest_connects_to_host_and_host_connects_to_guest() {
    let Some(_kind) = kvm_or_skip("vsock") else {
        return;
    };
    let kernel = guest("vsock");
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let port_listener = UnixListener::bind(dir.path().join("v.sock_5201")).unwrap();
    let mut vmm = RunningVmm::spawn(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--memory-mib",
        "64",
        "--vsock-cid",
        "7",
        "--vsock-uds",
        uds.to_str().unwrap(),
        "--cmdline",
        "vsock_port=5201 vsock_listen=1234",
    ]);
    vmm.wait_line("vsock: cid=7", DEADLINE);

    // Guest-initiated: the guest connected to <uds>_5201.
    let mut s = accept_with_deadline(&port_listener, DEADLINE);
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let msg = b"hello from the host side\n";
    s.write_all(msg).unwrap();
    let mut echo = vec![0u8; msg.len()];
    s.read_exact(&mut echo).unwrap();
    assert_eq!(echo, msg);
    drop(s);
    vmm.wait_line(
        &format!("vsock: echoed {} bytes to host port 5201", msg.len()),
        DEADLINE,
    );

    // Host-initiated: CONNECT through the main socket.
    vmm.wait_line("vsock: listening on 1234", DEADLINE);
    let mut s = UnixStream::connect(&uds).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(b"CONNECT 1234\n").unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("OK ") && line.ends_with('\n'), "{line:?}");
    let payload: Vec<u8> = (0..20000u32).map(|i| (i % 251) as u8).collect();
    s.write_all(&payload).unwrap();
    let mut echo = vec![0u8; payload.len()];
    reader.read_exact(&mut echo).unwrap();
    assert_eq!(echo, payload);
    drop(reader);
    drop(s);
    vmm.wait_line("vsock: echoed 20000 bytes on port 1234", DEADLINE);
    let (status, err) = vmm.wait(DEADLINE);
    assert!(status.success(), "{err}");
    assert!(!uds.exists(), "the VMM removes its vsock socket on exit");
}

#[test]
fn connect_to_a_port_nobody_serves_is_refused() {
    let Some(_kind) = kvm_or_skip("vsock-refused") else {
        return;
    };
    let kernel = guest("vsock");
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let mut vmm = RunningVmm::spawn(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--memory-mib",
        "64",
        "--vsock-cid",
        "3",
        "--vsock-uds",
        uds.to_str().unwrap(),
        "--cmdline",
        "vsock_port=9 vsock_listen=1",
    ]);
    // Nothing listens on <uds>_9: the VMM answers the guest's REQUEST with RST.
    vmm.wait_line("vsock: connect to 9 refused (op 3)", DEADLINE);
    vmm.wait_line("vsock: listening on 1", DEADLINE);
    // A malformed CONNECT line is dropped without disturbing the VM.
    let mut bad = UnixStream::connect(&uds).unwrap();
    bad.write_all(b"CONNECT nine\n").unwrap();
    bad.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut b = [0u8; 1];
    assert_eq!(
        bad.read(&mut b).unwrap(),
        0,
        "malformed CONNECT closes the stream"
    );
    let mut s = UnixStream::connect(&uds).unwrap();
    s.write_all(b"CONNECT 1\n").unwrap();
    let mut line = String::new();
    BufReader::new(s.try_clone().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("OK "), "{line:?}");
    drop(s);
    let (status, err) = vmm.wait(DEADLINE);
    assert!(status.success(), "{err}");
}
