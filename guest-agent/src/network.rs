//! Guest mode: the pod's network from SetupSandbox, applied to the guest's network namespace
//! (the one every container of a VM pod shares): each interface is the NIC with its MAC,
//! renamed to the pod's name for it, with its MTU and addresses, up; then routes and
//! neighbours; the resolver configuration and /etc/hosts. Requests come validated
//! (`eci_protocol::validate::setup_sandbox`); repeating SetupSandbox changes nothing (EEXIST is
//! success).

use std::net::IpAddr;
use std::path::Path;

use eci_netlink::{LinkChange, Netlink, NetlinkError, NewRoute};
use eci_protocol::validate::network::{format_mac, Dns, PodNetwork};

use crate::error::{AgentError, Result};

fn netlink(what: String) -> impl FnOnce(NetlinkError) -> AgentError {
    move |e| AgentError::io(what, std::io::Error::other(crate::error::error_chain(&e)))
}

fn exists_ok(
    result: std::result::Result<(), NetlinkError>,
) -> std::result::Result<(), NetlinkError> {
    match result {
        Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

/// Configures the interfaces, routes and neighbours of `network`.
pub fn apply(network: &PodNetwork) -> Result<()> {
    if network.interfaces.is_empty() {
        return Ok(());
    }
    let mut nl = Netlink::new().map_err(netlink("open netlink".into()))?;
    let links = nl
        .links()
        .map_err(netlink("list the guest's NICs".into()))?;
    let mut indexes = Vec::with_capacity(network.interfaces.len());
    for (n, wanted) in network.interfaces.iter().enumerate() {
        let link = links
            .iter()
            .find(|l| l.mac == Some(wanted.mac))
            .ok_or_else(|| {
                AgentError::FailedPrecondition(format!(
                    "interfaces[{n}]: the guest has no NIC with MAC {} (NICs: {})",
                    format_mac(&wanted.mac),
                    links
                        .iter()
                        .filter(|l| !l.loopback)
                        .map(|l| format!(
                            "{} {}",
                            l.name,
                            l.mac.map(|m| format_mac(&m)).unwrap_or_default()
                        ))
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        indexes.push((link.index, link.name.clone()));
    }
    // Renames go through temporary names: two NICs may swap theirs.
    for (n, (index, current)) in indexes.iter().enumerate() {
        if *current != network.interfaces[n].name {
            let down = LinkChange {
                name: Some(format!("ecitmp{n}")),
                up: Some(false),
                ..Default::default()
            };
            nl.set_link(*index, &down)
                .map_err(netlink(format!("rename {current}")))?;
        }
    }
    for (wanted, (index, _)) in network.interfaces.iter().zip(&indexes) {
        let what = |step: &str| format!("interface {}: {step}", wanted.name);
        nl.set_link(
            *index,
            &LinkChange {
                name: Some(wanted.name.clone()),
                mtu: wanted.mtu,
                ..Default::default()
            },
        )
        .map_err(netlink(what("name and MTU")))?;
        nl.set_link(
            *index,
            &LinkChange {
                up: Some(true),
                ..Default::default()
            },
        )
        .map_err(netlink(what("up")))?;
        for address in &wanted.addresses {
            exists_ok(nl.add_address(*index, address.ip, address.prefix))
                .map_err(netlink(what(&format!("address {address}"))))?;
        }
        tracing::info!(
            interface = %wanted.name,
            mac = %format_mac(&wanted.mac),
            addresses = ?wanted.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "interface up"
        );
    }
    let index_of = |name: &str| {
        network
            .interfaces
            .iter()
            .position(|i| i.name == name)
            .map(|n| indexes[n].0)
            .expect("validated: a route's device is one of the interfaces")
    };
    for route in &network.routes {
        exists_ok(nl.add_route(&NewRoute {
            destination: route.destination.ip,
            prefix: route.destination.prefix,
            gateway: route.gateway,
            source: route.source,
            index: index_of(&route.device),
            metric: route.metric,
        }))
        .map_err(netlink(format!(
            "route {} via {}",
            route.destination,
            route
                .gateway
                .map_or_else(|| route.device.clone(), |g| g.to_string())
        )))?;
    }
    for neighbour in &network.neighbours {
        exists_ok(nl.add_neighbour(index_of(&neighbour.device), neighbour.ip, neighbour.mac))
            .map_err(netlink(format!("neighbour {}", neighbour.ip)))?;
    }
    Ok(())
}

/// The guest's /etc/hosts: localhost and the hostname on the pod's first addresses.
pub fn hosts_file(hostname: &str, network: &PodNetwork) -> String {
    let mut out = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if hostname.is_empty() {
        return out;
    }
    let addresses: Vec<IpAddr> = network
        .interfaces
        .iter()
        .flat_map(|i| i.addresses.iter().map(|a| a.ip))
        .collect();
    let first_v4 = addresses.iter().find(|a| a.is_ipv4());
    let first_v6 = addresses.iter().find(|a| a.is_ipv6());
    if first_v4.is_none() && first_v6.is_none() {
        out += &format!("127.0.1.1\t{hostname}\n");
    }
    for ip in first_v4.into_iter().chain(first_v6) {
        out += &format!("{ip}\t{hostname}\n");
    }
    out
}

/// Writes the guest's /etc/resolv.conf (when the pod has a DNS configuration) and /etc/hosts
/// under `root` (`/` in the guest).
pub fn write_name_files(
    root: &Path,
    hostname: &str,
    dns: Option<&Dns>,
    network: &PodNetwork,
) -> Result<()> {
    let etc = root.join("etc");
    std::fs::create_dir_all(&etc).map_err(|e| AgentError::io("create /etc", e))?;
    if let Some(dns) = dns {
        std::fs::write(etc.join("resolv.conf"), dns.resolv_conf())
            .map_err(|e| AgentError::io("write /etc/resolv.conf", e))?;
    }
    std::fs::write(etc.join("hosts"), hosts_file(hostname, network))
        .map_err(|e| AgentError::io("write /etc/hosts", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use eci_protocol::agent::{Interface, IpAddress, Route};
    use eci_protocol::validate::network::pod_network;

    fn network() -> PodNetwork {
        pod_network(
            &[Interface {
                name: "eth0".into(),
                mac: "0a:58:0a:58:00:05".into(),
                addresses: ["10.88.0.5/16", "fd00::5/64"]
                    .iter()
                    .map(|c| IpAddress {
                        cidr: c.to_string(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            &[Route {
                destination: "default".into(),
                gateway: "10.88.0.1".into(),
                device: "eth0".into(),
                ..Default::default()
            }],
            &[],
        )
        .unwrap()
    }

    #[test]
    fn hosts_name_the_pod_on_its_addresses() {
        assert_eq!(
            hosts_file("web", &network()),
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
             10.88.0.5\tweb\nfd00::5\tweb\n"
        );
        assert!(hosts_file("web", &PodNetwork::default()).ends_with("127.0.1.1\tweb\n"));
    }

    #[test]
    fn name_files_are_written() {
        let root = tempfile::tempdir().unwrap();
        let dns = Dns {
            nameservers: vec!["10.96.0.10".parse().unwrap()],
            searches: vec!["svc.cluster.local".into()],
            options: vec![],
        };
        write_name_files(root.path(), "web", Some(&dns), &network()).unwrap();
        assert_eq!(
            std::fs::read_to_string(root.path().join("etc/resolv.conf")).unwrap(),
            "nameserver 10.96.0.10\nsearch svc.cluster.local\n"
        );
        assert!(std::fs::read_to_string(root.path().join("etc/hosts"))
            .unwrap()
            .contains("10.88.0.5\tweb"));
    }

    /// The whole set-up in a network namespace of the test thread's own, on a veth NIC that
    /// stands for the VM's virtio-net (root).
    #[test]
    fn an_interface_is_found_by_mac_renamed_addressed_and_routed() {
        assert!(nix::unistd::geteuid().is_root(), "needs root (netns)");
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let out = std::process::Command::new("ip")
                .args([
                    "link",
                    "add",
                    "eth9",
                    "address",
                    "0a:58:0a:58:00:05",
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "peer9",
                ])
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            let net = network();
            apply(&net).unwrap();
            apply(&net).unwrap(); // again: nothing changes, nothing fails
            let show = |args: &[&str]| {
                let out = std::process::Command::new("ip")
                    .args(args)
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout).into_owned()
            };
            let addr = show(&["addr", "show", "eth0"]);
            assert!(addr.contains("inet 10.88.0.5/16"), "{addr}");
            assert!(addr.contains("inet6 fd00::5/64"), "{addr}");
            assert!(show(&["route"]).contains("default via 10.88.0.1 dev eth0"));
            let mut missing = net.clone();
            missing.interfaces[0].mac = [2, 0, 0, 0, 0, 9];
            let err = apply(&missing).unwrap_err().to_string();
            assert!(
                err.contains("02:00:00:00:00:09") && err.contains("eth0"),
                "{err}"
            );
        })
        .join()
        .unwrap();
    }
}
