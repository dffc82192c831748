//! VM configuration: one JSON document (`--config FILE`) and the same fields as command-line
//! flags. Flags override the file. Validation names the offending field.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Largest vCPU count the MP table and APIC id layout here support.
pub const MAX_VCPUS: u8 = 32;
/// Guest memory bounds in MiB.
pub const MIN_MEMORY_MIB: u64 = 16;
pub const MAX_MEMORY_MIB: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Where the 16550 serial port writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SerialOutput {
    #[default]
    Stdout,
    /// Discard output.
    Off,
    /// Append to this file.
    #[serde(untagged)]
    File(PathBuf),
}

impl std::str::FromStr for SerialOutput {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "stdout" => SerialOutput::Stdout,
            "off" => SerialOutput::Off,
            path => SerialOutput::File(PathBuf::from(path)),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// Guest context id (3 or more).
    pub cid: u64,
    /// Host unix socket of the hybrid vsock.
    pub uds: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub read_only: bool,
}

impl std::str::FromStr for BlockConfig {
    type Err = String;
    /// `PATH[,ro]`
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(',');
        let path = parts.next().unwrap_or_default();
        if path.is_empty() {
            return Err("empty path".into());
        }
        let mut read_only = false;
        for opt in parts {
            match opt {
                "ro" => read_only = true,
                "rw" => read_only = false,
                other => return Err(format!("unknown option `{other}` (expected ro or rw)")),
            }
        }
        Ok(BlockConfig {
            path: path.into(),
            read_only,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Name of the tap device (opened by name unless `fd` is given).
    pub tap: String,
    /// Guest MAC, `aa:bb:cc:dd:ee:ff`; a locally administered one is derived when absent.
    #[serde(default)]
    pub mac: Option<String>,
    /// An already opened tap (IFF_TAP | IFF_NO_PI) inherited from the caller, e.g. the shim
    /// that created it inside the pod's network namespace. The VMM takes ownership.
    #[serde(default)]
    pub fd: Option<i32>,
}

impl std::str::FromStr for NetConfig {
    type Err = String;
    /// `TAP[,mac=MAC][,fd=N]`
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(',');
        let tap = parts.next().unwrap_or_default();
        if tap.is_empty() {
            return Err("empty tap name".into());
        }
        let mut mac = None;
        let mut fd = None;
        for opt in parts {
            match opt.split_once('=') {
                Some(("mac", v)) => mac = Some(v.to_string()),
                Some(("fd", v)) => {
                    fd = Some(v.parse().map_err(|_| format!("fd `{v}` is not a number"))?)
                }
                _ => return Err(format!("unknown option `{opt}` (expected mac=MAC or fd=N)")),
            }
        }
        Ok(NetConfig {
            tap: tap.into(),
            mac,
            fd,
        })
    }
}

/// A virtio-fs device whose filesystem server is a vhost-user backend (virtiofsd).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsConfig {
    /// The backend's vhost-user socket (it listens, the VMM connects).
    pub socket: PathBuf,
    /// The mount tag the guest uses (`mount -t virtiofs TAG DIR`), at most 36 bytes.
    pub tag: String,
}

impl std::str::FromStr for FsConfig {
    type Err = String;
    /// `SOCKET,tag=TAG`
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(',');
        let socket = parts.next().unwrap_or_default();
        if socket.is_empty() {
            return Err("empty socket path".into());
        }
        let mut tag = None;
        for opt in parts {
            match opt.split_once('=') {
                Some(("tag", v)) => tag = Some(v.to_string()),
                _ => return Err(format!("unknown option `{opt}` (expected tag=TAG)")),
            }
        }
        Ok(FsConfig {
            socket: socket.into(),
            tag: tag.ok_or("tag=TAG is required")?,
        })
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in mac.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn default_vcpus() -> u8 {
    1
}
fn default_memory() -> u64 {
    128
}
fn default_cmdline() -> String {
    "console=ttyS0 reboot=k panic=1".into()
}

/// The whole VM description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// ELF vmlinux (PVH note or 64-bit entry) or bzImage.
    pub kernel: PathBuf,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    #[serde(default = "default_memory")]
    pub memory_mib: u64,
    #[serde(default)]
    pub serial: SerialOutput,
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    #[serde(default)]
    pub block: Vec<BlockConfig>,
    #[serde(default)]
    pub net: Vec<NetConfig>,
    #[serde(default)]
    pub fs: Vec<FsConfig>,
    #[serde(default)]
    pub rng: bool,
    #[serde(default)]
    pub api_sock: Option<PathBuf>,
    /// Seccomp filters per thread and dropped capabilities after setup (default on).
    #[serde(default = "default_true")]
    pub seccomp: bool,
    /// Enter this jail before anything else; every other path is then a path inside it.
    #[serde(default)]
    pub jail: Option<crate::jail::JailConfig>,
    /// PCI devices to pass through with VFIO: a BDF (`0000:01:00.0`, `01:00.0`) or a sysfs
    /// device path; each must be bound to vfio-pci.
    #[serde(default)]
    pub vfio: Vec<String>,
}

fn default_true() -> bool {
    true
}

/// Command-line flags; every field of [`VmConfig`] has one.
#[derive(Debug, Default, clap::Parser)]
#[command(
    name = "eci-vmm",
    version,
    about = "ECI minimal KVM virtual machine monitor"
)]
pub struct Cli {
    /// JSON file with the VM configuration; flags override its fields.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Kernel: ELF vmlinux (PVH note or 64-bit entry) or bzImage.
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line (virtio-mmio devices are appended).
    #[arg(long)]
    pub cmdline: Option<String>,
    #[arg(long)]
    pub vcpus: Option<u8>,
    #[arg(long)]
    pub memory_mib: Option<u64>,
    /// `stdout`, `off` or a file path.
    #[arg(long)]
    pub serial: Option<SerialOutput>,
    #[arg(long)]
    pub vsock_cid: Option<u64>,
    #[arg(long)]
    pub vsock_uds: Option<PathBuf>,
    /// `PATH[,ro]`, repeatable.
    #[arg(long)]
    pub block: Vec<BlockConfig>,
    /// `TAP[,mac=MAC]`, repeatable.
    #[arg(long)]
    pub net: Vec<NetConfig>,
    /// `SOCKET,tag=TAG`: virtio-fs through a vhost-user backend, repeatable.
    #[arg(long)]
    pub fs: Vec<FsConfig>,
    /// Add a virtio-rng device.
    #[arg(long)]
    pub rng: bool,
    /// Control socket (JSON lines: pause, resume, shutdown, info).
    #[arg(long)]
    pub api_sock: Option<PathBuf>,
    /// Do not install seccomp filters or drop capabilities (debugging only).
    #[arg(long)]
    pub no_seccomp: bool,
    /// A PCI device to pass through with VFIO: BDF or sysfs path, bound to vfio-pci.
    /// Repeatable.
    #[arg(long)]
    pub vfio: Vec<String>,
}

impl Cli {
    /// Merges the config file (if any) with the flags and validates the result.
    pub fn into_config(self) -> Result<VmConfig, ConfigError> {
        let cfg = self.merge()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Merges the config file (if any) with the flags, without validating paths: with a jail,
    /// they name files inside it, which exist only once the VMM entered it.
    pub fn merge(self) -> Result<VmConfig, ConfigError> {
        let file_cfg = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                Some(serde_json::from_str::<VmConfig>(&text).map_err(|source| {
                    ConfigError::Parse {
                        path: path.clone(),
                        source,
                    }
                })?)
            }
            None => None,
        };
        let kernel = self
            .kernel
            .or_else(|| file_cfg.as_ref().map(|c| c.kernel.clone()))
            .ok_or_else(|| invalid("kernel", "required (--kernel or \"kernel\" in --config)"))?;
        let mut cfg = file_cfg.unwrap_or(VmConfig {
            kernel: kernel.clone(),
            initrd: None,
            cmdline: default_cmdline(),
            vcpus: default_vcpus(),
            memory_mib: default_memory(),
            serial: SerialOutput::default(),
            vsock: None,
            block: vec![],
            net: vec![],
            fs: vec![],
            rng: false,
            api_sock: None,
            seccomp: true,
            jail: None,
            vfio: vec![],
        });
        cfg.kernel = kernel;
        if let Some(v) = self.initrd {
            cfg.initrd = Some(v);
        }
        if let Some(v) = self.cmdline {
            cfg.cmdline = v;
        }
        if let Some(v) = self.vcpus {
            cfg.vcpus = v;
        }
        if let Some(v) = self.memory_mib {
            cfg.memory_mib = v;
        }
        if let Some(v) = self.serial {
            cfg.serial = v;
        }
        match (self.vsock_cid, self.vsock_uds) {
            (Some(cid), Some(uds)) => cfg.vsock = Some(VsockConfig { cid, uds }),
            (None, None) => {}
            (Some(cid), None) => match &mut cfg.vsock {
                Some(v) => v.cid = cid,
                None => return Err(invalid("vsock_uds", "required with --vsock-cid")),
            },
            (None, Some(uds)) => match &mut cfg.vsock {
                Some(v) => v.uds = uds,
                None => return Err(invalid("vsock_cid", "required with --vsock-uds")),
            },
        }
        cfg.block.extend(self.block);
        cfg.net.extend(self.net);
        cfg.fs.extend(self.fs);
        cfg.rng |= self.rng;
        if let Some(v) = self.api_sock {
            cfg.api_sock = Some(v);
        }
        if self.no_seccomp {
            cfg.seccomp = false;
        }
        cfg.vfio.extend(self.vfio);
        Ok(cfg)
    }
}

impl VmConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.kernel.is_file() {
            return Err(invalid(
                "kernel",
                format!("{} is not a readable file", self.kernel.display()),
            ));
        }
        if let Some(initrd) = &self.initrd {
            if !initrd.is_file() {
                return Err(invalid(
                    "initrd",
                    format!("{} is not a readable file", initrd.display()),
                ));
            }
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(invalid("vcpus", format!("must be 1..={MAX_VCPUS}")));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(invalid(
                "memory_mib",
                format!("must be {MIN_MEMORY_MIB}..={MAX_MEMORY_MIB}"),
            ));
        }
        if self.cmdline.contains('\0') {
            return Err(invalid("cmdline", "contains a NUL byte"));
        }
        if let Some(v) = &self.vsock {
            if v.cid < 3 || v.cid > u32::MAX as u64 {
                return Err(invalid("vsock.cid", "must be 3..=4294967295"));
            }
            if v.uds.as_os_str().is_empty() {
                return Err(invalid("vsock.uds", "empty path"));
            }
        }
        for b in &self.block {
            if !b.path.is_file() {
                return Err(invalid(
                    "block.path",
                    format!("{} is not a regular file", b.path.display()),
                ));
            }
        }
        for n in &self.net {
            if n.tap.is_empty() || n.tap.len() >= libc::IFNAMSIZ {
                return Err(invalid("net.tap", "must be 1..16 bytes"));
            }
            if let Some(fd) = n.fd {
                // SAFETY: F_GETFD only queries the descriptor table.
                if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                    return Err(invalid("net.fd", format!("{fd} is not an open descriptor")));
                }
            }
            if let Some(mac) = &n.mac {
                if parse_mac(mac).is_none() {
                    return Err(invalid(
                        "net.mac",
                        format!("`{mac}` is not aa:bb:cc:dd:ee:ff"),
                    ));
                }
            }
        }
        let mut tags = std::collections::HashSet::new();
        for f in &self.fs {
            if f.tag.is_empty()
                || f.tag.len() > crate::devices::virtio::fs::TAG_LEN
                || f.tag.contains('\0')
            {
                return Err(invalid("fs.tag", "must be 1..=36 bytes without NUL"));
            }
            if !tags.insert(&f.tag) {
                return Err(invalid("fs.tag", format!("`{}` is used twice", f.tag)));
            }
            if f.socket.as_os_str().is_empty() {
                return Err(invalid("fs.socket", "empty path"));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for v in &self.vfio {
            let dir = crate::vfio::resolve_device(v, std::path::Path::new("/sys"))
                .and_then(|dir| crate::vfio::check_assignable(&dir).map(|_| dir))
                .map_err(|e| invalid("vfio", e.to_string()))?;
            if !seen.insert(std::fs::canonicalize(&dir).unwrap_or(dir)) {
                return Err(invalid("vfio", format!("{v} is listed twice")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn kernel_file(dir: &tempfile::TempDir) -> PathBuf {
        let p = dir.path().join("kernel");
        std::fs::write(&p, b"x").unwrap();
        p
    }

    #[test]
    fn flags_override_file_fields() {
        let dir = tempfile::tempdir().unwrap();
        let k = kernel_file(&dir);
        let cfg_path = dir.path().join("vm.json");
        std::fs::write(
            &cfg_path,
            format!(
                r#"{{"kernel": "{}", "vcpus": 2, "memory_mib": 64, "serial": "off",
                    "vsock": {{"cid": 3, "uds": "/tmp/v.sock"}}}}"#,
                k.display()
            ),
        )
        .unwrap();
        let cli = Cli::parse_from([
            "eci-vmm",
            "--config",
            cfg_path.to_str().unwrap(),
            "--vcpus",
            "4",
            "--vsock-cid",
            "7",
            "--net",
            "tap0,mac=02:00:00:00:00:01",
        ]);
        let cfg = cli.into_config().unwrap();
        assert_eq!(cfg.vcpus, 4);
        assert_eq!(cfg.memory_mib, 64);
        assert_eq!(cfg.serial, SerialOutput::Off);
        assert_eq!(cfg.vsock.as_ref().unwrap().cid, 7);
        assert_eq!(
            cfg.vsock.as_ref().unwrap().uds,
            PathBuf::from("/tmp/v.sock")
        );
        assert_eq!(cfg.net[0].mac.as_deref(), Some("02:00:00:00:00:01"));
    }

    #[test]
    fn errors_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let k = kernel_file(&dir);
        let k = k.to_str().unwrap();
        let cases: &[(&[&str], &str)] = &[
            (&["--vcpus", "0"], "`vcpus`"),
            (&["--memory-mib", "1"], "`memory_mib`"),
            (&["--vsock-cid", "2", "--vsock-uds", "/x"], "`vsock.cid`"),
            (&["--vsock-cid", "5"], "`vsock_uds`"),
            (&["--block", "/nonexistent/disk"], "`block.path`"),
            (&["--net", "tap0,mac=zz"], "`net.mac`"),
            (&["--net", "tap0,fd=999"], "`net.fd`"),
            (
                &["--fs", "/a,tag=0123456789012345678901234567890123456"],
                "`fs.tag`",
            ),
            (&["--fs", "/a,tag=x", "--fs", "/b,tag=x"], "`fs.tag`"),
            (&["--vfio", "0000:00:1f.9"], "`vfio`"),
            (
                &["--vfio", "ff:1f.7"],
                "`vfio`: VFIO device ff:1f.7: /sys/bus/pci",
            ),
        ];
        for (args, field) in cases {
            let mut argv = vec!["eci-vmm", "--kernel", k];
            argv.extend_from_slice(args);
            let err = Cli::parse_from(argv).into_config().unwrap_err().to_string();
            assert!(err.contains(field), "{args:?}: {err}");
        }
        let err = Cli::parse_from(["eci-vmm"]).into_config().unwrap_err();
        assert!(err.to_string().contains("`kernel`"), "{err}");
    }

    #[test]
    fn unknown_json_field_is_rejected_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vm.json");
        std::fs::write(&p, r#"{"kernel": "/k", "vcpu": 2}"#).unwrap();
        let err = Cli::parse_from(["eci-vmm", "--config", p.to_str().unwrap()])
            .into_config()
            .unwrap_err();
        let msg = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(msg.contains("unknown field `vcpu`"), "{msg}");
    }

    #[test]
    fn block_and_net_flag_syntax() {
        let b: BlockConfig = "/d.img,ro".parse().unwrap();
        assert!(b.read_only);
        assert!("/d.img,rx".parse::<BlockConfig>().is_err());
        assert!(",ro".parse::<BlockConfig>().is_err());
        let n: NetConfig = "tap1".parse().unwrap();
        assert_eq!((n.mac, n.fd), (None, None));
        let n: NetConfig = "tap1,fd=7,mac=02:00:00:00:00:01".parse().unwrap();
        assert_eq!(n.fd, Some(7));
        assert!("tap1,fd=x".parse::<NetConfig>().is_err());
        assert!("tap1,foo=1".parse::<NetConfig>().is_err());
        let f: FsConfig = "/run/fs.sock,tag=eci".parse().unwrap();
        assert_eq!(
            (f.socket.to_str(), f.tag.as_str()),
            (Some("/run/fs.sock"), "eci")
        );
        assert!("/run/fs.sock".parse::<FsConfig>().is_err());
        assert!("/run/fs.sock,tog=x".parse::<FsConfig>().is_err());
        assert_eq!(
            parse_mac("02:aa:bb:cc:dd:0f"),
            Some([2, 0xaa, 0xbb, 0xcc, 0xdd, 0xf])
        );
        assert_eq!(parse_mac("02:aa:bb:cc:dd"), None);
    }
}
