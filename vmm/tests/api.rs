//! Control socket: info, pause (the guest stops making progress), resume, shutdown.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::*;

fn call(s: &mut UnixStream, r: &mut BufReader<UnixStream>, req: &str) -> serde_json::Value {
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(b"\n").unwrap();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

fn wait_for_socket(path: &std::path::Path) -> UnixStream {
    for _ in 0..2000 {
        if let Ok(s) = UnixStream::connect(path) {
            return s;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("control socket {} never appeared", path.display());
}

#[test]
fn pause_resume_info_and_shutdown() {
    let Some(_kind) = kvm_or_skip("api") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let api = dir.path().join("api.sock");
    let kernel = guest("ticker");
    let mut vmm = RunningVmm::spawn(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--memory-mib",
        "32",
        "--api-sock",
        api.to_str().unwrap(),
    ]);
    vmm.wait_line("tick 2", DEADLINE);
    let mut s = wait_for_socket(&api);
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());

    let info = call(&mut s, &mut r, r#"{"op":"info"}"#);
    assert_eq!(info["ok"], true, "{info}");
    assert_eq!(info["state"], "running");
    assert_eq!(info["vcpus"], 1);
    assert_eq!(info["memory_mib"], 32);
    assert_eq!(info["pid"], vmm.pid());

    let v = call(&mut s, &mut r, r#"{"op":"pause"}"#);
    assert_eq!(v, serde_json::json!({"ok": true, "state": "paused"}));
    // Lines already in the pipe may still arrive; after that, nothing new.
    std::thread::sleep(Duration::from_millis(300));
    let before = vmm.drain_lines();
    std::thread::sleep(Duration::from_millis(1500));
    let during = vmm.drain_lines();
    assert!(
        during.is_empty(),
        "guest ran while paused: {during:?} (before: {before:?})"
    );
    assert_eq!(call(&mut s, &mut r, r#"{"op":"info"}"#)["state"], "paused");

    let v = call(&mut s, &mut r, r#"{"op":"resume"}"#);
    assert_eq!(v, serde_json::json!({"ok": true, "state": "running"}));
    vmm.wait_line("tick", DEADLINE);

    let v = call(&mut s, &mut r, r#"{"op":"reboot"}"#);
    assert_eq!(v["ok"], false);
    assert!(v["error"].as_str().unwrap().contains("reboot"), "{v}");

    let v = call(&mut s, &mut r, r#"{"op":"shutdown"}"#);
    assert_eq!(v["ok"], true);
    let (status, err) = vmm.wait(DEADLINE);
    assert!(status.success(), "{err}");
    assert!(!api.exists(), "control socket removed on exit");
}

#[test]
fn running_vmm_has_no_capabilities_and_a_seccomp_filter_on_every_thread() {
    let Some(_kind) = kvm_or_skip("sandbox") else {
        return;
    };
    let kernel = guest("ticker");
    let mut vmm = RunningVmm::spawn(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--memory-mib",
        "32",
        "--vcpus",
        "2",
    ]);
    vmm.wait_line("tick 1", DEADLINE);
    let tasks = std::fs::read_dir(format!("/proc/{}/task", vmm.pid())).unwrap();
    let mut threads = 0;
    for t in tasks {
        let status = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(str::trim)
                .unwrap_or_default()
                .to_string()
        };
        assert_eq!(field("CapEff:"), "0000000000000000", "{status}");
        assert_eq!(field("CapPrm:"), "0000000000000000", "{status}");
        assert_eq!(field("CapBnd:"), "0000000000000000", "{status}");
        assert_eq!(field("Seccomp:"), "2", "{status}");
        threads += 1;
    }
    assert!(
        threads >= 3,
        "main thread plus two vCPU threads, got {threads}"
    );
}

#[test]
fn info_reports_live_device_metrics() {
    let Some(_kind) = kvm_or_skip("api-metrics") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let api = dir.path().join("api.sock");
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 64 * 1024]).unwrap();
    let kernel = guest("blk");
    let mut vmm = RunningVmm::spawn(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--memory-mib",
        "32",
        "--block",
        disk.to_str().unwrap(),
        "--api-sock",
        api.to_str().unwrap(),
        "--cmdline",
        "blk_hold=1",
    ]);
    vmm.wait_line("blk: holding", DEADLINE);
    let mut s = wait_for_socket(&api);
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let info = call(&mut s, &mut r, r#"{"op":"info"}"#);
    let dev = &info["devices"][0];
    assert_eq!(dev["kind"], "block", "{info}");
    assert_eq!(dev["mmio_base"], 0xd000_0000u64, "{info}");
    assert_eq!(dev["irq"], 5, "{info}");
    assert_eq!(dev["activated"], true, "{info}");
    // The guest read sector 0 and 1, wrote and flushed once, and read past the end once.
    let m = &dev["metrics"];
    assert_eq!(
        (m["reads"].as_u64(), m["writes"].as_u64()),
        (Some(2), Some(1)),
        "{info}"
    );
    assert_eq!(
        (m["flushes"].as_u64(), m["errors"].as_u64()),
        (Some(1), Some(1)),
        "{info}"
    );
    assert_eq!(m["capacity_sectors"], 128, "{info}");
    // Its five requests went through the avail ring and all were answered.
    let queue = &dev["progress"]["queues"][0];
    assert_eq!(
        (queue["avail"].as_u64(), queue["used"].as_u64()),
        (Some(5), Some(5)),
        "{info}"
    );
    call(&mut s, &mut r, r#"{"op":"shutdown"}"#);
    let (status, err) = vmm.wait(DEADLINE);
    assert!(status.success(), "{err}");
}

/// `jail`: the VMM runs pivoted into a private tmpfs holding only its binds, in mount
/// namespaces of its own; the caller's jail directory stays empty and unmounted.
#[test]
fn runs_inside_its_jail_with_only_its_binds() {
    let Some(_kind) = kvm_or_skip("jail") else {
        return;
    };
    if !nix_is_root() {
        panic!("the jail test needs root (mount namespaces, pivot_root)");
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let sockets = dir.path().join("sockets");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&sockets).unwrap();
    let cfg = dir.path().join("vm.json");
    std::fs::write(
        &cfg,
        serde_json::json!({
            "kernel": "/kernel",
            "memory_mib": 32,
            "api_sock": "/sockets/api.sock",
            "jail": {
                "root": root,
                "binds": [
                    {"source": guest("ticker"), "target": "/kernel", "read_only": true},
                    {"source": "/dev/kvm", "target": "/dev/kvm"},
                    {"source": sockets, "target": "/sockets"},
                ],
            },
        })
        .to_string(),
    )
    .unwrap();
    let mut vmm = RunningVmm::spawn(&["--config", cfg.to_str().unwrap()]);
    vmm.wait_line("tick 1", DEADLINE);
    let proc_root = format!("/proc/{}/root", vmm.pid());
    let mut seen: Vec<String> = std::fs::read_dir(&proc_root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        ["dev", "kernel", "sockets"],
        "the jail holds only its binds"
    );
    let own_ns = std::fs::read_link(format!("/proc/{}/ns/mnt", vmm.pid())).unwrap();
    assert_ne!(own_ns, std::fs::read_link("/proc/self/ns/mnt").unwrap());
    assert!(
        std::fs::read_dir(&root).unwrap().next().is_none(),
        "the caller's view of the jail root stays empty"
    );
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(root.to_str().unwrap()), "{mountinfo}");
    // The control socket was made inside the jail, in the bound directory the caller sees.
    let mut s = wait_for_socket(&sockets.join("api.sock"));
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    assert_eq!(call(&mut s, &mut r, r#"{"op":"shutdown"}"#)["ok"], true);
    let (status, err) = vmm.wait(DEADLINE);
    assert!(status.success(), "{err}");
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
