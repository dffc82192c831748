//! VM tier through containerd 1.6 and ctr: VFIO passthrough to a VM pod. Inside
//! `scripts/testhost --vfio-test-device` (qemu's `edu` device behind an emulated IOMMU, bound to
//! vfio-pci at `ECI_TEST_VFIO_BDF`), a pod asks for the device with `io.eci.vfio` (or
//! `--device /dev/vfio/<group>`); the shim checks it and passes it to eci-vmm, the agent binds
//! it to the guest's vfio-pci and gives the container its VFIO nodes, and the container's
//! program (`eci-vfio-edu check`, bind-mounted from the host) drives it: sysfs shows 1234:11e8,
//! BAR0's id register reads 0x010000ed, the liveness register inverts, a DMA round-trips and an
//! MSI arrives. Nodes the container was not given stay refused by its device cgroup. After each
//! pod (deleted, or its eci-vmm or shim killed) the device is back on vfio-pci, unused, and the
//! next pod takes it. The errors: a device not bound to vfio-pci, one in use by another pod,
//! and one whose IOMMU group holds a device of a host driver.
//!
//! Mechanism and its two test-only settings (docs/gpu.md): the guest drives edu through VFIO's
//! no-IOMMU mode, which needs CAP_SYS_RAWIO, and finds DMA addresses in /proc/self/pagemap,
//! which needs CAP_SYS_ADMIN (`--cap-add`); edu's DMA mask is 28 bits while the smallest pod VM
//! has 576 MiB, so the test's shim config boots guests with `mem=240M`.
//!
//!   make test-vfio, or
//!   scripts/vm-tier --vfio-test-device --memory 4096 -p eci-tests --test vm_vfio_ctr -- --ignored

mod shim_common;

use std::time::{Duration, Instant};

use eci_tests::containerd::Containerd;
use eci_tests::images::BUSYBOX_IMAGE;
use eci_tests::vfio::{
    assert_free, group_of, second_edu_bound, test_bdf, vfio_edu_binary, Unbound, CHECKS,
};
use shim_common::*;

fn vfio_containerd(test: &str) -> Containerd {
    eci_tests::vm::require_vm_kvm(test);
    let options = eci_tests::containerd::ContainerdOptions {
        shim_config: Some(eci_tests::vm::vm_shim_config(
            "kernel_cmdline = \"mem=240M\"\n",
        )),
        // After a shim is killed, its delete action waits for eci-vmm, whose end with a device
        // (unpinning guest memory, resetting the device) takes seconds under emulation.
        extra_config: "[timeouts]\n\"io.containerd.timeout.shim.cleanup\" = \"60s\"\n".into(),
        ..Default::default()
    };
    containerd_with(options).expect("containerd for the VFIO tier")
}

/// The tier's containerd, the test device's address and the guest-side test program's path.
fn set_up(test: &str) -> (Containerd, String, String) {
    let ctd = vfio_containerd(test);
    (ctd, test_bdf(), vfio_edu_binary().display().to_string())
}

/// `ctr run` arguments of a pod that is given `bdf` and can drive it through no-IOMMU VFIO.
fn pod_args(bdf: &str, edu: &str) -> Vec<String> {
    [
        "--runtime",
        ECI,
        "--annotation",
        &format!("io.eci.vfio={bdf}"),
        "--annotation",
        "io.eci.vcpus=0.25",
        "--annotation",
        "io.eci.memory-mib=512",
        "--cap-add",
        "CAP_SYS_RAWIO",
        "--cap-add",
        "CAP_SYS_ADMIN",
        "--mount",
        &format!("type=bind,src={edu},dst=/vfio-edu,options=rbind:ro"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn ctr_run(
    ctd: &Containerd,
    flags: &[&str],
    extra: &[String],
    id: &str,
    cmd: &[&str],
) -> std::process::Output {
    let mut args: Vec<&str> = vec!["run"];
    args.extend_from_slice(flags);
    args.extend(extra.iter().map(String::as_str));
    args.extend_from_slice(&[BUSYBOX_IMAGE, id]);
    args.extend_from_slice(cmd);
    ctd.ctr(&args)
}

/// `ctr run --rm` of a pod (`prefix`-named) with `args` running `cmd`: it must succeed and leave
/// nothing of the pod behind. Its output and how long `ctr run` took.
fn run_pod(
    ctd: &Containerd,
    args: &[String],
    prefix: &str,
    cmd: &[&str],
) -> (std::process::Output, Duration) {
    let id = unique(prefix);
    let started = Instant::now();
    let out = ctr_run(ctd, &["--rm"], args, &id, cmd);
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "{id}: stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_nothing_left(ctd, &[id]);
    (out, took)
}

/// [`pod_args`] without the `io.eci.vfio` annotation.
fn without_annotation(mut args: Vec<String>) -> Vec<String> {
    let at = args
        .iter()
        .position(|a| a.starts_with("io.eci.vfio"))
        .unwrap();
    args.drain(at - 1..=at);
    args
}

fn assert_checks_pass(what: &str, out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    for check in CHECKS {
        assert!(
            stdout.contains(&format!("vfio-edu: PASS {check}")),
            "{what}: check {check} did not pass.\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
    assert!(stdout.contains("vfio-edu: ALL PASS"), "{what}: {stdout}");
    for line in stdout.lines().filter(|l| l.starts_with("vfio-edu: PASS")) {
        println!("{what}: {line}");
    }
    stdout
}

/// Refused at create: ctr fails naming the device and the reason, and nothing of the pod stays.
fn assert_refused(ctd: &Containerd, out: &std::process::Output, id: &str, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{id} started: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "{id}: `{n}` not in: {stderr}");
    }
    let _ = ctd.ctr(&["container", "delete", id]);
    assert_pod_gone(ctd, id);
}

/// The shim processes of pod `id` (`-id <id>` on their command line).
fn pod_shims(ctd: &Containerd, id: &str) -> Vec<u32> {
    shim_processes(ctd)
        .into_iter()
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.windows(2)
                .any(|w| w[0] == b"-id" && w[1] == id.as_bytes())
        })
        .collect()
}

/// Nothing of pod `id` is left, while other pods of `ctd` may run: [`leftovers`] that name it,
/// and its shim.
fn assert_pod_gone(ctd: &Containerd, id: &str) {
    let mut left = Vec::new();
    for _ in 0..600 {
        left = leftovers(ctd, &[id.to_string()]);
        left.retain(|l| l.contains(id));
        left.extend(
            pod_shims(ctd, id)
                .iter()
                .map(|p| format!("shim process {p}")),
        );
        if left.is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("left behind by {id}: {left:?}");
}

/// A detached pod, killed and deleted when dropped (a failed assertion must not leave it
/// holding the device for the next test).
struct Detached<'a> {
    ctd: &'a Containerd,
    id: String,
}

impl Drop for Detached<'_> {
    fn drop(&mut self) {
        let _ = self.ctd.ctr(&["task", "kill", "-s", "SIGKILL", &self.id]);
        for _ in 0..200 {
            if self.ctd.ctr(&["task", "delete", &self.id]).status.success()
                || task_status(self.ctd, &self.id).is_empty()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.ctd.ctr(&["container", "delete", &self.id]);
    }
}

#[test]
#[ignore = "VM tier: needs /dev/kvm backed by VMX or SVM; `make test-vfio` runs it in scripts/testhost --vfio-test-device"]
fn a_vm_pod_drives_the_device_and_gives_it_back() {
    let (ctd, bdf, edu) = set_up("a_vm_pod_drives_the_device_and_gives_it_back");
    assert_free(&bdf, "the test host's setup");

    // io.eci.vfio; /dev/mem (c 1:1) stands for a node the container was not given: with
    // CAP_SYS_RAWIO only the device cgroup refuses it. With the PCI root the guest boots with
    // ACPI, and the serial port and the virtio-mmio devices must still get their interrupts.
    let (out, _) = run_pod(
        &ctd,
        &pod_args(&bdf, &edu),
        "vfio",
        &[
            "sh",
            "-c",
            "/vfio-edu check; echo exit=$?; ls /dev/vfio; \
             mknod /tmp/mem c 1 1 && echo mknod=ok; \
             head -c 1 /tmp/mem >/dev/null 2>&1 && echo mem=readable || echo mem=refused; \
             grep -E 'ttyS0|virtio' /proc/interrupts",
        ],
    );
    let stdout = assert_checks_pass("first pod", &out);
    assert!(stdout.contains("exit=0"), "{stdout}");
    assert!(stdout.contains("noiommu-"), "the group node: {stdout}");
    assert!(stdout.contains("mknod=ok"), "mknod is allowed: {stdout}");
    assert!(stdout.contains("mem=refused"), "device cgroup: {stdout}");
    let irq_lines: Vec<&str> = stdout.lines().filter(|l| l.contains("IO-APIC")).collect();
    assert!(
        irq_lines.iter().any(|l| l.ends_with("ttyS0")),
        "the serial port's interrupt under ACPI: {stdout}"
    );
    assert!(
        irq_lines.iter().any(|l| l.contains("virtio")),
        "virtio-mmio interrupts under ACPI: {stdout}"
    );
    assert_free(&bdf, "deleting the first pod");

    // A second pod takes it, asked for by its host group node (OCI linux.devices).
    let group = format!("/dev/vfio/{}", group_of(&bdf));
    let mut args = without_annotation(pod_args(&bdf, &edu));
    args.extend(["--device".to_string(), group]);
    let (out, _) = run_pod(&ctd, &args, "vfio-dev", &["/vfio-edu", "check"]);
    assert_checks_pass("second pod (--device)", &out);
    assert_free(&bdf, "deleting the second pod");

    // Figures for the report (printed, not asserted): `ctr run --rm ... true` of the same pod
    // without and with the device.
    let plain = without_annotation(pod_args(&bdf, &edu));
    for (what, args) in [("without VFIO", plain), ("with VFIO", pod_args(&bdf, &edu))] {
        let (_, took) = run_pod(&ctd, &args, "timing", &["true"]);
        println!(
            "figure: ctr run --rm of a VM pod {what}: {:.1} s",
            took.as_secs_f64()
        );
    }
    assert_free(&bdf, "the timed pods");
}

/// A pod holding the device is killed the hard way (its eci-vmm, then in a second round its
/// shim); the device comes back and the next pod drives it.
#[test]
#[ignore = "VM tier: needs /dev/kvm backed by VMX or SVM; `make test-vfio` runs it in scripts/testhost --vfio-test-device"]
fn a_device_in_use_is_refused_and_comes_back_after_kills() {
    let (ctd, bdf, edu) = set_up("a_device_in_use_is_refused_and_comes_back_after_kills");
    for victim in ["eci-vmm", "shim"] {
        let holder = unique("holder");
        let out = ctr_run(
            &ctd,
            &["-d"],
            &pod_args(&bdf, &edu),
            &holder,
            &["sleep", "600"],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _cleanup = Detached {
            ctd: &ctd,
            id: holder.clone(),
        };
        wait_running(&ctd, &holder);
        // The guest's serial console works beside the PCI root (ACPI): the agent's own line,
        // written through the tty, reached the pod's console.log.
        let console = pod_dir(&ctd, &holder).join("console.log");
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        assert!(
            text.contains("eci-agent: ready"),
            "{}: no `eci-agent: ready`:\n{text}",
            console.display()
        );

        let id = unique("second");
        let out = ctr_run(&ctd, &["--rm"], &pod_args(&bdf, &edu), &id, &["true"]);
        assert_refused(
            &ctd,
            &out,
            &id,
            &[
                &format!("VFIO device {bdf}"),
                "is in use by another process",
            ],
        );

        let pid = if victim == "shim" {
            *pod_shims(&ctd, &holder).first().expect("the holder's shim")
        } else {
            let dir = pod_dir(&ctd, &holder).display().to_string();
            processes_with(&dir)
                .into_iter()
                .find(|p| {
                    std::fs::read_to_string(format!("/proc/{p}/comm"))
                        .unwrap_or_default()
                        .trim()
                        == "eci-vmm"
                })
                .expect("the holder's eci-vmm")
        };
        let killed = Instant::now();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        for _ in 0..1200 {
            let status = task_status(&ctd, &holder);
            if status == "STOPPED" || status.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        println!(
            "figure: SIGKILL of the holder's {victim} to its task stopped: {:.1} s",
            killed.elapsed().as_secs_f64()
        );
        let _ = ctd.ctr(&["task", "delete", &holder]);
        let _ = ctd.ctr(&["container", "delete", &holder]);
        assert_nothing_left(&ctd, &[holder]);
        assert_free(&bdf, &format!("killing the holder's {victim}"));

        let (out, _) = run_pod(
            &ctd,
            &pod_args(&bdf, &edu),
            "after",
            &["/vfio-edu", "check"],
        );
        assert_checks_pass(&format!("the pod after killing {victim}"), &out);
        assert_free(&bdf, "the pod after the kill");
    }
}

#[test]
#[ignore = "VM tier: needs /dev/kvm backed by VMX or SVM; `make test-vfio` runs it in scripts/testhost --vfio-test-device"]
fn unbound_devices_and_unassignable_groups_are_refused() {
    let (ctd, bdf, edu) = set_up("unbound_devices_and_unassignable_groups_are_refused");
    {
        let _unbound = Unbound::new(&bdf);
        let id = unique("unbound");
        let out = ctr_run(&ctd, &["--rm"], &pod_args(&bdf, &edu), &id, &["true"]);
        assert_refused(
            &ctd,
            &out,
            &id,
            &[
                &format!("VFIO device {bdf}"),
                "bound to no driver, not vfio-pci",
            ],
        );
    }
    assert_free(&bdf, "rebinding it");

    let other = second_edu_bound(&bdf);
    let id = unique("group");
    let out = ctr_run(&ctd, &["--rm"], &pod_args(&other, &edu), &id, &["true"]);
    assert_refused(
        &ctd,
        &out,
        &id,
        &[
            &format!("VFIO device {other}"),
            "is not assignable",
            "is bound to virtio-pci",
        ],
    );
    assert_free(&bdf, "the refusals");
}
