//! virtio-blk backed by a host file: read, write, flush, get-id; read-only honoured.
//! Requests are bounds-checked against the disk size; malformed ones complete with an error
//! status (or, when there is no room even for the status byte, are returned unanswered).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use event_manager::EventOps;
use virtio_queue::{QueueT, Reader, Writer};
use vm_memory::ByteValued;

use super::{read_config_bytes, ActivateError, ActiveState, VirtioDevice, TYPE_BLOCK};

pub const SECTOR_SIZE: u64 = 512;
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;
const ID_BYTES: usize = 20;
/// Largest data transfer accepted in one request.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;
const QUEUE_SIZES: [u16; 1] = [256];

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestHeader {
    pub type_: u32,
    pub reserved: u32,
    pub sector: u64,
}

// SAFETY: plain old data with no padding; any bit pattern is valid.
unsafe impl ByteValued for RequestHeader {}

/// Per-device counters (for tests and `info`).
#[derive(Debug, Default, Clone, Copy)]
pub struct BlockStats {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub errors: u64,
}

pub struct Block {
    file: File,
    read_only: bool,
    capacity_bytes: u64,
    id: String,
    active: Option<ActiveState>,
    buf: Vec<u8>,
    pub stats: BlockStats,
}

/// BLKGETSIZE64 (`_IOR(0x12, 114, size_t)`).
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

/// Bytes in `file`: its length, or for a block device (whose metadata says 0) the device's
/// size.
pub fn capacity(file: &File) -> std::io::Result<u64> {
    use std::os::unix::fs::FileTypeExt;
    let meta = file.metadata()?;
    if !meta.file_type().is_block_device() {
        return Ok(meta.len());
    }
    let mut bytes: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 to the pointer, which points at `bytes` for the
    // call's duration; the descriptor is open (owned by `file`).
    let rc = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(file),
            BLKGETSIZE64 as _,
            &mut bytes,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(bytes)
}

impl Block {
    pub fn open(path: &Path, read_only: bool) -> std::io::Result<Block> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)?;
        let id = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Ok(Self::from_file(file, read_only, id))
    }

    pub fn from_file(file: File, read_only: bool, id: String) -> Block {
        let len = capacity(&file).unwrap_or(0);
        Block {
            file,
            read_only,
            capacity_bytes: len - len % SECTOR_SIZE,
            id,
            active: None,
            buf: vec![0u8; 64 * 1024],
            stats: BlockStats::default(),
        }
    }

    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_bytes / SECTOR_SIZE
    }

    /// Serves every available request.
    pub fn process_requests(&mut self) {
        let Some(st) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        while let Some(chain) = st.queues[0].pop_descriptor_chain(&st.mem) {
            let head = chain.head_index();
            let written = match (
                Reader::new(&st.mem, chain.clone()),
                Writer::new(&st.mem, chain),
            ) {
                (Ok(r), Ok(w)) => serve(
                    &self.file,
                    self.read_only,
                    self.capacity_bytes,
                    &self.id,
                    &mut self.buf,
                    &mut self.stats,
                    r,
                    w,
                ),
                _ => {
                    self.stats.errors += 1;
                    0
                }
            };
            let _ = st.queues[0].add_used(&st.mem, head, written);
            used = true;
        }
        if used {
            st.interrupt.signal_used_queue();
        }
    }
}

/// Serves one request; returns the bytes written into the chain (data + status).
#[allow(clippy::too_many_arguments)]
fn serve(
    file: &File,
    read_only: bool,
    capacity: u64,
    id: &str,
    buf: &mut [u8],
    stats: &mut BlockStats,
    mut reader: Reader<'_>,
    mut writer: Writer<'_>,
) -> u32 {
    let avail = writer.available_bytes();
    if avail == 0 {
        stats.errors += 1;
        return 0; // no room for a status byte: nothing we can report
    }
    let Ok(mut status_w) = writer.split_at(avail - 1) else {
        stats.errors += 1;
        return 0;
    };
    let (status, data_len) = match reader.read_obj::<RequestHeader>() {
        Ok(h) => execute(
            file,
            read_only,
            capacity,
            id,
            buf,
            stats,
            h,
            &mut reader,
            &mut writer,
        ),
        Err(_) => (S_IOERR, 0),
    };
    if status != S_OK {
        stats.errors += 1;
    }
    let _ = status_w.write_all(&[status]);
    (data_len + 1) as u32
}

#[allow(clippy::too_many_arguments)]
fn execute(
    file: &File,
    read_only: bool,
    capacity: u64,
    id: &str,
    buf: &mut [u8],
    stats: &mut BlockStats,
    h: RequestHeader,
    reader: &mut Reader<'_>,
    writer: &mut Writer<'_>,
) -> (u8, usize) {
    let range = |len: usize| -> Option<u64> {
        let start = h.sector.checked_mul(SECTOR_SIZE)?;
        let end = start.checked_add(len as u64)?;
        (len <= MAX_REQUEST_BYTES && end <= capacity).then_some(start)
    };
    match h.type_ {
        T_IN => {
            let len = writer.available_bytes();
            let Some(mut off) = range(len) else {
                return (S_IOERR, 0);
            };
            let mut done = 0;
            while done < len {
                let n = (len - done).min(buf.len());
                if file.read_exact_at(&mut buf[..n], off).is_err()
                    || writer.write_all(&buf[..n]).is_err()
                {
                    return (S_IOERR, done);
                }
                off += n as u64;
                done += n;
            }
            stats.reads += 1;
            (S_OK, done)
        }
        T_OUT => {
            if read_only {
                return (S_IOERR, 0);
            }
            let len = reader.available_bytes();
            let Some(mut off) = range(len) else {
                return (S_IOERR, 0);
            };
            let mut done = 0;
            while done < len {
                let n = (len - done).min(buf.len());
                if reader.read_exact(&mut buf[..n]).is_err()
                    || file.write_all_at(&buf[..n], off).is_err()
                {
                    return (S_IOERR, 0);
                }
                off += n as u64;
                done += n;
            }
            stats.writes += 1;
            (S_OK, 0)
        }
        T_FLUSH => {
            stats.flushes += 1;
            if read_only || file.sync_data().is_ok() {
                (S_OK, 0)
            } else {
                (S_IOERR, 0)
            }
        }
        T_GET_ID => {
            let mut idb = [0u8; ID_BYTES];
            let n = id.len().min(ID_BYTES);
            idb[..n].copy_from_slice(&id.as_bytes()[..n]);
            let n = writer.available_bytes().min(ID_BYTES);
            match writer.write_all(&idb[..n]) {
                Ok(()) => (S_OK, n),
                Err(_) => (S_IOERR, 0),
            }
        }
        _ => (S_UNSUPP, 0),
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        VIRTIO_BLK_F_FLUSH | if self.read_only { VIRTIO_BLK_F_RO } else { 0 }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.capacity_sectors().to_le_bytes(), offset, data);
    }

    fn activate(&mut self, state: ActiveState) -> Result<(), ActivateError> {
        state.check_queue_count(QUEUE_SIZES.len())?;
        self.active = Some(state);
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn is_active(&self) -> bool {
        self.active.is_some()
    }

    fn process_queue(&mut self, _index: usize, _ops: &mut EventOps) {
        self.process_requests();
    }

    fn metrics(&self) -> serde_json::Value {
        serde_json::json!({
            "read_only": self.read_only,
            "capacity_sectors": self.capacity_sectors(),
            "reads": self.stats.reads,
            "writes": self.stats.writes,
            "flushes": self.stats.flushes,
            "errors": self.stats.errors,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzzing::active_state;
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    const WRITE: u16 = 2;
    const HDR: u64 = 0x10_0000;
    const DATA: u64 = 0x11_0000;
    const STATUS: u64 = 0x12_0000;

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    struct Rig {
        mem: GuestMemoryMmap,
        file: tempfile::NamedTempFile,
    }

    impl Rig {
        fn new() -> Rig {
            let file = tempfile::NamedTempFile::new().unwrap();
            file.as_file().set_len(8 * SECTOR_SIZE).unwrap();
            Rig {
                mem: GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40_0000)]).unwrap(),
                file,
            }
        }

        /// Runs one request; returns (status byte, used length).
        fn run(&self, ro: bool, type_: u32, sector: u64, data: Option<(&[u8], bool)>) -> (u8, u32) {
            let q = MockSplitQueue::create(&self.mem, GuestAddress(0), 16);
            self.mem
                .write_obj(
                    RequestHeader {
                        type_,
                        reserved: 0,
                        sector,
                    },
                    GuestAddress(HDR),
                )
                .unwrap();
            self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
            let mut descs = vec![desc(HDR, 16, 0)];
            if let Some((bytes, writable)) = data {
                self.mem.write_slice(bytes, GuestAddress(DATA)).unwrap();
                descs.push(desc(
                    DATA,
                    bytes.len() as u32,
                    if writable { WRITE } else { 0 },
                ));
            }
            descs.push(desc(STATUS, 1, WRITE));
            q.build_desc_chain(&descs).unwrap();
            let mut dev = Block::open(self.file.path(), ro).unwrap();
            let mut st = active_state(&self.mem, 0);
            st.queues = vec![q.create_queue().unwrap()];
            dev.activate(st).unwrap();
            dev.process_requests();
            assert_eq!(q.used().idx().load(), 1);
            let used = q.used().ring().ref_at(0).unwrap().load();
            (self.mem.read_obj(GuestAddress(STATUS)).unwrap(), used.len())
        }
    }

    #[test]
    fn write_then_read_back_through_the_file() {
        let rig = Rig::new();
        let data = vec![0xabu8; 1024];
        assert_eq!(rig.run(false, T_OUT, 2, Some((&data, false))), (S_OK, 1));
        let mut on_disk = vec![0u8; 1024];
        rig.file
            .as_file()
            .read_exact_at(&mut on_disk, 1024)
            .unwrap();
        assert_eq!(on_disk, data);
        rig.file.as_file().write_all_at(b"hello", 0).unwrap();
        let (status, len) = rig.run(false, T_IN, 0, Some((&[0u8; 512], true)));
        assert_eq!((status, len), (S_OK, 513));
        let mut back = [0u8; 5];
        rig.mem.read_slice(&mut back, GuestAddress(DATA)).unwrap();
        assert_eq!(&back, b"hello");
        assert_eq!(rig.run(false, T_FLUSH, 0, None), (S_OK, 1));
    }

    #[test]
    fn read_only_and_out_of_range_requests_fail_cleanly() {
        let rig = Rig::new();
        assert_eq!(
            rig.run(true, T_OUT, 0, Some((&[1u8; 512], false))).0,
            S_IOERR
        );
        let mut disk = [0u8; 512];
        rig.file.as_file().read_exact_at(&mut disk, 0).unwrap();
        assert_eq!(disk, [0u8; 512], "read-only disk untouched");
        // Past the end, straddling the end, sector overflow.
        assert_eq!(
            rig.run(false, T_IN, 8, Some((&[0u8; 512], true))).0,
            S_IOERR
        );
        assert_eq!(
            rig.run(false, T_IN, 7, Some((&[0u8; 1024], true))).0,
            S_IOERR
        );
        assert_eq!(
            rig.run(false, T_OUT, u64::MAX / 2, Some((&[0u8; 512], false)))
                .0,
            S_IOERR
        );
        assert_eq!(rig.run(false, 77, 0, None).0, S_UNSUPP);
        let (status, len) = rig.run(false, T_GET_ID, 0, Some((&[0u8; 20], true)));
        assert_eq!((status, len), (S_OK, 21));
    }

    #[test]
    fn chain_without_room_for_status_is_returned_unanswered() {
        let rig = Rig::new();
        let q = MockSplitQueue::create(&rig.mem, GuestAddress(0), 16);
        q.build_desc_chain(&[desc(HDR, 16, 0)]).unwrap();
        let mut dev = Block::open(rig.file.path(), false).unwrap();
        let mut st = active_state(&rig.mem, 0);
        st.queues = vec![q.create_queue().unwrap()];
        dev.activate(st).unwrap();
        dev.process_requests();
        assert_eq!(q.used().idx().load(), 1);
        assert_eq!(q.used().ring().ref_at(0).unwrap().load().len(), 0);
        assert_eq!(dev.stats.errors, 1);
    }

    /// A real block device reports its size through BLKGETSIZE64 (its metadata says 0).
    #[test]
    fn a_loop_device_has_its_real_capacity() {
        assert!(
            // SAFETY: geteuid has no preconditions.
            unsafe { libc::geteuid() } == 0,
            "this test needs root (loop devices)"
        );
        let image = tempfile::NamedTempFile::new().unwrap();
        image.as_file().set_len(3 << 20).unwrap();
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show"])
            .arg(image.path())
            .output()
            .expect("run losetup");
        assert!(out.status.success(), "losetup: {out:?}");
        let device = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let opened = Block::open(Path::new(&device), true);
        let _ = std::process::Command::new("losetup")
            .args(["-d", &device])
            .output();
        let block = opened.unwrap();
        assert_eq!(
            std::fs::metadata(&device).unwrap().len(),
            0,
            "metadata says 0"
        );
        assert_eq!(block.capacity_sectors(), (3 << 20) / SECTOR_SIZE);
    }
}
