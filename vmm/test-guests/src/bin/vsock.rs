//! Guest (2): vsock at CPL3 by polling. Connects to host port `vsock_port=` and echoes,
//! then accepts a host-initiated connection on `vsock_listen=` and echoes, then resets.
#![no_std]
#![no_main]

use eci_vmm_test_guests::virtio::Arena;
use eci_vmm_test_guests::vsock::Vsock;
use eci_vmm_test_guests::{println, reset, zero_page::ZeroPage};

fn arg(zp: &ZeroPage, key: &str) -> u32 {
    zp.cmdline_value(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("missing {key}= on the command line"))
}

#[no_mangle]
fn guest_main(zero_page: u64, _cpu: u32) -> ! {
    let zp = ZeroPage(zero_page);
    let mut arena = Arena::take();
    let Some(mut vs) = Vsock::init(&zp, &mut arena) else {
        println!("vsock: no device");
        reset()
    };
    println!("vsock: cid={}", vs.cid);
    let port = arg(&zp, "vsock_port");
    match vs.connect(5000, port) {
        Ok(mut c) => {
            println!("vsock: connected to host port {port}");
            let n = vs.echo_until_shutdown(&mut c);
            println!("vsock: echoed {n} bytes to host port {port}");
        }
        Err(op) => println!("vsock: connect to {port} refused (op {op})"),
    }
    let listen = arg(&zp, "vsock_listen");
    println!("vsock: listening on {listen}");
    let mut c = vs.accept(listen);
    println!("vsock: accepted host port {}", c.peer_port);
    let n = vs.echo_until_shutdown(&mut c);
    println!("vsock: echoed {n} bytes on port {listen}");
    println!("vsock: done");
    reset()
}
