//! Every rule of the API on requests, before anything is stored: sizes normalised to the
//! manual's table, counts, names, tags, sysctls, DNS, volumes, probes and the vCPU quota. All
//! violations are collected, each with the path of its field (`containers[1].cpu`).
//!
//! Choices where the manual is silent: init containers are counted separately (at most 20) and
//! share the name space of the app containers; a group with no cpu/memory anywhere gets
//! 2 vCPU + 4 GiB; each init container must fit the group on its own (they run one at a time).

mod dns;
mod gpu;
mod sizes;

pub use gpu::{GpuInstanceType, GPU_INSTANCE_TYPES};

use std::collections::HashSet;

use base64::Engine;
use eci_protocol::annotations::{self, ProbeKindName};

use crate::model::{
    Container, ContainerGroupSpec, CreateContainerGroupRequest, CreateImageCacheRequest,
    ImageCacheSpec, LifecycleHandler, Probe, Quota, UpdateContainerGroupRequest,
    UpdateImageCacheRequest, ValidatedUpdate, Volume,
};
pub use sizes::{normalise, parse_quantity, SizeError, SIZE_TABLE};

pub const MAX_CONTAINERS: usize = 20;
pub const MAX_INIT_CONTAINERS: usize = 20;
pub const MAX_TAGS: usize = 20;
pub const MAX_TAG_LEN: usize = 63;
pub const MAX_GROUP_NAME_LEN: usize = 128;
pub const DEFAULT_CPU: f64 = 2.0;
pub const DEFAULT_MEMORY: f64 = 4.0;
pub const DEFAULT_GRACE_PERIOD_SECONDS: i64 = 30;
pub const MAX_GRACE_PERIOD_SECONDS: i64 = 3600;
pub const MAX_EPHEMERAL_STORAGE_GIB: f64 = 500.0;
pub const DEFAULT_RETENTION_DAYS: u32 = 7;
pub const MAX_RETENTION_DAYS: u32 = 365;
pub const MAX_CACHE_IMAGES: usize = 20;

/// One violation: the field's path and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ValidationError {
    pub field: String,
    pub reason: String,
}

/// Every violation found in one request (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl std::fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&parts.join("; "))
    }
}

impl std::error::Error for ValidationErrors {}

impl ValidationErrors {
    pub fn fields(&self) -> Vec<&str> {
        self.0.iter().map(|err| err.field.as_str()).collect()
    }
}

/// Collects violations.
#[derive(Default)]
struct Errors(Vec<ValidationError>);

impl Errors {
    fn add(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.0.push(ValidationError {
            field: field.into(),
            reason: reason.into(),
        });
    }

    fn check(&mut self, ok: bool, field: impl Into<String>, reason: impl Into<String>) {
        if !ok {
            self.add(field, reason);
        }
    }

    fn finish<T>(self, value: T) -> Result<T, ValidationErrors> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(ValidationErrors(self.0))
        }
    }
}

/// Validates a create request against the quota and returns the normalised spec.
pub fn validate_create(
    req: &CreateContainerGroupRequest,
    quota: &Quota,
) -> Result<ContainerGroupSpec, ValidationErrors> {
    let mut errors = Errors::default();
    check_group_name(&mut errors, "name", &req.name);

    errors.check(
        !req.containers.is_empty(),
        "containers",
        "at least one container is required",
    );
    errors.check(
        req.containers.len() <= MAX_CONTAINERS,
        "containers",
        format!(
            "{} containers, at most {MAX_CONTAINERS} are allowed",
            req.containers.len()
        ),
    );
    errors.check(
        req.init_containers.len() <= MAX_INIT_CONTAINERS,
        "initContainers",
        format!(
            "{} init containers, at most {MAX_INIT_CONTAINERS} are allowed",
            req.init_containers.len()
        ),
    );

    let volume_names = check_volumes(&mut errors, &req.volumes);
    let mut container_names = HashSet::new();
    let mut ports = HashSet::new();
    for (kind, list) in [
        ("initContainers", &req.init_containers),
        ("containers", &req.containers),
    ] {
        for (index, container) in list.iter().enumerate() {
            let path = format!("{kind}[{index}]");
            check_container(
                &mut errors,
                &path,
                container,
                &volume_names,
                kind == "initContainers",
            );
            errors.check(
                container_names.insert(container.name.as_str()),
                format!("{path}.name"),
                format!("duplicate container name {:?}", container.name),
            );
            if kind == "containers" {
                for (port_index, port) in container.ports.iter().enumerate() {
                    errors.check(
                        ports.insert((port.port, port.protocol)),
                        format!("{path}.ports[{port_index}].port"),
                        format!(
                            "port {} is already used by another container of the group",
                            port.port
                        ),
                    );
                }
            }
        }
    }

    let gpu_type = match &req.instance_type {
        Some(name) => {
            let t = gpu::lookup(name);
            errors.check(
                t.is_some(),
                "instanceType",
                format!(
                    "unknown GPU instance type `{name}` (families {})",
                    gpu::families().join(", ")
                ),
            );
            t
        }
        None => None,
    };
    let (cpu, memory) = match gpu_type {
        // A GPU type has its own size, outside the general size table.
        Some(t) => {
            for (field, given, want) in [("cpu", req.cpu, t.vcpu), ("memory", req.memory, t.memory)]
            {
                errors.check(
                    given.is_none_or(|g| (g - want).abs() < 1e-9),
                    field,
                    format!("must be {want} for instance type {} (or left out)", t.name),
                );
            }
            (Some(t.vcpu), Some(t.memory))
        }
        None => group_size(
            &mut errors,
            req.cpu,
            req.memory,
            &req.containers,
            &req.init_containers,
        ),
    };
    let gpus = match (gpu_type, req.gpu) {
        (Some(t), Some(n)) => {
            errors.check(
                n == t.gpus,
                "gpu",
                format!(
                    "must be {} for instance type {} (or left out)",
                    t.gpus, t.name
                ),
            );
            t.gpus
        }
        (Some(t), None) => t.gpus,
        (None, n) => {
            let n = n.unwrap_or(0);
            errors.check(
                n <= gpu::MAX_GPUS,
                "gpu",
                format!("must be 0..={}, got {n}", gpu::MAX_GPUS),
            );
            n
        }
    };
    let gpus_free = quota.gpu_quota.saturating_sub(quota.gpu_used);
    errors.check(
        gpus <= gpus_free,
        "gpu",
        format!(
            "{gpus} GPU exceeds the remaining GPU quota ({gpus_free} of {})",
            quota.gpu_quota
        ),
    );
    if let Some(cpu) = cpu {
        let available = quota.vcpu_quota - quota.vcpu_used;
        errors.check(
            cpu <= available + 1e-9,
            "cpu",
            format!(
                "{cpu} vCPU exceeds the remaining vCPU quota ({available} of {})",
                quota.vcpu_quota
            ),
        );
    }

    check_tags(&mut errors, "tags", &req.tags);
    check_credentials(
        &mut errors,
        "imageRegistryCredentials",
        &req.image_registry_credentials,
    );
    if let Some(context) = &req.security_context {
        let mut names = HashSet::new();
        for (index, sysctl) in context.sysctls.iter().enumerate() {
            let path = format!("securityContext.sysctls[{index}]");
            if let Err(reason) = check_sysctl_name(&sysctl.name) {
                errors.add(format!("{path}.name"), reason);
            }
            errors.check(
                names.insert(sysctl.name.as_str()),
                format!("{path}.name"),
                format!("duplicate sysctl {:?}", sysctl.name),
            );
            errors.check(
                !sysctl.value.is_empty() && !sysctl.value.contains('\0'),
                format!("{path}.value"),
                "must be a non-empty string without NUL",
            );
        }
    }
    if let Some(dns) = &req.dns_config {
        dns::check_dns_config(&mut errors, "dnsConfig", dns);
    }
    if let Some(storage) = req.ephemeral_storage {
        errors.check(
            storage.is_finite() && storage > 0.0 && storage <= MAX_EPHEMERAL_STORAGE_GIB,
            "ephemeralStorage",
            format!("must be more than 0 and at most {MAX_EPHEMERAL_STORAGE_GIB} GiB"),
        );
    }
    if let Some(grace) = req.termination_grace_period_seconds {
        errors.check(
            (0..=MAX_GRACE_PERIOD_SECONDS).contains(&grace),
            "terminationGracePeriodSeconds",
            format!("must be 0 to {MAX_GRACE_PERIOD_SECONDS}"),
        );
    }
    if let Some(id) = &req.image_cache_id {
        errors.check(
            is_resource_id(id, "imc"),
            "imageCacheId",
            "must be an image cache id (imc-...)",
        );
    }

    let spec = ContainerGroupSpec {
        name: req.name.clone(),
        cpu: cpu.unwrap_or_default(),
        memory: memory.unwrap_or_default(),
        restart_policy: req.restart_policy,
        containers: req.containers.clone(),
        init_containers: req.init_containers.clone(),
        volumes: req.volumes.clone(),
        image_registry_credentials: req.image_registry_credentials.clone(),
        tags: req.tags.clone(),
        security_context: req.security_context.clone(),
        ephemeral_storage: req.ephemeral_storage,
        termination_grace_period_seconds: req
            .termination_grace_period_seconds
            .unwrap_or(DEFAULT_GRACE_PERIOD_SECONDS),
        auto_match_image_cache: req.auto_match_image_cache,
        image_cache_id: req.image_cache_id.clone(),
        instance_type: req.instance_type.clone(),
        gpu: gpus,
        gpu_devices: vec![],
        dns_config: req.dns_config.clone(),
    };
    errors.finish(spec)
}

/// Normalised group size: from the group's cpu/memory, else the containers' sums, else the
/// default; then the containers must fit it. `None` when a violation was recorded.
fn group_size(
    errors: &mut Errors,
    cpu: Option<f64>,
    memory: Option<f64>,
    containers: &[Container],
    init_containers: &[Container],
) -> (Option<f64>, Option<f64>) {
    let sum_cpu: f64 = containers.iter().filter_map(|c| c.cpu).sum();
    let sum_memory: f64 = containers.iter().filter_map(|c| c.memory).sum();
    let max_init_cpu = init_containers
        .iter()
        .filter_map(|c| c.cpu)
        .fold(0.0, f64::max);
    let max_init_memory = init_containers
        .iter()
        .filter_map(|c| c.memory)
        .fold(0.0, f64::max);
    let requested_cpu = cpu.unwrap_or_else(|| positive_or(sum_cpu.max(max_init_cpu), DEFAULT_CPU));
    let requested_memory =
        memory.unwrap_or_else(|| positive_or(sum_memory.max(max_init_memory), DEFAULT_MEMORY));
    let (cpu, memory) = match normalise(requested_cpu, requested_memory) {
        Ok(size) => size,
        Err(SizeError::Cpu(reason)) => {
            errors.add("cpu", reason);
            return (None, None);
        }
        Err(SizeError::Memory(reason)) => {
            errors.add("memory", reason);
            return (None, None);
        }
    };
    // Running sums: the first container that overflows the group is the one named.
    let mut total_cpu = 0.0;
    let mut total_memory = 0.0;
    let mut fits = true;
    for (index, container) in containers.iter().enumerate() {
        total_cpu += container.cpu.unwrap_or(0.0);
        total_memory += container.memory.unwrap_or(0.0);
        if container.cpu.is_some() && total_cpu > cpu + 1e-9 {
            errors.add(
                format!("containers[{index}].cpu"),
                format!("the containers' cpu adds up to {total_cpu}, more than the group's {cpu}"),
            );
            fits = false;
            total_cpu = f64::NEG_INFINITY;
        }
        if container.memory.is_some() && total_memory > memory + 1e-9 {
            errors.add(
                format!("containers[{index}].memory"),
                format!(
                    "the containers' memory adds up to {total_memory} GiB, more than the group's {memory} GiB"
                ),
            );
            fits = false;
            total_memory = f64::NEG_INFINITY;
        }
    }
    for (index, container) in init_containers.iter().enumerate() {
        for (field, value, limit) in [
            ("cpu", container.cpu, cpu),
            ("memory", container.memory, memory),
        ] {
            if value.is_some_and(|value| value > limit + 1e-9) {
                errors.add(
                    format!("initContainers[{index}].{field}"),
                    format!(
                        "{} is more than the group's {limit}",
                        value.unwrap_or_default()
                    ),
                );
                fits = false;
            }
        }
    }
    if fits {
        (Some(cpu), Some(memory))
    } else {
        (Some(cpu), None)
    }
}

fn positive_or(value: f64, default: f64) -> f64 {
    if value > 0.0 {
        value
    } else {
        default
    }
}

/// DNS-1123 label: 1-63 of [a-z0-9-], starting and ending alphanumeric.
pub fn is_dns_label(name: &str) -> bool {
    is_dns_name(name, 63)
}

fn is_dns_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn is_resource_id(id: &str, prefix: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
}

fn check_group_name(errors: &mut Errors, field: &str, name: &str) {
    errors.check(
        is_dns_name(name, MAX_GROUP_NAME_LEN),
        field,
        format!(
            "must be 1-{MAX_GROUP_NAME_LEN} lowercase letters, digits or '-', starting and ending with a letter or digit"
        ),
    );
}

fn check_container(
    errors: &mut Errors,
    path: &str,
    container: &Container,
    volumes: &HashSet<&str>,
    init: bool,
) {
    errors.check(
        is_dns_label(&container.name),
        format!("{path}.name"),
        "must be a DNS-1123 label: 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit",
    );
    errors.check(
        !container.image.trim().is_empty() && !container.image.contains(char::is_whitespace),
        format!("{path}.image"),
        "must be a non-empty image reference without spaces",
    );
    for (field, value) in [("cpu", container.cpu), ("memory", container.memory)] {
        if let Some(value) = value {
            errors.check(
                value.is_finite() && value > 0.0,
                format!("{path}.{field}"),
                format!("must be a positive number, got {value}"),
            );
        }
    }
    for (field, list) in [("commands", &container.commands), ("args", &container.args)] {
        for (index, arg) in list.iter().enumerate() {
            errors.check(
                !arg.contains('\0'),
                format!("{path}.{field}[{index}]"),
                "must not contain NUL",
            );
        }
    }
    if let Some(dir) = &container.working_dir {
        errors.check(
            dir.starts_with('/'),
            format!("{path}.workingDir"),
            "must be an absolute path",
        );
    }
    for (index, env) in container.env.iter().enumerate() {
        errors.check(
            !env.key.is_empty() && !env.key.contains(['=', '\0']),
            format!("{path}.env[{index}].key"),
            "must be non-empty and contain neither '=' nor NUL",
        );
        errors.check(
            !env.value.contains('\0'),
            format!("{path}.env[{index}].value"),
            "must not contain NUL",
        );
    }
    for (index, port) in container.ports.iter().enumerate() {
        errors.check(
            (1..=65535).contains(&port.port),
            format!("{path}.ports[{index}].port"),
            "must be 1 to 65535",
        );
    }
    let mut mount_paths = HashSet::new();
    for (index, mount) in container.volume_mounts.iter().enumerate() {
        let mount_path = format!("{path}.volumeMounts[{index}]");
        errors.check(
            volumes.contains(mount.name.as_str()),
            format!("{mount_path}.name"),
            format!("no volume named {:?} is declared in volumes", mount.name),
        );
        errors.check(
            mount.mount_path.starts_with('/') && !has_dot_dot(&mount.mount_path),
            format!("{mount_path}.mountPath"),
            "must be an absolute path without '..'",
        );
        errors.check(
            mount_paths.insert(mount.mount_path.as_str()),
            format!("{mount_path}.mountPath"),
            format!("{:?} is mounted twice", mount.mount_path),
        );
        if let Some(sub_path) = &mount.sub_path {
            errors.check(
                is_relative_clean(sub_path),
                format!("{mount_path}.subPath"),
                "must be a relative path without '..'",
            );
        }
    }
    for (field, probe) in [
        ("livenessProbe", &container.liveness_probe),
        ("readinessProbe", &container.readiness_probe),
        ("startupProbe", &container.startup_probe),
    ] {
        if let Some(probe) = probe {
            let probe_path = format!("{path}.{field}");
            if init {
                errors.add(&probe_path, "init containers cannot have probes");
            }
            let before = errors.0.len();
            check_probe(errors, &probe_path, probe, field != "readinessProbe");
            if errors.0.len() == before {
                let kind = match field {
                    "livenessProbe" => ProbeKindName::Liveness,
                    "readinessProbe" => ProbeKindName::Readiness,
                    _ => ProbeKindName::Startup,
                };
                let json = serde_json::to_string(probe).unwrap_or_default();
                pod_check(
                    errors,
                    &probe_path,
                    annotations::parse_probe(field, &json, kind),
                );
            }
        }
    }
    if let Some(lifecycle) = &container.lifecycle {
        if init {
            errors.add(
                format!("{path}.lifecycle"),
                "init containers cannot have lifecycle hooks",
            );
        }
        for (field, handler) in [
            ("postStart", &lifecycle.post_start),
            ("preStop", &lifecycle.pre_stop),
        ] {
            if let Some(handler) = handler {
                let hook_path = format!("{path}.lifecycle.{field}");
                let before = errors.0.len();
                check_handler(errors, &hook_path, handler);
                if errors.0.len() == before {
                    let json = serde_json::to_string(handler).unwrap_or_default();
                    pod_check(errors, &hook_path, annotations::parse_hook(field, &json));
                }
            }
        }
    }
    errors.check(
        !container.tty || container.stdin,
        format!("{path}.tty"),
        "a tty needs stdin: true",
    );
}

fn has_dot_dot(path: &str) -> bool {
    path.split('/').any(|part| part == "..")
}

fn is_relative_clean(path: &str) -> bool {
    !path.is_empty() && !path.starts_with('/') && !has_dot_dot(path) && !path.contains('\0')
}

fn check_probe(errors: &mut Errors, path: &str, probe: &Probe, success_must_be_one: bool) {
    let handlers = usize::from(probe.exec.is_some())
        + usize::from(probe.http_get.is_some())
        + usize::from(probe.tcp_socket.is_some());
    errors.check(
        handlers == 1,
        path,
        format!("needs exactly one of exec, httpGet, tcpSocket (found {handlers})"),
    );
    if let Some(exec) = &probe.exec {
        check_exec_command(errors, &format!("{path}.exec.command"), &exec.command);
    }
    if let Some(http) = &probe.http_get {
        check_http_get(errors, &format!("{path}.httpGet"), http);
    }
    if let Some(tcp) = &probe.tcp_socket {
        errors.check(
            (1..=65535).contains(&tcp.port),
            format!("{path}.tcpSocket.port"),
            "must be 1 to 65535",
        );
    }
    for (field, value, min) in [
        ("initialDelaySeconds", probe.initial_delay_seconds, 0),
        ("periodSeconds", probe.period_seconds, 1),
        ("timeoutSeconds", probe.timeout_seconds, 1),
        ("successThreshold", probe.success_threshold, 1),
        ("failureThreshold", probe.failure_threshold, 1),
    ] {
        if let Some(value) = value {
            errors.check(
                value >= min,
                format!("{path}.{field}"),
                format!("must be at least {min}"),
            );
        }
    }
    if success_must_be_one {
        errors.check(
            probe.success_threshold.is_none_or(|value| value == 1),
            format!("{path}.successThreshold"),
            "must be 1 for liveness and startup probes",
        );
    }
}

fn check_handler(errors: &mut Errors, path: &str, handler: &LifecycleHandler) {
    let handlers = usize::from(handler.exec.is_some()) + usize::from(handler.http_get.is_some());
    errors.check(
        handlers == 1,
        path,
        format!("needs exactly one of exec, httpGet (found {handlers})"),
    );
    if let Some(exec) = &handler.exec {
        check_exec_command(errors, &format!("{path}.exec.command"), &exec.command);
    }
    if let Some(http) = &handler.http_get {
        check_http_get(errors, &format!("{path}.httpGet"), http);
    }
}

fn check_exec_command(errors: &mut Errors, path: &str, command: &[String]) {
    errors.check(
        !command.is_empty() && !command[0].is_empty(),
        path,
        "must name a command",
    );
}

fn check_http_get(errors: &mut Errors, path: &str, http: &crate::model::HttpGetAction) {
    errors.check(
        (1..=65535).contains(&http.port),
        format!("{path}.port"),
        "must be 1 to 65535",
    );
    if let Some(request_path) = &http.path {
        errors.check(
            request_path.starts_with('/'),
            format!("{path}.path"),
            "must start with '/'",
        );
    }
    if let Some(scheme) = &http.scheme {
        errors.check(
            scheme == "HTTP" || scheme == "HTTPS",
            format!("{path}.scheme"),
            "must be HTTP or HTTPS",
        );
    }
    for (index, header) in http.http_headers.iter().enumerate() {
        errors.check(
            !header.name.is_empty()
                && header
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b':'),
            format!("{path}.httpHeaders[{index}].name"),
            "must be a valid HTTP header name",
        );
    }
}

/// Checks volumes and returns the declared names.
fn check_volumes<'a>(errors: &mut Errors, volumes: &'a [Volume]) -> HashSet<&'a str> {
    let mut names = HashSet::new();
    for (index, volume) in volumes.iter().enumerate() {
        let path = format!("volumes[{index}]");
        let before = errors.0.len();
        check_volume(errors, &path, volume);
        if errors.0.len() == before {
            let json = volume.annotation_value().to_string();
            pod_check(
                errors,
                &path,
                annotations::parse_volume(&volume.name, &json),
            );
        }
        errors.check(
            names.insert(volume.name.as_str()),
            format!("{path}.name"),
            format!("duplicate volume name {:?}", volume.name),
        );
    }
    names
}

/// The pod (issue 6's annotation parser in eci-protocol) must accept what the API accepts: its
/// verdict is the last check, so limits it adds (e.g. configFile item size) are reported here
/// with the API's field path instead of failing later in the shim.
fn pod_check<T>(errors: &mut Errors, path: &str, verdict: Result<T, annotations::AnnotationError>) {
    if let Err(err) = verdict {
        let field = if err.field.is_empty() {
            path.to_string()
        } else {
            format!("{path}.{}", err.field)
        };
        errors.add(field, err.reason);
    }
}

fn check_volume(errors: &mut Errors, path: &str, volume: &Volume) {
    let path = path.to_string();
    {
        errors.check(
            is_dns_label(&volume.name),
            format!("{path}.name"),
            "must be a DNS-1123 label",
        );
        let sources = usize::from(volume.empty_dir.is_some())
            + usize::from(volume.config_file.is_some())
            + usize::from(volume.disk.is_some())
            + usize::from(volume.nfs.is_some());
        errors.check(
            sources == 1,
            &path,
            format!("needs exactly one of emptyDir, configFile, disk, nfs (found {sources})"),
        );
        if let Some(empty_dir) = &volume.empty_dir {
            errors.check(
                empty_dir.medium.is_empty() || empty_dir.medium == "Memory",
                format!("{path}.emptyDir.medium"),
                "must be \"\" or \"Memory\"",
            );
            if let Some(limit) = &empty_dir.size_limit {
                errors.check(
                    parse_quantity(limit).is_some_and(|bytes| bytes > 0),
                    format!("{path}.emptyDir.sizeLimit"),
                    format!("{limit:?} is not a positive quantity such as \"64Mi\""),
                );
            }
        }
        if let Some(config) = &volume.config_file {
            errors.check(
                !config.items.is_empty(),
                format!("{path}.configFile.items"),
                "needs at least one item",
            );
            let mut item_paths = HashSet::new();
            for (item_index, item) in config.items.iter().enumerate() {
                let item_path = format!("{path}.configFile.items[{item_index}]");
                errors.check(
                    is_relative_clean(&item.path),
                    format!("{item_path}.path"),
                    "must be a relative path without '..'",
                );
                errors.check(
                    item_paths.insert(item.path.as_str()),
                    format!("{item_path}.path"),
                    format!("duplicate path {:?}", item.path),
                );
                errors.check(
                    base64::engine::general_purpose::STANDARD
                        .decode(&item.content)
                        .is_ok(),
                    format!("{item_path}.content"),
                    "must be base64",
                );
                if let Some(mode) = item.mode {
                    errors.check(
                        mode <= 0o777,
                        format!("{item_path}.mode"),
                        "must be a file mode from 0 to 511 (0777)",
                    );
                }
            }
        }
        if let Some(disk) = &volume.disk {
            errors.check(
                disk.device.starts_with('/'),
                format!("{path}.disk.device"),
                "must be an absolute device or file path",
            );
            if let Some(fs_type) = &disk.fs_type {
                errors.check(
                    ["ext4", "ext3", "ext2", "xfs", "erofs", "btrfs"].contains(&fs_type.as_str()),
                    format!("{path}.disk.fsType"),
                    "must be one of ext4, ext3, ext2, xfs, erofs, btrfs",
                );
            }
        }
        if let Some(nfs) = &volume.nfs {
            errors.check(
                !nfs.server.is_empty() && !nfs.server.contains(char::is_whitespace),
                format!("{path}.nfs.server"),
                "must be a host name or address",
            );
            errors.check(
                nfs.path.starts_with('/'),
                format!("{path}.nfs.path"),
                "must be an absolute path",
            );
        }
    }
}

fn check_tags(errors: &mut Errors, path: &str, tags: &[crate::model::Tag]) {
    errors.check(
        tags.len() <= MAX_TAGS,
        path,
        format!("{} tags, at most {MAX_TAGS} are allowed", tags.len()),
    );
    let mut keys = HashSet::new();
    for (index, tag) in tags.iter().enumerate() {
        errors.check(
            !tag.key.is_empty() && tag.key.chars().count() <= MAX_TAG_LEN,
            format!("{path}[{index}].key"),
            format!("must be 1 to {MAX_TAG_LEN} characters"),
        );
        errors.check(
            tag.value.chars().count() <= MAX_TAG_LEN,
            format!("{path}[{index}].value"),
            format!("must be at most {MAX_TAG_LEN} characters"),
        );
        errors.check(
            keys.insert(tag.key.as_str()),
            format!("{path}[{index}].key"),
            format!("duplicate tag key {:?}", tag.key),
        );
    }
}

fn check_credentials(
    errors: &mut Errors,
    path: &str,
    credentials: &[crate::model::ImageRegistryCredential],
) {
    let mut servers = HashSet::new();
    for (index, cred) in credentials.iter().enumerate() {
        errors.check(
            !cred.server.is_empty()
                && !cred.server.contains("://")
                && !cred.server.contains(char::is_whitespace),
            format!("{path}[{index}].server"),
            "must be a registry host[:port] without a scheme",
        );
        errors.check(
            servers.insert(cred.server.as_str()),
            format!("{path}[{index}].server"),
            format!("duplicate credentials for {:?}", cred.server),
        );
        errors.check(
            !cred.user_name.is_empty(),
            format!("{path}[{index}].userName"),
            "must not be empty",
        );
    }
}

/// The manual's sysctl whitelist: kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*, and net.*
/// except net.core.rmem_max.
pub fn check_sysctl_name(name: &str) -> Result<(), String> {
    let well_formed = !name.is_empty()
        && name.split(['.', '/']).all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
    if !well_formed {
        return Err(format!("{name:?} is not a sysctl name"));
    }
    let allowed = name.starts_with("kernel.shm")
        || name.starts_with("kernel.msg")
        || name == "kernel.sem"
        || name.starts_with("fs.mqueue.")
        || (name.starts_with("net.") && name != "net.core.rmem_max");
    if allowed {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not allowed (only kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*, net.* except net.core.rmem_max)"
        ))
    }
}

/// Validates an update of `current` and returns the new spec and what changed. `quota` must
/// count the other groups only (`vcpu_used` without this group's cpu).
pub fn validate_update(
    current: &ContainerGroupSpec,
    req: &UpdateContainerGroupRequest,
    quota: &Quota,
) -> Result<ValidatedUpdate, ValidationErrors> {
    let mut errors = Errors::default();
    let mut next = spec_to_request(current);
    let mut changed = Vec::new();
    let mut seen = HashSet::new();
    for (index, update) in req.containers.iter().enumerate() {
        let path = format!("containers[{index}]");
        errors.check(
            seen.insert(update.name.as_str()),
            format!("{path}.name"),
            format!("container {:?} is updated twice", update.name),
        );
        let target = next
            .containers
            .iter_mut()
            .chain(next.init_containers.iter_mut())
            .find(|container| container.name == update.name);
        let Some(target) = target else {
            errors.add(
                format!("{path}.name"),
                format!("the group has no container named {:?}", update.name),
            );
            continue;
        };
        let before = target.clone();
        if let Some(image) = &update.image {
            target.image = image.clone();
        }
        if let Some(env) = &update.env {
            target.env = env.clone();
        }
        if update.cpu.is_some() {
            target.cpu = update.cpu;
        }
        if update.memory.is_some() {
            target.memory = update.memory;
        }
        if *target != before {
            changed.push(update.name.clone());
        }
    }
    if req.cpu.is_some() {
        next.cpu = req.cpu;
    }
    if req.memory.is_some() {
        next.memory = req.memory;
    }
    if let Some(policy) = req.restart_policy {
        next.restart_policy = policy;
    }
    if let Some(tags) = &req.tags {
        next.tags = tags.clone();
    }
    let spec = match validate_create(&next, quota) {
        // The group keeps the GPUs it holds.
        Ok(spec) => ContainerGroupSpec {
            gpu_devices: current.gpu_devices.clone(),
            ..spec
        },
        Err(ValidationErrors(found)) => {
            errors.0.extend(found);
            return Err(ValidationErrors(errors.0));
        }
    };
    let resized = spec.cpu != current.cpu || spec.memory != current.memory;
    errors.finish(ValidatedUpdate {
        spec,
        changed_containers: changed,
        resized,
    })
}

/// A stored spec as a request again (its cpu/memory are table sizes, so they stay).
pub fn spec_to_request(spec: &ContainerGroupSpec) -> CreateContainerGroupRequest {
    CreateContainerGroupRequest {
        name: spec.name.clone(),
        cpu: Some(spec.cpu),
        memory: Some(spec.memory),
        restart_policy: spec.restart_policy,
        containers: spec.containers.clone(),
        init_containers: spec.init_containers.clone(),
        volumes: spec.volumes.clone(),
        image_registry_credentials: spec.image_registry_credentials.clone(),
        tags: spec.tags.clone(),
        security_context: spec.security_context.clone(),
        ephemeral_storage: spec.ephemeral_storage,
        termination_grace_period_seconds: Some(spec.termination_grace_period_seconds),
        auto_match_image_cache: spec.auto_match_image_cache,
        image_cache_id: spec.image_cache_id.clone(),
        instance_type: spec.instance_type.clone(),
        gpu: (spec.instance_type.is_none() && spec.gpu > 0).then_some(spec.gpu),
        dns_config: spec.dns_config.clone(),
    }
}

/// Validates an image cache request; retention defaults to 7 days.
pub fn validate_image_cache(
    req: &CreateImageCacheRequest,
) -> Result<ImageCacheSpec, ValidationErrors> {
    let mut errors = Errors::default();
    check_group_name(&mut errors, "name", &req.name);
    errors.check(
        !req.images.is_empty(),
        "images",
        "at least one image is required",
    );
    errors.check(
        req.images.len() <= MAX_CACHE_IMAGES,
        "images",
        format!(
            "{} images, at most {MAX_CACHE_IMAGES} are allowed",
            req.images.len()
        ),
    );
    let mut seen = HashSet::new();
    for (index, image) in req.images.iter().enumerate() {
        errors.check(
            !image.trim().is_empty() && !image.contains(char::is_whitespace),
            format!("images[{index}]"),
            "must be a non-empty image reference without spaces",
        );
        errors.check(
            seen.insert(image.as_str()),
            format!("images[{index}]"),
            format!("duplicate image {image:?}"),
        );
    }
    check_credentials(
        &mut errors,
        "imageRegistryCredentials",
        &req.image_registry_credentials,
    );
    let retention_days = req.retention_days.unwrap_or(DEFAULT_RETENTION_DAYS);
    check_retention(&mut errors, retention_days);
    errors.finish(ImageCacheSpec {
        name: req.name.clone(),
        images: req.images.clone(),
        image_registry_credentials: req.image_registry_credentials.clone(),
        retention_days,
    })
}

/// Validates an image cache patch.
pub fn validate_image_cache_update(req: &UpdateImageCacheRequest) -> Result<(), ValidationErrors> {
    let mut errors = Errors::default();
    if let Some(name) = &req.name {
        check_group_name(&mut errors, "name", name);
    }
    if let Some(days) = req.retention_days {
        check_retention(&mut errors, days);
    }
    errors.finish(())
}

fn check_retention(errors: &mut Errors, days: u32) {
    errors.check(
        (1..=MAX_RETENTION_DAYS).contains(&days),
        "retentionDays",
        format!("must be 1 to {MAX_RETENTION_DAYS}"),
    );
}

#[cfg(test)]
mod tests;
