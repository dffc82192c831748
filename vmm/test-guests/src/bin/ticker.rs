//! Prints `tick N` about every 2^27 TSC cycles until the VMM stops it (control-socket tests,
//! idle-RSS benchmark with `ticker_quiet=1`, which only prints once).
#![no_std]
#![no_main]

use eci_vmm_test_guests::{println, rdtsc, zero_page::ZeroPage};

#[no_mangle]
fn guest_main(zero_page: u64, _cpu: u32) -> ! {
    let quiet = ZeroPage(zero_page).cmdline_value("ticker_quiet").is_some();
    println!("ticker: up");
    let mut n = 0u64;
    let mut last = rdtsc();
    loop {
        let now = rdtsc();
        if now.wrapping_sub(last) >= 1 << 27 {
            last = now;
            n += 1;
            if !quiet {
                println!("tick {n}");
            }
        }
        core::hint::spin_loop();
    }
}
