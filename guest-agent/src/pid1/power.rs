//! Ending the VM from PID 1.

use nix::sys::signal::{kill, Signal};
use nix::unistd::{sync, Pid};

use super::console::pid1_log;

/// Stops every process, flushes file systems and ends the VM; never returns.
///
/// The guest kernel has no ACPI (the VMM describes the machine with an MP table), and without a
/// power-off method Linux turns `RB_POWER_OFF` into a halt that leaves the VMM running with a
/// stopped vCPU. A reset, however, is a VM exit for eci-vmm (i8042 reset, `reboot=k`) and for
/// qemu run with `-no-reboot` (`reboot=t`), Firecracker's convention. So this asks for a power off
/// and falls back to a restart when the kernel cannot power off.
pub fn power_off(reason: &str) -> ! {
    pid1_log!("powering off: {reason}");
    // PID 1 is not affected by kill(-1); everything else gets a chance to flush, then is killed.
    let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
    std::thread::sleep(std::time::Duration::from_millis(100));
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    sync();
    if std::path::Path::new("/sys/firmware/acpi").exists() {
        // SAFETY: reboot(2) takes no pointers; with POWER_OFF it does not return on success.
        unsafe { libc::reboot(libc::LINUX_REBOOT_CMD_POWER_OFF) };
    }
    // SAFETY: as above; RESTART does not return on success.
    unsafe { libc::reboot(libc::LINUX_REBOOT_CMD_RESTART) };
    // Only reachable without CAP_SYS_BOOT, i.e. never as PID 1 of the guest.
    std::process::exit(1)
}
