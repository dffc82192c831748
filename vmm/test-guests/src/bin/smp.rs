//! Guest (5): every vCPU runs and reports. The BSP starts the APs like Linux does
//! (INIT-SIPI-SIPI, real-mode trampoline), then waits for all of them.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicU32, Ordering};
use eci_vmm_test_guests::{println, reset, smp, zero_page::ZeroPage};

static STARTED: AtomicU32 = AtomicU32::new(0);

#[no_mangle]
fn guest_main(zero_page: u64, cpu: u32) -> ! {
    if cpu != 0 {
        println!("smp: cpu {cpu} running at cpl3");
        STARTED.fetch_add(1, Ordering::SeqCst);
        loop {
            core::hint::spin_loop();
        }
    }
    let want: u32 = ZeroPage(zero_page)
        .cmdline_value("cpus")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    println!("smp: cpu 0 running, starting {} more", want - 1);
    smp::start_aps(want);
    while STARTED.load(Ordering::SeqCst) < want - 1 {
        core::hint::spin_loop();
    }
    println!("smp: all {want} cpus running");
    reset()
}
