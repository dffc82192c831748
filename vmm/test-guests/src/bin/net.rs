//! Guest (4): virtio-net at CPL3 by polling. Sends one frame (ethertype 0x88b5, payload
//! "ECI-GUEST-FRAME") and waits for a frame back with payload "ECI-HOST-FRAME".
#![no_std]
#![no_main]

use eci_vmm_test_guests::virtio::{find_device, Arena, Buf, Device};
use eci_vmm_test_guests::{println, reset, zero_page::ZeroPage};

const HDR: usize = 12;
const ETHERTYPE: [u8; 2] = [0x88, 0xb5];
const RX_BUFS: usize = 8;
const BUF: u32 = 2048;

fn bytes(addr: u64, len: usize) -> &'static mut [u8] {
    // SAFETY: arena buffers of at least `len` bytes, idle while we touch them.
    unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, len) }
}

#[no_mangle]
fn guest_main(zero_page: u64, _cpu: u32) -> ! {
    let zp = ZeroPage(zero_page);
    let mut arena = Arena::take();
    let Some(base) = find_device(&zp, 1) else {
        println!("net: no device");
        reset()
    };
    let mut dev = Device::init(&mut arena, base, 2, 64);
    let mut mac = [0u8; 6];
    for (i, m) in mac.iter_mut().enumerate() {
        *m = (dev.config_read32(i as u64 & !3) >> ((i % 4) * 8)) as u8;
    }
    println!(
        "net: mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
    );
    let mut rx_addr = [0u64; 64];
    for _ in 0..RX_BUFS {
        let a = arena.alloc(BUF as u64, 64);
        let head = dev
            .q(0)
            .submit(&[Buf {
                addr: a,
                len: BUF,
                writable: true,
            }])
            .unwrap();
        rx_addr[head as usize] = a;
    }
    dev.q(0).notify();

    let tx = arena.alloc(BUF as u64, 64);
    let payload = b"ECI-GUEST-FRAME";
    let frame_len = HDR + 14 + payload.len();
    let f = bytes(tx, frame_len);
    f[..HDR].fill(0);
    f[HDR..HDR + 6].fill(0xff);
    f[HDR + 6..HDR + 12].copy_from_slice(&mac);
    f[HDR + 12..HDR + 14].copy_from_slice(&ETHERTYPE);
    f[HDR + 14..].copy_from_slice(payload);
    dev.q(1)
        .submit(&[Buf {
            addr: tx,
            len: frame_len as u32,
            writable: false,
        }])
        .unwrap();
    dev.q(1).notify();
    while dev.q(1).poll_used().is_none() {
        core::hint::spin_loop();
    }
    println!("net: sent frame");

    let mut other = 0u32;
    loop {
        let Some((head, len)) = dev.q(0).poll_used() else {
            core::hint::spin_loop();
            continue;
        };
        let a = rx_addr[head as usize];
        let frame = bytes(a + HDR as u64, (len as usize).saturating_sub(HDR));
        let ours = frame.len() >= 14 + 14
            && frame[12..14] == ETHERTYPE
            && frame[..6] == mac
            && frame[14..].starts_with(b"ECI-HOST-FRAME");
        if ours {
            println!(
                "net: got host frame ({} bytes), {other} other frames",
                frame.len()
            );
            break;
        }
        other += 1;
        let h = dev
            .q(0)
            .submit(&[Buf {
                addr: a,
                len: BUF,
                writable: true,
            }])
            .unwrap();
        rx_addr[h as usize] = a;
        dev.q(0).notify();
    }
    println!("net: done");
    reset()
}
