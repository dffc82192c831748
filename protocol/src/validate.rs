//! Request validation shared by the agent (which must check every request) and the shim (which
//! can fail early). Every error names the offending field and says why it was refused.

use crate::agent::{
    CreateContainerRequest, ExecProcessRequest, ProcessRequest, ResizeTtyRequest,
    SignalProcessRequest, StdioConfig, UpdateContainerRequest,
};
use crate::stream::{StreamHeader, StreamKind};
use oci_spec::runtime::{LinuxResources, Process, Spec};

/// Longest container or exec id accepted. containerd ids are 64 hex digits; the agent also uses
/// ids in file names and unix socket paths, which bounds them.
pub const MAX_ID_LEN: usize = 128;

/// Largest OCI JSON document accepted (runtime spec, process, resources).
pub const MAX_JSON_LEN: usize = 1 << 20;

/// Highest signal number accepted (SIGRTMAX on Linux).
pub const MAX_SIGNAL: u32 = 64;

/// A request field that was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct ValidationError {
    /// Dotted path of the field, e.g. `container_id` or `oci_spec_json.process.args`.
    pub field: String,
    /// Why it was refused.
    pub reason: String,
}

impl ValidationError {
    /// An error for `field` with `reason`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

type Result<T = ()> = std::result::Result<T, ValidationError>;

mod devices;
pub mod network;
mod sandbox;
pub use devices::{container_devices, pci_address, pci_devices, VFIO_SOURCE_PREFIX};
pub use sandbox::{absolute_path, hostname, setup_sandbox, storage, SandboxSetup};

/// Checks a required id: non-empty, at most [`MAX_ID_LEN`] bytes, only `[A-Za-z0-9_.+-]`, and not
/// `.` or `..` (ids become file names).
pub fn id(field: &str, value: &str) -> Result {
    if value.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    optional_id(field, value)
}

/// Like [`id`], but the empty string is allowed (it names a container's init process).
pub fn optional_id(field: &str, value: &str) -> Result {
    if value.len() > MAX_ID_LEN {
        return Err(ValidationError::new(
            field,
            format!("longer than {MAX_ID_LEN} bytes"),
        ));
    }
    if value == "." || value == ".." {
        return Err(ValidationError::new(field, "must not be \".\" or \"..\""));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '+' | '-')))
    {
        return Err(ValidationError::new(
            field,
            format!("character {c:?} not allowed (use A-Z a-z 0-9 _ . + -)"),
        ));
    }
    Ok(())
}

fn json<T: serde::de::DeserializeOwned>(field: &str, bytes: &[u8]) -> Result<T> {
    if bytes.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if bytes.len() > MAX_JSON_LEN {
        return Err(ValidationError::new(
            field,
            format!("larger than {MAX_JSON_LEN} bytes"),
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| ValidationError::new(field, e.to_string()))
}

/// Checks an OCI process: it has a non-empty `args` and an absolute `cwd`.
pub fn process(field: &str, process: &Process) -> Result {
    match process.args() {
        Some(args) if !args.is_empty() && !args[0].is_empty() => {}
        _ => {
            return Err(ValidationError::new(
                format!("{field}.args"),
                "must name the program to run",
            ))
        }
    }
    if !process.cwd().is_absolute() {
        return Err(ValidationError::new(
            format!("{field}.cwd"),
            "must be an absolute path",
        ));
    }
    Ok(())
}

/// Parses and checks an OCI runtime spec: version 1.x, a `process` and a `root`.
pub fn spec(field: &str, bytes: &[u8]) -> Result<Spec> {
    let spec: Spec = json(field, bytes)?;
    if !spec.version().starts_with("1.") {
        return Err(ValidationError::new(
            format!("{field}.ociVersion"),
            format!("{:?} is not 1.x", spec.version()),
        ));
    }
    let Some(proc_) = spec.process() else {
        return Err(ValidationError::new(
            format!("{field}.process"),
            "is required",
        ));
    };
    process(&format!("{field}.process"), proc_)?;
    match spec.root() {
        Some(root) if !root.path().as_os_str().is_empty() => {}
        _ => {
            return Err(ValidationError::new(
                format!("{field}.root.path"),
                "is required",
            ))
        }
    }
    Ok(spec)
}

/// Parses and checks an OCI process document.
pub fn process_json(field: &str, bytes: &[u8]) -> Result<Process> {
    let p: Process = json(field, bytes)?;
    process(field, &p)?;
    Ok(p)
}

/// Parses an OCI LinuxResources document.
pub fn resources_json(field: &str, bytes: &[u8]) -> Result<LinuxResources> {
    json(field, bytes)
}

/// Checks a stdio configuration: a terminal process has no separate stderr.
pub fn stdio(field: &str, stdio: &StdioConfig) -> Result {
    if stdio.terminal && stdio.stderr {
        return Err(ValidationError::new(
            format!("{field}.stderr"),
            "must be false with terminal (the tty carries stdout and stderr)",
        ));
    }
    Ok(())
}

/// Checks a CreateContainer request and returns its parsed spec and `io.eci.*` annotations.
pub fn create_container(
    req: &CreateContainerRequest,
) -> Result<(Spec, crate::annotations::PodAnnotations)> {
    create_container_in(req, false)
}

/// [`create_container`] for an agent whose own namespaces are the pod's (PID 1 of the pod's
/// VM): `net.*` sysctls of a container in the agent's network namespace are the pod's, which
/// the agent applies itself, rather than the host's.
pub fn create_container_in(
    req: &CreateContainerRequest,
    pod_vm: bool,
) -> Result<(Spec, crate::annotations::PodAnnotations)> {
    id("container_id", &req.container_id)?;
    optional_id("sandbox_id", &req.sandbox_id)?;
    if !req.bundle.is_empty() && !req.bundle.starts_with('/') {
        return Err(ValidationError::new("bundle", "must be an absolute path"));
    }
    stdio("stdio", req.stdio.get_or_default())?;
    container_devices("devices", &req.devices)?;
    let spec = spec("oci_spec_json", &req.oci_spec_json)?;
    let root = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .unwrap_or_default();
    if root.is_relative() && req.bundle.is_empty() {
        return Err(ValidationError::new(
            "bundle",
            "is required when oci_spec_json.root.path is relative",
        ));
    }
    spec_sysctls("oci_spec_json.linux.sysctl", &spec, pod_vm)?;
    let annotations = match spec.annotations() {
        Some(a) => crate::annotations::parse(a)?,
        None => Default::default(),
    };
    Ok((spec, annotations))
}

/// Sysctls that belong to a kernel namespace other than net (all `net.*` keys are in the
/// network namespace): IPC, UTS and mqueue ones, as runc and Kubernetes list them.
const IPC_SYSCTLS: &[&str] = &[
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// The namespace a sysctl key lives in, None when it is machine-wide.
pub fn sysctl_namespace(key: &str) -> Option<&'static str> {
    let key = key.replace('/', ".");
    if key.starts_with("net.") {
        Some("network")
    } else if IPC_SYSCTLS.contains(&key.as_str()) || key.starts_with("fs.mqueue.") {
        Some("ipc")
    } else if key == "kernel.domainname" || key == "kernel.hostname" {
        Some("uts")
    } else {
        None
    }
}

/// Checks one sysctl: a namespaced key (see [`sysctl_namespace`]) with a sane value.
pub fn sysctl(field: &str, key: &str, value: &str) -> Result {
    let named = format!("{field}.{key:?}");
    if key.is_empty()
        || key.len() > 256
        || key.contains("..")
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'/' | b'_' | b'-'))
    {
        return Err(ValidationError::new(named, "is not a sysctl key"));
    }
    if sysctl_namespace(key).is_none() {
        return Err(ValidationError::new(
            named,
            format!(
                "{key} is not a namespaced sysctl, it would change the whole machine \
                 (allowed: net.*, kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*, \
                 kernel.domainname)"
            ),
        ));
    }
    if value.len() > 4096 || value.contains(['\0', '\n']) {
        return Err(ValidationError::new(
            named,
            "value must be one line of at most 4096 bytes",
        ));
    }
    Ok(())
}

/// Checks the spec's `linux.sysctl`: namespaced keys whose namespace the container has (in a
/// pod VM, `pod_vm`, the guest's network namespace is the pod's).
fn spec_sysctls(field: &str, spec: &Spec, pod_vm: bool) -> Result {
    use oci_spec::runtime::LinuxNamespaceType;
    let Some(linux) = spec.linux() else {
        return Ok(());
    };
    let Some(sysctls) = linux.sysctl() else {
        return Ok(());
    };
    let has = |t: LinuxNamespaceType| {
        linux
            .namespaces()
            .as_ref()
            .is_some_and(|ns| ns.iter().any(|n| n.typ() == t))
    };
    let mut keys: Vec<&String> = sysctls.keys().collect();
    keys.sort();
    for key in keys {
        sysctl(field, key, &sysctls[key])?;
        let named = format!("{field}.{key:?}");
        let (present, what) = match sysctl_namespace(key) {
            Some("network") => (pod_vm || has(LinuxNamespaceType::Network), "network"),
            Some("ipc") => (has(LinuxNamespaceType::Ipc), "ipc"),
            _ => (has(LinuxNamespaceType::Uts), "uts"),
        };
        if !present {
            return Err(ValidationError::new(
                named,
                format!(
                    "needs a {what} namespace of the container's own (it would change the host's)"
                ),
            ));
        }
        if key.replace('/', ".") == "kernel.hostname" {
            return Err(ValidationError::new(
                named,
                "set the spec's hostname field instead",
            ));
        }
    }
    Ok(())
}

/// Checks an ExecProcess request and returns its parsed process.
pub fn exec_process(req: &ExecProcessRequest) -> Result<Process> {
    id("container_id", &req.container_id)?;
    id("exec_id", &req.exec_id)?;
    stdio("stdio", req.stdio.get_or_default())?;
    process_json("process_json", &req.process_json)
}

/// Checks a request that addresses a process (`exec_id` "" is the init process).
pub fn process_request(req: &ProcessRequest) -> Result {
    id("container_id", &req.container_id)?;
    optional_id("exec_id", &req.exec_id)
}

/// Checks a SignalProcess request.
pub fn signal_process(req: &SignalProcessRequest) -> Result {
    id("container_id", &req.container_id)?;
    optional_id("exec_id", &req.exec_id)?;
    if req.signal == 0 || req.signal > MAX_SIGNAL {
        return Err(ValidationError::new(
            "signal",
            format!("{} is not a signal number (1..={MAX_SIGNAL})", req.signal),
        ));
    }
    Ok(())
}

/// Checks a ResizeTty request.
pub fn resize_tty(req: &ResizeTtyRequest) -> Result {
    id("container_id", &req.container_id)?;
    optional_id("exec_id", &req.exec_id)?;
    for (field, v) in [("rows", req.rows), ("cols", req.cols)] {
        if v == 0 || v > u32::from(u16::MAX) {
            return Err(ValidationError::new(
                field,
                format!("{v} is not in 1..=65535"),
            ));
        }
    }
    Ok(())
}

/// Checks an UpdateContainer request and returns its parsed resources.
pub fn update_container(req: &UpdateContainerRequest) -> Result<LinuxResources> {
    id("container_id", &req.container_id)?;
    resources_json("resources_json", &req.resources_json)
}

/// Checks a stream header: a stdio stream names a process (valid ids, no port); a port
/// forward names a port and no process.
pub fn stream_header(h: &StreamHeader) -> Result {
    match h.kind.enum_value() {
        Ok(StreamKind::STDIN | StreamKind::STDOUT | StreamKind::STDERR) => {
            id("container_id", &h.container_id)?;
            optional_id("exec_id", &h.exec_id)?;
            if h.port != 0 {
                return Err(ValidationError::new(
                    "port",
                    format!(
                        "{} given for a stdio stream (only PORT_FORWARD has one)",
                        h.port
                    ),
                ));
            }
            Ok(())
        }
        Ok(StreamKind::PORT_FORWARD) => {
            for (field, value) in [("container_id", &h.container_id), ("exec_id", &h.exec_id)] {
                if !value.is_empty() {
                    return Err(ValidationError::new(
                        field,
                        "must be empty for PORT_FORWARD (the pod's network is the guest's)",
                    ));
                }
            }
            if h.port == 0 || h.port > u32::from(u16::MAX) {
                return Err(ValidationError::new(
                    "port",
                    format!("{} is not in 1..=65535", h.port),
                ));
            }
            Ok(())
        }
        _ => Err(ValidationError::new(
            "kind",
            format!(
                "{} is not STDIN, STDOUT, STDERR or PORT_FORWARD",
                h.kind.value()
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal_spec() -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["/bin/true"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "root": {"path": "rootfs"}
        })
    }

    fn create(spec: &serde_json::Value) -> CreateContainerRequest {
        CreateContainerRequest {
            container_id: "c1".into(),
            oci_spec_json: serde_json::to_vec(spec).unwrap(),
            bundle: "/run/bundle".into(),
            ..Default::default()
        }
    }

    #[test]
    fn ids_accept_containerd_style_and_refuse_unsafe() {
        assert!(id("container_id", &"a".repeat(64)).is_ok());
        assert!(id("container_id", "web-1_x.y+z").is_ok());
        let e = id("container_id", "").unwrap_err();
        assert_eq!(e.field, "container_id");
        assert!(e.to_string().contains("empty"), "{e}");
        for bad in ["..", ".", "a/b", "a b", "a\0b", "é"] {
            assert!(id("container_id", bad).is_err(), "{bad:?} accepted");
        }
        assert!(id("container_id", &"a".repeat(MAX_ID_LEN + 1)).is_err());
        assert!(optional_id("exec_id", "").is_ok());
    }

    #[test]
    fn create_accepts_minimal_spec() {
        let (spec, _) = create_container(&create(&minimal_spec())).unwrap();
        assert_eq!(
            spec.process().as_ref().unwrap().args().as_ref().unwrap()[0],
            "/bin/true"
        );
    }

    #[test]
    fn create_names_the_broken_field() {
        let mut req = create(&minimal_spec());
        req.oci_spec_json = b"{not json".to_vec();
        assert_eq!(create_container(&req).unwrap_err().field, "oci_spec_json");

        let mut s = minimal_spec();
        s["process"]["args"] = serde_json::json!([]);
        assert_eq!(
            create_container(&create(&s)).unwrap_err().field,
            "oci_spec_json.process.args"
        );

        let mut s = minimal_spec();
        s["process"]["cwd"] = "relative".into();
        assert_eq!(
            create_container(&create(&s)).unwrap_err().field,
            "oci_spec_json.process.cwd"
        );

        let mut s = minimal_spec();
        s.as_object_mut().unwrap().remove("root");
        assert_eq!(
            create_container(&create(&s)).unwrap_err().field,
            "oci_spec_json.root.path"
        );

        let mut s = minimal_spec();
        s["ociVersion"] = "0.9".into();
        assert_eq!(
            create_container(&create(&s)).unwrap_err().field,
            "oci_spec_json.ociVersion"
        );

        let mut req = create(&minimal_spec());
        req.bundle = String::new();
        assert_eq!(create_container(&req).unwrap_err().field, "bundle");

        let mut req = create(&minimal_spec());
        req.bundle = "relative/bundle".into();
        assert_eq!(create_container(&req).unwrap_err().field, "bundle");

        let mut req = create(&minimal_spec());
        req.container_id = "../etc".into();
        assert_eq!(create_container(&req).unwrap_err().field, "container_id");

        let mut req = create(&minimal_spec());
        req.stdio.mut_or_insert_default().terminal = true;
        req.stdio.mut_or_insert_default().stderr = true;
        assert_eq!(create_container(&req).unwrap_err().field, "stdio.stderr");
    }

    #[test]
    fn sysctls_must_be_namespaced() {
        let mut s = minimal_spec();
        s["linux"] = serde_json::json!({
            "namespaces": [{"type": "network"}, {"type": "ipc"}],
            "sysctl": {"net.ipv4.ip_forward": "1", "kernel.shmmax": "1000", "fs.mqueue.msg_max": "20"}
        });
        assert!(create_container(&create(&s)).is_ok());
        for key in ["kernel.panic", "vm.swappiness"] {
            s["linux"]["sysctl"] = serde_json::json!({ key: "1" });
            let e = create_container(&create(&s)).unwrap_err();
            assert!(e.field.contains(key), "{e}");
            assert!(e.to_string().contains("not a namespaced sysctl"), "{e}");
        }
        s["linux"]["namespaces"] = serde_json::json!([{"type": "ipc"}]);
        s["linux"]["sysctl"] = serde_json::json!({"net.ipv4.ip_forward": "1"});
        let e = create_container(&create(&s)).unwrap_err();
        assert!(e.to_string().contains("network namespace"), "{e}");
    }

    #[test]
    fn create_checks_annotations() {
        let mut s = minimal_spec();
        s["annotations"] = serde_json::json!({"io.eci.probe.liveness": "{bad"});
        let e = create_container(&create(&s)).unwrap_err();
        assert_eq!(e.field, "annotation io.eci.probe.liveness");
    }

    #[test]
    fn signal_and_resize_bounds() {
        let mut s = SignalProcessRequest {
            container_id: "c".into(),
            signal: 9,
            ..Default::default()
        };
        assert!(signal_process(&s).is_ok());
        s.signal = 0;
        assert_eq!(signal_process(&s).unwrap_err().field, "signal");
        s.signal = 65;
        assert_eq!(signal_process(&s).unwrap_err().field, "signal");

        let mut r = ResizeTtyRequest {
            container_id: "c".into(),
            rows: 24,
            cols: 80,
            ..Default::default()
        };
        assert!(resize_tty(&r).is_ok());
        r.cols = 70000;
        assert_eq!(resize_tty(&r).unwrap_err().field, "cols");
    }

    #[test]
    fn exec_requires_exec_id_and_process() {
        let mut e = ExecProcessRequest {
            container_id: "c".into(),
            exec_id: "".into(),
            process_json: br#"{"args":["ls"],"cwd":"/","user":{"uid":0,"gid":0}}"#.to_vec(),
            ..Default::default()
        };
        assert_eq!(exec_process(&e).unwrap_err().field, "exec_id");
        e.exec_id = "e1".into();
        assert!(exec_process(&e).is_ok());
        e.process_json = b"[]".to_vec();
        assert_eq!(exec_process(&e).unwrap_err().field, "process_json");
    }

    #[test]
    fn update_parses_resources() {
        let u = UpdateContainerRequest {
            container_id: "c".into(),
            resources_json: br#"{"memory":{"limit":1048576}}"#.to_vec(),
            ..Default::default()
        };
        let r = update_container(&u).unwrap();
        assert_eq!(r.memory().as_ref().unwrap().limit(), Some(1048576));
    }

    #[test]
    fn stream_header_kind_checked() {
        let mut h = StreamHeader {
            container_id: "c".into(),
            ..Default::default()
        };
        assert_eq!(stream_header(&h).unwrap_err().field, "kind");
        h.kind = StreamKind::STDOUT.into();
        assert!(stream_header(&h).is_ok());
        h.port = 80;
        assert_eq!(stream_header(&h).unwrap_err().field, "port");
    }

    #[test]
    fn port_forward_header_names_a_port_and_no_process() {
        let mut h = StreamHeader {
            kind: StreamKind::PORT_FORWARD.into(),
            port: 8080,
            ..Default::default()
        };
        assert!(stream_header(&h).is_ok());
        for port in [0, 65536] {
            h.port = port;
            assert_eq!(stream_header(&h).unwrap_err().field, "port");
        }
        h.port = 8080;
        h.container_id = "c".into();
        assert_eq!(stream_header(&h).unwrap_err().field, "container_id");
    }
}
