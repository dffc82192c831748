//! `make bench-vmm`: eci-vmm figures, each the median (p50) of repeated runs, measured with
//! the in-repo CPL3 polling guests:
//!
//! - `first-byte-ms`: exec of eci-vmm to the first serial byte of a guest that writes at once;
//! - `vsock-mbps`: guest-to-host hybrid vsock throughput, 256 MiB per run;
//! - `blk-iops`: 4 KiB random reads (32 in flight) from a file-backed virtio-blk;
//! - `rss-mib`: VMM resident memory with a 128 MiB guest idling.
//!
//! Runs per figure: `BENCH_RUNS` (default 50). Figures depend on the KVM kind, printed first.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use eci_vmm::kvm_kind::KvmKind;

/// The VMM under test: `ECI_VMM_BIN` (make bench-vmm passes the static musl build, which is
/// what ships) or this build's binary.
fn vmm() -> String {
    std::env::var("ECI_VMM_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_eci-vmm").to_string())
}
const VSOCK_BYTES: u64 = 256 << 20;
const BLK_READS: u64 = 20_000;

fn build_guests() -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("test-guests");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("test-guests");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(&src)
        .args(["build", "--release", "--target", "x86_64-unknown-none"])
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .status()
        .expect("cargo build of the test guests");
    assert!(status.success(), "building the test guests failed");
    target.join("x86_64-unknown-none/release")
}

fn p50(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn first_byte_ms(guests: &Path) -> f64 {
    let start = Instant::now();
    let mut child = Command::new(vmm())
        .args([
            "--kernel",
            guests.join("boot").to_str().unwrap(),
            "--memory-mib",
            "128",
        ])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut b = [0u8; 1];
    out.read_exact(&mut b).unwrap();
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let _ = std::io::copy(&mut out, &mut std::io::sink());
    assert!(child.wait().unwrap().success());
    ms
}

fn vsock_mbps(guests: &Path, dir: &Path) -> f64 {
    let uds = dir.join("v.sock");
    let port_path = dir.join("v.sock_5301");
    let _ = std::fs::remove_file(&port_path);
    let l = UnixListener::bind(&port_path).unwrap();
    let mut child = Command::new(vmm())
        .args([
            "--kernel",
            guests.join("vsock").to_str().unwrap(),
            "--memory-mib",
            "128",
            "--vsock-cid",
            "3",
            "--vsock-uds",
            uds.to_str().unwrap(),
            "--serial",
            "off",
            "--cmdline",
            &format!("vsock_port=5301 vsock_bench={VSOCK_BYTES}"),
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (mut s, _) = l.accept().unwrap();
    let start = Instant::now();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    while got < VSOCK_BYTES {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "stream ended after {got} bytes");
        got += n as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    drop(s);
    assert!(child.wait().unwrap().success());
    VSOCK_BYTES as f64 / secs / 1e6
}

fn blk_iops(guests: &Path, disk: &Path) -> f64 {
    let mut child = Command::new(vmm())
        .args([
            "--kernel",
            guests.join("blk").to_str().unwrap(),
            "--memory-mib",
            "128",
            "--block",
            &format!("{},ro", disk.display()),
            "--cmdline",
            &format!("blk_bench={BLK_READS}"),
        ])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut start = None;
    let mut secs = 0.0;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.starts_with("blk-bench: start") {
            start = Some(Instant::now());
        } else if line.starts_with("blk-bench: done") {
            secs = start.expect("start line first").elapsed().as_secs_f64();
            assert!(line.ends_with("errors=0"), "{line}");
            break;
        }
    }
    assert!(child.wait().unwrap().success());
    BLK_READS as f64 / secs
}

/// (RSS, PSS) in MiB; PSS splits shared libc pages with other processes.
fn rss_mib(guests: &Path) -> (f64, f64) {
    let mut child = Command::new(vmm())
        .args([
            "--kernel",
            guests.join("ticker").to_str().unwrap(),
            "--memory-mib",
            "128",
            "--cmdline",
            "ticker_quiet=1",
        ])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    lines.next().unwrap().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let field = |file: &str, key: &str| -> f64 {
        let text = std::fs::read_to_string(format!("/proc/{}/{file}", child.id())).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap()
            / 1024.0
    };
    let rss = field("status", "VmRSS:");
    let pss = field("smaps_rollup", "Pss:");
    let _ = child.kill();
    let _ = child.wait();
    (rss, pss)
}

fn main() {
    let kind = KvmKind::detect();
    if kind == KvmKind::Absent {
        println!("SKIP (bench-vmm: /dev/kvm is missing)");
        return;
    }
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let guests = build_guests();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    let data: Vec<u8> = (0..64u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&disk, data).unwrap();

    println!("kvm: {kind}");
    println!("binary: {}", vmm());
    let spawn = p50((0..runs)
        .map(|_| {
            let t = Instant::now();
            Command::new("/bin/true").status().unwrap();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect());
    println!("(for scale: spawning /bin/true takes {spawn:.2} ms here)");
    println!("runs per figure: {runs} (p50)");
    let fb = p50((0..runs).map(|_| first_byte_ms(&guests)).collect());
    println!("first-byte-ms: {fb:.2}");
    let vs = p50((0..runs).map(|_| vsock_mbps(&guests, dir.path())).collect());
    println!("vsock-mbps: {vs:.0}");
    let io = p50((0..runs).map(|_| blk_iops(&guests, &disk)).collect());
    println!("blk-iops: {io:.0}");
    let mem: Vec<(f64, f64)> = (0..runs.min(10)).map(|_| rss_mib(&guests)).collect();
    println!("rss-mib: {:.2}", p50(mem.iter().map(|m| m.0).collect()));
    println!(
        "pss-mib: {:.2} (libc and binary pages shared with other processes split)",
        p50(mem.iter().map(|m| m.1).collect())
    );
}
