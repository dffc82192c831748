//! VM tier: eci-vmm boots the production guest kernel with the self-test initramfs to
//! `eci-selftest: PASS`, and the production initramfs to `eci-agent: ready`, on a KVM that runs
//! Linux guests (VMX/SVM; inside scripts/testhost on this project's PVM machines).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use eci_tests::bins::require_workspace_binary;
use eci_tests::vm::{guest_images, require_vm_kvm, WatchedProcess, GUEST_CMDLINE};

/// Generous bounds for an emulated host, not speed assertions.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

fn boot(dir: &Path, kernel: &Path, initramfs: &Path, extra_cmdline: &str) -> WatchedProcess {
    let vmm = require_workspace_binary("eci-vmm");
    let mut command = Command::new(vmm);
    command
        .arg("--kernel")
        .arg(kernel)
        .arg("--initrd")
        .arg(initramfs)
        .args(["--cmdline", &format!("{GUEST_CMDLINE} {extra_cmdline}")])
        .args(["--vcpus", "2", "--memory-mib", "512", "--vsock-cid", "3"])
        .arg("--vsock-uds")
        .arg(dir.join("vsock.sock"))
        .arg("--api-sock")
        .arg(dir.join("api.sock"));
    WatchedProcess::spawn(&mut command).expect("spawning eci-vmm")
}

#[test]
#[ignore = "VM tier: needs /dev/kvm backed by VMX or SVM; `make test` runs it in scripts/testhost"]
fn selftest_passes_under_eci_vmm() {
    require_vm_kvm("selftest_passes_under_eci_vmm");
    let images = guest_images();
    let dir = tempfile::tempdir().unwrap();
    let mut vm = boot(
        dir.path(),
        &images.vmlinux,
        &images.selftest_initramfs,
        "eci.selftest=1",
    );
    let ready = vm.wait_for(&["eci-agent: ready"], BOOT_TIMEOUT);
    assert!(ready.is_some(), "no `eci-agent: ready`:\n{}", vm.output());
    let verdict = vm.wait_for(&["eci-selftest: PASS", "eci-selftest: FAIL"], BOOT_TIMEOUT);
    let Some((line, elapsed)) = verdict else {
        panic!("no self-test verdict:\n{}", vm.output());
    };
    assert!(line.ends_with("eci-selftest: PASS"), "{}", vm.output());
    eprintln!(
        "eci-vmm: ready at {:.2} s, PASS at {:.2} s",
        ready.unwrap().1.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    let status = vm.wait_exit(EXIT_TIMEOUT);
    assert!(
        status.is_some_and(|s| s.success()),
        "eci-vmm must exit 0 when the guest resets after the self-test: {status:?}\n{}",
        vm.output()
    );
}

#[test]
#[ignore = "VM tier: needs /dev/kvm backed by VMX or SVM; `make test` runs it in scripts/testhost"]
fn production_initramfs_serves_the_agent_over_hybrid_vsock() {
    require_vm_kvm("production_initramfs_serves_the_agent_over_hybrid_vsock");
    let images = guest_images();
    let dir = tempfile::tempdir().unwrap();
    let mut vm = boot(dir.path(), &images.vmlinux, &images.initramfs, "quiet");
    let ready = vm.wait_for(&["eci-agent: ready"], BOOT_TIMEOUT);
    let Some((_, elapsed)) = ready else {
        panic!("no `eci-agent: ready`:\n{}", vm.output());
    };
    eprintln!("eci-vmm: ready at {:.2} s", elapsed.as_secs_f64());

    // The host side of the agent's API port: hybrid vsock `CONNECT 1024`.
    let mut stream = UnixStream::connect(dir.path().join("vsock.sock")).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(b"CONNECT 1024\n").unwrap();
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply).unwrap();
    assert!(reply.starts_with("OK "), "CONNECT 1024 answered {reply:?}");

    let mut api = UnixStream::connect(dir.path().join("api.sock")).unwrap();
    api.write_all(b"{\"op\":\"shutdown\"}\n").unwrap();
    let status = vm.wait_exit(EXIT_TIMEOUT);
    assert!(
        status.is_some_and(|s| s.success()),
        "eci-vmm must exit 0 on shutdown: {status:?}\n{}",
        vm.output()
    );
}
