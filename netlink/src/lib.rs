//! Blocking rtnetlink requests for a pod's network (see README.md): a [`Netlink`] handle, typed
//! views of what a dump returns ([`Link`], [`Address`], [`Route`], [`Neighbour`]) and the
//! changes the shim and the agent make.

use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage, AddressScope},
    link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState},
    route::{
        RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
        RouteType,
    },
    tc::{
        TcAction, TcActionAttribute, TcActionGeneric, TcActionMirror, TcActionMirrorOption,
        TcActionOption, TcActionType, TcAttribute, TcFilterU32, TcFilterU32Option, TcHandle,
        TcMessage, TcMirror, TcMirrorActionType, TcOption, TcU32Key, TcU32Selector,
        TcU32SelectorFlags,
    },
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket};

/// The main routing table.
const RT_TABLE_MAIN: u8 = 254;
/// ETH_P_ALL in network byte order, as tc's `protocol all` puts it in the header.
const ETH_P_ALL_BE: u16 = (libc::ETH_P_ALL as u16).to_be();
/// Priority of the redirect filters (tc's default for the first filter).
const FILTER_PRIORITY: u16 = 49152;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket")]
    Socket(#[source] std::io::Error),
    #[error("{op}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{op}: the kernel answered: {source}")]
    Kernel {
        op: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{op}: undecodable answer: {reason}")]
    Decode { op: String, reason: String },
}

impl NetlinkError {
    /// The errno the kernel answered with, if it did.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

pub type Result<T, E = NetlinkError> = std::result::Result<T, E>;

/// A network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// Hardware address when it is an Ethernet one.
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    pub up: bool,
    pub loopback: bool,
    /// `veth`, `tun`, `bridge`, `dummy`, ...; None when the kernel gave no kind.
    pub kind: Option<String>,
}

/// An interface address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub index: u32,
    pub ip: IpAddr,
    pub prefix: u8,
    /// Scope host (e.g. 127.0.0.1) or link (fe80::/10) addresses belong to the link itself.
    pub global: bool,
}

/// A unicast route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub destination: IpAddr,
    pub prefix: u8,
    pub gateway: Option<IpAddr>,
    pub source: Option<IpAddr>,
    /// Outgoing interface.
    pub index: Option<u32>,
    pub metric: u32,
    /// Made by the kernel for an address's own subnet (it comes back with the address).
    pub kernel: bool,
}

/// A neighbour cache entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub index: u32,
    pub ip: IpAddr,
    pub mac: Option<[u8; 6]>,
    /// Added by hand (`ip neigh add ... nud permanent`), as CNI plugins do.
    pub permanent: bool,
}

/// What [`Netlink::set_link`] changes; None leaves a property as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkChange {
    pub name: Option<String>,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    pub up: Option<bool>,
}

/// A route to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRoute {
    pub destination: IpAddr,
    pub prefix: u8,
    pub gateway: Option<IpAddr>,
    pub source: Option<IpAddr>,
    pub index: u32,
    pub metric: u32,
}

fn family(ip: &IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn mac6(bytes: &[u8]) -> Option<[u8; 6]> {
    bytes.try_into().ok()
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// An rtnetlink socket of the calling thread's network namespace.
pub struct Netlink {
    socket: Socket,
    sequence: u32,
}

impl Netlink {
    /// Opens a socket in the calling thread's network namespace.
    pub fn new() -> Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(NetlinkError::Socket)?;
        socket.bind_auto().map_err(NetlinkError::Socket)?;
        Ok(Self {
            socket,
            sequence: 0,
        })
    }

    /// Sends `message` and collects the answers up to the acknowledgement (or the end of a
    /// dump). `op` says what was asked, for errors.
    fn request(
        &mut self,
        op: &dyn Fn() -> String,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.sequence;
        let mut request = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        request.finalize();
        let mut buf = vec![0u8; request.buffer_len()];
        request.serialize(&mut buf);
        self.socket
            .send(&buf, 0)
            .map_err(|source| NetlinkError::Io { op: op(), source })?;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut answers = Vec::new();
        loop {
            let (bytes, _) = self
                .socket
                .recv_from_full()
                .map_err(|source| NetlinkError::Io { op: op(), source })?;
            let mut offset = 0;
            while offset < bytes.len() {
                let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[offset..])
                    .map_err(|e| NetlinkError::Decode {
                        op: op(),
                        reason: e.to_string(),
                    })?;
                let length = message.header.length as usize;
                if length == 0 {
                    break;
                }
                offset += (length + 3) & !3;
                if message.header.sequence_number != self.sequence {
                    continue; // an answer to an earlier request that timed out on our side
                }
                match message.payload {
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(answers),
                        Some(code) => {
                            return Err(NetlinkError::Kernel {
                                op: op(),
                                source: std::io::Error::from_raw_os_error(-code.get()),
                            })
                        }
                    },
                    NetlinkPayload::Done(_) if dump => return Ok(answers),
                    NetlinkPayload::InnerMessage(m) => answers.push(m),
                    _ => {}
                }
            }
        }
    }

    /// Every link.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let answers = self.request(
            &|| "list links".into(),
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link(l)),
                _ => None,
            })
            .collect())
    }

    /// The link called `name`, if there is one.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        Ok(self.links()?.into_iter().find(|l| l.name == name))
    }

    /// Every address of both families.
    pub fn addresses(&mut self) -> Result<Vec<Address>> {
        let answers = self.request(
            &|| "list addresses".into(),
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => address(a),
                _ => None,
            })
            .collect())
    }

    /// The unicast routes of the main table, both families.
    pub fn routes(&mut self) -> Result<Vec<Route>> {
        let mut routes = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut message = RouteMessage::default();
            message.header.address_family = family;
            let answers = self.request(
                &|| format!("list {family:?} routes"),
                RouteNetlinkMessage::GetRoute(message),
                NLM_F_DUMP,
            )?;
            routes.extend(answers.into_iter().filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => route(r),
                _ => None,
            }));
        }
        Ok(routes)
    }

    /// Every neighbour cache entry of both families.
    pub fn neighbours(&mut self) -> Result<Vec<Neighbour>> {
        let mut found = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut message = NeighbourMessage::default();
            message.header.family = family;
            let answers = self.request(
                &|| format!("list {family:?} neighbours"),
                RouteNetlinkMessage::GetNeighbour(message),
                NLM_F_DUMP,
            )?;
            found.extend(answers.into_iter().filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n) => neighbour(n),
                _ => None,
            }));
        }
        Ok(found)
    }

    /// Changes the link `index` (a rename needs the link down).
    pub fn set_link(&mut self, index: u32, change: &LinkChange) -> Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        if let Some(up) = change.up {
            message.header.change_mask = LinkFlags::Up;
            if up {
                message.header.flags = LinkFlags::Up;
            }
        }
        if let Some(name) = &change.name {
            message.attributes.push(LinkAttribute::IfName(name.clone()));
        }
        if let Some(mac) = change.mac {
            message
                .attributes
                .push(LinkAttribute::Address(mac.to_vec()));
        }
        if let Some(mtu) = change.mtu {
            message.attributes.push(LinkAttribute::Mtu(mtu));
        }
        self.request(
            &|| format!("set link {index}: {change:?}"),
            RouteNetlinkMessage::SetLink(message),
            0,
        )
        .map(drop)
    }

    /// Adds `ip/prefix` to the link `index`.
    pub fn add_address(&mut self, index: u32, ip: IpAddr, prefix: u8) -> Result<()> {
        let mut message = AddressMessage::default();
        message.header.family = family(&ip);
        message.header.prefix_len = prefix;
        message.header.index = index;
        message.header.scope = AddressScope::Universe;
        message.attributes.push(AddressAttribute::Local(ip));
        message.attributes.push(AddressAttribute::Address(ip));
        if let IpAddr::V4(v4) = ip {
            if prefix < 31 {
                let host = u32::MAX >> prefix;
                let broadcast = std::net::Ipv4Addr::from(u32::from(v4) | host);
                message
                    .attributes
                    .push(AddressAttribute::Broadcast(broadcast));
            }
        }
        self.request(
            &|| format!("add address {ip}/{prefix} to link {index}"),
            RouteNetlinkMessage::NewAddress(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Adds a route to the main table.
    pub fn add_route(&mut self, r: &NewRoute) -> Result<()> {
        let mut message = RouteMessage::default();
        message.header = RouteHeader {
            address_family: family(&r.destination),
            destination_prefix_length: r.prefix,
            table: RT_TABLE_MAIN,
            protocol: RouteProtocol::Static,
            scope: if r.gateway.is_some() {
                RouteScope::Universe
            } else {
                RouteScope::Link
            },
            kind: RouteType::Unicast,
            ..Default::default()
        };
        if r.prefix > 0 {
            message
                .attributes
                .push(RouteAttribute::Destination(r.destination.into()));
        }
        if let Some(gateway) = r.gateway {
            message
                .attributes
                .push(RouteAttribute::Gateway(gateway.into()));
        }
        if let Some(source) = r.source {
            message
                .attributes
                .push(RouteAttribute::PrefSource(source.into()));
        }
        if r.metric > 0 {
            message.attributes.push(RouteAttribute::Priority(r.metric));
        }
        message.attributes.push(RouteAttribute::Oif(r.index));
        self.request(
            &|| format!("add route {r:?}"),
            RouteNetlinkMessage::NewRoute(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Adds a permanent neighbour entry.
    pub fn add_neighbour(&mut self, index: u32, ip: IpAddr, mac: [u8; 6]) -> Result<()> {
        let mut message = NeighbourMessage::default();
        message.header.family = family(&ip);
        message.header.ifindex = index;
        message.header.state = NeighbourState::Permanent;
        message.header.kind = RouteType::Unicast;
        let destination = match ip {
            IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
            IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
        };
        message
            .attributes
            .push(NeighbourAttribute::Destination(destination));
        message
            .attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        self.request(
            &|| format!("add neighbour {ip} on link {index}"),
            RouteNetlinkMessage::NewNeighbour(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Adds the ingress qdisc (`tc qdisc add dev X ingress`) to the link `index`.
    pub fn add_ingress_qdisc(&mut self, index: u32) -> Result<()> {
        self.request(
            &|| format!("add the ingress qdisc to link {index}"),
            RouteNetlinkMessage::NewQueueDiscipline(ingress_qdisc(index)),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Removes the ingress qdisc of the link `index`, and with it its filters. Ok when it has
    /// none.
    pub fn remove_ingress_qdisc(&mut self, index: u32) -> Result<()> {
        match self.request(
            &|| format!("remove the ingress qdisc of link {index}"),
            RouteNetlinkMessage::DelQueueDiscipline(ingress_qdisc(index)),
            0,
        ) {
            Err(e) if matches!(e.errno(), Some(libc::EINVAL | libc::ENOENT | libc::ENODEV)) => {
                Ok(())
            }
            other => other.map(drop),
        }
    }

    /// Redirects every frame arriving on link `from` to the egress of link `to` (`tc filter add
    /// dev FROM parent ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev
    /// TO`). `from` needs its ingress qdisc.
    pub fn redirect_ingress(&mut self, from: u32, to: u32) -> Result<()> {
        let mut message = TcMessage::with_index(from as i32);
        message.header.parent = TcHandle {
            major: 0xffff,
            minor: 0,
        };
        message.header.info = u32::from(TcHandle {
            major: FILTER_PRIORITY,
            minor: ETH_P_ALL_BE,
        });
        let mut selector = TcU32Selector::default();
        selector.flags = TcU32SelectorFlags::Terminal;
        selector.nkeys = 1;
        selector.keys = vec![TcU32Key::default()];
        let mut mirror = TcMirror::default();
        mirror.generic = TcActionGeneric::default();
        mirror.generic.action = TcActionType::Stolen;
        mirror.eaction = TcMirrorActionType::EgressRedir;
        mirror.ifindex = to;
        let mut action = TcAction::default();
        action.attributes = vec![
            TcActionAttribute::Kind(TcActionMirror::KIND.to_string()),
            TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(
                mirror,
            ))]),
        ];
        message
            .attributes
            .push(TcAttribute::Kind(TcFilterU32::KIND.to_string()));
        message.attributes.push(TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Selector(selector)),
            TcOption::U32(TcFilterU32Option::Action(vec![action])),
        ]));
        self.request(
            &|| format!("redirect the ingress of link {from} to link {to}"),
            RouteNetlinkMessage::NewTrafficFilter(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }
}

fn ingress_qdisc(index: u32) -> TcMessage {
    let mut message = TcMessage::with_index(index as i32);
    message.header.parent = TcHandle::INGRESS;
    message.header.handle = TcHandle::from(0xffff_0000);
    message
        .attributes
        .push(TcAttribute::Kind("ingress".to_string()));
    message
}

fn link(message: LinkMessage) -> Link {
    let mut found = Link {
        index: message.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: message.header.flags.contains(LinkFlags::Up),
        loopback: message.header.flags.contains(LinkFlags::Loopback),
        kind: None,
    };
    for attribute in message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => found.name = name,
            LinkAttribute::Address(bytes) => found.mac = mac6(&bytes),
            LinkAttribute::Mtu(mtu) => found.mtu = mtu,
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        found.kind = Some(match kind {
                            InfoKind::Other(other) => other,
                            known => known.to_string(),
                        });
                    }
                }
            }
            _ => {}
        }
    }
    found
}

fn address(message: AddressMessage) -> Option<Address> {
    let ip = message.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    })?;
    Some(Address {
        index: message.header.index,
        ip,
        prefix: message.header.prefix_len,
        global: message.header.scope == AddressScope::Universe,
    })
}

fn route(message: RouteMessage) -> Option<Route> {
    let header = &message.header;
    if header.table != RT_TABLE_MAIN || header.kind != RouteType::Unicast {
        return None;
    }
    let unspecified = match header.address_family {
        AddressFamily::Inet => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        AddressFamily::Inet6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
        _ => return None,
    };
    let mut found = Route {
        destination: unspecified,
        prefix: header.destination_prefix_length,
        gateway: None,
        source: None,
        index: None,
        metric: 0,
        kernel: header.protocol == RouteProtocol::Kernel,
    };
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Destination(a) => found.destination = route_ip(a)?,
            RouteAttribute::Gateway(a) => found.gateway = route_ip(a),
            RouteAttribute::PrefSource(a) => found.source = route_ip(a),
            RouteAttribute::Oif(index) => found.index = Some(*index),
            RouteAttribute::Priority(metric) => found.metric = *metric,
            _ => {}
        }
    }
    Some(found)
}

fn neighbour(message: NeighbourMessage) -> Option<Neighbour> {
    let mut ip = None;
    let mut mac = None;
    for attribute in &message.attributes {
        match attribute {
            NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => {
                ip = Some(IpAddr::V4(*v4))
            }
            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => {
                ip = Some(IpAddr::V6(*v6))
            }
            NeighbourAttribute::LinkLayerAddress(bytes) => mac = mac6(bytes),
            _ => {}
        }
    }
    Some(Neighbour {
        index: message.header.ifindex,
        ip: ip?,
        mac,
        permanent: message.header.state == NeighbourState::Permanent,
    })
}

#[cfg(test)]
mod tests;
