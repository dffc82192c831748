//! Group spec -> CRI configs: the pod sandbox (labels, volume annotations, sysctls, hostname,
//! DNS, log directory) and each container (image, command, env, mounts, resources, probe,
//! lifecycle and grace-period annotations). Pure functions plus the pod's host directory layout.
//!
//! Volumes are mounted from Kubernetes-style host directories
//! (`<data-dir>/pods/<group-id>/volumes/kubernetes.io~empty-dir/<name>`, for every volume kind),
//! because containerd's CRI stats and creates every mount's host path: an `eci-volume://<name>`
//! source would become a relative directory in containerd's working directory. The agent
//! (issue 6) maps such a path to the pod volume `<name>` declared by the sandbox's
//! `io.eci.volume.<name>` annotation (tmpfs emptyDir with its size, configFile, disk, NFS).
//! When containerd does not pass the `io.eci.*` annotations on (its runtime's
//! `pod_annotations`/`container_annotations`), the directory is a plain bind mount instead:
//! eci writes configFile items into it, so sharing and config files work either way.

use std::{
    collections::HashMap,
    io,
    path::{Component, Path, PathBuf},
};

use base64::Engine as _;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, DnsConfig, ImageSpec, KeyValue, LinuxContainerConfig,
    LinuxContainerResources, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, Mount, NamespaceMode, NamespaceOption, PodSandboxConfig,
    PodSandboxMetadata,
};

use crate::model::{Container, ContainerGroupSpec, ImageRegistryCredential, Volume};

use super::cri::PullAuth;

/// Label on every sandbox and container eci makes: the group id (reconcile finds them by it).
pub const LABEL_GROUP_ID: &str = "io.eci.group-id";
/// Label of the sandbox: the `eci serve` data dir that owns it (several servers may share one
/// containerd; each reconciles only its own sandboxes).
pub const LABEL_DATA_DIR: &str = "io.eci.data-dir";
/// Label of the sandbox: the group name.
pub const LABEL_GROUP_NAME: &str = "io.eci.group-name";
/// Label of a container: its name in the group spec.
pub const LABEL_CONTAINER_NAME: &str = "io.eci.container-name";
/// Label of a container: "true" for init containers.
pub const LABEL_INIT: &str = "io.eci.init";
/// Kubernetes-style namespace of every eci pod's metadata.
pub const POD_NAMESPACE: &str = "eci";
/// The pod's passed-through PCI devices (GPUs), as the shim reads them.
pub const VFIO_ANNOTATION: &str = "io.eci.vfio";

// The pod-feature annotations (issue 6), as the agent's parser names them.
pub use eci_protocol::annotations::{
    MEMORY_MIB as MEMORY_MIB_ANNOTATION, POST_START as LIFECYCLE_POST_START,
    PRE_STOP as LIFECYCLE_PRE_STOP, PROBE_LIVENESS, PROBE_READINESS, PROBE_STARTUP,
    TERMINATION_GRACE as GRACE_ANNOTATION, VCPUS as VCPUS_ANNOTATION,
    VOLUME_PREFIX as VOLUME_ANNOTATION_PREFIX,
};

const CPU_PERIOD_US: i64 = 100_000;
const GIB: f64 = (1u64 << 30) as f64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TranslateError {
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

/// Host directories of one group: `<data-dir>/pods/<group-id>/{logs,volumes}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLayout {
    data_dir: PathBuf,
    root: PathBuf,
}

impl PodLayout {
    pub fn new(data_dir: &Path, group_id: &str) -> Self {
        Self {
            data_dir: data_dir.to_path_buf(),
            root: data_dir.join("pods").join(group_id),
        }
    }

    /// The owning server's data dir (the [`LABEL_DATA_DIR`] value).
    pub fn data_dir_label(&self) -> String {
        self.data_dir.display().to_string()
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// CRI's log directory of the sandbox.
    pub fn log_dir(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// Where the volume's directory lives on the host. Every kind uses kubelet's emptyDir
    /// directory name, which the agent maps to the pod volume of the same name.
    pub fn volume_dir(&self, volume: &Volume) -> PathBuf {
        self.root
            .join("volumes")
            .join("kubernetes.io~empty-dir")
            .join(&volume.name)
    }

    /// Creates the log dir and every volume directory; writes configFile volumes' files.
    pub fn prepare(&self, spec: &ContainerGroupSpec) -> io::Result<()> {
        std::fs::create_dir_all(self.log_dir())?;
        for volume in &spec.volumes {
            let dir = self.volume_dir(volume);
            std::fs::create_dir_all(&dir)?;
            if let Some(config) = &volume.config_file {
                write_config_files(&dir, &config.items)?;
            } else {
                // Any container user may write an emptyDir (as Kubernetes makes it).
                set_mode(&dir, 0o777)?;
            }
        }
        Ok(())
    }

    /// Removes everything under the group's directory.
    pub fn remove(&self) -> io::Result<()> {
        match std::fs::remove_dir_all(&self.root) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

fn write_config_files(dir: &Path, items: &[crate::model::ConfigFileItem]) -> io::Result<()> {
    for (index, item) in items.iter().enumerate() {
        let relative = safe_relative(&item.path).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("items[{index}].path: must be relative without '..'"),
            )
        })?;
        let content = base64::engine::general_purpose::STANDARD
            .decode(&item.content)
            .map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("items[{index}].content: not base64: {e}"),
                )
            })?;
        let path = dir.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, content)?;
        set_mode(&path, item.mode.unwrap_or(0o644))?;
    }
    Ok(())
}

/// `path` as a relative path with only normal components, or `None`.
fn safe_relative(path: &str) -> Option<PathBuf> {
    let p = Path::new(path);
    let ok = !path.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    ok.then(|| p.to_path_buf())
}

/// The pod sandbox of a group.
pub fn sandbox_config(
    group_id: &str,
    spec: &ContainerGroupSpec,
    layout: &PodLayout,
) -> PodSandboxConfig {
    let mut annotations: HashMap<String, String> = spec
        .volumes
        .iter()
        .map(|v| {
            (
                format!("{VOLUME_ANNOTATION_PREFIX}{}", v.name),
                v.annotation_value().to_string(),
            )
        })
        .collect();
    annotations.insert(
        GRACE_ANNOTATION.into(),
        spec.termination_grace_period_seconds.to_string(),
    );
    // The group's size is its VM's (the shim sizes the pod VM from these; local mode ignores
    // them).
    annotations.insert(VCPUS_ANNOTATION.into(), spec.cpu.to_string());
    annotations.insert(
        MEMORY_MIB_ANNOTATION.into(),
        ((spec.memory * 1024.0).round() as u64).to_string(),
    );
    if !spec.gpu_devices.is_empty() {
        // The shim passes these through to the VM (shim/src/vfio.rs).
        annotations.insert(VFIO_ANNOTATION.into(), spec.gpu_devices.join(","));
    }
    let sysctls = spec
        .security_context
        .iter()
        .flat_map(|s| s.sysctls.iter())
        .map(|s| (s.name.clone(), s.value.clone()))
        .collect();
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: spec.name.clone(),
            uid: group_id.into(),
            namespace: POD_NAMESPACE.into(),
            attempt: 0,
        }),
        hostname: spec.name.clone(),
        log_directory: layout.log_dir().display().to_string(),
        // containerd writes it as the pod's resolv.conf (bound at every container's
        // /etc/resolv.conf); without it the pod gets a copy of the host's.
        dns_config: spec.dns_config.as_ref().map(|dns| DnsConfig {
            servers: dns.name_servers.clone(),
            searches: dns.search_domains.clone(),
            options: dns.options.clone(),
        }),
        labels: HashMap::from([
            (LABEL_GROUP_ID.into(), group_id.into()),
            (LABEL_GROUP_NAME.into(), spec.name.clone()),
            (LABEL_DATA_DIR.into(), layout.data_dir_label()),
        ]),
        annotations,
        linux: Some(LinuxPodSandboxConfig {
            sysctls,
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(namespace_options()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Kubernetes' defaults, which kubelet states explicitly (CRI's zero value would share the pod's
/// PID namespace): network and IPC of the pod, a PID namespace per container.
fn namespace_options() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// The relative CRI log path of a container instance (`<name>/<attempt>.log`).
pub fn log_path(container: &str, attempt: u32) -> String {
    format!("{container}/{attempt}.log")
}

/// Linux resources of a container: cpu as a CFS quota (and shares), memory as a limit.
pub fn container_resources(cpu: Option<f64>, memory_gib: Option<f64>) -> LinuxContainerResources {
    let mut resources = LinuxContainerResources::default();
    if let Some(cpu) = cpu.filter(|c| *c > 0.0) {
        resources.cpu_period = CPU_PERIOD_US;
        resources.cpu_quota = (cpu * CPU_PERIOD_US as f64).round() as i64;
        resources.cpu_shares = (cpu * 1024.0).round().max(2.0) as i64;
    }
    if let Some(memory) = memory_gib.filter(|m| *m > 0.0) {
        resources.memory_limit_in_bytes = (memory * GIB).round() as i64;
    }
    resources
}

/// The CRI config of one container instance (`attempt` counts its re-creations).
pub fn container_config(
    group_id: &str,
    spec: &ContainerGroupSpec,
    container: &Container,
    init: bool,
    attempt: u32,
    layout: &PodLayout,
) -> Result<ContainerConfig, TranslateError> {
    let kind = if init { "initContainers" } else { "containers" };
    let field = |rest: String| {
        let index = if init {
            spec.init_containers
                .iter()
                .position(|c| c.name == container.name)
        } else {
            spec.containers
                .iter()
                .position(|c| c.name == container.name)
        };
        format!("{kind}[{}].{rest}", index.unwrap_or(0))
    };
    let mut mounts = Vec::new();
    for (i, mount) in container.volume_mounts.iter().enumerate() {
        let volume = spec
            .volumes
            .iter()
            .find(|v| v.name == mount.name)
            .ok_or_else(|| TranslateError::Invalid {
                field: field(format!("volumeMounts[{i}].name")),
                reason: format!("no volume named {:?}", mount.name),
            })?;
        let mut host_path = layout.volume_dir(volume);
        if let Some(sub) = mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
            let sub = safe_relative(sub).ok_or_else(|| TranslateError::Invalid {
                field: field(format!("volumeMounts[{i}].subPath")),
                reason: "must be a relative path without '..'".into(),
            })?;
            host_path = host_path.join(sub);
        }
        mounts.push(Mount {
            container_path: mount.mount_path.clone(),
            host_path: host_path.display().to_string(),
            readonly: mount.read_only || volume.config_file.is_some(),
            ..Default::default()
        });
    }
    let mut annotations = HashMap::from([(
        GRACE_ANNOTATION.to_string(),
        spec.termination_grace_period_seconds.to_string(),
    )]);
    for (key, probe) in [
        (PROBE_LIVENESS, &container.liveness_probe),
        (PROBE_READINESS, &container.readiness_probe),
        (PROBE_STARTUP, &container.startup_probe),
    ] {
        if let Some(probe) = probe {
            annotations.insert(key.into(), json(probe));
        }
    }
    if let Some(lifecycle) = &container.lifecycle {
        if let Some(handler) = &lifecycle.post_start {
            annotations.insert(LIFECYCLE_POST_START.into(), json(handler));
        }
        if let Some(handler) = &lifecycle.pre_stop {
            annotations.insert(LIFECYCLE_PRE_STOP.into(), json(handler));
        }
    }
    Ok(ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: container.name.clone(),
            attempt,
        }),
        image: Some(ImageSpec {
            image: container.image.clone(),
            ..Default::default()
        }),
        command: container.commands.clone(),
        args: container.args.clone(),
        working_dir: container.working_dir.clone().unwrap_or_default(),
        envs: container
            .env
            .iter()
            .map(|e| KeyValue {
                key: e.key.clone(),
                value: e.value.clone(),
            })
            .collect(),
        mounts,
        labels: HashMap::from([
            (LABEL_GROUP_ID.into(), group_id.into()),
            (LABEL_CONTAINER_NAME.into(), container.name.clone()),
            (LABEL_INIT.into(), init.to_string()),
        ]),
        annotations,
        log_path: log_path(&container.name, attempt),
        stdin: container.stdin,
        stdin_once: false,
        tty: container.tty,
        linux: Some(LinuxContainerConfig {
            resources: Some(container_resources(container.cpu, container.memory)),
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(namespace_options()),
                ..Default::default()
            }),
        }),
        ..Default::default()
    })
}

/// Annotation JSON of a probe or lifecycle handler (plain data: serialising cannot fail).
fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// The registry host of an image reference (`docker.io` for short names).
pub fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first
        }
        _ => "docker.io",
    }
}

/// A full image reference for comparisons: registry, repository and tag (or digest).
/// `busybox` -> `docker.io/library/busybox:latest`.
pub fn normalise_image(image: &str) -> String {
    let registry = registry_of(image);
    let rest = if image.starts_with(&format!("{registry}/")) {
        &image[registry.len() + 1..]
    } else {
        image
    };
    let rest = if registry == "docker.io" && !rest.contains('/') {
        format!("library/{rest}")
    } else {
        rest.to_string()
    };
    let last = rest.rsplit('/').next().unwrap_or(&rest);
    let tagged = last.contains(':') || last.contains('@');
    if tagged {
        format!("{registry}/{rest}")
    } else {
        format!("{registry}/{rest}:latest")
    }
}

/// The credentials whose server is the image's registry (server given as host[:port], maybe
/// with a scheme or path, which are ignored).
pub fn auth_for(image: &str, credentials: &[ImageRegistryCredential]) -> Option<PullAuth> {
    let registry = registry_of(image);
    credentials
        .iter()
        .find(|c| {
            let server = c
                .server
                .trim_start_matches("https://")
                .trim_start_matches("http://");
            let server = server.split('/').next().unwrap_or(server);
            server == registry
                || (registry == "docker.io"
                    && matches!(server, "index.docker.io" | "registry-1.docker.io"))
        })
        .map(|c| PullAuth {
            // containerd's CRI parses the server address as a URL and compares its host with
            // the registry's; Docker Hub's host differs from "docker.io", so none there
            // (the credentials were matched to the image's registry above).
            server: if registry == "docker.io" {
                String::new()
            } else {
                format!("https://{registry}")
            },
            username: c.user_name.clone(),
            password: c.password.clone(),
        })
}

#[cfg(test)]
mod tests;
