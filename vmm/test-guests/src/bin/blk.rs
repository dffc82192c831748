//! Guest (3): virtio-blk at CPL3 by polling. On every block device: report capacity and
//! read-only flag, print sector 0, write a marker to sector 1 and flush, read it back.
//! Also reads 32 bytes from virtio-rng when present. `blk_bench=N` instead runs N random
//! 4 KiB reads on the first device and reports.
#![no_std]
#![no_main]

use eci_vmm_test_guests::blk::{Blk, T_FLUSH, T_IN, T_OUT};
use eci_vmm_test_guests::virtio::{devices_from_cmdline, Arena, Buf, Device};
use eci_vmm_test_guests::{mmio_read32, println, reset, zero_page::ZeroPage};

fn printable(b: &[u8]) -> &str {
    let end = b
        .iter()
        .position(|&c| !(0x20..0x7f).contains(&c))
        .unwrap_or(b.len());
    core::str::from_utf8(&b[..end]).unwrap_or("")
}

#[no_mangle]
fn guest_main(zero_page: u64, _cpu: u32) -> ! {
    let zp = ZeroPage(zero_page);
    let mut arena = Arena::take();
    let bench: Option<u64> = zp.cmdline_value("blk_bench").and_then(|v| v.parse().ok());
    let mut index = 0;
    for base in devices_from_cmdline(&zp) {
        match mmio_read32(base + 8) {
            2 => {
                let mut b = Blk::init(&mut arena, base);
                if let Some(n) = bench {
                    println!("blk-bench: start {n}");
                    let errors = b.random_reads(n, 0x2545_f491_4f6c_dd1d);
                    println!("blk-bench: done {n} errors={errors}");
                    reset()
                }
                println!("blk{index}: capacity={} ro={}", b.capacity, b.read_only);
                let st = b.request(T_IN, 0, 512);
                println!(
                    "blk{index}: read0 status={st} data={}",
                    printable(b.data_slice(0, 64))
                );
                let marker = b"GUEST-WROTE-SECTOR-1";
                let buf = b.data_slice(0, 512);
                buf.fill(0);
                buf[..marker.len()].copy_from_slice(marker);
                buf[marker.len()] = b'0' + index as u8;
                let st = b.request(T_OUT, 1, 512);
                println!("blk{index}: write1 status={st}");
                let st = b.request(T_FLUSH, 0, 0);
                println!("blk{index}: flush status={st}");
                b.data_slice(0, 512).fill(0);
                let st = b.request(T_IN, 1, 512);
                println!(
                    "blk{index}: read1 status={st} data={}",
                    printable(b.data_slice(0, 64))
                );
                let st = b.request(T_IN, b.capacity, 512);
                println!("blk{index}: read-past-end status={st}");
                index += 1;
            }
            4 => {
                let mut d = Device::init(&mut arena, base, 1, 16);
                let buf = arena.alloc(32, 8);
                d.q(0).submit(&[Buf {
                    addr: buf,
                    len: 32,
                    writable: true,
                }]);
                d.q(0).notify();
                let len = loop {
                    if let Some((_, len)) = d.q(0).poll_used() {
                        break len;
                    }
                };
                // SAFETY: 32-byte arena buffer the device just filled.
                let bytes = unsafe { core::slice::from_raw_parts(buf as *const u8, 32) };
                let nonzero = bytes.iter().filter(|&&b| b != 0).count();
                println!("rng: got {len} bytes, {nonzero} nonzero");
            }
            _ => {}
        }
    }
    println!("blk: done");
    if zp.cmdline_value("blk_hold").is_some() {
        println!("blk: holding");
        loop {
            core::hint::spin_loop();
        }
    }
    reset()
}
