//! Guest (1): reports the boot state (CPL, IOPL, e820, command line) on serial, then resets
//! (or, with `fault=ud2`, triple-faults on a `ud2`).
#![no_std]
#![no_main]

use core::arch::asm;
use eci_vmm_test_guests::{println, reset, zero_page::ZeroPage};

#[no_mangle]
fn guest_main(zero_page: u64, cpu: u32) -> ! {
    let cs: u16;
    let flags: u64;
    // SAFETY: reading CS and RFLAGS has no side effects.
    unsafe {
        asm!("mov {0:x}, cs", out(reg) cs);
        asm!("pushfq; pop {0}", out(reg) flags);
    }
    println!("boot: cpu={cpu} cpl={} iopl={}", cs & 3, (flags >> 12) & 3);
    let zp = ZeroPage(zero_page);
    let n = zp.e820_count();
    println!("boot: e820 entries={n}");
    let mut ram = 0u64;
    for i in 0..n {
        let e = zp.e820(i);
        println!("boot: e820 {:#x} {:#x} {}", e.addr, e.size, e.kind);
        if e.kind == 1 {
            ram += e.size;
        }
    }
    println!("boot: ram-bytes={ram}");
    let cmdline = core::str::from_utf8(zp.cmdline()).unwrap_or("<not utf-8>");
    println!("boot: cmdline={cmdline}");
    if let Some((addr, size)) = zp.initrd() {
        // SAFETY: the VMM loaded `size` bytes of initrd at `addr` in identity-mapped RAM.
        let data = unsafe { core::slice::from_raw_parts(addr as *const u8, size as usize) };
        let head = &data[..data.len().min(16)];
        let sum = data
            .iter()
            .fold(0u32, |a, &b| a.wrapping_mul(31).wrapping_add(b as u32));
        println!(
            "boot: initrd size={size} aligned={} head={} hash={sum:#x}",
            addr % 4096 == 0,
            core::str::from_utf8(head).unwrap_or("?")
        );
    }
    if zp.cmdline_value("serial_echo").is_some() {
        // Console input at CPL3: poll the line status register, read the receive buffer.
        println!("boot: waiting for a line");
        let mut line = [0u8; 128];
        let mut n = 0;
        loop {
            if eci_vmm_test_guests::inb(0x3fd) & 1 == 0 {
                core::hint::spin_loop();
                continue;
            }
            let b = eci_vmm_test_guests::inb(0x3f8);
            if b == b'\n' || n == line.len() {
                break;
            }
            line[n] = b;
            n += 1;
        }
        println!(
            "boot: echo {}",
            core::str::from_utf8(&line[..n]).unwrap_or("?")
        );
    }
    if zp.cmdline_value("fault").is_some() {
        // No IDT is ever loaded, so the #UD cannot be delivered: a triple fault.
        println!("boot: ud2 at {:#x}", invalid_opcode as *const () as usize);
        invalid_opcode()
    }
    println!("boot: done");
    reset()
}

/// A function that is nothing but `ud2`, so its address is where the guest faults.
#[unsafe(naked)]
extern "C" fn invalid_opcode() -> ! {
    core::arch::naked_asm!("ud2")
}
