//! SetupSandbox's network fields: interfaces, routes, neighbours and DNS. Each is parsed into
//! typed values the agent applies as they are, and every refusal names the field.

use std::net::IpAddr;

use super::{Result, ValidationError};
use crate::agent::{DnsConfig, Interface, Neighbour, Route};

/// Interfaces a pod may have (CNI chains rarely give more than a few).
pub const MAX_INTERFACES: usize = 16;
/// Addresses per interface.
pub const MAX_ADDRESSES: usize = 64;
pub const MAX_ROUTES: usize = 256;
pub const MAX_NEIGHBOURS: usize = 256;
/// resolv.conf limits (glibc and musl read 3 nameservers; Kubernetes allows 32 search domains
/// of 2048 bytes in all).
pub const MAX_NAMESERVERS: usize = 3;
pub const MAX_SEARCHES: usize = 32;
pub const MAX_SEARCH_BYTES: usize = 2048;
pub const MAX_DNS_OPTIONS: usize = 16;
/// Linux interface names are at most IFNAMSIZ - 1 bytes.
const MAX_IFNAME: usize = 15;

/// An address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub ip: IpAddr,
    pub prefix: u8,
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix)
    }
}

/// A validated interface: found in the guest by `mac`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetInterface {
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: Option<u32>,
    pub addresses: Vec<Cidr>,
}

/// A validated route; `destination.prefix == 0` is the default route of its family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetRoute {
    pub destination: Cidr,
    pub gateway: Option<IpAddr>,
    pub device: String,
    pub source: Option<IpAddr>,
    pub metric: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetNeighbour {
    pub ip: IpAddr,
    pub mac: [u8; 6],
    pub device: String,
}

/// The pod's network as the agent applies it: interfaces, then routes (those on the link
/// before those through a gateway, which need them), then neighbours.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodNetwork {
    pub interfaces: Vec<NetInterface>,
    pub routes: Vec<NetRoute>,
    pub neighbours: Vec<NetNeighbour>,
}

/// A validated resolver configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dns {
    pub nameservers: Vec<IpAddr>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty() && self.searches.is_empty() && self.options.is_empty()
    }

    /// The resolv.conf text.
    pub fn resolv_conf(&self) -> String {
        let mut out = String::new();
        for ns in &self.nameservers {
            out += &format!("nameserver {ns}\n");
        }
        if !self.searches.is_empty() {
            out += &format!("search {}\n", self.searches.join(" "));
        }
        if !self.options.is_empty() {
            out += &format!("options {}\n", self.options.join(" "));
        }
        out
    }
}

/// Parses `aa:bb:cc:dd:ee:ff` (either case).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in mac.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn mac(field: String, text: &str, unicast: bool) -> Result<[u8; 6]> {
    let parsed = parse_mac(text).ok_or_else(|| {
        ValidationError::new(&field, format!("{text:?} is not aa:bb:cc:dd:ee:ff"))
    })?;
    if parsed == [0; 6] || (unicast && parsed[0] & 1 == 1) {
        return Err(ValidationError::new(
            field,
            format!(
                "{text} is not a unicast address{}",
                if unicast { "" } else { " (all zero)" }
            ),
        ));
    }
    Ok(parsed)
}

fn ip(field: String, text: &str) -> Result<IpAddr> {
    text.parse()
        .map_err(|_| ValidationError::new(field, format!("{text:?} is not an IP address")))
}

fn max_prefix(ip: &IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

/// Parses `ip/prefix`.
pub fn cidr(field: &str, text: &str) -> Result<Cidr> {
    let (addr, prefix) = text
        .split_once('/')
        .ok_or_else(|| ValidationError::new(field, format!("{text:?} is not address/prefix")))?;
    let ip = ip(field.to_owned(), addr)?;
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|p| *p <= max_prefix(&ip))
        .ok_or_else(|| {
            ValidationError::new(
                field,
                format!("prefix {prefix:?} is not in 0..={}", max_prefix(&ip)),
            )
        })?;
    Ok(Cidr { ip, prefix })
}

/// Whether `c` has bits set beyond its prefix (the kernel refuses such route destinations).
fn has_host_bits(c: &Cidr) -> bool {
    let (bits, width): (u128, u32) = match c.ip {
        IpAddr::V4(v4) => (u32::from(v4) as u128, 32),
        IpAddr::V6(v6) => (u128::from(v6), 128),
    };
    let host = width - u32::from(c.prefix);
    let mask = match host {
        0 => 0,
        128 => u128::MAX,
        h => (1u128 << h) - 1,
    };
    bits & mask != 0
}

/// An interface name the kernel accepts.
pub fn ifname(field: &str, name: &str) -> Result {
    if name.is_empty()
        || name.len() > MAX_IFNAME
        || name == "."
        || name == ".."
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
    {
        return Err(ValidationError::new(
            field,
            format!("{name:?} is not an interface name (1..={MAX_IFNAME} of A-Z a-z 0-9 - _ . @)"),
        ));
    }
    if name == "lo" {
        return Err(ValidationError::new(field, "lo is the guest's own"));
    }
    Ok(())
}

fn interface(field: &str, i: &Interface) -> Result<NetInterface> {
    ifname(&format!("{field}.name"), &i.name)?;
    let mac = mac(format!("{field}.mac"), &i.mac, true)?;
    let mtu = match i.mtu {
        0 => None,
        m @ 68..=65535 => Some(m),
        m => {
            return Err(ValidationError::new(
                format!("{field}.mtu"),
                format!("{m} is not in 68..=65535 (0 keeps the default)"),
            ))
        }
    };
    if i.addresses.len() > MAX_ADDRESSES {
        return Err(ValidationError::new(
            format!("{field}.addresses"),
            format!("more than {MAX_ADDRESSES}"),
        ));
    }
    let mut addresses = Vec::with_capacity(i.addresses.len());
    for (n, a) in i.addresses.iter().enumerate() {
        let named = format!("{field}.addresses[{n}].cidr");
        let c = cidr(&named, &a.cidr)?;
        if c.ip.is_unspecified() || c.ip.is_loopback() || c.ip.is_multicast() {
            return Err(ValidationError::new(
                named,
                format!("{} is not a unicast address", c.ip),
            ));
        }
        addresses.push(c);
    }
    Ok(NetInterface {
        name: i.name.clone(),
        mac,
        mtu,
        addresses,
    })
}

fn known_device(field: String, device: &str, interfaces: &[NetInterface]) -> Result {
    if interfaces.iter().any(|i| i.name == device) {
        return Ok(());
    }
    Err(ValidationError::new(
        field,
        format!("{device:?} is none of the interfaces"),
    ))
}

fn route(field: &str, r: &Route, interfaces: &[NetInterface]) -> Result<NetRoute> {
    let gateway = match r.gateway.as_str() {
        "" => None,
        g => Some(ip(format!("{field}.gateway"), g)?),
    };
    let source = match r.source.as_str() {
        "" => None,
        s => Some(ip(format!("{field}.source"), s)?),
    };
    let destination = if r.destination == "default" {
        let v6 = gateway.or(source).is_some_and(|g| g.is_ipv6());
        Cidr {
            ip: if v6 {
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
            },
            prefix: 0,
        }
    } else {
        let named = format!("{field}.destination");
        let c = cidr(&named, &r.destination)?;
        if has_host_bits(&c) {
            return Err(ValidationError::new(
                named,
                format!("{c} has host bits set beyond the prefix"),
            ));
        }
        c
    };
    for (name, addr) in [("gateway", gateway), ("source", source)] {
        if let Some(a) = addr {
            if a.is_ipv4() != destination.ip.is_ipv4() {
                return Err(ValidationError::new(
                    format!("{field}.{name}"),
                    format!("{a} is not of the destination's address family"),
                ));
            }
            if a.is_unspecified() || a.is_multicast() {
                return Err(ValidationError::new(
                    format!("{field}.{name}"),
                    format!("{a} is not a unicast address"),
                ));
            }
        }
    }
    known_device(format!("{field}.device"), &r.device, interfaces)?;
    Ok(NetRoute {
        destination,
        gateway,
        device: r.device.clone(),
        source,
        metric: r.metric,
    })
}

/// Checks the network fields of SetupSandbox and returns them typed and in the order they are
/// applied.
pub fn pod_network(
    interfaces: &[Interface],
    routes: &[Route],
    neighbours: &[Neighbour],
) -> Result<PodNetwork> {
    if interfaces.len() > MAX_INTERFACES {
        return Err(ValidationError::new(
            "interfaces",
            format!("more than {MAX_INTERFACES}"),
        ));
    }
    let mut network = PodNetwork::default();
    for (n, i) in interfaces.iter().enumerate() {
        let field = format!("interfaces[{n}]");
        let parsed = interface(&field, i)?;
        if network.interfaces.iter().any(|o| o.name == parsed.name) {
            return Err(ValidationError::new(
                format!("{field}.name"),
                format!("{} is named twice", parsed.name),
            ));
        }
        if network.interfaces.iter().any(|o| o.mac == parsed.mac) {
            return Err(ValidationError::new(
                format!("{field}.mac"),
                format!("{} is given twice", i.mac),
            ));
        }
        network.interfaces.push(parsed);
    }
    if routes.len() > MAX_ROUTES {
        return Err(ValidationError::new(
            "routes",
            format!("more than {MAX_ROUTES}"),
        ));
    }
    for (n, r) in routes.iter().enumerate() {
        network
            .routes
            .push(route(&format!("routes[{n}]"), r, &network.interfaces)?);
    }
    // Routes on the link first: a gateway must be reachable when its route is added.
    network.routes.sort_by_key(|r| r.gateway.is_some());
    if neighbours.len() > MAX_NEIGHBOURS {
        return Err(ValidationError::new(
            "neighbours",
            format!("more than {MAX_NEIGHBOURS}"),
        ));
    }
    for (n, e) in neighbours.iter().enumerate() {
        let field = format!("neighbours[{n}]");
        let parsed = NetNeighbour {
            ip: ip(format!("{field}.ip"), &e.ip)?,
            mac: mac(format!("{field}.mac"), &e.mac, false)?,
            device: e.device.clone(),
        };
        if parsed.ip.is_unspecified() || parsed.ip.is_multicast() || parsed.ip.is_loopback() {
            return Err(ValidationError::new(
                format!("{field}.ip"),
                format!("{} is not a unicast address", parsed.ip),
            ));
        }
        known_device(format!("{field}.device"), &e.device, &network.interfaces)?;
        network.neighbours.push(parsed);
    }
    Ok(network)
}

/// A search domain: labels of letters, digits, `-` and `_`, dot separated (a trailing dot is
/// allowed), at most 253 bytes.
fn search_domain(field: String, domain: &str) -> Result {
    let trimmed = domain.strip_suffix('.').unwrap_or(domain);
    let ok = !trimmed.is_empty()
        && domain.len() <= 253
        && trimmed.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            field,
            format!("{domain:?} is not a domain name"),
        ))
    }
}

/// Checks SetupSandbox's `dns`.
pub fn dns(field: &str, d: &DnsConfig) -> Result<Dns> {
    if d.nameservers.len() > MAX_NAMESERVERS {
        return Err(ValidationError::new(
            format!("{field}.nameservers"),
            format!("more than {MAX_NAMESERVERS} (resolvers read only the first three)"),
        ));
    }
    let mut out = Dns::default();
    for (n, ns) in d.nameservers.iter().enumerate() {
        let named = format!("{field}.nameservers[{n}]");
        let addr = ip(named.clone(), ns)?;
        if addr.is_unspecified() || addr.is_multicast() {
            return Err(ValidationError::new(
                named,
                format!("{addr} is not a unicast address"),
            ));
        }
        out.nameservers.push(addr);
    }
    if d.searches.len() > MAX_SEARCHES
        || d.searches.iter().map(|s| s.len() + 1).sum::<usize>() > MAX_SEARCH_BYTES
    {
        return Err(ValidationError::new(
            format!("{field}.searches"),
            format!("more than {MAX_SEARCHES} domains or {MAX_SEARCH_BYTES} bytes"),
        ));
    }
    for (n, s) in d.searches.iter().enumerate() {
        search_domain(format!("{field}.searches[{n}]"), s)?;
        out.searches.push(s.clone());
    }
    if d.options.len() > MAX_DNS_OPTIONS {
        return Err(ValidationError::new(
            format!("{field}.options"),
            format!("more than {MAX_DNS_OPTIONS}"),
        ));
    }
    for (n, o) in d.options.iter().enumerate() {
        let ok = !o.is_empty()
            && o.len() <= 64
            && o.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b':' | b'.'));
        if !ok {
            return Err(ValidationError::new(
                format!("{field}.options[{n}]"),
                format!("{o:?} is not a resolver option (e.g. ndots:5)"),
            ));
        }
        out.options.push(o.clone());
    }
    Ok(out)
}

/// Parses resolv.conf text (the file CRI or nerdctl made for the pod) into a DnsConfig:
/// `nameserver`, `search`/`domain` (the last one wins, as in resolvers) and `options` lines;
/// comments and other lines are skipped. The result still goes through [`dns`].
pub fn parse_resolv_conf(text: &str) -> DnsConfig {
    let mut config = DnsConfig::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        match words.next() {
            // Resolvers read the first three; so does this.
            Some("nameserver") if config.nameservers.len() < MAX_NAMESERVERS => {
                config.nameservers.extend(words.next().map(str::to_owned))
            }
            Some("search") | Some("domain") => {
                config.searches = words.map(str::to_owned).collect();
            }
            Some("options") => config.options.extend(words.map(str::to_owned)),
            _ => {}
        }
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::IpAddress;

    fn eth0() -> Interface {
        Interface {
            name: "eth0".into(),
            mac: "0a:58:0a:58:00:05".into(),
            mtu: 1500,
            addresses: vec![
                IpAddress {
                    cidr: "10.88.0.5/16".into(),
                    ..Default::default()
                },
                IpAddress {
                    cidr: "fd00::5/64".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        }
    }

    fn route(destination: &str, gateway: &str) -> Route {
        Route {
            destination: destination.into(),
            gateway: gateway.into(),
            device: "eth0".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_cni_network_parses_with_link_routes_first() {
        let net = pod_network(
            &[eth0()],
            &[
                route("default", "10.88.0.1"),
                route("10.88.0.0/16", ""),
                route("default", "fd00::1"),
            ],
            &[Neighbour {
                ip: "10.88.0.1".into(),
                mac: "aa:bb:cc:dd:ee:ff".into(),
                device: "eth0".into(),
                ..Default::default()
            }],
        )
        .unwrap();
        assert_eq!(net.interfaces[0].mac, [0x0a, 0x58, 0x0a, 0x58, 0, 5]);
        assert_eq!(net.interfaces[0].addresses[0].to_string(), "10.88.0.5/16");
        assert_eq!(net.routes[0].destination.to_string(), "10.88.0.0/16");
        assert_eq!(net.routes[1].destination.to_string(), "0.0.0.0/0");
        assert_eq!(net.routes[2].destination.to_string(), "::/0");
        assert_eq!(net.neighbours.len(), 1);
    }

    #[test]
    fn refusals_name_the_field() {
        let with = |f: &dyn Fn(&mut Interface)| {
            let mut i = eth0();
            f(&mut i);
            i
        };
        let cases: Vec<(Vec<Interface>, Vec<Route>, &str)> = vec![
            (
                vec![with(&|i| i.name = "".into())],
                vec![],
                "interfaces[0].name",
            ),
            (
                vec![with(&|i| i.name = "a-very-long-interface".into())],
                vec![],
                "interfaces[0].name",
            ),
            (
                vec![with(&|i| i.name = "lo".into())],
                vec![],
                "interfaces[0].name",
            ),
            (
                vec![with(&|i| i.mac = "0a:58".into())],
                vec![],
                "interfaces[0].mac",
            ),
            (
                vec![with(&|i| i.mac = "01:00:5e:00:00:01".into())],
                vec![],
                "interfaces[0].mac",
            ),
            (vec![with(&|i| i.mtu = 20)], vec![], "interfaces[0].mtu"),
            (
                vec![with(&|i| i.addresses[1].cidr = "10.0.0.1/33".into())],
                vec![],
                "interfaces[0].addresses[1].cidr",
            ),
            (
                vec![with(&|i| i.addresses[0].cidr = "127.0.0.1/8".into())],
                vec![],
                "interfaces[0].addresses[0].cidr",
            ),
            (vec![eth0(), eth0()], vec![], "interfaces[1].name"),
            (
                vec![eth0(), with(&|i| i.name = "eth1".into())],
                vec![],
                "interfaces[1].mac",
            ),
            (
                vec![eth0()],
                vec![route("10.88.0.5/16", "")],
                "routes[0].destination",
            ),
            (
                vec![eth0()],
                vec![route("default", "fd00::1"), route("default", "x")],
                "routes[1].gateway",
            ),
            (
                vec![eth0()],
                vec![route("10.0.0.0/8", "fd00::1")],
                "routes[0].gateway",
            ),
            (
                vec![eth0()],
                vec![Route {
                    device: "eth9".into(),
                    ..route("default", "10.88.0.1")
                }],
                "routes[0].device",
            ),
        ];
        for (interfaces, routes, field) in cases {
            let err = pod_network(&interfaces, &routes, &[]).unwrap_err();
            assert_eq!(err.field, field, "{err}");
        }
        let err = pod_network(
            &[eth0()],
            &[],
            &[Neighbour {
                ip: "10.88.0.1".into(),
                mac: "00:00:00:00:00:00".into(),
                device: "eth0".into(),
                ..Default::default()
            }],
        )
        .unwrap_err();
        assert_eq!(err.field, "neighbours[0].mac");
    }

    #[test]
    fn host_bits_are_found() {
        let c = |s: &str| cidr("f", s).unwrap();
        assert!(has_host_bits(&c("10.88.0.5/16")));
        assert!(!has_host_bits(&c("10.88.0.0/16")));
        assert!(!has_host_bits(&c("10.88.0.5/32")));
        assert!(has_host_bits(&c("1.0.0.0/0")));
        assert!(!has_host_bits(&c("::/0")));
        assert!(has_host_bits(&c("fd00::1/64")));
    }

    #[test]
    fn resolv_conf_round_trips_and_is_validated() {
        let text = "# made by CRI\nnameserver 10.96.0.10\nnameserver fd00::10 # v6\n\
                    search default.svc.cluster.local svc.cluster.local\noptions ndots:5 edns0\n";
        let parsed = parse_resolv_conf(text);
        let d = dns("dns", &parsed).unwrap();
        let four =
            "nameserver 10.0.0.1\nnameserver 10.0.0.2\nnameserver 10.0.0.3\nnameserver 10.0.0.4\n";
        assert_eq!(
            parse_resolv_conf(four).nameservers.len(),
            3,
            "the first three"
        );
        assert_eq!(
            d.resolv_conf(),
            "nameserver 10.96.0.10\nnameserver fd00::10\n\
             search default.svc.cluster.local svc.cluster.local\noptions ndots:5 edns0\n"
        );
        let bad = |f: &dyn Fn(&mut DnsConfig), field: &str| {
            let mut c = parsed.clone();
            f(&mut c);
            assert_eq!(dns("dns", &c).unwrap_err().field, field);
        };
        bad(
            &|c| c.nameservers.extend(["1.1.1.1".into(), "8.8.8.8".into()]),
            "dns.nameservers",
        );
        bad(&|c| c.nameservers[0] = "ten".into(), "dns.nameservers[0]");
        bad(&|c| c.searches[1] = "a b".into(), "dns.searches[1]");
        bad(&|c| c.searches[0] = "a..b".into(), "dns.searches[0]");
        bad(&|c| c.options[0] = "x\ny".into(), "dns.options[0]");
    }
}
