//! Guest RAM: one sealed memfd mapped shared, region by region, around the MMIO hole.
//!
//! memfd rather than anonymous memory so that a vhost-user backend (virtiofsd) can map the same
//! pages from its own process; the regions' `FileOffset`s carry the descriptor and offset it
//! needs. The size is sealed, so no process holding the descriptor can shrink the file under a
//! mapping (which would turn guest accesses into SIGBUS in the VMM).

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use crate::layout::ram_ranges;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("memfd_create failed")]
    Memfd(#[source] std::io::Error),
    #[error("sizing the guest memory file to {0} bytes failed")]
    Size(u64, #[source] std::io::Error),
    #[error("sealing the guest memory file failed")]
    Seal(#[source] std::io::Error),
    #[error("mapping guest memory failed")]
    Map(#[source] vm_memory::mmap::FromRangesError),
}

/// Creates `size` bytes of guest RAM backed by a sealed memfd named `name`.
pub fn create_guest_memory(size: u64, name: &CStr) -> Result<GuestMemoryMmap, MemoryError> {
    let file = Arc::new(sealed_memfd(size, name)?);
    let mut offset = 0;
    let ranges: Vec<_> = ram_ranges(size)
        .into_iter()
        .map(|(start, len)| {
            let range = (
                GuestAddress(start),
                len as usize,
                Some(FileOffset::from_arc(file.clone(), offset)),
            );
            offset += len;
            range
        })
        .collect();
    GuestMemoryMmap::from_ranges_with_files(&ranges).map_err(MemoryError::Map)
}

fn sealed_memfd(size: u64, name: &CStr) -> Result<File, MemoryError> {
    // SAFETY: `name` is a valid C string; the returned descriptor is checked and then owned.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.set_len(size).map_err(|e| MemoryError::Size(size, e))?;
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: F_ADD_SEALS on a descriptor this function owns; no pointers involved.
    if unsafe { libc::fcntl(fd, libc::F_ADD_SEALS, seals) } < 0 {
        return Err(MemoryError::Seal(std::io::Error::last_os_error()));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn regions_share_one_sealed_memfd_at_consecutive_offsets() {
        let size = (crate::layout::MMIO_GAP_START) + (64 << 20);
        let mem = create_guest_memory(size, c"test-guest-ram").unwrap();
        let regions: Vec<_> = mem.iter().collect();
        assert_eq!(regions.len(), 2);
        let (a, b) = (
            regions[0].file_offset().unwrap(),
            regions[1].file_offset().unwrap(),
        );
        assert_eq!(a.file().as_raw_fd(), b.file().as_raw_fd());
        assert_eq!((a.start(), b.start()), (0, regions[0].len()));
        // SAFETY: F_GET_SEALS only reads the seals of a descriptor the region owns.
        let seals = unsafe { libc::fcntl(a.file().as_raw_fd(), libc::F_GET_SEALS) };
        assert_ne!(seals & libc::F_SEAL_SHRINK, 0);
        assert!(a.file().set_len(0).is_err(), "the size must be sealed");
        // Writes through the mapping land in the file (a shared mapping).
        mem.write_obj(0xfeed_u32, GuestAddress(0x1000)).unwrap();
        let mut word = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(a.file(), &mut word, 0x1000).unwrap();
        assert_eq!(u32::from_le_bytes(word), 0xfeed);
    }
}
