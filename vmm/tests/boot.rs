//! Guests (1) boot state and (5) SMP, plus the VMM's error exits.

mod common;

use std::process::Command;

use common::*;
use eci_vmm::kvm_kind::KvmKind;

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
fn a_triple_fault_stops_the_guest_and_says_where() {
    let Some(kind) = kvm_or_skip("triple-fault") else {
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
            "fault=ud2",
        ],
        DEADLINE,
    );
    let (text, err) = (stdout(&out), stderr(&out));
    let at = text
        .lines()
        .find_map(|l| l.strip_prefix("boot: ud2 at "))
        .unwrap_or_else(|| panic!("the guest did not reach its fault: {text}"));
    // A guest's own end, as a reset is: status 0, the reason and the place in the log.
    assert!(out.status.success(), "exit {:?}: {err}", out.status);
    let place = if kind == KvmKind::Svm {
        // SVM resets the vCPU before KVM reports the shutdown.
        "(where it stood is lost: KVM reset the vCPU, as it does on AMD SVM)".to_owned()
    } else {
        format!("at rip {at} (cs 0x2b,")
    };
    assert!(
        err.contains(&format!(
            "guest stopped: vCPU 0: shutdown (triple fault or reset) {place}"
        )),
        "{err}"
    );
    assert!(!text.contains("boot: done"), "{text}");
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

/// Wraps the `boot` guest into a bzImage: a one-sector setup with the Linux boot header, then
/// a protected-mode part loaded at 1 MiB whose 64-bit entry (+0x200) jumps to the guest.
fn make_bzimage(elf: &[u8]) -> Vec<u8> {
    const LOAD: u64 = 0x10_0000;
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap());
    let (phoff, phentsize, phnum) = (u64_at(0x20) as usize, u16_at(0x36), u16_at(0x38));
    let mut payload = vec![0u8; 0x200];
    // mov rax, 0x200000 ; jmp rax  (RSI still points at the zero page)
    payload.extend_from_slice(&[0x48, 0xb8]);
    payload.extend_from_slice(&0x20_0000u64.to_le_bytes());
    payload.extend_from_slice(&[0xff, 0xe0]);
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32::from_le_bytes(elf[ph..ph + 4].try_into().unwrap()) != 1 {
            continue; // not PT_LOAD
        }
        let (off, paddr, filesz) = (u64_at(ph + 8), u64_at(ph + 24), u64_at(ph + 32));
        let at = (paddr - LOAD) as usize;
        if payload.len() < at + filesz as usize {
            payload.resize(at + filesz as usize, 0);
        }
        payload[at..at + filesz as usize]
            .copy_from_slice(&elf[off as usize..(off + filesz) as usize]);
    }
    let mut image = vec![0u8; 1024];
    image[0x1f1] = 1; // setup_sects
    image[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
    image[0x202..0x206].copy_from_slice(b"HdrS");
    image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    image[0x211] = 1; // LOADED_HIGH
    image[0x214..0x218].copy_from_slice(&(LOAD as u32).to_le_bytes());
    image.extend_from_slice(&payload);
    image
}

#[test]
fn bzimage_boots_through_the_64bit_entry() {
    let Some(_kind) = kvm_or_skip("bzimage") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bz = dir.path().join("bzImage");
    std::fs::write(&bz, make_bzimage(&std::fs::read(guest("boot")).unwrap())).unwrap();
    let out = run_vmm(
        &[
            "--kernel",
            bz.to_str().unwrap(),
            "--memory-mib",
            "64",
            "--cmdline",
            "via=bzimage",
        ],
        DEADLINE,
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(text.contains("boot: cpu=0 cpl=3"), "{text}");
    assert!(text.contains("boot: e820 0x100000 0x3f00000 1"), "{text}");
    assert!(text.contains("boot: cmdline=via=bzimage\n"), "{text}");
}

#[test]
fn initrd_is_loaded_and_announced_in_the_zero_page() {
    let Some(_kind) = kvm_or_skip("initrd") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let initrd = dir.path().join("initrd.cpio");
    let mut data = b"070701INITRD-HEAD".to_vec();
    data.extend((0..100_000u32).map(|i| (i * 7 % 256) as u8));
    std::fs::write(&initrd, &data).unwrap();
    let hash = data
        .iter()
        .fold(0u32, |a, &b| a.wrapping_mul(31).wrapping_add(b as u32));
    let out = run_vmm(
        &[
            "--kernel",
            guest("boot").to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--memory-mib",
            "64",
        ],
        DEADLINE,
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    let want = format!(
        "boot: initrd size={} aligned=true head=070701INITRD-HEA hash={hash:#x}",
        data.len()
    );
    assert!(text.contains(&want), "want {want:?} in:\n{text}");
}

#[test]
fn runs_when_started_without_capabilities() {
    let Some(_kind) = kvm_or_skip("no-caps") else {
        return;
    };
    if Command::new("setpriv").arg("--version").output().is_err() {
        eci_test_support::missing_prerequisite("setpriv (util-linux)");
        return;
    }
    // A jailed VMM may start without capabilities (here: root with SECBIT_NOROOT, so a full
    // bounding set but nothing effective, like an unprivileged user); sandboxing must cope.
    let out = Command::new("setpriv")
        .args([
            "--securebits",
            "+noroot",
            "--inh-caps",
            "-all",
            VMM,
            "--kernel",
        ])
        .arg(guest("boot"))
        .args(["--memory-mib", "32"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("boot: done"), "{}", stdout(&out));
}

#[test]
fn console_input_from_stdin_reaches_the_guest() {
    let Some(_kind) = kvm_or_skip("console-input") else {
        return;
    };
    let mut cmd = Command::new(VMM);
    cmd.args(["--kernel"])
        .arg(guest("boot"))
        .args(["--memory-mib", "32", "--cmdline", "serial_echo=1"])
        .stdin(std::process::Stdio::piped());
    let mut vmm = RunningVmm::spawn_with_stdin(cmd);
    vmm.wait_line("boot: waiting for a line", DEADLINE);
    // Longer than the 64-byte FIFO: input pauses while it is full and resumes as it drains.
    let line = format!("console-{}", "x".repeat(100));
    use std::io::Write;
    let stdin = vmm.stdin().unwrap();
    stdin.write_all(line.as_bytes()).unwrap();
    stdin.write_all(b"\n").unwrap();
    stdin.flush().unwrap();
    vmm.wait_line(&format!("boot: echo {line}"), DEADLINE);
    let (status, err) = vmm.wait(DEADLINE);
    assert!(status.success(), "{err}");
}
