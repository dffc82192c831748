//! Guest (3): virtio-blk read/write/flush checked in the host files, read-only honoured,
//! and virtio-rng.

mod common;

use common::*;

#[test]
fn guest_reads_and_writes_sectors_and_honours_read_only() {
    let Some(_kind) = kvm_or_skip("blk") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let rw = dir.path().join("rw.img");
    let ro = dir.path().join("ro.img");
    let mut rw_bytes = vec![0u8; 1 << 20];
    rw_bytes[..16].copy_from_slice(b"HOST-SECTOR-ZERO");
    std::fs::write(&rw, &rw_bytes).unwrap();
    let mut ro_bytes = vec![0x5au8; 64 * 1024];
    ro_bytes[..13].copy_from_slice(b"READONLY-DISK");
    ro_bytes[13] = 0;
    std::fs::write(&ro, &ro_bytes).unwrap();
    let kernel = guest("blk");
    let out = run_vmm(
        &[
            "--kernel",
            kernel.to_str().unwrap(),
            "--memory-mib",
            "64",
            "--block",
            rw.to_str().unwrap(),
            "--block",
            &format!("{},ro", ro.display()),
            "--rng",
        ],
        DEADLINE,
    );
    let text = stdout(&out);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    for line in [
        "blk0: capacity=2048 ro=false",
        "blk0: read0 status=0 data=HOST-SECTOR-ZERO",
        "blk0: write1 status=0",
        "blk0: flush status=0",
        "blk0: read1 status=0 data=GUEST-WROTE-SECTOR-10",
        "blk0: read-past-end status=1",
        "blk1: capacity=128 ro=true",
        "blk1: read0 status=0 data=READONLY-DISK",
        "blk1: write1 status=1",
        "blk1: read-past-end status=1",
        "rng: got 32 bytes, ",
        "blk: done",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    let after = std::fs::read(&rw).unwrap();
    assert_eq!(&after[512..533], b"GUEST-WROTE-SECTOR-10");
    assert_eq!(&after[..16], b"HOST-SECTOR-ZERO");
    assert_eq!(
        std::fs::read(&ro).unwrap(),
        ro_bytes,
        "read-only disk unchanged"
    );
}

#[test]
fn missing_block_file_is_a_config_error() {
    let out = run_vmm(
        &["--kernel", VMM, "--block", "/nonexistent/disk.img,ro"],
        DEADLINE,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("`block.path`"), "{}", stderr(&out));
}
