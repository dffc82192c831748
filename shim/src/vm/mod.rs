//! VM mode (`hypervisor = "eci-vmm"`): every pod is an `eci-vmm` microVM.
//!
//! Per pod the shim starts `virtiofsd` (serving the pod's `shared/` directory: container root
//! filesystems and host binds) and `eci-vmm` (jailed, in the pod's cgroup and network
//! namespace, configured by one JSON document), then reaches the agent over the VMM's hybrid
//! vsock. Either process dying ends the other; the sandbox ends when both are gone, and
//! [`teardown`] releases what they held on the host (cgroup, sockets).
//!
//! The pod's network namespace (CNI's, or the holder's of [`netns`]) gets a tap per interface
//! ([`net`]), handed to eci-vmm, which starts in that namespace; `disk` volumes become virtio-blk
//! devices ([`disks`]).
//!
//! Files in the pod directory: `vm.json` (the VMM's config), `console.log` (the guest's serial
//! console), `vmm.log` and `virtiofsd.log` (their own messages), `sock/` (hybrid vsock, the
//! VMM's control socket, virtiofsd's socket), `jail/` (the empty mount point of the VMM's jail),
//! `sandbox.pid` (the VMM) and `virtiofsd.pid`, `vmm.cgroup` (the VMM's cgroup path), `net.json`
//! (the namespace and interfaces with tc redirects), `netns-holder.pid` (while a holder lives).

pub mod disks;
mod ending;
pub mod kvm;
pub mod net;
pub mod netns;
pub mod port_forward;
mod process;
pub mod share;
pub mod sizing;
pub mod spec;
mod stall;

use std::{
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    time::Duration,
};

use async_trait::async_trait;
use eci_protocol::agent::StorageMount;
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use tokio::sync::oneshot;

use crate::{
    agent::Endpoint,
    config::{PodSize, ShimConfig},
    hypervisor::{
        find_binary, GuestNetwork, GuestShare, Hypervisor, LaunchRequest, Launched, SandboxError,
    },
    paths::PodPaths,
    reaper::ExitSubscription,
    vfio,
};

/// Guest CID of every pod VM (each VM has its own vsock device and host socket).
const GUEST_CID: u64 = 3;
/// The guest kernel's command line: serial console, no TSC calibration (a VM's TSC is stable),
/// a reset instead of a reboot and at once after a panic, so the VMM exits.
const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 tsc=reliable no_timer_check quiet";

pub struct EciVmm {
    vmm: PathBuf,
    virtiofsd: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
    default_size: PodSize,
    cmdline_extra: String,
    agent_timeout: Duration,
    vfio_pool: PathBuf,
}

/// The first of `candidates` that is a file.
fn first_file(candidates: impl IntoIterator<Item = PathBuf>) -> Option<PathBuf> {
    candidates.into_iter().find(|p| p.is_file())
}

/// `<prefix>/share/eci/<name>` for the prefix the shim binary is installed under, then the usual
/// prefixes (`make install` puts the guest images there).
fn installed_image(name: &str) -> Option<PathBuf> {
    let beside = std::env::current_exe().ok().and_then(|exe| {
        exe.parent()?
            .parent()
            .map(|p| p.join("share/eci").join(name))
    });
    first_file(
        beside.into_iter().chain(
            ["/usr/local/share/eci", "/usr/share/eci"]
                .iter()
                .map(|d| Path::new(d).join(name)),
        ),
    )
}

impl EciVmm {
    /// Checks that this host can run pod VMs (a KVM that boots Linux guests, the binaries and
    /// the guest images) before any pod is started: a pod must never wait for a guest that
    /// cannot boot.
    pub fn new(config: &ShimConfig) -> Result<Self, SandboxError> {
        kvm::check()?;
        let missing =
            |name: &'static str, field: &'static str| SandboxError::BinaryNotFound { name, field };
        let vmm = match &config.vmm_path {
            Some(p) => p.clone(),
            None => find_binary("eci-vmm").ok_or(missing("eci-vmm", "vmm_path"))?,
        };
        let virtiofsd = match &config.virtiofsd_path {
            Some(p) => p.clone(),
            None => find_binary("virtiofsd")
                .or_else(|| first_file([PathBuf::from("/opt/eci-tools/bin/virtiofsd")]))
                .ok_or(missing("virtiofsd", "virtiofsd_path"))?,
        };
        let image = |configured: &Option<PathBuf>, name: &str, field: &'static str| {
            let path = match configured {
                Some(p) => Some(p.clone()),
                None => installed_image(name),
            };
            path.filter(|p| p.is_file())
                .ok_or_else(|| SandboxError::GuestImage {
                    field,
                    path: configured.clone(),
                })
        };
        Ok(Self {
            vmm,
            virtiofsd,
            kernel: image(&config.kernel, "vmlinux", "kernel")?,
            initrd: image(&config.initrd, "initramfs.cpio.zst", "initrd")?,
            default_size: config.default_pod_size.clone(),
            cmdline_extra: config.kernel_cmdline.clone().unwrap_or_default(),
            agent_timeout: Duration::from_secs(config.agent_timeout_secs),
            vfio_pool: config
                .vfio_pool
                .clone()
                .unwrap_or_else(|| PathBuf::from(vfio::DEFAULT_POOL_FILE)),
        })
    }

    fn vmm_config(
        &self,
        pod: &PodPaths,
        size: &sizing::VmSize,
        nics: &[net::PodNic],
        disks: &[disks::PodDisk],
        devices: &vfio::PodVfio,
    ) -> serde_json::Value {
        let cmdline = format!("{CMDLINE} {}", self.cmdline_extra);
        let mut binds = serde_json::json!([
            {"source": self.kernel, "target": "/kernel", "read_only": true},
            {"source": self.initrd, "target": "/initrd", "read_only": true},
            {"source": "/dev/kvm", "target": "/dev/kvm"},
            {"source": pod.console_log(), "target": "/console.log"},
            {"source": pod.socket_dir(), "target": "/sock"},
        ]);
        let block: Vec<serde_json::Value> = disks
            .iter()
            .map(|d| {
                binds
                    .as_array_mut()
                    .expect("an array")
                    .push(serde_json::json!({
                        "source": d.host, "target": d.jail_path(), "read_only": d.read_only,
                    }));
                serde_json::json!({"path": d.jail_path(), "read_only": d.read_only})
            })
            .collect();
        serde_json::json!({
            "kernel": "/kernel",
            "initrd": "/initrd",
            "cmdline": cmdline.trim(),
            "vcpus": size.vcpus,
            "memory_mib": size.guest_memory_mib,
            "serial": "/console.log",
            "vsock": {"cid": GUEST_CID, "uds": "/sock/vsock.sock"},
            "fs": [{"socket": "/sock/fs.sock", "tag": share::SHARE_TAG}],
            "net": net::vmm_config(nics, VMM_FIRST_TAP_FD),
            "block": block,
            "api_sock": format!("/sock/{}", stall::VMM_SOCKET),
            // eci-vmm binds what VFIO needs into its jail itself (its `vfio::jail_binds`).
            "vfio": devices.devices.iter().map(|d| d.bdf.clone()).collect::<Vec<_>>(),
            "jail": {"root": pod.jail_dir(), "binds": binds},
        })
    }
}

/// Where the taps handed to eci-vmm start (0-2 are its stdio).
const VMM_FIRST_TAP_FD: i32 = 3;

/// The network namespace the spec puts the pod in, if it names one.
pub fn netns_path(spec: &Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|ns| ns.typ() == LinuxNamespaceType::Network)?
        .path()
        .clone()
}

/// Whether the spec asks for a new network namespace (one without a path: nerdctl, Docker,
/// ctr): the pod's own, which a createRuntime hook may fill.
pub fn wants_new_netns(spec: &Spec) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_ref())
        .is_some_and(|ns| {
            ns.iter()
                .any(|n| n.typ() == LinuxNamespaceType::Network && n.path().is_none())
        })
}

/// The VMM's host cgroup: the sandbox's `linux.cgroupsPath` when it is a cgroupfs path, else
/// `/eci/<pod id>`.
fn vmm_cgroup(spec: &Spec, pod_id: &str) -> String {
    spec.linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().as_ref())
        .map(|p| p.display().to_string())
        .filter(|p| p.starts_with('/') && !p.contains(':') && !p.contains(".."))
        .unwrap_or_else(|| format!("/eci/{pod_id}"))
}

#[async_trait]
impl Hypervisor for EciVmm {
    fn name(&self) -> &'static str {
        "eci-vmm"
    }

    fn isolation_note(&self) -> &'static str {
        "VM mode (hypervisor = \"eci-vmm\"): the pod runs in its own microVM"
    }

    fn agent_timeout(&self) -> Duration {
        self.agent_timeout
    }

    fn guest_share(&self, _pod: &PodPaths) -> GuestShare {
        GuestShare {
            dir: PathBuf::from(share::GUEST_SHARE_DIR),
            storages: vec![StorageMount {
                source: share::SHARE_TAG.into(),
                fstype: "virtiofs".into(),
                mount_point: share::GUEST_SHARE_DIR.into(),
                ..Default::default()
            }],
            host_pids: false,
        }
    }

    fn diagnostics(&self, pod: &PodPaths) -> String {
        format!(
            "guest console: {}; eci-vmm: {}; virtiofsd: {}",
            tail(&pod.console_log(), 30),
            tail(&pod.vmm_log(), 4),
            tail(&pod.virtiofsd_log(), 4)
        )
    }

    fn running_state(&self, pod: &PodPaths) -> Option<String> {
        Some(stall::report(pod))
    }

    async fn launch(
        &self,
        pod: &PodPaths,
        request: &LaunchRequest<'_>,
    ) -> Result<Launched, SandboxError> {
        let size = sizing::vm_size(request.spec, &self.default_size)?;
        let pool = vfio::DevicePool::load(&self.vfio_pool)?;
        let devices = vfio::PodVfio::for_sandbox(request.spec, pool, &vfio::Host::system())?;
        for (i, d) in devices.devices.iter().enumerate() {
            log::info!(
                "pod {}: passes {} (IOMMU group {}) through as {} (guest driver {})",
                request.pod_id,
                d.bdf,
                d.group,
                vfio::PodVfio::guest_address(i),
                if d.guest.driver.is_empty() {
                    "of the guest kernel"
                } else {
                    &d.guest.driver
                }
            );
        }
        log::info!(
            "pod {}: VM of {} vCPU(s), {} MiB guest memory (pod {} vCPU / {} MiB from {})",
            request.pod_id,
            size.vcpus,
            size.guest_memory_mib,
            size.cpu,
            size.pod_memory_mib,
            size.source
        );
        let io = |path: PathBuf| move |source| SandboxError::PodDir { path, source };
        for dir in [pod.socket_dir(), pod.jail_dir()] {
            std::fs::create_dir_all(&dir).map_err(io(dir.clone()))?;
        }
        std::fs::File::create(pod.console_log()).map_err(io(pod.console_log()))?;
        let pod_disks =
            disks::from_spec(request.spec).map_err(|e| SandboxError::Disk(Box::new(e)))?;
        let netns = match request.netns {
            Some(path) => Some(std::fs::File::open(path).map_err(io(path.to_owned()))?),
            None => None,
        };
        let network = match request.netns {
            Some(path) => {
                let (path, dir) = (path.to_owned(), pod.dir.clone());
                tokio::task::spawn_blocking(move || net::attach(&path, &dir))
                    .await
                    .map_err(|e| io(pod.dir.clone())(std::io::Error::other(e)))??
            }
            None => net::PodNetwork::default(),
        };
        for nic in &network.nics {
            let interface = network.interfaces.iter().find(|i| i.name == nic.name);
            log::info!(
                "pod {}: interface {} ({}) through {}",
                request.pod_id,
                nic.name,
                interface
                    .map(|i| i
                        .addresses
                        .iter()
                        .map(|a| a.cidr.as_str())
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default(),
                nic.tap_name
            );
        }
        // From here on, a failure must release what attach made in the namespace.
        let release_network = |e: SandboxError| {
            net::release(&pod.dir);
            e
        };
        let config_path = pod.vmm_config();
        let config = serde_json::to_vec_pretty(&self.vmm_config(
            pod,
            &size,
            &network.nics,
            &pod_disks,
            &devices,
        ))
        .map_err(|e| io(config_path.clone())(std::io::Error::other(e)))
        .map_err(release_network)?;
        std::fs::write(&config_path, config)
            .map_err(io(config_path.clone()))
            .map_err(release_network)?;
        let cgroup = vmm_cgroup(request.spec, request.pod_id);
        std::fs::write(pod.vmm_cgroup_file(), &cgroup)
            .map_err(io(pod.vmm_cgroup_file()))
            .map_err(release_network)?;
        let cgroup_procs = process::cgroup_procs(&cgroup, size.cpu, size.vcpus)
            .map_err(io(PathBuf::from(&cgroup)))
            .map_err(release_network)?;

        // virtiofsd listens on a socket made here, so eci-vmm can connect at once.
        let fs_socket = pod.socket_dir().join("fs.sock");
        let _ = std::fs::remove_file(&fs_socket);
        let listener = std::os::unix::net::UnixListener::bind(&fs_socket)
            .map_err(io(fs_socket.clone()))
            .map_err(release_network)?;
        let spawn = |binary: &Path| {
            let binary = binary.to_owned();
            move |source| SandboxError::Spawn { binary, source }
        };
        let fs_exit = ExitSubscription::new()
            .await
            .map_err(spawn(&self.virtiofsd))
            .map_err(release_network)?;
        let shared = pod.shared_dir();
        let fs_pid = process::Child {
            program: &self.virtiofsd,
            args: vec![
                "--fd=3".into(),
                format!("--shared-dir={}", shared.display()),
                "--sandbox=namespace".into(),
                "--seccomp=kill".into(),
                "--cache=auto".into(),
                "--announce-submounts".into(),
                "--inode-file-handles=never".into(),
                "--thread-pool-size=0".into(),
                "--log-level=info".into(),
            ],
            log: &pod.virtiofsd_log(),
            pass_fds: vec![listener.as_raw_fd()],
            netns: None,
            cgroup_procs: &cgroup_procs,
        }
        .spawn()
        .map_err(spawn(&self.virtiofsd))
        .map_err(release_network)?;
        drop(listener);
        std::fs::write(pod.virtiofsd_pid_file(), fs_pid.to_string())
            .map_err(io(pod.virtiofsd_pid_file()))?;

        let vmm_exit = match ExitSubscription::new().await {
            Ok(s) => s,
            Err(e) => {
                process::kill(fs_pid);
                return Err(release_network(spawn(&self.vmm)(e)));
            }
        };
        let vmm_pid = match (process::Child {
            program: &self.vmm,
            args: vec!["--config".into(), config_path.display().to_string()],
            log: &pod.vmm_log(),
            pass_fds: network.nics.iter().map(|n| n.tap.as_raw_fd()).collect(),
            netns: netns.as_ref().map(|f| f.as_raw_fd()),
            cgroup_procs: &cgroup_procs,
        })
        .spawn()
        {
            Ok(pid) => pid,
            Err(e) => {
                process::kill(fs_pid);
                return Err(release_network(spawn(&self.vmm)(e)));
            }
        };
        // eci-vmm holds the taps now: they go when it does.
        let net::PodNetwork {
            nics,
            interfaces,
            routes,
            neighbours,
        } = network;
        let has_nics = !nics.is_empty();
        drop(nics);
        std::fs::write(pod.pid_file(), vmm_pid.to_string()).map_err(io(pod.pid_file()))?;
        let endpoint = Endpoint::HybridVsock {
            uds: pod.socket_dir().join("vsock.sock"),
        };
        // CRI port-forward connects inside the namespace; without it the pod still runs.
        let forwarder = match request.netns {
            Some(netns) if has_nics => port_forward::start(netns, endpoint.clone())
                .await
                .map_err(|e| {
                    log::warn!(
                        "pod {}: no CRI port-forward: {}",
                        request.pod_id,
                        crate::error::chain(&e)
                    )
                })
                .ok(),
            _ => None,
        };

        let (exited_tx, exited) = oneshot::channel();
        let pod_paths = pod.clone();
        tokio::spawn(async move {
            let code = ending::both_ended(
                ending::Watched {
                    pid: vmm_pid,
                    exit: vmm_exit.watch(vmm_pid),
                },
                ending::Watched {
                    pid: fs_pid,
                    exit: fs_exit.watch(fs_pid),
                },
                &pod_paths.vmm_log(),
            )
            .await;
            log::info!(
                "eci-vmm (pid {vmm_pid}) exited: {}",
                ending::exit_text(code)
            );
            drop(forwarder);
            teardown(&pod_paths);
            let _ = exited_tx.send(code);
        });
        Ok(Launched {
            pid: vmm_pid,
            endpoint,
            exited,
            network: GuestNetwork {
                interfaces,
                routes,
                neighbours,
            },
            vfio: devices,
        })
    }
}

/// Releases what a pod's VM held on the host once eci-vmm and virtiofsd are gone: the tc
/// redirects in the pod's network namespace (the taps went with eci-vmm) and their cgroup.
/// Also run by the `delete` action after a shim crash.
pub fn teardown(pod: &PodPaths) {
    net::release(&pod.dir);
    netns::kill_left_behind(&pod.dir);
    if let Ok(cgroup) = std::fs::read_to_string(pod.vmm_cgroup_file()) {
        for left in crate::cgroups::remove(cgroup.trim()) {
            log::warn!("VMM cgroup {} stays: not empty", left.display());
        }
    }
}

/// Whether `pid` is still the pod's `program` (pid files outlive the processes they name).
pub fn process_is_ours(pid: i32, program: &str, needle: &str) -> bool {
    process::is_ours(pid, program, needle)
}

/// The last `lines` lines of a log file, joined with " | ".
pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let last: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .rev()
        .take(lines)
        .collect();
    if last.is_empty() {
        return "(empty)".into();
    }
    last.into_iter().rev().collect::<Vec<_>>().join(" | ")
}
