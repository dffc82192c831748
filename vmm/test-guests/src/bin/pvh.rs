//! Guest (1b): boots through the PVH entry (ELF note XEN_ELFNOTE_PHYS32_ENTRY). The 32-bit
//! entry switches to long mode and joins the common `_start` with RSI = `hvm_start_info`;
//! at CPL3 the guest reports the start info (magic, memory map, command line) and resets.
#![no_std]
#![no_main]

use core::arch::global_asm;
use eci_vmm_test_guests::{println, reset};

global_asm!(
    r#"
    .section .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 4
    .long 18
    .asciz "Xen"
    .balign 4
    .long pvh_entry
    .balign 4

    .section .text.pvh_entry, "ax"
    .code32
pvh_entry:
    cli
    mov %ebx, %esi
    lgdtl (pvh_gdtr)
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
    or $0x80000001, %eax
    mov %eax, %cr0
    ljmpl $0x18, $pvh_lm64
    .code64
pvh_lm64:
    mov %esi, %esi
    movabs $_start, %rax
    jmp *%rax

    .section .rodata.pvh_gdt, "a"
    .balign 8
pvh_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00af9a000000ffff
pvh_gdtr:
    .word 31
    .long pvh_gdt
    "#,
    options(att_syntax)
);

fn rd<T: Copy>(addr: u64) -> T {
    // SAFETY: start info and memory map are identity-mapped RAM the VMM wrote.
    unsafe { core::ptr::read_unaligned(addr as *const T) }
}

#[no_mangle]
fn guest_main(start_info: u64, _cpu: u32) -> ! {
    let magic: u32 = rd(start_info);
    let entries: u32 = rd(start_info + 48);
    let memmap: u64 = rd(start_info + 40);
    let cmdline: u64 = rd(start_info + 24);
    println!("pvh: start_info={start_info:#x} magic={magic:#x} entries={entries}");
    for i in 0..entries.min(16) as u64 {
        let e = memmap + 24 * i;
        println!(
            "pvh: memmap {:#x} {:#x} {}",
            rd::<u64>(e),
            rd::<u64>(e + 8),
            rd::<u32>(e + 16)
        );
    }
    let mut len = 0;
    while len < 4096 && rd::<u8>(cmdline + len) != 0 {
        len += 1;
    }
    // SAFETY: `len` bytes of NUL-terminated command line in identity-mapped RAM.
    let bytes = unsafe { core::slice::from_raw_parts(cmdline as *const u8, len as usize) };
    println!(
        "pvh: cmdline={}",
        core::str::from_utf8(bytes).unwrap_or("<not utf-8>")
    );
    reset()
}
