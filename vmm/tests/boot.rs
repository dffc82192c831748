//! Guests (1) boot state and (5) SMP, plus the VMM's error exits.

mod common;

use common::*;

#[test]
fn boot_guest_reads_zero_page_at_cpl3_and_resets() {
    let Some(_kind) = kvm_or_skip("boot") else {
        return;
    };
    let kernel = guest("boot");
    let out = run_vmm(
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--memory-mib",
            "64",
            "--cmdline",
            "console=ttyS0 marker=eci-42",
        ],
        DEADLINE,
    );
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "exit {:?}: {text}\n{}",
        out.status,
        stderr(&out)
    );
    assert!(text.contains("boot: cpu=0 cpl=3"), "{text}");
    // e820: low RAM, the reserved EBDA/BIOS hole, then RAM from 1 MiB to the end.
    assert!(text.contains("boot: e820 entries=3"), "{text}");
    assert!(text.contains("boot: e820 0x0 0x9fc00 1"), "{text}");
    assert!(text.contains("boot: e820 0x9fc00 0x60400 2"), "{text}");
    assert!(text.contains("boot: e820 0x100000 0x3f00000 1"), "{text}");
    assert!(
        text.contains("boot: cmdline=console=ttyS0 marker=eci-42\n"),
        "{text}"
    );
    assert!(text.contains("boot: done"), "{text}");
    assert!(stderr(&out).contains("i8042 reset"), "{}", stderr(&out));
}

#[test]
fn serial_goes_to_a_file_when_asked() {
    let Some(_kind) = kvm_or_skip("serial-file") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serial.log");
    let cfg = dir.path().join("vm.json");
    std::fs::write(
        &cfg,
        serde_json::json!({
            "kernel": guest("boot"),
            "memory_mib": 32,
            "serial": log,
            "cmdline": "from=json",
        })
        .to_string(),
    )
    .unwrap();
    let out = run_vmm(&["--config", cfg.to_str().unwrap()], DEADLINE);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).is_empty(), "serial must not reach stdout");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("boot: cmdline=from=json"), "{text}");
    assert!(text.contains("boot: e820 0x100000 0x1f00000 1"), "{text}");
}

#[test]
fn two_vcpus_both_run() {
    let Some(_kind) = kvm_or_skip("smp") else {
        return;
    };
    let kernel = guest("smp");
    let out = run_vmm(
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--vcpus",
            "2",
            "--memory-mib",
            "32",
            "--cmdline",
            "cpus=2",
        ],
        DEADLINE,
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(text.contains("smp: cpu 1 running at cpl3"), "{text}");
    assert!(text.contains("smp: all 2 cpus running"), "{text}");
}

#[test]
fn bad_config_exits_nonzero_naming_the_field() {
    let out = run_vmm(&["--kernel", "/nonexistent/vmlinux"], DEADLINE);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("`kernel`"), "{}", stderr(&out));
    let out = run_vmm(&["--kernel", VMM, "--vcpus", "99"], DEADLINE);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("`vcpus`"), "{}", stderr(&out));
}

#[test]
fn unloadable_kernel_is_a_clear_error() {
    if kvm_or_skip("bad-kernel").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("junk");
    std::fs::write(&k, vec![0u8; 4096]).unwrap();
    let out = run_vmm(&["--kernel", k.to_str().unwrap()], DEADLINE);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("neither a loadable ELF"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn pvh_note_guest_enters_through_pvh_with_start_info() {
    let Some(_kind) = kvm_or_skip("pvh") else {
        return;
    };
    let kernel = guest("pvh");
    let out = run_vmm(
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--memory-mib",
            "64",
            "--cmdline",
            "via=pvh",
        ],
        DEADLINE,
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    // EBX pointed at hvm_start_info (magic XEN_HVM_START_MAGIC_VALUE) with the e820 map.
    assert!(
        text.contains("pvh: start_info=0x6000 magic=0x336ec578 entries=3"),
        "{text}"
    );
    assert!(text.contains("pvh: memmap 0x100000 0x3f00000 1"), "{text}");
    assert!(text.contains("pvh: cmdline=via=pvh\n"), "{text}");
}
