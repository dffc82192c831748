//! Pod volumes (`io.eci.volume.<name>` on the sandbox's spec) under `<state>/volumes/<pod>/`,
//! and the rewriting of container mounts that use them (`eci-volume://<name>` sources and
//! Kubernetes emptyDir host paths).
//!
//! Loop devices for disk images are configured with two ioctls (LOOP_CTL_GET_FREE,
//! LOOP_CONFIGURE with autoclear) written here: the loop-device crates build bindings with
//! bindgen (libclang), too much for two calls.

use crate::error::{AgentError, Result};
use eci_protocol::annotations::{Volume, VOLUME_SOURCE_SCHEME};
use eci_protocol::validate::ValidationError;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::{Mount, Spec};
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Directory name kubelet gives emptyDir volumes on the host.
const K8S_EMPTY_DIR: &str = "kubernetes.io~empty-dir";
/// statfs magic of tmpfs.
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// One pod volume.
#[derive(Debug)]
pub struct PodVolume {
    /// Where it lives in the agent's mount namespace.
    pub path: PathBuf,
    /// Whether `path` is a mount point the agent made (unmounted on teardown).
    mounted: bool,
    /// Containers must mount it read-only.
    pub read_only: bool,
}

/// The volumes of one pod.
#[derive(Debug)]
pub struct PodVolumes {
    root: PathBuf,
    volumes: HashMap<String, PodVolume>,
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> AgentError {
    move |e| AgentError::io(context, e)
}

fn nix_io(context: String) -> impl FnOnce(nix::Error) -> AgentError {
    move |e| AgentError::io(context, std::io::Error::from(e))
}

impl PodVolumes {
    /// Creates the declared volumes under `root`; on failure nothing is left.
    pub fn create(root: &Path, declared: &[(String, Volume)]) -> Result<Self> {
        std::fs::create_dir_all(root).map_err(io(format!("create {}", root.display())))?;
        let mut pod = Self {
            root: root.to_path_buf(),
            volumes: HashMap::new(),
        };
        for (name, volume) in declared {
            if let Err(e) = pod.add(name, volume) {
                pod.teardown();
                return Err(AgentError::FailedPrecondition(format!(
                    "pod volume {name:?} ({}{name}): {}",
                    eci_protocol::annotations::VOLUME_PREFIX,
                    e.chain()
                )));
            }
        }
        Ok(pod)
    }

    /// The volume called `name`.
    pub fn get(&self, name: &str) -> Option<&PodVolume> {
        self.volumes.get(name)
    }

    /// Makes one volume.
    pub fn add(&mut self, name: &str, volume: &Volume) -> Result<&PodVolume> {
        let path = self.root.join(name);
        std::fs::create_dir(&path)
            .map_err(io(format!("create volume directory {}", path.display())))?;
        // Registered before mounting so that teardown finds it whatever happens next.
        self.volumes.insert(
            name.to_string(),
            PodVolume {
                path: path.clone(),
                mounted: false,
                read_only: false,
            },
        );
        let (mounted, read_only) = match volume {
            Volume::EmptyDir { memory: false, .. } => {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))
                    .map_err(io(format!("chmod {}", path.display())))?;
                (false, false)
            }
            Volume::EmptyDir {
                memory: true,
                size_limit,
            } => {
                let mut data = "mode=0777".to_string();
                if let Some(size) = size_limit {
                    data.push_str(&format!(",size={size}"));
                }
                tmpfs(&path, &data)?;
                (true, false)
            }
            Volume::ConfigFile { items } => {
                let total: usize = items.iter().map(|i| i.content.len() + 4096).sum();
                tmpfs(&path, &format!("mode=0755,size={}", total + (1 << 20)))?;
                self.volumes.get_mut(name).expect("inserted").mounted = true;
                write_config_files(&path, items)?;
                mount(
                    None::<&str>,
                    &path,
                    None::<&str>,
                    MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None::<&str>,
                )
                .map_err(nix_io(format!("remount {} read-only", path.display())))?;
                (true, true)
            }
            Volume::Disk {
                device,
                fs_type,
                read_only,
            } => {
                mount_disk(Path::new(device), fs_type, *read_only, &path)?;
                (true, *read_only)
            }
            Volume::Nfs {
                server,
                path: export,
                read_only,
            } => {
                mount_nfs(server, export, *read_only, &path)?;
                (true, *read_only)
            }
        };
        let v = self.volumes.get_mut(name).expect("inserted");
        v.mounted = mounted;
        v.read_only = read_only;
        Ok(v)
    }

    /// Unmounts and removes every volume and the pod's directory. Errors are logged: a volume
    /// that cannot be unmounted is left in place rather than have its contents deleted.
    pub fn teardown(&mut self) {
        for (name, v) in self.volumes.drain() {
            if v.mounted {
                if let Err(e) = umount2(&v.path, MntFlags::MNT_DETACH) {
                    tracing::error!(volume = %name, error = %e, "unmount the pod volume; left in place");
                    continue;
                }
                let _ = std::fs::remove_dir(&v.path);
            } else if let Err(e) = std::fs::remove_dir_all(&v.path) {
                tracing::warn!(volume = %name, error = %e, "remove the pod volume");
            }
        }
        let _ = std::fs::remove_dir(&self.root);
    }
}

fn tmpfs(path: &Path, data: &str) -> Result<()> {
    mount(
        Some("tmpfs"),
        path,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data),
    )
    .map_err(nix_io(format!("mount a tmpfs on {}", path.display())))
}

fn write_config_files(dir: &Path, items: &[eci_protocol::annotations::ConfigItem]) -> Result<()> {
    for item in items {
        let file = dir.join(&item.path);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent).map_err(io(format!("create {}", parent.display())))?;
        }
        std::fs::write(&file, &item.content).map_err(io(format!("write {}", file.display())))?;
        // Explicitly: the umask must not change the mode the user asked for.
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(item.mode))
            .map_err(io(format!("chmod {}", file.display())))?;
    }
    Ok(())
}

/// `struct loop_info64` of <linux/loop.h>.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config` of <linux/loop.h>.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// Attaches `image` to a free loop device that frees itself when its last user (the mount)
/// goes. Returns the open device.
fn attach_loop(image: &Path, read_only: bool) -> Result<(PathBuf, std::fs::File)> {
    let backing = std::fs::OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(image)
        .map_err(io(format!("open disk image {}", image.display())))?;
    let control = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/loop-control")
        .map_err(io("open /dev/loop-control".into()))?;
    // Another process may take the free device between the two calls: retry.
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let n = unsafe { libc::ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
        if n < 0 {
            return Err(AgentError::io(
                "find a free loop device",
                std::io::Error::last_os_error(),
            ));
        }
        let dev = PathBuf::from(format!("/dev/loop{n}"));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(&dev)
            .map_err(io(format!("open {}", dev.display())))?;
        let mut config = LoopConfig {
            fd: backing.as_raw_fd() as u32,
            block_size: 0,
            info: LoopInfo64 {
                device: 0,
                inode: 0,
                rdevice: 0,
                offset: 0,
                sizelimit: 0,
                number: 0,
                encrypt_type: 0,
                encrypt_key_size: 0,
                flags: LO_FLAGS_AUTOCLEAR | if read_only { LO_FLAGS_READ_ONLY } else { 0 },
                file_name: [0; 64],
                crypt_name: [0; 64],
                encrypt_key: [0; 32],
                init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: `config` is a valid, initialised struct loop_config that outlives the call;
        // the kernel only reads it.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), LOOP_CONFIGURE as _, &mut config) };
        if rc == 0 {
            return Ok((dev, file));
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EBUSY) {
            return Err(AgentError::io(format!("configure {}", dev.display()), err));
        }
    }
    Err(AgentError::io(
        "configure a loop device",
        std::io::Error::other("every free loop device was taken meanwhile"),
    ))
}

/// The guest device of `/dev/disk/by-id/virtio-<serial>` (the shim's name for a disk volume
/// in a VM): the block device whose `/sys/block/<dev>/serial` is `<serial>`. Other paths are
/// themselves.
pub fn resolve_device(device: &Path, sys_block: &Path) -> Result<PathBuf> {
    let Some(serial) = device
        .to_str()
        .and_then(|d| d.strip_prefix(eci_protocol::annotations::GUEST_DISK_BY_SERIAL))
    else {
        return Ok(device.to_owned());
    };
    let entries = std::fs::read_dir(sys_block).map_err(io(format!(
        "list {} for disk {serial}",
        sys_block.display()
    )))?;
    for entry in entries.flatten() {
        let found = std::fs::read_to_string(entry.path().join("serial")).unwrap_or_default();
        if found.trim_end_matches(['\0', '\n']) == serial {
            return Ok(Path::new("/dev").join(entry.file_name()));
        }
    }
    Err(AgentError::FailedPrecondition(format!(
        "disk {}: no block device with serial {serial:?} in the guest",
        device.display()
    )))
}

fn mount_disk(device: &Path, fs_type: &str, read_only: bool, target: &Path) -> Result<()> {
    let resolved = resolve_device(device, Path::new("/sys/block"))?;
    let device = resolved.as_path();
    let meta =
        std::fs::metadata(device).map_err(io(format!("disk device {}", device.display())))?;
    let flags = if read_only {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    };
    if meta.is_file() {
        // The loop device lives while mounted (autoclear); our descriptor only until then.
        let (dev, _open) = attach_loop(device, read_only)?;
        mount(Some(&dev), target, Some(fs_type), flags, None::<&str>).map_err(nix_io(format!(
            "mount {} ({}, {fs_type})",
            device.display(),
            dev.display()
        )))
    } else {
        mount(Some(device), target, Some(fs_type), flags, None::<&str>)
            .map_err(nix_io(format!("mount {} ({fs_type})", device.display())))
    }
}

/// The kernel NFS client's mount data for `server` at `addr`.
pub fn nfs_options(addr: &std::net::IpAddr, read_only: bool) -> String {
    let mut opts = format!("vers=4.1,addr={addr},soft,timeo=100,retrans=2");
    if read_only {
        opts.push_str(",ro");
    }
    opts
}

fn mount_nfs(server: &str, export: &str, read_only: bool, target: &Path) -> Result<()> {
    use std::net::ToSocketAddrs;
    let host = server.trim_start_matches('[').trim_end_matches(']');
    let addr = (host, 2049)
        .to_socket_addrs()
        .map_err(io(format!("resolve NFS server {server}")))?
        .next()
        .ok_or_else(|| {
            AgentError::io(
                format!("resolve NFS server {server}"),
                std::io::Error::other("no address"),
            )
        })?
        .ip();
    let flags = if read_only {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    };
    let source = if addr.is_ipv6() {
        format!("[{addr}]:{export}")
    } else {
        format!("{addr}:{export}")
    };
    mount(
        Some(source.as_str()),
        target,
        Some("nfs4"),
        flags,
        Some(nfs_options(&addr, read_only).as_str()),
    )
    .map_err(nix_io(format!("mount NFS {server}:{export}")))
}

/// The emptyDir name of a kubelet host path `.../kubernetes.io~empty-dir/<name>`.
pub fn k8s_empty_dir_name(source: &Path) -> Option<&str> {
    let parent = source.parent()?;
    (parent.file_name()? == K8S_EMPTY_DIR).then(|| source.file_name()?.to_str())?
}

/// Size of the tmpfs at `path`, None when it is not a tmpfs.
fn tmpfs_size(path: &Path) -> Option<u64> {
    let fs = nix::sys::statfs::statfs(path).ok()?;
    (fs.filesystem_type().0 as i64 == TMPFS_MAGIC)
        .then(|| fs.blocks() as u64 * fs.block_size() as u64)
}

/// Rewrites the spec's mounts that use pod volumes into binds of them; returns (volume name,
/// host path, container path) of each. Unknown `eci-volume://` names are refused naming the
/// mount. A kubelet emptyDir path not declared as a pod volume becomes a pod tmpfs (of the
/// host tmpfs's size) when it is on tmpfs, and stays a bind of the host path otherwise.
pub fn rewrite_mounts(
    spec: &mut Spec,
    pod: &mut PodVolumes,
) -> Result<Vec<(String, PathBuf, String)>> {
    let Some(mounts) = spec.mounts().clone() else {
        return Ok(Vec::new());
    };
    let mut used = Vec::new();
    let mut out: Vec<Mount> = Vec::with_capacity(mounts.len());
    for (i, m) in mounts.into_iter().enumerate() {
        let source = m.source().clone().unwrap_or_default();
        let text = source.to_string_lossy().to_string();
        let name = if let Some(name) = text.strip_prefix(VOLUME_SOURCE_SCHEME) {
            if pod.get(name).is_none() {
                return Err(ValidationError::new(
                    format!("oci_spec_json.mounts[{i}].source"),
                    format!(
                        "unknown pod volume {name:?} (declare it with the annotation io.eci.volume.{name} on the sandbox)"
                    ),
                )
                .into());
            }
            Some(name.to_string())
        } else if let Some(name) = k8s_empty_dir_name(&source) {
            if pod.get(name).is_none() {
                match tmpfs_size(&source) {
                    Some(size) => {
                        let v = Volume::EmptyDir {
                            memory: true,
                            size_limit: Some(size).filter(|s| *s > 0),
                        };
                        pod.add(name, &v)?;
                    }
                    // In a VM kubelet's host directory is not shared (the agent owns
                    // emptyDirs): the volume is a directory of the guest's.
                    None if !source.exists() => {
                        let v = Volume::EmptyDir {
                            memory: false,
                            size_limit: None,
                        };
                        pod.add(name, &v)?;
                    }
                    None => {
                        out.push(m);
                        continue;
                    }
                }
            }
            Some(name.to_string())
        } else {
            None
        };
        let Some(name) = name else {
            out.push(m);
            continue;
        };
        let v = pod.get(&name).expect("checked or added above");
        let wants_ro = m
            .options()
            .as_ref()
            .is_some_and(|o| o.iter().any(|x| x == "ro"));
        let mut bind = m.clone();
        bind.set_typ(Some("bind".into()));
        bind.set_source(Some(v.path.clone()));
        bind.set_options(Some(vec![
            "rbind".into(),
            if wants_ro || v.read_only { "ro" } else { "rw" }.into(),
        ]));
        used.push((
            name,
            v.path.clone(),
            m.destination().to_string_lossy().to_string(),
        ));
        out.push(bind);
    }
    spec.set_mounts(Some(out));
    Ok(used)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_empty_dir_paths() {
        assert_eq!(
            k8s_empty_dir_name(Path::new(
                "/var/lib/kubelet/pods/uid/volumes/kubernetes.io~empty-dir/cache"
            )),
            Some("cache")
        );
        assert_eq!(k8s_empty_dir_name(Path::new("/data/cache")), None);
        assert_eq!(k8s_empty_dir_name(Path::new("/")), None);
    }

    #[test]
    fn nfs_mount_data() {
        let ip: std::net::IpAddr = "192.0.2.5".parse().unwrap();
        assert_eq!(
            nfs_options(&ip, true),
            "vers=4.1,addr=192.0.2.5,soft,timeo=100,retrans=2,ro"
        );
        assert!(!nfs_options(&ip, false).contains(",ro"));
    }

    #[test]
    fn disks_are_found_by_serial() {
        let sys = tempfile::tempdir().unwrap();
        for (dev, serial) in [("vda", "other"), ("vdb", "eci-disk-0")] {
            std::fs::create_dir_all(sys.path().join(dev)).unwrap();
            std::fs::write(sys.path().join(dev).join("serial"), serial).unwrap();
        }
        let by_serial = Path::new("/dev/disk/by-id/virtio-eci-disk-0");
        assert_eq!(
            resolve_device(by_serial, sys.path()).unwrap(),
            PathBuf::from("/dev/vdb")
        );
        assert_eq!(
            resolve_device(Path::new("/dev/loop3"), sys.path()).unwrap(),
            PathBuf::from("/dev/loop3")
        );
        let missing = Path::new("/dev/disk/by-id/virtio-eci-disk-9");
        let err = resolve_device(missing, sys.path()).unwrap_err().chain();
        assert!(err.contains("eci-disk-9"), "{err}");
    }

    #[test]
    fn loop_structs_match_the_kernel_abi() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }

    #[test]
    fn unknown_volume_names_the_mount() {
        let dir = tempfile::tempdir().unwrap();
        let mut pod = PodVolumes::create(&dir.path().join("pod"), &[]).unwrap();
        let mut spec = Spec::default();
        let mut mounts = spec.mounts().clone().unwrap();
        let mut m = Mount::default();
        m.set_destination("/data".into());
        m.set_source(Some("eci-volume://nope".into()));
        mounts.push(m);
        let n = mounts.len() - 1;
        spec.set_mounts(Some(mounts));
        let e = rewrite_mounts(&mut spec, &mut pod).unwrap_err();
        let text = e.chain();
        assert!(
            text.contains(&format!("mounts[{n}].source")) && text.contains("\"nope\""),
            "{text}"
        );
        pod.teardown();
        assert!(!dir.path().join("pod").exists());
    }
}
