//! The shim's TOML configuration and the runtime options that point at it.
//!
//! containerd hands the shim its runtime options in every create request: CRI's
//! `runtimeoptions.v1.Options` (`ConfigPath` in containerd's runtime config) or `ctr run
//! --runtime-config-path`. Without a path there the shim takes [`CONFIG_ENV`] (containerd passes
//! its environment to the shims it starts, so clients that cannot pass runtime options, such as
//! nerdctl, get a mode too), then [`DEFAULT_CONFIG_PATH`] when it exists, then built-in defaults.

use std::path::{Path, PathBuf};

use containerd_shim::protos::protobuf::{well_known_types::any::Any, CodedInputStream};
use serde::Deserialize;

/// Where the shim looks for its configuration when neither the runtime options nor
/// [`CONFIG_ENV`] name one.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/eci/shim.toml";
/// Environment variable naming the configuration file when the runtime options name none.
pub const CONFIG_ENV: &str = "ECI_SHIM_CONFIG";

/// Errors of loading the configuration; each names the field or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("runtime options: cannot decode {type_url}")]
    Options {
        type_url: String,
        source: containerd_shim::protos::protobuf::Error,
    },
    #[error("config file {path}: cannot read")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: field `{field}`: {reason}")]
    Invalid {
        path: PathBuf,
        field: &'static str,
        reason: String,
    },
}

/// Which hypervisor runs the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum HypervisorKind {
    /// Local mode: the agent runs on the host in fresh namespaces (container isolation only).
    #[serde(rename = "none")]
    None,
    /// A microVM per pod through `eci-vmm` (the default).
    #[serde(rename = "eci-vmm")]
    #[default]
    EciVmm,
}

/// Size of a pod's VM when neither annotations nor resource limits say otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PodSize {
    pub vcpus: u32,
    pub memory_mib: u32,
}

impl Default for PodSize {
    /// The smallest 1-vCPU size of the ECI size table.
    fn default() -> Self {
        Self {
            vcpus: 1,
            memory_mib: 2048,
        }
    }
}

fn default_agent_timeout_secs() -> u64 {
    60
}

/// The shim configuration file (`shim.toml`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShimConfig {
    pub hypervisor: HypervisorKind,
    /// Guest kernel (VM mode); default: `<prefix>/share/eci/vmlinux` beside the shim's prefix.
    pub kernel: Option<PathBuf>,
    /// Guest initramfs (VM mode); default: `<prefix>/share/eci/initramfs.cpio.zst`.
    pub initrd: Option<PathBuf>,
    /// Extra guest kernel command line (VM mode), e.g. `loglevel=7`.
    pub kernel_cmdline: Option<String>,
    /// `eci-agent` binary (local mode); default: next to the shim binary, then on PATH.
    pub agent_path: Option<PathBuf>,
    /// `eci-vmm` binary; default: next to the shim binary, then on PATH.
    pub vmm_path: Option<PathBuf>,
    /// `virtiofsd` binary; default: next to the shim binary, on PATH, /opt/eci-tools/bin.
    pub virtiofsd_path: Option<PathBuf>,
    /// How long a pod's agent may take to come up (VM boot included) before the create fails.
    pub agent_timeout_secs: u64,
    pub default_pod_size: PodSize,
    /// error, warn, info, debug or trace.
    pub log_level: Option<String>,
    /// The node's pool of passed-through devices (CDI names -> PCI addresses, and how guests
    /// drive each kind); default /etc/eci/vfio-devices.toml, absent means empty.
    pub vfio_pool: Option<PathBuf>,
}

impl Default for ShimConfig {
    fn default() -> Self {
        Self {
            hypervisor: HypervisorKind::default(),
            kernel: None,
            initrd: None,
            kernel_cmdline: None,
            agent_path: None,
            vmm_path: None,
            virtiofsd_path: None,
            agent_timeout_secs: default_agent_timeout_secs(),
            default_pod_size: PodSize::default(),
            log_level: None,
            vfio_pool: None,
        }
    }
}

impl ShimConfig {
    /// Parses `text` read from `path` (the path only names the file in errors).
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: ShimConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim().to_owned(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    /// Loads the configuration from `explicit` (the runtime options' path), else from the file
    /// [`CONFIG_ENV`] names, else from [`DEFAULT_CONFIG_PATH`] when it exists, else the defaults.
    /// A named file that cannot be read is an error.
    pub fn load(explicit: Option<&Path>) -> Result<Self, ConfigError> {
        let from_env = std::env::var_os(CONFIG_ENV).filter(|v| !v.is_empty());
        Self::load_from(
            explicit,
            from_env.as_deref().map(Path::new),
            Path::new(DEFAULT_CONFIG_PATH),
        )
    }

    fn load_from(
        explicit: Option<&Path>,
        from_env: Option<&Path>,
        default_path: &Path,
    ) -> Result<Self, ConfigError> {
        let path = match explicit.or(from_env) {
            Some(path) => path.to_owned(),
            None if default_path.exists() => default_path.to_owned(),
            None => return Ok(Self::default()),
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        Self::parse(&text, &path)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| ConfigError::Invalid {
            path: path.to_owned(),
            field,
            reason: reason.to_owned(),
        };
        if self.default_pod_size.vcpus == 0 {
            return Err(invalid("default_pod_size.vcpus", "must be at least 1"));
        }
        if self.agent_timeout_secs == 0 || self.agent_timeout_secs > 3600 {
            return Err(invalid("agent_timeout_secs", "must be 1..=3600"));
        }
        if let Some(cmdline) = &self.kernel_cmdline {
            if cmdline.contains(['\0', '\n']) {
                return Err(invalid("kernel_cmdline", "must be one line"));
            }
        }
        if self.default_pod_size.memory_mib < 64 {
            return Err(invalid(
                "default_pod_size.memory_mib",
                "must be at least 64",
            ));
        }
        if let Some(level) = &self.log_level {
            if level.parse::<log::LevelFilter>().is_err() {
                return Err(invalid(
                    "log_level",
                    "must be one of off, error, warn, info, debug, trace",
                ));
            }
        }
        for (field, value) in [
            ("kernel", &self.kernel),
            ("initrd", &self.initrd),
            ("agent_path", &self.agent_path),
            ("vmm_path", &self.vmm_path),
            ("virtiofsd_path", &self.virtiofsd_path),
        ] {
            if let Some(p) = value {
                if !p.is_absolute() {
                    return Err(invalid(field, "must be an absolute path"));
                }
            }
        }
        Ok(())
    }
}

/// The config path carried by containerd's runtime options, if any.
///
/// `runtimeoptions.v1.Options` is `{ string type_url = 1; string config_path = 2; string
/// config_body = 3; }`; containerd-shim-protos does not ship it, and three string fields do not
/// justify generated code.
pub fn config_path_from_options(options: Option<&Any>) -> Result<Option<PathBuf>, ConfigError> {
    let Some(any) = options else { return Ok(None) };
    if !any.type_url.ends_with("runtimeoptions.v1.Options") {
        // Other options (e.g. runc's) carry nothing for us.
        return Ok(None);
    }
    let decode_error = |source| ConfigError::Options {
        type_url: any.type_url.clone(),
        source,
    };
    let mut input = CodedInputStream::from_bytes(&any.value);
    let mut config_path = None;
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(decode_error)? {
        let (field, wire_type) = (tag >> 3, tag & 7);
        if field == 2 && wire_type == 2 {
            config_path = Some(input.read_string().map_err(decode_error)?);
        } else {
            let wire_type = containerd_shim::protos::protobuf::rt::WireType::new(wire_type)
                .ok_or_else(|| {
                    decode_error(containerd_shim::protos::protobuf::Error::from(
                        std::io::Error::other("bad wire type"),
                    ))
                })?;
            input.skip_field(wire_type).map_err(decode_error)?;
        }
    }
    Ok(config_path.filter(|p| !p.is_empty()).map(PathBuf::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_vm_mode() {
        let config = ShimConfig::parse("", Path::new("x.toml")).unwrap();
        assert_eq!(config.hypervisor, HypervisorKind::EciVmm);
        assert_eq!(config, ShimConfig::default());
        assert_eq!(
            config.default_pod_size,
            PodSize {
                vcpus: 1,
                memory_mib: 2048
            }
        );
        assert_eq!(config.agent_timeout_secs, 60);
    }

    #[test]
    fn parses_every_field() {
        let text = r#"
            hypervisor = "eci-vmm"
            kernel = "/opt/eci/vmlinux"
            initrd = "/opt/eci/initramfs.cpio"
            log_level = "debug"
            [default_pod_size]
            vcpus = 2
            memory_mib = 1024
        "#;
        let config = ShimConfig::parse(text, Path::new("x.toml")).unwrap();
        assert_eq!(config.hypervisor, HypervisorKind::EciVmm);
        assert_eq!(
            config.kernel.as_deref(),
            Some(Path::new("/opt/eci/vmlinux"))
        );
        assert_eq!(config.default_pod_size.memory_mib, 1024);
        assert_eq!(config.log_level.as_deref(), Some("debug"));
    }

    #[test]
    fn unknown_hypervisor_names_the_field() {
        let err = ShimConfig::parse("hypervisor = \"kvm\"", Path::new("/etc/eci/shim.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/etc/eci/shim.toml") && err.contains("hypervisor"),
            "{err}"
        );
    }

    #[test]
    fn invalid_values_name_the_field() {
        let err = ShimConfig::parse("[default_pod_size]\nvcpus = 0", Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("default_pod_size.vcpus"), "{err}");
        let err = ShimConfig::parse("kernel = \"vmlinux\"", Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`kernel`") && err.contains("absolute"),
            "{err}"
        );
        let err = ShimConfig::parse("log_level = \"loud\"", Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("log_level"), "{err}");
        let err = ShimConfig::parse("hypervisr = \"none\"", Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("hypervisr"), "{err}");
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let err = ShimConfig::load(Some(Path::new("/nonexistent/eci.toml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/eci.toml"), "{err}");
    }

    #[test]
    fn options_path_then_environment_then_default_file_then_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, level: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, format!("log_level = \"{level}\"\n")).unwrap();
            path
        };
        let options = write("options.toml", "error");
        let env = write("env.toml", "warn");
        let default = write("default.toml", "debug");
        let level = |explicit: Option<&Path>, env: Option<&Path>, default: &Path| {
            ShimConfig::load_from(explicit, env, default)
                .unwrap()
                .log_level
        };
        assert_eq!(
            level(Some(&options), Some(&env), &default).as_deref(),
            Some("error")
        );
        assert_eq!(level(None, Some(&env), &default).as_deref(), Some("warn"));
        assert_eq!(level(None, None, &default).as_deref(), Some("debug"));
        let absent = dir.path().join("absent.toml");
        assert_eq!(level(None, None, &absent), None);
        // A file the environment names must exist, as one the options name.
        let err = ShimConfig::load_from(None, Some(&absent), &default)
            .unwrap_err()
            .to_string();
        assert!(err.contains("absent.toml"), "{err}");
    }

    #[test]
    fn reads_config_path_from_runtime_options() {
        // runtimeoptions.v1.Options { type_url: "x", config_path: "/etc/eci/a.toml" }
        let mut value = vec![0x0a, 1, b'x', 0x12, 15];
        value.extend_from_slice(b"/etc/eci/a.toml");
        let any = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value,
            ..Default::default()
        };
        assert_eq!(
            config_path_from_options(Some(&any)).unwrap(),
            Some(PathBuf::from("/etc/eci/a.toml"))
        );
        let runc = Any {
            type_url: "containerd.runc.v1.Options".into(),
            value: vec![1, 2, 3],
            ..Default::default()
        };
        assert_eq!(config_path_from_options(Some(&runc)).unwrap(), None);
        assert_eq!(config_path_from_options(None).unwrap(), None);
    }
}
