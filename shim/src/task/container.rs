//! A container of the pod: its spec as the host sees it, its processes, its host resources.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use eci_protocol::annotations::VOLUME_SOURCE_SCHEME;
use oci_spec::runtime::Spec;

use super::process::Process;
use crate::{error::ShimError, hooks::HostHooks, sandbox::Sandbox};

/// CRI's annotations that group containers into pods.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// The pod a container belongs to: its CRI sandbox, else a pod of its own.
pub fn pod_id_of(container_id: &str, annotations: Option<&HashMap<String, String>>) -> String {
    let annotation = |key| annotations.and_then(|a| a.get(key)).map(String::as_str);
    match (annotation(CONTAINER_TYPE), annotation(SANDBOX_ID)) {
        (Some("container"), Some(sandbox)) if !sandbox.is_empty() => sandbox.to_owned(),
        _ => container_id.to_owned(),
    }
}

/// Reads `<bundle>/config.json`, naming the file and the reason when it is bad.
pub fn load_spec(bundle: &Path) -> Result<Spec, ShimError> {
    let path = bundle.join("config.json");
    Spec::load(&path)
        .map_err(|e| ShimError::InvalidArgument(format!("OCI spec {}: {e}", path.display())))
}

/// Puts back the `eci-volume://<name>` mount sources that CRI cleaned into `eci-volume:/<name>`
/// (containerd's CRI runs host paths through filepath.Clean), so that the agent maps them to
/// pod volumes; returns how many it changed. Nothing else is touched: the agent owns the
/// mapping of pod volumes and Kubernetes emptyDir paths, and the host never mounts them.
pub fn restore_volume_sources(spec: &mut Spec) -> usize {
    let Some(mounts) = spec.mounts_mut() else {
        return 0;
    };
    let cleaned_scheme = VOLUME_SOURCE_SCHEME.trim_end_matches('/');
    let mut changed = 0;
    for m in mounts.iter_mut() {
        let Some(source) = m.source().as_ref().and_then(|s| s.to_str()) else {
            continue;
        };
        if source.starts_with(VOLUME_SOURCE_SCHEME) {
            continue;
        }
        if let Some(name) = source.strip_prefix(cleaned_scheme) {
            let restored = format!("{VOLUME_SOURCE_SCHEME}{}", name.trim_start_matches('/'));
            m.set_source(Some(PathBuf::from(restored)));
            changed += 1;
        }
    }
    changed
}

pub struct Container {
    pub id: String,
    /// The init process's pid as the agent reports it (in the guest, or the agent's PID
    /// namespace in local mode).
    pub agent_pid: u32,
    pub bundle: String,
    pub sandbox: Arc<Sandbox>,
    pub hooks: HostHooks,
    pub annotations: Option<HashMap<String, String>>,
    pub oci_version: String,
    /// `linux.cgroupsPath` as sent to the agent.
    pub cgroups_path: Option<String>,
    /// `shared/<id>` when the shim mounted the rootfs there.
    pub mounted_dir: Option<PathBuf>,
    pub init: Arc<Process>,
    pub execs: Mutex<HashMap<String, Arc<Process>>>,
}

impl Container {
    pub fn process(&self, exec_id: &str) -> Result<Arc<Process>, ShimError> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs
            .lock()
            .expect("execs lock")
            .get(exec_id)
            .cloned()
            .ok_or_else(|| {
                ShimError::NotFound(format!(
                    "exec {exec_id} of container {}: not found",
                    self.id
                ))
            })
    }

    pub fn state<'a>(&'a self, status: &'a str, pid: u32) -> crate::hooks::State<'a> {
        crate::hooks::State {
            oci_version: &self.oci_version,
            id: &self.id,
            status,
            pid,
            bundle: &self.bundle,
            annotations: self.annotations.as_ref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cri_containers_join_their_sandbox_and_others_get_their_own_pod() {
        let mut a = HashMap::new();
        a.insert(CONTAINER_TYPE.to_owned(), "container".to_owned());
        a.insert(SANDBOX_ID.to_owned(), "pod1".to_owned());
        assert_eq!(pod_id_of("c1", Some(&a)), "pod1");
        a.insert(CONTAINER_TYPE.to_owned(), "sandbox".to_owned());
        assert_eq!(pod_id_of("pod1", Some(&a)), "pod1");
        assert_eq!(pod_id_of("demo", None), "demo");
    }

    #[test]
    fn cri_cleaned_volume_sources_are_restored_and_others_left_alone() {
        let mut spec = Spec::default();
        let mount = |source: &str| {
            oci_spec::runtime::MountBuilder::default()
                .destination("/d")
                .source(source)
                .build()
                .unwrap()
        };
        spec.set_mounts(Some(vec![
            mount("eci-volume:/shared"),
            mount("eci-volume://cfg"),
            mount("/var/lib/kubelet/pods/u/volumes/kubernetes.io~empty-dir/cache"),
            mount("tmpfs"),
        ]));
        assert_eq!(restore_volume_sources(&mut spec), 1);
        let sources: Vec<String> = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.source().as_ref().unwrap().display().to_string())
            .collect();
        assert_eq!(
            sources,
            [
                "eci-volume://shared",
                "eci-volume://cfg",
                "/var/lib/kubelet/pods/u/volumes/kubernetes.io~empty-dir/cache",
                "tmpfs"
            ]
        );
    }

    #[test]
    fn bad_spec_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{\"ociVersion\": 5}").unwrap();
        let err = load_spec(dir.path()).err().unwrap().to_string();
        assert!(err.contains("config.json"), "{err}");
    }
}
