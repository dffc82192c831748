//! VM mode: the pod's network, host side.
//!
//! In the pod's network namespace (CNI's, or the one a createRuntime hook filled), every
//! Ethernet interface gets a tap `tap<N>_eci`; tc ingress filters with a `mirred` action
//! redirect every frame from the interface to the tap and from the tap back (Kata Containers'
//! tcfilter model), so the pod's traffic leaves through CNI's veth as it would with runc. The
//! tap descriptors go to eci-vmm (virtio-net). The guest NIC gets the interface's MAC (peers
//! already resolved the pod IP to it) and the agent gets its MTU, addresses, routes and
//! permanent neighbours for SetupSandbox.
//!
//! Taps are not persistent: they vanish when eci-vmm, their last holder, exits. What stays in
//! the namespace is the ingress qdisc (with its filter) on each interface; `net.json` in the pod
//! directory records the namespace and those interfaces, and [`release`] removes them after the
//! VM (also from the `delete` action after a shim crash). A namespace only the VM held is gone
//! with it, and so is everything in it.
//!
//! Netlink requests run on a thread of their own that enters the namespace and ends after.

use std::{
    fs::File,
    net::IpAddr,
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use eci_netlink::{Link, Netlink, NetlinkError};
use eci_protocol::{
    agent::{Interface, IpAddress, Neighbour, Route},
    validate::network::format_mac,
};
use serde::{Deserialize, Serialize};

/// Name of the record in the pod directory.
const RECORD: &str = "net.json";
/// Taps this module makes are called `tap<N>_eci` (never picked up as pod interfaces).
const TAP_SUFFIX: &str = "_eci";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("network namespace {path}")]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("create tap {name}")]
    Tap {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("interface {interface} of the pod's network namespace")]
    Netlink {
        interface: String,
        #[source]
        source: NetlinkError,
    },
    #[error("port-forward: {step}: {reason}")]
    PortForward { step: String, reason: String },
    #[error("record {path}")]
    Record {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One pod interface with its tap.
#[derive(Debug)]
pub struct PodNic {
    /// The interface's name in the pod namespace (and in the guest).
    pub name: String,
    pub tap_name: String,
    /// The guest NIC's MAC: the interface's.
    pub mac: [u8; 6],
    /// The tap, for eci-vmm.
    pub tap: OwnedFd,
}

/// What the pod's network namespace holds, ready for the VM and the agent.
#[derive(Debug, Default)]
pub struct PodNetwork {
    pub nics: Vec<PodNic>,
    pub interfaces: Vec<Interface>,
    pub routes: Vec<Route>,
    pub neighbours: Vec<Neighbour>,
}

/// What [`release`] needs after the VM: the namespace and the interfaces given ingress qdiscs.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
struct Record {
    netns: PathBuf,
    interfaces: Vec<String>,
}

/// Runs `f` on a fresh thread inside the network namespace `netns`.
pub(super) fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> Result<T, NetError> + Send + 'static,
) -> Result<T, NetError> {
    let file = File::open(netns).map_err(|source| NetError::Netns {
        path: netns.to_owned(),
        source,
    })?;
    let path = netns.to_owned();
    std::thread::spawn(move || {
        // SAFETY: setns on an open namespace file; it moves only this thread, which ends
        // when `f` returns.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(NetError::Netns {
                path,
                source: std::io::Error::last_os_error(),
            });
        }
        f()
    })
    .join()
    .unwrap_or_else(|_| {
        Err(NetError::Netns {
            path: netns.to_owned(),
            source: std::io::Error::other("the network thread panicked"),
        })
    })
}

/// The interfaces of a pod namespace the VM takes: up, with an Ethernet address, not loopback
/// and not a tap of ours.
fn pod_links(links: &[Link]) -> Vec<Link> {
    links
        .iter()
        .filter(|l| l.up && !l.loopback && l.mac.is_some() && !l.name.ends_with(TAP_SUFFIX))
        .cloned()
        .collect()
}

/// Creates the tap `name` in the calling thread's network namespace (IFF_TAP | IFF_NO_PI, the
/// framing eci-vmm's virtio-net speaks), not persistent.
fn create_tap(name: &str) -> Result<OwnedFd, NetError> {
    let err = |source| NetError::Tap {
        name: name.to_owned(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(err)?;
    // SAFETY: ifreq is plain data; all-zero bytes are a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes the ifreq, which lives for the call.
    if unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) } != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(file.into())
}

/// The agent's view of the routes, addresses and neighbours of `link`.
fn describe(
    link: &Link,
    addresses: &[eci_netlink::Address],
    routes: &[eci_netlink::Route],
    neighbours: &[eci_netlink::Neighbour],
) -> (Interface, Vec<Route>, Vec<Neighbour>) {
    let interface = Interface {
        name: link.name.clone(),
        mac: format_mac(&link.mac.unwrap_or_default()),
        mtu: link.mtu,
        addresses: addresses
            .iter()
            .filter(|a| a.index == link.index && a.global)
            .map(|a| IpAddress {
                cidr: format!("{}/{}", a.ip, a.prefix),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    let routes = routes
        .iter()
        .filter(|r| r.index == Some(link.index) && !r.kernel)
        .filter(|r| !is_link_local(&r.destination) && !r.destination.is_multicast())
        .map(|r| Route {
            destination: if r.prefix == 0 {
                "default".into()
            } else {
                format!("{}/{}", r.destination, r.prefix)
            },
            gateway: r.gateway.map(|g| g.to_string()).unwrap_or_default(),
            device: link.name.clone(),
            source: r.source.map(|s| s.to_string()).unwrap_or_default(),
            metric: r.metric,
            ..Default::default()
        })
        .collect();
    let neighbours = neighbours
        .iter()
        .filter(|n| n.index == link.index && n.permanent)
        .filter_map(|n| {
            Some(Neighbour {
                ip: n.ip.to_string(),
                mac: format_mac(&n.mac?),
                device: link.name.clone(),
                ..Default::default()
            })
        })
        .collect();
    (interface, routes, neighbours)
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.segments()[0] & 0xffc0 == 0xfe80,
    }
}

/// Gives every pod interface in `netns` a tap and both redirects, records what [`release`]
/// must undo in `pod_dir`, and returns the taps and the agent's view. An empty namespace gives
/// an empty network (no NIC). On failure nothing is left in the namespace.
pub fn attach(netns: &Path, pod_dir: &Path) -> Result<PodNetwork, NetError> {
    let netns_path = netns.to_owned();
    let (network, touched) = in_netns(netns, move || {
        let nl_err = |interface: &str| {
            let interface = interface.to_owned();
            move |source| NetError::Netlink { interface, source }
        };
        let mut nl = Netlink::new().map_err(nl_err("(netlink)"))?;
        let links = nl.links().map_err(nl_err("(list)"))?;
        let addresses = nl.addresses().map_err(nl_err("(addresses)"))?;
        let routes = nl.routes().map_err(nl_err("(routes)"))?;
        let neighbours = nl.neighbours().map_err(nl_err("(neighbours)"))?;
        let mut network = PodNetwork::default();
        let mut touched: Vec<(String, u32)> = Vec::new();
        let result = (|| {
            for (n, link) in pod_links(&links).into_iter().enumerate() {
                let tap_name = format!("tap{n}{TAP_SUFFIX}");
                let tap = create_tap(&tap_name)?;
                let tap_link = nl
                    .link_by_name(&tap_name)
                    .map_err(nl_err(&tap_name))?
                    .ok_or_else(|| NetError::Tap {
                        name: tap_name.clone(),
                        source: std::io::Error::other("created but not listed"),
                    })?;
                touched.push((tap_name.clone(), tap_link.index));
                nl.set_link(
                    tap_link.index,
                    &eci_netlink::LinkChange {
                        mtu: Some(link.mtu),
                        up: Some(true),
                        ..Default::default()
                    },
                )
                .map_err(nl_err(&tap_name))?;
                nl.add_ingress_qdisc(link.index)
                    .map_err(nl_err(&link.name))?;
                touched.push((link.name.clone(), link.index));
                nl.redirect_ingress(link.index, tap_link.index)
                    .map_err(nl_err(&link.name))?;
                nl.add_ingress_qdisc(tap_link.index)
                    .map_err(nl_err(&tap_name))?;
                nl.redirect_ingress(tap_link.index, link.index)
                    .map_err(nl_err(&tap_name))?;
                let (interface, link_routes, link_neighbours) =
                    describe(&link, &addresses, &routes, &neighbours);
                network.interfaces.push(interface);
                network.routes.extend(link_routes);
                network.neighbours.extend(link_neighbours);
                network.nics.push(PodNic {
                    name: link.name.clone(),
                    tap_name,
                    mac: link.mac.unwrap_or_default(),
                    tap,
                });
            }
            Ok(())
        })();
        if let Err(e) = result {
            for (_, index) in &touched {
                let _ = nl.remove_ingress_qdisc(*index);
            }
            return Err(e);
        }
        let interfaces = touched
            .into_iter()
            .filter(|(name, _)| !name.ends_with(TAP_SUFFIX))
            .map(|(name, _)| name)
            .collect::<Vec<_>>();
        Ok((network, interfaces))
    })?;
    if !touched.is_empty() {
        let record = Record {
            netns: netns_path,
            interfaces: touched,
        };
        let path = pod_dir.join(RECORD);
        let text = serde_json::to_vec(&record).expect("record serializes");
        if let Err(source) = std::fs::write(&path, text) {
            release_record(&record);
            return Err(NetError::Record { path, source });
        }
    }
    Ok(network)
}

fn release_record(record: &Record) {
    if !record.netns.exists() {
        return; // the namespace went with the VM, and everything in it
    }
    let interfaces = record.interfaces.clone();
    let released = in_netns(&record.netns, move || {
        let mut nl = Netlink::new().map_err(|source| NetError::Netlink {
            interface: "(netlink)".into(),
            source,
        })?;
        for name in &interfaces {
            let Ok(Some(link)) = nl.link_by_name(name) else {
                continue; // gone with CNI's DEL
            };
            nl.remove_ingress_qdisc(link.index)
                .map_err(|source| NetError::Netlink {
                    interface: name.clone(),
                    source,
                })?;
        }
        super::port_forward::remove_rules();
        Ok(())
    });
    if let Err(e) = released {
        log::warn!(
            "release the pod's tc filters in {}: {}",
            record.netns.display(),
            crate::error::chain(&e)
        );
    }
}

/// Removes the ingress qdiscs (and their redirects) that [`attach`] added, once the VM is gone
/// (its taps went with it). Idempotent; also run by the `delete` action.
pub fn release(pod_dir: &Path) {
    let path = pod_dir.join(RECORD);
    let Ok(text) = std::fs::read(&path) else {
        return;
    };
    match serde_json::from_slice::<Record>(&text) {
        Ok(record) => release_record(&record),
        Err(e) => log::warn!("{}: {e}", path.display()),
    }
    let _ = std::fs::remove_file(&path);
}

/// eci-vmm's `net` entries for `nics`, whose taps become the descriptors `first_fd`,
/// `first_fd + 1`, ... in the VMM.
pub fn vmm_config(nics: &[PodNic], first_fd: i32) -> serde_json::Value {
    nics.iter()
        .enumerate()
        .map(|(i, nic)| {
            serde_json::json!({
                "tap": nic.tap_name,
                "mac": format_mac(&nic.mac),
                "fd": first_fd + i as i32,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
