//! The `io.eci.*` OCI annotations the agent acts on (issue 6 contracts), parsed and validated.
//!
//! Probes (`io.eci.probe.{liveness,readiness,startup}`) take the shape of a Kubernetes Probe,
//! lifecycle hooks (`io.eci.lifecycle.{post-start,pre-stop}`) that of a LifecycleHandler, both in
//! camelCase JSON with Kubernetes' defaults. Pod volumes (`io.eci.volume.<name>`) are emptyDir,
//! configFile, disk or nfs. Every error names the annotation and the field:
//! `invalid annotation io.eci.probe.liveness: httpGet.port: must be 1..65535`.
//!
//! Unknown JSON fields are ignored (Kubernetes objects carry more than the agent needs); unknown
//! `io.eci.*` keys are left to whoever owns them (the shim reads some).

use crate::validate::ValidationError;
use base64::Engine;
use serde::Deserialize;
use std::collections::HashMap;
use std::time::Duration;

/// Liveness probe annotation.
pub const PROBE_LIVENESS: &str = "io.eci.probe.liveness";
/// Readiness probe annotation.
pub const PROBE_READINESS: &str = "io.eci.probe.readiness";
/// Startup probe annotation.
pub const PROBE_STARTUP: &str = "io.eci.probe.startup";
/// postStart hook annotation.
pub const POST_START: &str = "io.eci.lifecycle.post-start";
/// preStop hook annotation.
pub const PRE_STOP: &str = "io.eci.lifecycle.pre-stop";
/// Grace period between the stop signal and SIGKILL, in seconds.
pub const TERMINATION_GRACE: &str = "io.eci.termination-grace-period-seconds";
/// Prefix of pod volume annotations; the rest of the key is the volume name.
pub const VOLUME_PREFIX: &str = "io.eci.volume.";
/// Container mount sources of this scheme name a pod volume: `eci-volume://<name>`.
pub const VOLUME_SOURCE_SCHEME: &str = "eci-volume://";
/// Pod size: vCPUs of the pod's VM (a number, fractions allowed: `0.5`), set by eci.
pub const VCPUS: &str = "io.eci.vcpus";
/// Pod size: memory of the pod in MiB (the VM gets a fixed overhead on top), set by eci.
pub const MEMORY_MIB: &str = "io.eci.memory-mib";
/// VM mode: a disk volume's device as the guest names it, followed by the virtio-blk serial the
/// shim gave it (udev's `/dev/disk/by-id/virtio-<serial>`; the agent finds the device through
/// `/sys/block/*/serial`, the guest has no udev).
pub const GUEST_DISK_BY_SERIAL: &str = "/dev/disk/by-id/virtio-";

/// Grace period when no annotation says otherwise (Kubernetes' default).
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// Largest accepted grace period, timeout or delay: one day.
const MAX_SECONDS: i64 = 86_400;
/// Most probe/hook command arguments accepted.
const MAX_ARGS: usize = 256;
/// Largest configFile item (decoded).
pub const MAX_CONFIG_FILE_BYTES: usize = 1 << 20;

/// An annotation that was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid annotation {annotation}: {field}{sep}{reason}", sep = if field.is_empty() { "" } else { ": " })]
pub struct AnnotationError {
    /// The annotation key, e.g. `io.eci.probe.liveness`.
    pub annotation: String,
    /// Dotted path inside its JSON value, e.g. `httpGet.port`; empty for the value itself.
    pub field: String,
    /// Why.
    pub reason: String,
}

impl AnnotationError {
    fn new(annotation: &str, field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            annotation: annotation.to_string(),
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<AnnotationError> for ValidationError {
    fn from(e: AnnotationError) -> Self {
        let reason = if e.field.is_empty() {
            e.reason
        } else {
            format!("{}: {}", e.field, e.reason)
        };
        ValidationError::new(format!("annotation {}", e.annotation), reason)
    }
}

type Result<T> = std::result::Result<T, AnnotationError>;

/// Which probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKindName {
    /// `io.eci.probe.liveness`.
    Liveness,
    /// `io.eci.probe.readiness`.
    Readiness,
    /// `io.eci.probe.startup`.
    Startup,
}

/// What a probe or hook does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handler {
    /// Run a command in the container; exit status 0 is success.
    Exec {
        /// argv.
        command: Vec<String>,
    },
    /// HTTP GET; status 200..=399 is success.
    HttpGet(HttpGet),
    /// TCP connect; established is success.
    TcpSocket {
        /// Host to connect to; None means the pod IP (127.0.0.1 in the container's netns).
        host: Option<String>,
        /// Port.
        port: u16,
    },
}

/// An HTTP GET action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpGet {
    /// Host to connect to; None means the pod IP (127.0.0.1 in the container's netns).
    pub host: Option<String>,
    /// Port.
    pub port: u16,
    /// Request path, starting with `/`.
    pub path: String,
    /// Extra request headers (name, value).
    pub headers: Vec<(String, String)>,
}

/// A probe with Kubernetes' defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// The check.
    pub handler: Handler,
    /// Wait before the first check.
    pub initial_delay: Duration,
    /// Between checks.
    pub period: Duration,
    /// Per check.
    pub timeout: Duration,
    /// Consecutive successes that make the result SUCCESS.
    pub success_threshold: u32,
    /// Consecutive failures that make the result FAILURE.
    pub failure_threshold: u32,
    /// Grace period of the kill this probe triggers (liveness and startup only), instead of
    /// the container's.
    pub termination_grace: Option<Duration>,
}

/// A pod volume of an `io.eci.volume.<name>` annotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Volume {
    /// Empty directory, on the agent's disk or (medium "Memory") a tmpfs.
    EmptyDir {
        /// tmpfs instead of a directory.
        memory: bool,
        /// Size limit in bytes (tmpfs `size=`), None for none.
        size_limit: Option<u64>,
    },
    /// Read-only directory of the given files.
    ConfigFile {
        /// The files.
        items: Vec<ConfigItem>,
    },
    /// A block device or image file with a filesystem.
    Disk {
        /// Device path or host path of an image file (loop-mounted).
        device: String,
        /// Filesystem type.
        fs_type: String,
        /// Mount read-only.
        read_only: bool,
    },
    /// An NFS export.
    Nfs {
        /// Server host name or IP address.
        server: String,
        /// Exported path.
        path: String,
        /// Mount read-only.
        read_only: bool,
    },
}

/// One configFile item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigItem {
    /// Relative path inside the volume (no `..`, not absolute).
    pub path: String,
    /// Decoded content.
    pub content: Vec<u8>,
    /// Permission bits (default 0644).
    pub mode: u32,
}

/// Everything the agent takes from one container's annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodAnnotations {
    /// io.eci.probe.liveness.
    pub liveness: Option<Probe>,
    /// io.eci.probe.readiness.
    pub readiness: Option<Probe>,
    /// io.eci.probe.startup.
    pub startup: Option<Probe>,
    /// io.eci.lifecycle.post-start.
    pub post_start: Option<Handler>,
    /// io.eci.lifecycle.pre-stop.
    pub pre_stop: Option<Handler>,
    /// io.eci.termination-grace-period-seconds.
    pub grace_period: Option<Duration>,
    /// io.eci.volume.* by name (sorted).
    pub volumes: Vec<(String, Volume)>,
}

impl PodAnnotations {
    /// The grace period, or the default.
    pub fn grace(&self) -> Duration {
        self.grace_period.unwrap_or(DEFAULT_GRACE)
    }
}

// ---- raw JSON shapes ----

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawExec {
    command: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawPort {
    Number(i64),
    Name(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawHeader {
    name: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawHttpGet {
    host: Option<String>,
    port: Option<RawPort>,
    path: Option<String>,
    scheme: Option<String>,
    http_headers: Option<Vec<RawHeader>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawTcp {
    host: Option<String>,
    port: Option<RawPort>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawHandler {
    exec: Option<RawExec>,
    http_get: Option<RawHttpGet>,
    tcp_socket: Option<RawTcp>,
    grpc: Option<serde_json::Value>,
    sleep: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawProbe {
    #[serde(flatten)]
    handler: RawHandler,
    initial_delay_seconds: Option<i64>,
    period_seconds: Option<i64>,
    timeout_seconds: Option<i64>,
    success_threshold: Option<i64>,
    failure_threshold: Option<i64>,
    termination_grace_period_seconds: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEmptyDir {
    medium: Option<String>,
    size_limit: Option<RawQuantity>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawQuantity {
    Number(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawItem {
    path: String,
    content: String,
    mode: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConfigFile {
    items: Vec<RawItem>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDisk {
    device: String,
    fs_type: Option<String>,
    #[serde(default)]
    read_only: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawNfs {
    server: String,
    path: String,
    #[serde(default)]
    read_only: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawVolume {
    empty_dir: Option<RawEmptyDir>,
    config_file: Option<RawConfigFile>,
    disk: Option<RawDisk>,
    nfs: Option<RawNfs>,
}

/// Decodes `value` as `T`; errors carry the JSON path of the offending field.
fn decode<T: serde::de::DeserializeOwned>(annotation: &str, value: &str) -> Result<T> {
    let mut de = serde_json::Deserializer::from_str(value);
    let out: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        AnnotationError::new(annotation, field, e.into_inner().to_string())
    })?;
    de.end()
        .map_err(|e| AnnotationError::new(annotation, "", e.to_string()))?;
    Ok(out)
}

fn port(annotation: &str, field: &str, p: Option<RawPort>) -> Result<u16> {
    match p {
        None => Err(AnnotationError::new(annotation, field, "is required")),
        Some(RawPort::Number(n)) => u16::try_from(n)
            .ok()
            .filter(|n| *n != 0)
            .ok_or_else(|| AnnotationError::new(annotation, field, "must be 1..65535")),
        Some(RawPort::Name(s)) => match s.parse::<i64>() {
            Ok(n) => port(annotation, field, Some(RawPort::Number(n))),
            Err(_) => Err(AnnotationError::new(
                annotation,
                field,
                format!("named port {s:?} is not supported (an OCI spec has no port names): use a number"),
            )),
        },
    }
}

fn host(annotation: &str, field: &str, h: Option<String>) -> Result<Option<String>> {
    match h {
        None => Ok(None),
        Some(h) if h.is_empty() => Ok(None),
        Some(h) if h.len() > 253 || h.chars().any(|c| c.is_whitespace() || c == '/') => Err(
            AnnotationError::new(annotation, field, "must be a host name or IP address"),
        ),
        Some(h) => Ok(Some(h)),
    }
}

fn handler(annotation: &str, raw: RawHandler, allow_tcp: bool) -> Result<Handler> {
    let given = [
        raw.exec.is_some(),
        raw.http_get.is_some(),
        raw.tcp_socket.is_some(),
        raw.grpc.is_some(),
        raw.sleep.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    let expected = if allow_tcp {
        "exactly one of exec, httpGet, tcpSocket is required"
    } else {
        "exactly one of exec, httpGet is required"
    };
    if given != 1 {
        return Err(AnnotationError::new(annotation, "", expected));
    }
    if raw.grpc.is_some() {
        return Err(AnnotationError::new(annotation, "grpc", "is not supported"));
    }
    if raw.sleep.is_some() {
        return Err(AnnotationError::new(
            annotation,
            "sleep",
            "is not supported",
        ));
    }
    if let Some(exec) = raw.exec {
        let command = exec.command.unwrap_or_default();
        if command.is_empty() || command[0].is_empty() {
            return Err(AnnotationError::new(
                annotation,
                "exec.command",
                "must name the program to run",
            ));
        }
        if command.len() > MAX_ARGS {
            return Err(AnnotationError::new(
                annotation,
                "exec.command",
                format!("more than {MAX_ARGS} arguments"),
            ));
        }
        if command.iter().any(|a| a.contains('\0')) {
            return Err(AnnotationError::new(
                annotation,
                "exec.command",
                "must not contain NUL bytes",
            ));
        }
        return Ok(Handler::Exec { command });
    }
    if let Some(h) = raw.http_get {
        let port = port(annotation, "httpGet.port", h.port)?;
        let host = host(annotation, "httpGet.host", h.host)?;
        match h.scheme.as_deref() {
            None | Some("") | Some("HTTP") | Some("http") => {}
            Some("HTTPS") | Some("https") => {
                return Err(AnnotationError::new(
                    annotation,
                    "httpGet.scheme",
                    "HTTPS is not supported yet (use HTTP or tcpSocket)",
                ))
            }
            Some(other) => {
                return Err(AnnotationError::new(
                    annotation,
                    "httpGet.scheme",
                    format!("{other:?} is not HTTP or HTTPS"),
                ))
            }
        }
        let path = match h.path {
            None => "/".to_string(),
            Some(p) if p.is_empty() => "/".to_string(),
            Some(p) if !p.starts_with('/') => format!("/{p}"),
            Some(p) => p,
        };
        if path.chars().any(|c| c.is_control() || c == ' ') {
            return Err(AnnotationError::new(
                annotation,
                "httpGet.path",
                "must not contain spaces or control characters",
            ));
        }
        let mut headers = Vec::new();
        for (i, hd) in h.http_headers.unwrap_or_default().into_iter().enumerate() {
            let field = format!("httpGet.httpHeaders[{i}]");
            if hd.name.is_empty()
                || !hd
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
            {
                return Err(AnnotationError::new(
                    annotation,
                    format!("{field}.name"),
                    "must be an HTTP header name (token characters)",
                ));
            }
            if hd
                .value
                .chars()
                .any(|c| c == '\r' || c == '\n' || c == '\0')
            {
                return Err(AnnotationError::new(
                    annotation,
                    format!("{field}.value"),
                    "must not contain CR, LF or NUL",
                ));
            }
            headers.push((hd.name, hd.value));
        }
        return Ok(Handler::HttpGet(HttpGet {
            host,
            port,
            path,
            headers,
        }));
    }
    let t = raw.tcp_socket.expect("counted above");
    if !allow_tcp {
        return Err(AnnotationError::new(
            annotation,
            "tcpSocket",
            "is not a lifecycle handler (use exec or httpGet)",
        ));
    }
    Ok(Handler::TcpSocket {
        host: host(annotation, "tcpSocket.host", t.host)?,
        port: port(annotation, "tcpSocket.port", t.port)?,
    })
}

fn seconds(
    annotation: &str,
    field: &str,
    v: Option<i64>,
    default: i64,
    min: i64,
) -> Result<Duration> {
    let v = v.unwrap_or(default);
    if v < min || v > MAX_SECONDS {
        return Err(AnnotationError::new(
            annotation,
            field,
            format!("must be {min}..{MAX_SECONDS}, not {v}"),
        ));
    }
    Ok(Duration::from_secs(v as u64))
}

fn threshold(annotation: &str, field: &str, v: Option<i64>, default: u32) -> Result<u32> {
    match v {
        None => Ok(default),
        Some(n) if (1..=1_000_000).contains(&n) => Ok(n as u32),
        Some(n) => Err(AnnotationError::new(
            annotation,
            field,
            format!("must be at least 1, not {n}"),
        )),
    }
}

/// Parses a probe annotation's value.
pub fn parse_probe(annotation: &str, value: &str, kind: ProbeKindName) -> Result<Probe> {
    let raw: RawProbe = decode(annotation, value)?;
    let success_threshold = threshold(annotation, "successThreshold", raw.success_threshold, 1)?;
    if kind != ProbeKindName::Readiness && success_threshold != 1 {
        return Err(AnnotationError::new(
            annotation,
            "successThreshold",
            "must be 1 for liveness and startup probes",
        ));
    }
    let termination_grace = match raw.termination_grace_period_seconds {
        None => None,
        Some(_) if kind == ProbeKindName::Readiness => {
            return Err(AnnotationError::new(
                annotation,
                "terminationGracePeriodSeconds",
                "is only for liveness and startup probes",
            ))
        }
        v => Some(seconds(
            annotation,
            "terminationGracePeriodSeconds",
            v,
            0,
            0,
        )?),
    };
    Ok(Probe {
        termination_grace,
        handler: handler(annotation, raw.handler, true)?,
        initial_delay: seconds(
            annotation,
            "initialDelaySeconds",
            raw.initial_delay_seconds,
            0,
            0,
        )?,
        period: seconds(annotation, "periodSeconds", raw.period_seconds, 10, 1)?,
        timeout: seconds(annotation, "timeoutSeconds", raw.timeout_seconds, 1, 1)?,
        success_threshold,
        failure_threshold: threshold(annotation, "failureThreshold", raw.failure_threshold, 3)?,
    })
}

/// Parses a lifecycle hook annotation's value (exec or httpGet).
pub fn parse_hook(annotation: &str, value: &str) -> Result<Handler> {
    let raw: RawHandler = decode(annotation, value)?;
    handler(annotation, raw, false)
}

/// Parses a Kubernetes quantity (`64Mi`, `1G`, `1.5Gi`, `500k`, `1e3`, `123`) into bytes.
pub fn parse_quantity(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    if number.is_empty() || number.matches('.').count() > 1 || number == "." {
        return Err(format!("{text:?} is not a quantity (e.g. 64Mi, 1G)"));
    }
    let multiplier: f64 = match suffix {
        "" => 1.0,
        "Ki" => 1024.0,
        "Mi" => 1024.0f64.powi(2),
        "Gi" => 1024.0f64.powi(3),
        "Ti" => 1024.0f64.powi(4),
        "Pi" => 1024.0f64.powi(5),
        "Ei" => 1024.0f64.powi(6),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        s if s.starts_with(['e', 'E']) => {
            let exp: i32 = s[1..]
                .parse()
                .map_err(|_| format!("{text:?} has a bad exponent"))?;
            if !(0..=18).contains(&exp) {
                return Err(format!("{text:?}: exponent out of range"));
            }
            10f64.powi(exp)
        }
        _ => {
            return Err(format!(
                "{text:?} has an unknown suffix {suffix:?} (use Ki, Mi, Gi, Ti, k, M, G, T)"
            ))
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a quantity"))?;
    let bytes = (value * multiplier).ceil();
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("{text:?} is too large"));
    }
    Ok(bytes as u64)
}

/// Checks a configFile item path: relative, no `..` or empty components, no NUL.
fn item_path(annotation: &str, field: &str, path: &str) -> Result<()> {
    let bad = |why: &str| Err(AnnotationError::new(annotation, field, why.to_string()));
    if path.is_empty() {
        return bad("must not be empty");
    }
    if path.starts_with('/') {
        return bad("must be relative");
    }
    if path.contains('\0') {
        return bad("must not contain NUL");
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == ".." || c == ".")
    {
        return bad("must not contain \"..\", \".\" or empty components");
    }
    if path.len() > 1024 {
        return bad("longer than 1024 bytes");
    }
    Ok(())
}

/// Checks a volume name (the part after `io.eci.volume.`): a DNS label, as Kubernetes requires.
pub fn volume_name(annotation: &str, name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(AnnotationError::new(
            annotation,
            "",
            format!("volume name {name:?} must be a DNS label (a-z 0-9 -, at most 63)"),
        ))
    }
}

/// Filesystems a disk volume may carry.
const DISK_FS_TYPES: &[&str] = &["ext4", "ext3", "ext2", "xfs", "btrfs", "erofs", "vfat"];

/// Parses a volume annotation's value.
pub fn parse_volume(annotation: &str, value: &str) -> Result<Volume> {
    let raw: RawVolume = decode(annotation, value)?;
    let given = [
        raw.empty_dir.is_some(),
        raw.config_file.is_some(),
        raw.disk.is_some(),
        raw.nfs.is_some(),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if given != 1 {
        return Err(AnnotationError::new(
            annotation,
            "",
            "exactly one of emptyDir, configFile, disk, nfs is required",
        ));
    }
    if let Some(e) = raw.empty_dir {
        let memory = match e.medium.as_deref() {
            None | Some("") => false,
            Some("Memory") => true,
            Some(other) => {
                return Err(AnnotationError::new(
                    annotation,
                    "emptyDir.medium",
                    format!("{other:?} is not \"\" or \"Memory\""),
                ))
            }
        };
        let size_limit = match e.size_limit {
            None => None,
            Some(RawQuantity::Number(n)) => Some(n),
            Some(RawQuantity::Text(t)) => Some(
                parse_quantity(&t)
                    .map_err(|r| AnnotationError::new(annotation, "emptyDir.sizeLimit", r))?,
            ),
        };
        if size_limit == Some(0) {
            return Err(AnnotationError::new(
                annotation,
                "emptyDir.sizeLimit",
                "must be positive",
            ));
        }
        return Ok(Volume::EmptyDir { memory, size_limit });
    }
    if let Some(c) = raw.config_file {
        let mut items = Vec::with_capacity(c.items.len());
        let mut seen = std::collections::HashSet::new();
        for (i, item) in c.items.into_iter().enumerate() {
            let field = format!("configFile.items[{i}]");
            item_path(annotation, &format!("{field}.path"), &item.path)?;
            if !seen.insert(item.path.clone()) {
                return Err(AnnotationError::new(
                    annotation,
                    format!("{field}.path"),
                    format!("{:?} appears twice", item.path),
                ));
            }
            let content = base64::engine::general_purpose::STANDARD
                .decode(item.content.trim())
                .map_err(|e| {
                    AnnotationError::new(
                        annotation,
                        format!("{field}.content"),
                        format!("not base64: {e}"),
                    )
                })?;
            if content.len() > MAX_CONFIG_FILE_BYTES {
                return Err(AnnotationError::new(
                    annotation,
                    format!("{field}.content"),
                    format!("larger than {MAX_CONFIG_FILE_BYTES} bytes"),
                ));
            }
            let mode = match item.mode {
                None => 0o644,
                Some(m) if (0..=0o777).contains(&m) => m as u32,
                Some(m) => {
                    return Err(AnnotationError::new(
                        annotation,
                        format!("{field}.mode"),
                        format!("{m} is not a permission mode 0..=0777 (511)"),
                    ))
                }
            };
            items.push(ConfigItem {
                path: item.path,
                content,
                mode,
            });
        }
        // A file may not also be a directory of another item.
        for item in &items {
            let prefix = format!("{}/", item.path);
            if items.iter().any(|o| o.path.starts_with(&prefix)) {
                return Err(AnnotationError::new(
                    annotation,
                    "configFile.items",
                    format!("{:?} is both a file and a directory", item.path),
                ));
            }
        }
        return Ok(Volume::ConfigFile { items });
    }
    if let Some(d) = raw.disk {
        if !d.device.starts_with('/')
            || d.device.contains('\0')
            || d.device.split('/').any(|c| c == "..")
        {
            return Err(AnnotationError::new(
                annotation,
                "disk.device",
                "must be an absolute path without \"..\"",
            ));
        }
        let fs_type = d
            .fs_type
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "ext4".into());
        if !DISK_FS_TYPES.contains(&fs_type.as_str()) {
            return Err(AnnotationError::new(
                annotation,
                "disk.fsType",
                format!("{fs_type:?} is not one of {}", DISK_FS_TYPES.join(", ")),
            ));
        }
        return Ok(Volume::Disk {
            device: d.device,
            fs_type,
            read_only: d.read_only,
        });
    }
    let n = raw.nfs.expect("counted above");
    let server_ok = !n.server.is_empty()
        && n.server.len() <= 253
        && n.server
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    if !server_ok {
        return Err(AnnotationError::new(
            annotation,
            "nfs.server",
            "must be a host name or IP address",
        ));
    }
    if !n.path.starts_with('/') || n.path.contains('\0') || n.path.contains(',') {
        return Err(AnnotationError::new(
            annotation,
            "nfs.path",
            "must be an absolute path (without commas)",
        ));
    }
    Ok(Volume::Nfs {
        server: n.server,
        path: n.path,
        read_only: n.read_only,
    })
}

/// Parses every `io.eci.*` annotation the agent acts on.
pub fn parse(annotations: &HashMap<String, String>) -> Result<PodAnnotations> {
    let mut out = PodAnnotations::default();
    let probe = |key: &str, kind| -> Result<Option<Probe>> {
        annotations
            .get(key)
            .map(|v| parse_probe(key, v, kind))
            .transpose()
    };
    out.liveness = probe(PROBE_LIVENESS, ProbeKindName::Liveness)?;
    out.readiness = probe(PROBE_READINESS, ProbeKindName::Readiness)?;
    out.startup = probe(PROBE_STARTUP, ProbeKindName::Startup)?;
    out.post_start = annotations
        .get(POST_START)
        .map(|v| parse_hook(POST_START, v))
        .transpose()?;
    out.pre_stop = annotations
        .get(PRE_STOP)
        .map(|v| parse_hook(PRE_STOP, v))
        .transpose()?;
    if let Some(v) = annotations.get(TERMINATION_GRACE) {
        let secs: i64 = v.trim().parse().map_err(|_| {
            AnnotationError::new(
                TERMINATION_GRACE,
                "",
                format!("{v:?} is not a whole number of seconds"),
            )
        })?;
        out.grace_period = Some(seconds(TERMINATION_GRACE, "", Some(secs), 30, 0)?);
    }
    let mut volumes: Vec<(String, Volume)> = Vec::new();
    for (key, value) in annotations {
        if let Some(name) = key.strip_prefix(VOLUME_PREFIX) {
            volume_name(key, name)?;
            volumes.push((name.to_string(), parse_volume(key, value)?));
        }
    }
    volumes.sort_by(|a, b| a.0.cmp(&b.0));
    out.volumes = volumes;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(key: &str, value: &str) -> Result<PodAnnotations> {
        parse(&HashMap::from([(key.to_string(), value.to_string())]))
    }

    fn err(key: &str, value: &str) -> String {
        one(key, value).unwrap_err().to_string()
    }

    #[test]
    fn probe_defaults_are_kubernetes_ones() {
        let a = one(PROBE_LIVENESS, r#"{"exec":{"command":["cat","/tmp/ok"]}}"#).unwrap();
        let p = a.liveness.clone().unwrap();
        assert_eq!(
            p.handler,
            Handler::Exec {
                command: vec!["cat".into(), "/tmp/ok".into()]
            }
        );
        assert_eq!(p.initial_delay, Duration::ZERO);
        assert_eq!(p.period, Duration::from_secs(10));
        assert_eq!(p.timeout, Duration::from_secs(1));
        assert_eq!((p.success_threshold, p.failure_threshold), (1, 3));
        assert_eq!(a.grace(), Duration::from_secs(30));
    }

    #[test]
    fn http_and_tcp_probes_parse() {
        let a = one(
            PROBE_READINESS,
            r#"{"httpGet":{"path":"healthz","port":"8080","httpHeaders":[{"name":"X-A","value":"b"}]},
                "periodSeconds":1,"successThreshold":2,"failureThreshold":1,"extra":true}"#,
        )
        .unwrap();
        assert_eq!(
            a.readiness.unwrap().handler,
            Handler::HttpGet(HttpGet {
                host: None,
                port: 8080,
                path: "/healthz".into(),
                headers: vec![("X-A".into(), "b".into())],
            })
        );
        let a = one(
            PROBE_STARTUP,
            r#"{"tcpSocket":{"port":80,"host":"10.0.0.1"}}"#,
        )
        .unwrap();
        assert_eq!(
            a.startup.unwrap().handler,
            Handler::TcpSocket {
                host: Some("10.0.0.1".into()),
                port: 80
            }
        );
    }

    #[test]
    fn bad_probes_name_annotation_and_field() {
        assert_eq!(
            err(PROBE_LIVENESS, r#"{"httpGet":{"port":70000}}"#),
            "invalid annotation io.eci.probe.liveness: httpGet.port: must be 1..65535"
        );
        assert!(err(PROBE_LIVENESS, "{not json")
            .starts_with("invalid annotation io.eci.probe.liveness: "));
        assert_eq!(
            err(PROBE_LIVENESS, r#"{"exec":{"command":["a"]},"tcpSocket":{"port":1}}"#),
            "invalid annotation io.eci.probe.liveness: exactly one of exec, httpGet, tcpSocket is required"
        );
        let e = err(
            PROBE_READINESS,
            r#"{"exec":{"command":["a"]},"periodSeconds":"x"}"#,
        );
        assert!(
            e.contains("io.eci.probe.readiness: periodSeconds: invalid type"),
            "{e}"
        );
        let e = err(
            PROBE_READINESS,
            r#"{"exec":{"command":["a"]},"periodSeconds":0}"#,
        );
        assert!(e.contains("periodSeconds: must be 1.."), "{e}");
        let e = err(
            PROBE_LIVENESS,
            r#"{"exec":{"command":["a"]},"successThreshold":2}"#,
        );
        assert!(e.contains("successThreshold"), "{e}");
        let e = err(
            PROBE_READINESS,
            r#"{"exec":{"command":["a"]},"terminationGracePeriodSeconds":5}"#,
        );
        assert!(e.contains("terminationGracePeriodSeconds"), "{e}");
        let a = one(
            PROBE_LIVENESS,
            r#"{"exec":{"command":["a"]},"terminationGracePeriodSeconds":5}"#,
        )
        .unwrap();
        assert_eq!(
            a.liveness.unwrap().termination_grace,
            Some(Duration::from_secs(5))
        );
        let e = err(PROBE_LIVENESS, r#"{"httpGet":{"port":"http"}}"#);
        assert!(e.contains("httpGet.port: named port"), "{e}");
        let e = err(
            PROBE_LIVENESS,
            r#"{"httpGet":{"port":80,"scheme":"HTTPS"}}"#,
        );
        assert!(e.contains("httpGet.scheme"), "{e}");
        let e = err(PROBE_LIVENESS, r#"{"exec":{"command":[]}}"#);
        assert!(e.contains("exec.command"), "{e}");
        let e = err(
            PROBE_LIVENESS,
            r#"{"httpGet":{"port":80,"httpHeaders":[{"name":"A","value":"b\r\nX: y"}]}}"#,
        );
        assert!(e.contains("httpGet.httpHeaders[0].value"), "{e}");
    }

    #[test]
    fn hooks_and_grace() {
        let a = one(POST_START, r#"{"exec":{"command":["touch","/x"]}}"#).unwrap();
        assert!(matches!(a.post_start, Some(Handler::Exec { .. })));
        let e = err(PRE_STOP, r#"{"tcpSocket":{"port":1}}"#);
        assert!(e.contains("io.eci.lifecycle.pre-stop"), "{e}");
        assert_eq!(
            one(TERMINATION_GRACE, "5").unwrap().grace(),
            Duration::from_secs(5)
        );
        assert!(err(TERMINATION_GRACE, "-1").contains(TERMINATION_GRACE));
        assert!(err(TERMINATION_GRACE, "soon").contains(TERMINATION_GRACE));
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity("64Mi").unwrap(), 64 << 20);
        assert_eq!(parse_quantity("1G").unwrap(), 1_000_000_000);
        assert_eq!(parse_quantity("1.5Gi").unwrap(), 3 << 29);
        assert_eq!(parse_quantity("1e3").unwrap(), 1000);
        assert_eq!(parse_quantity("123").unwrap(), 123);
        assert_eq!(parse_quantity("16Ki").unwrap(), 16384);
        for bad in ["", "Mi", "1.2.3", "12Q", "-1", "1e99"] {
            assert!(parse_quantity(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn volumes_parse_and_validate() {
        let a = one(
            "io.eci.volume.cache",
            r#"{"emptyDir":{"medium":"Memory","sizeLimit":"64Mi"}}"#,
        )
        .unwrap();
        assert_eq!(
            a.volumes,
            vec![(
                "cache".to_string(),
                Volume::EmptyDir {
                    memory: true,
                    size_limit: Some(64 << 20)
                }
            )]
        );
        let a = one(
            "io.eci.volume.cfg",
            r#"{"configFile":{"items":[{"path":"a/b.conf","content":"aGVsbG8=","mode":384}]}}"#,
        )
        .unwrap();
        assert_eq!(
            a.volumes[0].1,
            Volume::ConfigFile {
                items: vec![ConfigItem {
                    path: "a/b.conf".into(),
                    content: b"hello".to_vec(),
                    mode: 0o600
                }]
            }
        );
        for (value, field) in [
            (
                r#"{"configFile":{"items":[{"path":"../x","content":""}]}}"#,
                "configFile.items[0].path",
            ),
            (
                r#"{"configFile":{"items":[{"path":"/x","content":""}]}}"#,
                "configFile.items[0].path",
            ),
            (
                r#"{"configFile":{"items":[{"path":"x","content":"!!"}]}}"#,
                "configFile.items[0].content",
            ),
            (
                r#"{"configFile":{"items":[{"path":"x","content":"","mode":4096}]}}"#,
                "configFile.items[0].mode",
            ),
            (r#"{"emptyDir":{"medium":"Disk"}}"#, "emptyDir.medium"),
            (r#"{"emptyDir":{"sizeLimit":"lots"}}"#, "emptyDir.sizeLimit"),
            (r#"{"disk":{"device":"dev/vdb"}}"#, "disk.device"),
            (
                r#"{"disk":{"device":"/dev/vdb","fsType":"ntfs"}}"#,
                "disk.fsType",
            ),
            (r#"{"nfs":{"server":"a b","path":"/x"}}"#, "nfs.server"),
            (r#"{"nfs":{"server":"nfs.local","path":"x"}}"#, "nfs.path"),
        ] {
            let e = one("io.eci.volume.v", value).unwrap_err();
            assert_eq!(e.field, field, "{value}: {e}");
            assert_eq!(e.annotation, "io.eci.volume.v");
        }
        assert!(one("io.eci.volume.Bad_Name", r#"{"emptyDir":{}}"#).is_err());
        assert!(one("io.eci.volume.v", r#"{}"#).is_err());
        let a = one(
            "io.eci.volume.data",
            r#"{"disk":{"device":"/img/d.ext4","readOnly":true}}"#,
        )
        .unwrap();
        assert_eq!(
            a.volumes[0].1,
            Volume::Disk {
                device: "/img/d.ext4".into(),
                fs_type: "ext4".into(),
                read_only: true
            }
        );
    }

    #[test]
    fn validation_error_reads_like_the_contract() {
        let e: ValidationError = one(PROBE_LIVENESS, r#"{"httpGet":{"port":0}}"#)
            .unwrap_err()
            .into();
        assert_eq!(
            e.to_string(),
            "invalid annotation io.eci.probe.liveness: httpGet.port: must be 1..65535"
        );
    }
}
