//! Starting application processors the way Linux does: INIT-SIPI-SIPI through the local APIC
//! (xAPIC MMIO, reachable from CPL3 through the identity map). The AP begins in real mode at
//! `TRAMPOLINE`; the trampoline below goes real -> protected -> long mode and jumps to
//! `_start`, which gives each CPU its own stack from its APIC id.

use core::arch::global_asm;

use crate::{mmio_write32, rdtsc};

pub const TRAMPOLINE: u64 = 0x10000;
const APIC: u64 = 0xfee0_0000;
const ICR_LO: u64 = APIC + 0x300;
const ICR_HI: u64 = APIC + 0x310;

global_asm!(
    r#"
    .section .text.ap_trampoline, "ax"
    .code16
    .global ap_trampoline_start
    .global ap_trampoline_end
ap_trampoline_start:
    cli
    mov %cs, %ax
    mov %ax, %ds
    lgdtl (ap_gdtr - ap_trampoline_start)
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x08, $(0x10000 + ap_pm32 - ap_trampoline_start)
    .code32
ap_pm32:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %ss
    mov %cr4, %eax
    or $0x20, %eax
    mov %eax, %cr4
    mov $guest_pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx
    rdmsr
    or $0x100, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000000, %eax
    mov %eax, %cr0
    ljmpl $0x18, $(0x10000 + ap_lm64 - ap_trampoline_start)
    .code64
ap_lm64:
    xor %esi, %esi
    movabs $_start, %rax
    jmp *%rax
    .balign 8
ap_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00af9a000000ffff
ap_gdtr:
    .word 31
    .long 0x10000 + ap_gdt - ap_trampoline_start
ap_trampoline_end:
    "#,
    options(att_syntax)
);

extern "C" {
    static ap_trampoline_start: u8;
    static ap_trampoline_end: u8;
}

fn spin_cycles(cycles: u64) {
    let start = rdtsc();
    while rdtsc().wrapping_sub(start) < cycles {
        core::hint::spin_loop();
    }
}

/// Copies the trampoline to low memory and sends INIT-SIPI-SIPI to APIC ids 1..count.
pub fn start_aps(count: u32) {
    // Both symbols are defined by the assembly above, in one section, start < end.
    let (start, end) = (
        core::ptr::addr_of!(ap_trampoline_start) as u64,
        core::ptr::addr_of!(ap_trampoline_end) as u64,
    );
    for i in 0..(end - start) {
        // SAFETY: copies our own code bytes to the free, identity-mapped page at TRAMPOLINE.
        unsafe {
            let b = core::ptr::read_volatile((start + i) as *const u8);
            core::ptr::write_volatile((TRAMPOLINE + i) as *mut u8, b);
        }
    }
    for id in 1..count {
        mmio_write32(ICR_HI, id << 24);
        mmio_write32(ICR_LO, 0x4500); // INIT, assert
        spin_cycles(10_000);
        for _ in 0..2 {
            mmio_write32(ICR_HI, id << 24);
            mmio_write32(ICR_LO, 0x4600 | (TRAMPOLINE >> 12) as u32); // start-up
            spin_cycles(10_000);
        }
    }
}
