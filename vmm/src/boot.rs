//! Direct kernel boot: loads the kernel (ELF with or without a PVH note, or bzImage), the
//! initrd and the command line, and writes the zero page (or PVH start info) with the e820 map
//! and the MP table that announces the vCPUs.

use std::fs::File;
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::{
    linux::LinuxBootConfigurator, pvh::PvhBootConfigurator, BootConfigurator, BootParams,
};
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{bzimage::BzImage, elf::Elf, elf::PvhBootCapability, KernelLoader};
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

use crate::arch::EntryMode;
use crate::layout::*;
use crate::mptable;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel is neither a loadable ELF ({elf}) nor a bzImage")]
    KernelFormat {
        elf: linux_loader::loader::Error,
        #[source]
        bzimage: linux_loader::loader::Error,
    },
    #[error("initrd of {size} bytes does not fit in guest memory below {limit:#x}")]
    InitrdTooBig { size: u64, limit: u64 },
    #[error("reading the initrd into guest memory failed")]
    InitrdRead(#[source] vm_memory::GuestMemoryError),
    #[error("kernel command line is invalid or longer than {CMDLINE_MAX_SIZE} bytes")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("writing the command line failed")]
    CmdlineWrite(#[source] linux_loader::loader::Error),
    #[error("writing boot parameters failed")]
    Configure(#[source] linux_loader::configurator::Error),
    #[error("writing the MP table failed")]
    MpTable(#[source] mptable::MpTableError),
    #[error("too many e820 entries")]
    E820Full,
}

type Result<T> = std::result::Result<T, BootError>;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x0100_0000;
/// Offset of the 64-bit entry point from the start of the protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;

/// The kernel once it is in guest memory.
#[derive(Debug, Clone)]
pub struct LoadedKernel {
    pub entry: EntryMode,
    setup_header: Option<linux_loader::loader::bootparam::setup_header>,
    kernel_end: u64,
}

fn open(path: &Path) -> Result<File> {
    File::open(path).map_err(|source| BootError::Open {
        path: path.display().to_string(),
        source,
    })
}

/// Loads an ELF (preferring its PVH entry) or else a bzImage.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel> {
    let mut f = open(path)?;
    let elf_err = match Elf::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START))) {
        Ok(r) => {
            let entry = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(a) => EntryMode::Pvh {
                    entry: a.raw_value(),
                },
                _ => EntryMode::Linux64 {
                    entry: r.kernel_load.raw_value(),
                },
            };
            return Ok(LoadedKernel {
                entry,
                setup_header: None,
                kernel_end: r.kernel_end,
            });
        }
        Err(e) => e,
    };
    match BzImage::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START))) {
        Ok(r) => Ok(LoadedKernel {
            entry: EntryMode::Linux64 {
                entry: r.kernel_load.raw_value() + BZIMAGE_64BIT_ENTRY_OFFSET,
            },
            setup_header: r.setup_header,
            kernel_end: r.kernel_end,
        }),
        Err(bzimage) => Err(BootError::KernelFormat {
            elf: elf_err,
            bzimage,
        }),
    }
}

/// Where an initrd landed.
#[derive(Debug, Clone, Copy)]
pub struct InitrdPlacement {
    pub addr: u64,
    pub size: u64,
}

/// Puts the initrd at the top of low memory (below the MMIO hole), page aligned.
pub fn load_initrd(mem: &GuestMemoryMmap, path: &Path, kernel_end: u64) -> Result<InitrdPlacement> {
    let mut f = open(path)?;
    let size = f
        .metadata()
        .map_err(|source| BootError::Open {
            path: path.display().to_string(),
            source,
        })?
        .len();
    let low_end = mem
        .iter()
        .next()
        .map(|r| r.start_addr().raw_value() + r.len())
        .unwrap_or(0)
        .min(MMIO_GAP_START);
    let addr = low_end.saturating_sub(size) & !0xfff;
    if addr <= kernel_end.max(HIMEM_START) || size > low_end {
        return Err(BootError::InitrdTooBig {
            size,
            limit: low_end,
        });
    }
    mem.read_exact_volatile_from(GuestAddress(addr), &mut f, size as usize)
        .map_err(BootError::InitrdRead)?;
    Ok(InitrdPlacement { addr, size })
}

/// The e820 map: low RAM below the EBDA, reserved EBDA/BIOS area, then RAM from 1 MiB
/// (split around the MMIO hole).
pub fn e820_map(mem: &GuestMemoryMmap) -> Vec<(u64, u64, u32)> {
    e820_map_with(mem, &[])
}

/// The e820 map with `reserved` (start, size) ranges added, e.g. the PCI root's ECAM, which
/// Linux uses only where the e820 map reserves it.
pub fn e820_map_with(mem: &GuestMemoryMmap, reserved: &[(u64, u64)]) -> Vec<(u64, u64, u32)> {
    let mut map = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
    ];
    for r in mem.iter() {
        let start = r.start_addr().raw_value().max(HIMEM_START);
        let end = r.start_addr().raw_value() + r.len();
        if end > start {
            map.push((start, end - start, E820_RAM));
        }
    }
    map.extend(reserved.iter().map(|(a, s)| (*a, *s, E820_RESERVED)));
    map
}

/// Builds the command line: the user's plus one `virtio_mmio.device=` per device.
pub fn build_cmdline(user: &str, virtio_devices: &[(u64, u32)]) -> Result<Cmdline> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)?;
    if !user.is_empty() {
        cmdline.insert_str(user).map_err(BootError::Cmdline)?;
    }
    for (i, (base, irq)) in virtio_devices.iter().enumerate() {
        cmdline
            .add_virtio_mmio_device(VIRTIO_MMIO_SIZE, GuestAddress(*base), *irq, Some(i as u32))
            .map_err(BootError::Cmdline)?;
    }
    Ok(cmdline)
}

/// Writes command line, MP table and zero page / PVH info for `kernel`.
pub fn configure_system(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline: &Cmdline,
    initrd: Option<InitrdPlacement>,
    vcpus: u8,
    reserved: &[(u64, u64)],
) -> Result<()> {
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline)
        .map_err(BootError::CmdlineWrite)?;
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(BootError::Cmdline)?
        .as_bytes()
        .len();
    mptable::setup_mptable(mem, vcpus, &irq_list()).map_err(BootError::MpTable)?;
    match kernel.entry {
        EntryMode::Linux64 { .. } => write_zero_page(mem, kernel, cmdline_len, initrd, reserved),
        EntryMode::Pvh { .. } => write_pvh_info(mem, cmdline_len, initrd, reserved),
    }
}

fn irq_list() -> Vec<u8> {
    (0..24).collect()
}

fn write_zero_page(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline_len: usize,
    initrd: Option<InitrdPlacement>,
    reserved: &[(u64, u64)],
) -> Result<()> {
    let mut params = boot_params::default();
    if let Some(hdr) = kernel.setup_header {
        params.hdr = hdr;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some(i) = initrd {
        params.hdr.ramdisk_image = i.addr as u32;
        params.hdr.ramdisk_size = i.size as u32;
    }
    let map = e820_map_with(mem, reserved);
    if map.len() > params.e820_table.len() {
        return Err(BootError::E820Full);
    }
    for (i, (addr, size, type_)) in map.iter().enumerate() {
        params.e820_table[i].addr = *addr;
        params.e820_table[i].size = *size;
        params.e820_table[i].r#type = *type_;
    }
    params.e820_entries = map.len() as u8;
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(BootError::Configure)
}

fn write_pvh_info(
    mem: &GuestMemoryMmap,
    cmdline_len: usize,
    initrd: Option<InitrdPlacement>,
    reserved: &[(u64, u64)],
) -> Result<()> {
    let _ = cmdline_len;
    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: MEMMAP_START,
        ..Default::default()
    };
    let memmap: Vec<hvm_memmap_table_entry> = e820_map_with(mem, reserved)
        .into_iter()
        .map(|(addr, size, type_)| hvm_memmap_table_entry {
            addr,
            size,
            type_,
            reserved: 0,
        })
        .collect();
    start_info.memmap_entries = memmap.len() as u32;
    let mut params = BootParams::new(&start_info, GuestAddress(PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(MEMMAP_START));
    if let Some(i) = initrd {
        let module = hvm_modlist_entry {
            paddr: i.addr,
            size: i.size,
            ..Default::default()
        };
        let modlist_addr =
            GuestAddress(MEMMAP_START + std::mem::size_of_val(memmap.as_slice()) as u64);
        params.set_modules(&[module], modlist_addr);
        // set_modules does not patch the header, so rebuild it with the count and address.
        start_info.nr_modules = 1;
        start_info.modlist_paddr = modlist_addr.raw_value();
        params.header = BootParams::new(&start_info, GuestAddress(PVH_INFO_START)).header;
    }
    PvhBootConfigurator::write_bootparams(&params, mem).map_err(BootError::Configure)
}

impl LoadedKernel {
    pub fn end(&self) -> u64 {
        self.kernel_end
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::ram_ranges;

    fn mem(size: u64) -> GuestMemoryMmap {
        let ranges: Vec<_> = ram_ranges(size)
            .into_iter()
            .map(|(a, s)| (GuestAddress(a), s as usize))
            .collect();
        GuestMemoryMmap::from_ranges(&ranges).unwrap()
    }

    #[test]
    fn zero_page_carries_e820_cmdline_and_initrd() {
        let m = mem(64 << 20);
        let kernel = LoadedKernel {
            entry: EntryMode::Linux64 { entry: 0x200000 },
            setup_header: None,
            kernel_end: 0x300000,
        };
        let cmdline = build_cmdline("console=ttyS0", &[(VIRTIO_MMIO_BASE, 5)]).unwrap();
        let initrd = InitrdPlacement {
            addr: 0x3000000,
            size: 4096,
        };
        configure_system(&m, &kernel, &cmdline, Some(initrd), 2, &[]).unwrap();
        let p: boot_params = m.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!(p.e820_entries, 3);
        let e2 = p.e820_table[2];
        assert_eq!(
            ({ e2.addr }, { e2.size }),
            (HIMEM_START, (64 << 20) - HIMEM_START)
        );
        assert_eq!({ p.hdr.ramdisk_image }, 0x3000000);
        let mut buf = vec![0u8; { p.hdr.cmdline_size } as usize];
        m.read_slice(&mut buf, GuestAddress({ p.hdr.cmd_line_ptr } as u64))
            .unwrap();
        assert_eq!(
            std::str::from_utf8(&buf).unwrap(),
            "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5:0"
        );
    }

    #[test]
    fn pvh_info_has_magic_memmap_and_module() {
        let m = mem(64 << 20);
        let kernel = LoadedKernel {
            entry: EntryMode::Pvh { entry: 0x1000000 },
            setup_header: None,
            kernel_end: 0x2000000,
        };
        let cmdline = build_cmdline("x", &[]).unwrap();
        let initrd = InitrdPlacement {
            addr: 0x3000000,
            size: 100,
        };
        configure_system(&m, &kernel, &cmdline, Some(initrd), 1, &[]).unwrap();
        let si: hvm_start_info = m.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(si.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(si.memmap_entries, 3);
        assert_eq!(si.nr_modules, 1);
        let module: hvm_modlist_entry = m.read_obj(GuestAddress(si.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x3000000, 100));
        let e: hvm_memmap_table_entry = m.read_obj(GuestAddress(MEMMAP_START + 2 * 24)).unwrap();
        assert_eq!((e.addr, e.type_), (HIMEM_START, E820_RAM));
    }

    #[test]
    fn garbage_kernel_is_rejected_with_both_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, vec![0x5a; 8192]).unwrap();
        let err = load_kernel(&mem(64 << 20), &p).unwrap_err();
        assert!(matches!(err, BootError::KernelFormat { .. }), "{err}");
    }
}
