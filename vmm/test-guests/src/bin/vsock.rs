//! Guest (2): vsock at CPL3 by polling. Connects to host port `vsock_port=` and echoes,
//! then accepts a host-initiated connection on `vsock_listen=` and echoes, then resets.
#![no_std]
#![no_main]

use eci_vmm_test_guests::virtio::Arena;
use eci_vmm_test_guests::vsock::{Vsock, MAX_DATA, OP_SHUTDOWN};
use eci_vmm_test_guests::{println, reset, zero_page::ZeroPage};

fn arg(zp: &ZeroPage, key: &str) -> u32 {
    zp.cmdline_value(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("missing {key}= on the command line"))
}

/// Streams `total` bytes to host `port` as fast as credit allows, then shuts down.
fn bench(vs: &mut Vsock, arena: &mut Arena, port: u32, total: u64) -> ! {
    let chunk_addr = arena.alloc(MAX_DATA as u64, 64);
    // SAFETY: a fresh arena buffer of MAX_DATA bytes, only read by us.
    let chunk = unsafe { core::slice::from_raw_parts_mut(chunk_addr as *mut u8, MAX_DATA) };
    for (i, b) in chunk.iter_mut().enumerate() {
        *b = i as u8;
    }
    let Ok(mut c) = vs.connect(5001, port) else {
        println!("vsock-bench: connect refused");
        reset()
    };
    println!("vsock-bench: start {total}");
    vs.stream_out(&mut c, total, chunk);
    vs.wait_drained(&mut c);
    vs.send(&c, OP_SHUTDOWN, 3, &[]);
    println!("vsock-bench: sent {total}");
    reset()
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
    if let Some(total) = zp
        .cmdline_value("vsock_bench")
        .and_then(|v| v.parse::<u64>().ok())
    {
        bench(&mut vs, &mut arena, port, total)
    }
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
