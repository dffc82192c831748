//! VM tier, through CRI: a pod in its VM on the CNI network. containerd 1.6 with CRI and the
//! CNI bridge runs in a network namespace the test makes (`eci_tests::cni`), the shim in VM
//! mode. The pod's IP is on guest eth0 (the shim's tap and tc redirects in CNI's namespace, the
//! agent's SetupSandbox), the namespace's host side reaches a server in the pod, the CRI DNS
//! config and hostname reach the containers, exec, logs, CRI port-forward (crictl) and
//! ContainerStats (from the guest) work, and removing the pod leaves no
//! tap, tc filter or process. A host-network pod gets no NIC.

use std::{path::Path, process::Command, time::Duration};

use eci_tests::{
    census::{self, Census},
    cni::{CriNetwork, CriNetworkOptions, ECI_HANDLER},
    cri::Cri,
    images::BUSYBOX_IMAGE,
};
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, DnsConfig, ExecSyncRequest,
    ImageSpec, LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig, PodSandboxMetadata, RemovePodSandboxRequest, RunPodSandboxRequest,
    StartContainerRequest, StopPodSandboxRequest,
};

const DNS_SERVERS: [&str; 2] = ["10.88.0.53", "192.0.2.53"];
const DNS_SEARCH: &str = "pods.eci.test";
/// The busybox httpd's port in the pod.
const HTTP_PORT: u16 = 8080;
/// What the pod serves, so the answer cannot come from anywhere else.
const PAGE: &str = "served-from-the-vm";

fn start_network(test: &str) -> CriNetwork {
    eci_tests::vm::require_vm_kvm(test);
    if let Some(missing) = eci_tests::cni::missing().or_else(eci_tests::images::missing_tools) {
        panic!("{test}: {missing} (install-deps.sh installs it)");
    }
    CriNetwork::start(CriNetworkOptions {
        eci_shim: Some(eci_tests::bins::require_workspace_binary(
            "containerd-shim-eci-v2",
        )),
        shim_config: Some(eci_tests::vm::vm_shim_config("")),
    })
    .expect("containerd with CRI and CNI in a test namespace")
}

fn pod_config(name: &str, log_dir: &Path, host_network: bool) -> PodSandboxConfig {
    let namespace_options = host_network.then(|| NamespaceOption {
        network: NamespaceMode::Node as i32,
        ..Default::default()
    });
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("{name}-{}", std::process::id()),
            namespace: "default".into(),
            attempt: 0,
        }),
        // As kubelet: a host-network pod has the host's UTS namespace, hence no hostname.
        hostname: if host_network { "" } else { name }.into(),
        log_directory: log_dir.display().to_string(),
        dns_config: Some(DnsConfig {
            servers: DNS_SERVERS.iter().map(|s| s.to_string()).collect(),
            searches: vec![DNS_SEARCH.into()],
            options: vec!["ndots:2".into()],
        }),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A running pod with one busybox container running `script`: (pod id, container id).
async fn run_pod(
    net: &CriNetwork,
    cri: &mut Cri,
    config: &PodSandboxConfig,
    script: &str,
) -> (String, String) {
    let pod_id = cri
        .runtime
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: ECI_HANDLER.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", net.containerd.log_tail()))
        .into_inner()
        .pod_sandbox_id;
    let container = ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: "main".into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: BUSYBOX_IMAGE.into(),
            ..Default::default()
        }),
        command: vec!["sh".into(), "-c".into(), script.into()],
        log_path: "main.log".into(),
        ..Default::default()
    };
    let container_id = cri
        .runtime
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod_id.clone(),
            config: Some(container),
            sandbox_config: Some(config.clone()),
        })
        .await
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", net.containerd.log_tail()))
        .into_inner()
        .container_id;
    cri.runtime
        .start_container(StartContainerRequest {
            container_id: container_id.clone(),
        })
        .await
        .unwrap_or_else(|e| panic!("StartContainer: {e}\n{}", net.containerd.log_tail()));
    (pod_id, container_id)
}

async fn exec(cri: &mut Cri, container_id: &str, script: &str) -> String {
    let answer = cri
        .runtime
        .exec_sync(ExecSyncRequest {
            container_id: container_id.into(),
            cmd: vec!["sh".into(), "-c".into(), script.into()],
            timeout: 120,
        })
        .await
        .unwrap_or_else(|e| panic!("ExecSync {script:?}: {e}"))
        .into_inner();
    let stdout = String::from_utf8_lossy(&answer.stdout).into_owned();
    assert_eq!(
        answer.exit_code,
        0,
        "{script:?}: {stdout}{}",
        String::from_utf8_lossy(&answer.stderr)
    );
    stdout
}

async fn remove_pod(cri: &mut Cri, pod_id: &str) {
    cri.runtime
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod_id.into(),
        })
        .await
        .expect("StopPodSandbox");
    cri.runtime
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.into(),
        })
        .await
        .expect("RemovePodSandbox");
}

/// The local port crictl port-forward listens on in the fixture's namespace.
const FORWARD_PORT: u16 = 18080;

/// `crictl port-forward` of the pod's HTTP_PORT to FORWARD_PORT, running in the fixture's
/// namespace (where containerd's streaming server listens) until dropped.
fn port_forward(net: &CriNetwork, pod_id: &str) -> eci_tests::vm::WatchedProcess {
    let crictl = eci_tests::containerd::tools_bin().join("crictl");
    assert!(
        crictl.is_file(),
        "{} is missing: run scripts/install-deps.sh",
        crictl.display()
    );
    let mut command = Command::new("nsenter");
    command
        .arg(format!("--net={}", net.netns.path().display()))
        .arg("--")
        .arg(&crictl)
        .arg("--runtime-endpoint")
        .arg(format!("unix://{}", net.socket().display()))
        .args(["--timeout", "30s", "port-forward", pod_id])
        .arg(format!("{FORWARD_PORT}:{HTTP_PORT}"));
    let mut process = eci_tests::vm::WatchedProcess::spawn(&mut command).expect("start crictl");
    if process
        .wait_for(&["Forwarding from"], Duration::from_secs(60))
        .is_none()
    {
        panic!("crictl port-forward did not start: {}", process.output());
    }
    process
}

/// `args` run in the network namespace at `netns` (nsenter: the mounts stay the test's).
fn in_netns(netns: &Path, args: &[&str]) -> std::process::Output {
    Command::new("nsenter")
        .arg(format!("--net={}", netns.display()))
        .arg("--")
        .args(args)
        .output()
        .expect("run nsenter")
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "VM tier: needs /dev/kvm backed by VMX or SVM; `make test` runs it in scripts/testhost"]
async fn a_vm_pod_on_the_cni_network_serves_its_ip_and_leaves_nothing() {
    let net = start_network("a_vm_pod_on_the_cni_network_serves_its_ip_and_leaves_nothing");
    let mut cri = Cri::connect(net.socket().to_path_buf())
        .await
        .expect("connect CRI");
    let logs = tempfile::tempdir().unwrap();
    let baseline = Census::take(&net.containerd, &[]);

    let config = pod_config("webpod", logs.path(), false);
    let script = format!(
        "mkdir -p /www && echo {PAGE} > /www/index.html && echo web up && \
         exec httpd -f -p {HTTP_PORT} -h /www"
    );
    let (pod_id, container_id) = run_pod(&net, &mut cri, &config, &script).await;
    let pod_dir =
        eci_shim::paths::PodPaths::new(&net.socket().display().to_string(), "k8s.io", &pod_id).dir;
    let (pod_ip, pod_netns) = cri
        .pod_ip_and_netns(&pod_id)
        .await
        .expect("PodSandboxStatus");
    assert!(
        pod_ip.starts_with("10.88."),
        "CNI gave the pod an address: {pod_ip:?}"
    );
    let pod_netns = std::path::PathBuf::from(pod_netns);
    assert!(
        pod_netns.exists(),
        "CNI's namespace {}",
        pod_netns.display()
    );

    // The host side in CNI's namespace: a tap beside eth0, redirected both ways.
    let links = text(&in_netns(&pod_netns, &["ip", "-o", "link", "show"]));
    assert!(
        links.contains("tap0_eci"),
        "tap in the pod namespace: {links}"
    );
    for dev in ["eth0", "tap0_eci"] {
        let filters = text(&in_netns(
            &pod_netns,
            &["tc", "filter", "show", "dev", dev, "ingress"],
        ));
        assert!(
            filters.contains("mirred"),
            "{dev}'s ingress redirect: {filters}"
        );
    }

    // In the guest: eth0 carries the pod IP, CRI's DNS config and hostname are the pod's.
    let eth0 = exec(&mut cri, &container_id, "ip -4 addr show eth0").await;
    assert!(
        eth0.contains(&format!("inet {pod_ip}/")),
        "guest eth0 has {pod_ip}: {eth0}"
    );
    let guest_kernel = exec(&mut cri, &container_id, "uname -r").await;
    let host_kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_ne!(
        guest_kernel.trim(),
        host_kernel.trim(),
        "the container runs in the VM"
    );
    let resolv = exec(&mut cri, &container_id, "cat /etc/resolv.conf").await;
    for server in DNS_SERVERS {
        assert!(
            resolv.contains(&format!("nameserver {server}")),
            "resolv.conf names {server}: {resolv}"
        );
    }
    assert!(resolv.contains(DNS_SEARCH), "search domain: {resolv}");
    assert_eq!(
        exec(&mut cri, &container_id, "hostname").await.trim(),
        "webpod"
    );
    // The default route leaves through eth0 towards the bridge.
    let routes = exec(&mut cri, &container_id, "ip route show default").await;
    assert!(
        routes.contains("via 10.88.0.1") && routes.contains("eth0"),
        "default route: {routes}"
    );

    // From the bridge's side to the server in the guest, through veth, tc and tap.
    let url = format!("http://{pod_ip}:{HTTP_PORT}/index.html");
    let page = net
        .get_from_host_side(&url)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(page.trim(), PAGE, "GET {url}");

    // CRI port-forward, as kubectl's through the kubelet: crictl asks containerd, which
    // connects to localhost:HTTP_PORT in the pod's namespace; the shim carries that to the guest.
    let forwarded = format!("http://127.0.0.1:{FORWARD_PORT}/index.html");
    let crictl = port_forward(&net, &pod_id);
    let page = net
        .get_from_host_side(&forwarded)
        .unwrap_or_else(|e| panic!("port-forward: {e}\n{}", net.containerd.log_tail()));
    assert_eq!(
        page.trim(),
        PAGE,
        "GET {forwarded} through crictl port-forward"
    );
    // Its streaming connection must not count as something the pod left in containerd.
    drop(crictl);

    // ContainerStats comes from the container's cgroup in the guest: a process of the
    // container holding 24 MiB of its own memory shows in the working set. (Not a file in
    // /dev/shm: CRI's pod shm reaches the guest over virtio-fs, so it is page cache there.)
    exec(
        &mut cri,
        &container_id,
        "awk 'BEGIN { s = sprintf(\"%25165824s\", \"\"); system(\"sleep 3600\") }' \
         </dev/null >/dev/null 2>&1 &",
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (cpu, working_set) = cri
            .cpu_and_working_set(&container_id)
            .await
            .unwrap_or_else(|e| panic!("ContainerStats: {e}"));
        if cpu.is_some_and(|v| v > 0) && working_set.is_some_and(|v| v >= 24 << 20) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ContainerStats of the guest's container: cpu {cpu:?}, working set {working_set:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Container logs went through the shim to CRI's log file.
    let log = std::fs::read_to_string(logs.path().join("main.log")).unwrap_or_default();
    assert!(log.contains("web up"), "container log: {log:?}");

    remove_pod(&mut cri, &pod_id).await;
    // Nothing of the pod stays: no process, pod directory, mount or cgroup (census), and, if
    // CNI's namespace is still there, no tap, ingress qdisc or port-forward redirect in it.
    let (census, leaks) = census::settle(
        &net.containerd,
        std::slice::from_ref(&pod_dir),
        &baseline,
        Duration::from_secs(60),
    );
    assert!(leaks.is_empty(), "left behind: {leaks:?}\n{census:?}");
    if pod_netns.exists() {
        let links = text(&in_netns(&pod_netns, &["ip", "-o", "link", "show"]));
        assert!(!links.contains("tap0_eci"), "tap left: {links}");
        let qdiscs = text(&in_netns(&pod_netns, &["tc", "qdisc", "show"]));
        assert!(!qdiscs.contains("ingress"), "ingress qdisc left: {qdiscs}");
        let nat = text(&in_netns(&pod_netns, &["iptables", "-t", "nat", "-S"]));
        assert!(
            !nat.contains("ECI-PORT-FORWARD"),
            "port-forward redirect left: {nat}"
        );
    }
    let out = in_netns(
        &net.netns.path(),
        &["wget", "-q", "-O", "-", "-T", "3", &url],
    );
    assert!(
        !out.status.success(),
        "nothing answers at {url} after removal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "VM tier: needs /dev/kvm backed by VMX or SVM; `make test` runs it in scripts/testhost"]
async fn a_host_network_vm_pod_gets_no_nic() {
    let net = start_network("a_host_network_vm_pod_gets_no_nic");
    let mut cri = Cri::connect(net.socket().to_path_buf())
        .await
        .expect("connect CRI");
    let logs = tempfile::tempdir().unwrap();
    let config = pod_config("hostnet", logs.path(), true);
    let (pod_id, container_id) = run_pod(&net, &mut cri, &config, "exec sleep 600").await;
    let nics = exec(&mut cri, &container_id, "ls /sys/class/net").await;
    assert_eq!(
        nics.split_whitespace().collect::<Vec<_>>(),
        vec!["lo"],
        "the guest of a pod without a network namespace has loopback only"
    );
    remove_pod(&mut cri, &pod_id).await;
}
