//! The host side of a pod's network in a namespace the test makes (root, `ip`): a veth whose
//! other end stays in the test's own namespace, as CNI's bridge plugin leaves it.

use super::*;
use std::{io::Read, process::Command, time::Duration};

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tc(netns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", netns, "tc"])
        .args(args)
        .output()
        .expect("run tc");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A named namespace with `eth0` (10.99.<n>.2/24, default route via .1, a permanent
/// neighbour) whose peer `<name>h` (10.99.<n>.1/24) is in the caller's namespace.
struct PodNamespace {
    name: String,
}

impl PodNamespace {
    fn new(n: u8) -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root (network namespaces)"
        );
        let name = format!("eci-shimnet-{}-{n}", std::process::id());
        let host_end = format!("ecih{}{n}", std::process::id() % 10000);
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ip(&[
            "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
        ]);
        ip(&["addr", "add", &format!("10.99.{n}.1/24"), "dev", &host_end]);
        ip(&["link", "set", &host_end, "up"]);
        let pod = |args: &[&str]| {
            let mut all = vec!["-n", ns.name.as_str()];
            all.extend_from_slice(args);
            ip(&all)
        };
        pod(&["link", "set", "lo", "up"]);
        pod(&[
            "link",
            "set",
            "eth0",
            "address",
            "0a:58:0a:63:00:02",
            "mtu",
            "1450",
        ]);
        pod(&["addr", "add", &format!("10.99.{n}.2/24"), "dev", "eth0"]);
        pod(&["addr", "add", "fd99::2/64", "dev", "eth0", "nodad"]);
        pod(&["link", "set", "eth0", "up"]);
        pod(&["route", "add", "default", "via", &format!("10.99.{n}.1")]);
        pod(&[
            "neigh",
            "add",
            &format!("10.99.{n}.7"),
            "lladdr",
            "aa:bb:cc:00:00:07",
            "dev",
            "eth0",
            "nud",
            "permanent",
        ]);
        ns
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }
}

impl Drop for PodNamespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

#[test]
fn every_interface_gets_a_tap_and_redirects_both_ways() {
    let ns = PodNamespace::new(1);
    let pod_dir = tempfile::tempdir().unwrap();
    let network = attach(&ns.path(), pod_dir.path()).unwrap();
    assert_eq!(network.nics.len(), 1, "{network:?}");
    let nic = &network.nics[0];
    assert_eq!(
        (nic.name.as_str(), nic.tap_name.as_str()),
        ("eth0", "tap0_eci")
    );
    assert_eq!(nic.mac, [0x0a, 0x58, 0x0a, 0x63, 0, 2]);

    let interface = &network.interfaces[0];
    assert_eq!(interface.mac, "0a:58:0a:63:00:02");
    assert_eq!(interface.mtu, 1450);
    let cidrs: Vec<&str> = interface
        .addresses
        .iter()
        .map(|a| a.cidr.as_str())
        .collect();
    assert_eq!(
        cidrs,
        vec!["10.99.1.2/24", "fd99::2/64"],
        "global addresses only"
    );
    let routes: Vec<(&str, &str)> = network
        .routes
        .iter()
        .map(|r| (r.destination.as_str(), r.gateway.as_str()))
        .collect();
    assert_eq!(
        routes,
        vec![("default", "10.99.1.1")],
        "kernel routes come with the address"
    );
    assert_eq!(network.neighbours.len(), 1);
    assert_eq!(network.neighbours[0].ip, "10.99.1.7");
    // What the shim sends is what the agent accepts.
    eci_protocol::validate::network::pod_network(
        &network.interfaces,
        &network.routes,
        &network.neighbours,
    )
    .unwrap();

    let links = ip(&["-n", &ns.name, "-o", "link", "show", "tap0_eci"]);
    assert!(
        links.contains("mtu 1450") && links.contains("UP"),
        "{links}"
    );
    for dev in ["eth0", "tap0_eci"] {
        let filters = tc(&ns.name, &["filter", "show", "dev", dev, "ingress"]);
        assert!(filters.contains("mirred"), "{dev}: {filters}");
    }
    assert!(pod_dir.path().join(RECORD).exists());

    // A frame sent to the pod reaches the tap: the host side's ARP request for the pod IP.
    let mut tap = File::from(nic.tap.try_clone().unwrap());
    // Any datagram to the pod IP makes the host side resolve it first.
    let probe = std::net::UdpSocket::bind("10.99.1.1:0").unwrap();
    let _ = probe.send_to(b"probe", "10.99.1.2:9");
    let mut frame = [0u8; 1600];
    // SAFETY: fcntl on an fd this test owns.
    unsafe {
        let flags = libc::fcntl(tap.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(tap.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut arp_for_pod = false;
    while !arp_for_pod && std::time::Instant::now() < deadline {
        match tap.read(&mut frame) {
            // Ethertype ARP, target protocol address 10.99.1.2.
            Ok(n) if n >= 42 => {
                arp_for_pod = frame[12..14] == [0x08, 0x06] && frame[38..42] == [10, 99, 1, 2]
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    assert!(arp_for_pod, "no ARP request for the pod IP reached the tap");

    drop(tap);
    drop(network);
    // The taps go with their last descriptor; release removes the filters and the record.
    let left = Command::new("ip")
        .args(["-n", &ns.name, "link", "show", "tap0_eci"])
        .output()
        .unwrap();
    assert!(!left.status.success(), "tap gone with its descriptor");
    release(pod_dir.path());
    assert!(!tc(&ns.name, &["qdisc", "show", "dev", "eth0"]).contains("ingress"));
    assert!(!pod_dir.path().join(RECORD).exists());
    release(pod_dir.path());
}

#[test]
fn an_empty_namespace_gives_no_nic_and_no_record() {
    assert!(nix::unistd::geteuid().is_root(), "this test needs root");
    let name = format!("eci-shimnet-empty-{}", std::process::id());
    ip(&["netns", "add", &name]);
    let pod_dir = tempfile::tempdir().unwrap();
    let network = attach(&Path::new("/run/netns").join(&name), pod_dir.path());
    let _ = Command::new("ip").args(["netns", "del", &name]).output();
    let network = network.unwrap();
    assert!(network.nics.is_empty() && network.interfaces.is_empty());
    assert!(!pod_dir.path().join(RECORD).exists());
}

#[test]
fn a_missing_namespace_is_named() {
    let pod_dir = tempfile::tempdir().unwrap();
    let err = attach(Path::new("/run/netns/eci-no-such-ns"), pod_dir.path()).unwrap_err();
    assert!(
        err.to_string().contains("/run/netns/eci-no-such-ns"),
        "{err}"
    );
}
