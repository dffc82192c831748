//! Runtime shared by the eci-vmm test guests.
//!
//! The guest is entered by the Linux 64-bit boot protocol (long mode, RSI = zero page). A
//! dozen CPL0 instructions install our page tables (identity map of 4 GiB, user accessible),
//! our GDT (with CPL3 segments) and a per-CPU stack, then `iretq` to CPL3 with IOPL 3 and
//! interrupts off. Everything else runs at CPL3, where PVM runs it natively; port I/O works
//! there thanks to IOPL 3 and MMIO through the user mappings. No interrupts are ever used.
#![no_std]

pub mod blk;
pub mod serial;
pub mod smp;
pub mod virtio;
pub mod vsock;
pub mod zero_page;

use core::arch::{asm, global_asm};

/// Per-CPU stack size and the largest CPU count the runtime supports.
pub const STACK_SIZE: usize = 64 * 1024;
pub const MAX_CPUS: usize = 4;

global_asm!(
    r#"
    .section .text._start, "ax"
    .global _start
_start:
    mov rdi, rsi
    mov eax, 1
    cpuid
    shr ebx, 24
    lea rsp, [rip + guest_stacks]
    inc rbx
    shl rbx, 16
    add rsp, rbx
    lea rax, [rip + guest_pml4]
    mov cr3, rax
    lgdt [rip + guest_gdtr]
    mov rax, rsp
    push 0x23
    push rax
    push 0x3002
    push 0x2b
    lea rax, [rip + guest_user_entry]
    push rax
    iretq

    .section .text.guest_user_entry, "ax"
guest_user_entry:
    shr rbx, 16
    lea rsi, [rbx - 1]
    call guest_entry
    ud2

    .section .data.guest_tables, "aw"
    .balign 4096
    .global guest_pml4
guest_pml4:
    .quad guest_pdpt + 0x7
    .fill 511, 8, 0
guest_pdpt:
    .quad guest_pd + 0x7
    .quad guest_pd + 0x1007
    .quad guest_pd + 0x2007
    .quad guest_pd + 0x3007
    .fill 508, 8, 0
guest_pd:
    .set page, 0
    .rept 2048
    .quad (page << 21) | 0x87
    .set page, page + 1
    .endr

    .balign 16
guest_gdt:
    .quad 0
    .quad 0x00af9b000000ffff
    .quad 0x00cf93000000ffff
    .quad 0
    .quad 0x00cff3000000ffff
    .quad 0x00affb000000ffff
guest_gdt_end:
guest_gdtr:
    .word guest_gdt_end - guest_gdt - 1
    .quad guest_gdt

    .section .bss.guest_stacks, "aw", @nobits
    .balign 4096
guest_stacks:
    .fill {stacks}, 1, 0
    "#,
    stacks = const STACK_SIZE * (MAX_CPUS + 1),
);

extern "Rust" {
    /// Each guest binary defines this: `zero_page` is the boot_params address, `cpu` the
    /// APIC id. Runs at CPL3.
    fn guest_main(zero_page: u64, cpu: u32) -> !;
}

#[no_mangle]
extern "C" fn guest_entry(zero_page: u64, cpu: u64) -> ! {
    // SAFETY: guest_main is the binary's entry point, defined once per guest.
    unsafe { guest_main(zero_page, cpu as u32) }
}

/// Writes a byte to an I/O port (CPL3 with IOPL 3).
#[inline(always)]
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O has no memory effects; the VMM emulates every port we use.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack)) };
}

#[inline(always)]
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as for outb.
    unsafe { asm!("in al, dx", in("dx") port, out("al") v, options(nomem, nostack)) };
    v
}

/// Pulses the i8042 reset line: the VMM ends the VM with exit status 0.
pub fn reset() -> ! {
    outb(0x64, 0xfe);
    loop {
        core::hint::spin_loop();
    }
}

/// Reads the time stamp counter (allowed at CPL3 unless CR4.TSD, which we never set).
#[inline(always)]
pub fn rdtsc() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: rdtsc only reads the counter.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    ((hi as u64) << 32) | lo as u64
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    use core::fmt::Write;
    let _ = writeln!(serial::Serial, "PANIC: {info}");
    reset()
}

/// Volatile 32-bit MMIO read (identity mapped).
#[inline(always)]
pub fn mmio_read32(addr: u64) -> u32 {
    // SAFETY: the address is a device register in the identity-mapped MMIO hole.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

#[inline(always)]
pub fn mmio_write32(addr: u64, v: u32) {
    // SAFETY: as for mmio_read32.
    unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
}
