//! The API's data types: requests (camelCase JSON, unknown fields rejected), responses and the
//! normalised spec that the store keeps and the runtime drives.
//!
//! Probe, lifecycle and volume shapes are the JSON of issue 6's `io.eci.probe.*`,
//! `io.eci.lifecycle.*` and `io.eci.volume.<name>` annotations, so the runtime can serialise them
//! straight into annotations.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// Restart policy of a container group (the manual's names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum ImagePullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

/// `POST /v1/containerGroups` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateContainerGroupRequest {
    pub name: String,
    /// vCPUs; absent = sum of the containers' cpu. Normalised up to the size table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    /// GiB; absent = sum of the containers' memory. Normalised up to the size table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<f64>,
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    pub containers: Vec<Container>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub init_containers: Vec<Container>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_registry_credentials: Vec<ImageRegistryCredential>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<Tag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,
    /// GiB of ephemeral storage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_storage: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<i64>,
    #[serde(default)]
    pub auto_match_image_cache: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_cache_id: Option<String>,
    /// A GPU instance type (`ecs.gn6i-c4g1.xlarge`, ...): sets cpu, memory and gpu.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// GPUs (whole devices passed through to the group's VM) taken from the node's pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<u32>,
    /// The containers' resolver configuration; absent = the node's (containerd copies the
    /// host's /etc/resolv.conf). Fixed at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_config: Option<DnsConfig>,
}

/// The validated, normalised group: what the store keeps and the runtime drives.
/// `cpu`/`memory` are table sizes; everything else is the request as given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerGroupSpec {
    pub name: String,
    pub cpu: f64,
    pub memory: f64,
    pub restart_policy: RestartPolicy,
    pub containers: Vec<Container>,
    #[serde(default)]
    pub init_containers: Vec<Container>,
    #[serde(default)]
    pub volumes: Vec<Volume>,
    /// Passwords are kept in the store for pulls but blanked in API responses.
    #[serde(default)]
    pub image_registry_credentials: Vec<ImageRegistryCredential>,
    #[serde(default)]
    pub tags: Vec<Tag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_storage: Option<f64>,
    /// Seconds between SIGTERM and SIGKILL; 30 when the request gave none.
    pub termination_grace_period_seconds: i64,
    #[serde(default)]
    pub auto_match_image_cache: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_cache_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// GPUs the group holds.
    #[serde(default)]
    pub gpu: u32,
    /// PCI addresses of the GPUs taken from the node's pool (set when the group is created).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_devices: Vec<String>,
    /// Absent in groups stored before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_config: Option<DnsConfig>,
}

impl ContainerGroupSpec {
    /// Copy with registry passwords blanked, for API responses.
    pub fn redacted(&self) -> Self {
        let mut spec = self.clone();
        for cred in &mut spec.image_registry_credentials {
            cred.password = String::new();
        }
        spec
    }

    /// Init containers first (they run first), then the app containers.
    pub fn all_containers(&self) -> impl Iterator<Item = &Container> {
        self.init_containers.iter().chain(self.containers.iter())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Container {
    pub name: String,
    pub image: String,
    #[serde(default)]
    pub image_pull_policy: ImagePullPolicy,
    /// Entrypoint override (OCI process args before `args`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    /// vCPUs requested by this container (limit inside the group).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    /// GiB requested by this container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<f64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub liveness_probe: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_probe: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_probe: Option<Probe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<Lifecycle>,
    #[serde(default)]
    pub stdin: bool,
    #[serde(default)]
    pub tty: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EnvVar {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerPort {
    pub port: i64,
    #[serde(default)]
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VolumeMount {
    /// Name of a volume declared in `volumes`.
    pub name: String,
    pub mount_path: String,
    #[serde(default)]
    pub read_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
}

/// Kubernetes Probe shape (annotation `io.eci.probe.<kind>`): exactly one handler.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Probe {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_socket: Option<TcpSocketAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_delay_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_threshold: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_threshold: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecAction {
    pub command: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpGetAction {
    /// Host to connect to; absent = the pod IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    pub port: i64,
    /// HTTP or HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub http_headers: Vec<HttpHeader>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpHeader {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TcpSocketAction {
    /// Host to connect to; absent = the pod IP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    pub port: i64,
}

/// Kubernetes LifecycleHandler shape (annotations `io.eci.lifecycle.post-start|pre-stop`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LifecycleHandler {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec: Option<ExecAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_get: Option<HttpGetAction>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Lifecycle {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_start: Option<LifecycleHandler>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_stop: Option<LifecycleHandler>,
}

/// A pod-level volume: `name` plus exactly one source. The source alone (without `name`) is the
/// JSON of annotation `io.eci.volume.<name>`: see [`Volume::annotation_value`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Volume {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_dir: Option<EmptyDirVolume>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_file: Option<ConfigFileVolume>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskVolume>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nfs: Option<NfsVolume>,
}

impl Volume {
    /// The `io.eci.volume.<name>` annotation value: this volume without its name.
    pub fn annotation_value(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(object) = value.as_object_mut() {
            object.remove("name");
        }
        value
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmptyDirVolume {
    /// "" (disk) or "Memory" (tmpfs).
    #[serde(default)]
    pub medium: String,
    /// Kubernetes quantity, e.g. "64Mi".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_limit: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigFileVolume {
    pub items: Vec<ConfigFileItem>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigFileItem {
    /// Relative path inside the volume.
    pub path: String,
    /// File content, base64.
    pub content: String,
    /// Octal file mode as a number (420 = 0644).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiskVolume {
    /// Guest device (/dev/vdX) or host path of a block device or image.
    pub device: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_type: Option<String>,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NfsVolume {
    pub server: String,
    pub path: String,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImageRegistryCredential {
    /// Registry host[:port], e.g. "127.0.0.1:5000".
    pub server: String,
    pub user_name: String,
    #[serde(default)]
    pub password: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tag {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

/// A group's DNS configuration (Azure Container Instances' `dnsConfig`, Kubernetes'
/// `PodDNSConfig` limits): CRI writes it as every container's /etc/resolv.conf.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DnsConfig {
    /// 1 to 3 IPv4 or IPv6 addresses (`nameserver` lines).
    #[schema(min_items = 1, max_items = 3)]
    pub name_servers: Vec<String>,
    /// Domain names (the `search` line): at most 32, 2048 characters together (one
    /// separator counted per domain).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 32)]
    pub search_domains: Vec<String>,
    /// Resolver options, `name` or `name:value` (the `options` line), e.g. "ndots:2".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 16)]
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecurityContext {
    #[serde(default)]
    pub sysctls: Vec<Sysctl>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sysctl {
    pub name: String,
    pub value: String,
}

/// The manual's container group lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
pub enum GroupStatus {
    Scheduling,
    Pending,
    Running,
    Restarting,
    Updating,
    Terminating,
    Succeeded,
    Failed,
    ScheduleFailed,
}

impl GroupStatus {
    pub const ALL: [GroupStatus; 9] = [
        GroupStatus::Scheduling,
        GroupStatus::Pending,
        GroupStatus::Running,
        GroupStatus::Restarting,
        GroupStatus::Updating,
        GroupStatus::Terminating,
        GroupStatus::Succeeded,
        GroupStatus::Failed,
        GroupStatus::ScheduleFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GroupStatus::Scheduling => "Scheduling",
            GroupStatus::Pending => "Pending",
            GroupStatus::Running => "Running",
            GroupStatus::Restarting => "Restarting",
            GroupStatus::Updating => "Updating",
            GroupStatus::Terminating => "Terminating",
            GroupStatus::Succeeded => "Succeeded",
            GroupStatus::Failed => "Failed",
            GroupStatus::ScheduleFailed => "ScheduleFailed",
        }
    }

    /// Terminal states hold no resources and do not count against the vCPU quota.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            GroupStatus::Succeeded | GroupStatus::Failed | GroupStatus::ScheduleFailed
        )
    }
}

impl std::str::FromStr for GroupStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        GroupStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown group status {s:?}"))
    }
}

impl std::fmt::Display for GroupStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum ContainerState {
    #[default]
    Waiting,
    Running,
    Terminated,
}

/// `GET /v1/containerGroups/{id}` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerGroup {
    pub id: String,
    pub name: String,
    pub status: GroupStatus,
    /// Normalised vCPUs.
    pub cpu: f64,
    /// Normalised GiB.
    pub memory: f64,
    #[serde(default)]
    pub ip: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub restart_policy: RestartPolicy,
    pub tags: Vec<Tag>,
    pub containers: Vec<ContainerStatus>,
    pub init_containers: Vec<ContainerStatus>,
    /// The normalised request (registry passwords blanked).
    pub spec: ContainerGroupSpec,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    pub name: String,
    pub image: String,
    pub state: ContainerState,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub exit_code: Option<i32>,
    pub restart_count: u32,
    pub ready: bool,
    #[serde(default)]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub finished_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// A group or image cache event. Repeats of the latest event raise `count`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Time of the latest occurrence.
    pub time: DateTime<Utc>,
    #[serde(rename = "type")]
    pub event_type: EventType,
    pub reason: String,
    pub message: String,
    pub count: u32,
}

/// `PATCH /v1/containerGroups/{id}` body: only the given fields change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateContainerGroupRequest {
    #[serde(default)]
    pub containers: Vec<ContainerUpdate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
    /// Replaces all tags when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<Tag>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerUpdate {
    /// Name of an existing (app or init) container.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Replaces the container's environment when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<EnvVar>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<f64>,
}

/// An update after validation: the complete new spec and what changed in it.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedUpdate {
    /// The whole new normalised spec (store it once applied).
    pub spec: ContainerGroupSpec,
    /// Containers whose image, env or resources changed: these must be recreated.
    pub changed_containers: Vec<String>,
    /// The group's normalised cpu or memory changed.
    pub resized: bool,
}

/// `POST .../containers/{name}/exec` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecRequest {
    pub command: Vec<String>,
    #[serde(default)]
    pub stdin: bool,
    #[serde(default)]
    pub tty: bool,
    /// true: run to completion and answer with output and exit code; false: answer with the
    /// streaming URL (CRI Exec) to attach to.
    #[serde(default = "default_true")]
    pub sync: bool,
}

fn default_true() -> bool {
    true
}

/// Exec answer: output and exit code (sync), or the websocket URL (not sync).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ExecResponse {
    #[serde(rename_all = "camelCase")]
    Completed {
        stdout: String,
        stderr: String,
        exit_code: i32,
    },
    #[serde(rename_all = "camelCase")]
    Stream {
        /// CRI streaming URL speaking the Kubernetes websocket channel protocol
        /// ("v5.channel.k8s.io" / "v4.channel.k8s.io").
        web_socket_uri: String,
    },
}

/// Query of `GET .../containers/{name}/logs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogOptions {
    /// Only the last N lines.
    #[serde(default)]
    pub tail: Option<u64>,
    /// Only lines newer than this many seconds.
    #[serde(default)]
    pub since_seconds: Option<u64>,
    /// Keep the response open and stream new lines.
    #[serde(default)]
    pub follow: bool,
    /// Prefix each line with its RFC 3339 time.
    #[serde(default)]
    pub timestamps: bool,
}

/// `GET .../{id}/metrics`: the manual's field names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupMetrics {
    pub timestamp: Option<DateTime<Utc>>,
    pub containers: Vec<ContainerMetrics>,
    pub network: NetworkMetrics,
    pub disk: Vec<DiskMetrics>,
    /// The group's VM (absent when the runtime runs the group without one, in local mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmMetrics>,
}

/// The group's own VM: its size, and what its VM process (vCPU threads, devices, guest memory
/// it touched) takes on the host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct VmMetrics {
    /// vCPUs of the group (a fractional size is a CPU quota on the VM).
    pub vcpus: f64,
    /// The group's memory; the guest gets the runtime's fixed overhead on top.
    pub memory_mib: u64,
    /// Host CPU time of the VM process, all threads.
    pub usage_core_nano_seconds: u64,
    /// Its rate since the previous sample (0 on the first).
    pub usage_nano_cores: u64,
    /// Resident memory of the VM process (guest memory the guest touched included).
    pub resident_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ContainerMetrics {
    pub name: String,
    pub cpu: CpuMetrics,
    pub memory: MemoryMetrics,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct CpuMetrics {
    pub usage_nano_cores: u64,
    pub usage_core_nano_seconds: u64,
    pub load: u64,
    /// Millicores.
    pub limit: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct MemoryMetrics {
    pub available_bytes: u64,
    pub usage_bytes: u64,
    pub cache: u64,
    pub working_set: u64,
    pub rss: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NetworkMetrics {
    pub interfaces: Vec<InterfaceMetrics>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct InterfaceMetrics {
    pub name: String,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub tx_errors: u64,
    pub rx_errors: u64,
    pub tx_packets: u64,
    pub rx_packets: u64,
    pub tx_drops: u64,
    pub rx_drops: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "PascalCase")]
pub struct DiskMetrics {
    pub device: String,
    pub used_bytes: u64,
    pub capacity_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum ImageCacheStatus {
    Creating,
    Ready,
    Failed,
    Expired,
}

impl ImageCacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ImageCacheStatus::Creating => "Creating",
            ImageCacheStatus::Ready => "Ready",
            ImageCacheStatus::Failed => "Failed",
            ImageCacheStatus::Expired => "Expired",
        }
    }
}

impl std::str::FromStr for ImageCacheStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            ImageCacheStatus::Creating,
            ImageCacheStatus::Ready,
            ImageCacheStatus::Failed,
            ImageCacheStatus::Expired,
        ]
        .into_iter()
        .find(|status| status.as_str() == s)
        .ok_or_else(|| format!("unknown image cache status {s:?}"))
    }
}

/// `GET /v1/imageCaches/{id}` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageCache {
    pub id: String,
    pub name: String,
    pub images: Vec<String>,
    pub status: ImageCacheStatus,
    pub retention_days: u32,
    pub created_at: DateTime<Utc>,
    pub expire_at: DateTime<Utc>,
    /// The latest creation events, at most 50.
    pub events: Vec<Event>,
}

/// `POST /v1/imageCaches` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateImageCacheRequest {
    pub name: String,
    pub images: Vec<String>,
    #[serde(default)]
    pub image_registry_credentials: Vec<ImageRegistryCredential>,
    /// Days the cache is kept after creation; default 7.
    #[serde(default)]
    pub retention_days: Option<u32>,
}

/// A validated image cache request (retention filled in).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageCacheSpec {
    pub name: String,
    pub images: Vec<String>,
    pub image_registry_credentials: Vec<ImageRegistryCredential>,
    pub retention_days: u32,
}

/// `PATCH /v1/imageCaches/{id}` body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateImageCacheRequest {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub retention_days: Option<u32>,
}

/// `GET /v1/quota` body.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Quota {
    pub vcpu_quota: f64,
    /// Sum of the normalised cpu of the groups not in a terminal state.
    pub vcpu_used: f64,
    /// GPUs in the node's pool (`eci serve --gpu-pool`).
    #[serde(default)]
    pub gpu_quota: u32,
    /// GPUs held by groups (until they are deleted).
    #[serde(default)]
    pub gpu_used: u32,
}

/// `POST` answers that create something.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct CreatedResponse {
    pub id: String,
}

/// Query of `GET /v1/containerGroups`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListGroupsQuery {
    /// Exact group name.
    pub name: Option<String>,
    /// Group status, e.g. Running.
    pub status: Option<String>,
    /// `key=value` (or `key` for any value).
    pub tag: Option<String>,
}

/// Every error answer: `{"error": {"code", "field", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// InvalidParameter, NotFound, Conflict, Unavailable, Internal.
    pub code: String,
    /// Path of the offending field, e.g. "containers[1].cpu".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
    /// Every violation when validation found several.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<FieldError>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    pub field: String,
    pub reason: String,
}

/// `GET /v1/containerGroups` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerGroupList {
    pub container_groups: Vec<ContainerGroup>,
    pub total_count: usize,
}

/// `GET /v1/imageCaches` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageCacheList {
    pub image_caches: Vec<ImageCache>,
    pub total_count: usize,
}

/// `GET /v1/containerGroups/{id}/events` body, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EventList {
    pub events: Vec<Event>,
}
