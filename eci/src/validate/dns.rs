//! The group's `dnsConfig`: Kubernetes' limits on a pod's DNS configuration, then the pod's own
//! check (eci-protocol's, which the shim applies to the resolv.conf CRI writes from it before a
//! VM pod's guest gets it), so what the API accepts reaches every container.

use std::net::IpAddr;

use eci_protocol::agent;
use eci_protocol::validate::network;

use super::Errors;
use crate::model::DnsConfig;

/// Resolvers read only the first three `nameserver` lines (Kubernetes' limit too).
pub const MAX_NAME_SERVERS: usize = network::MAX_NAMESERVERS;
/// Kubernetes' limits on the search list.
pub const MAX_SEARCH_DOMAINS: usize = network::MAX_SEARCHES;
/// Characters of the search list, each domain counted with its separator (as the pod counts).
pub const MAX_SEARCH_CHARS: usize = network::MAX_SEARCH_BYTES;
/// The pod's limit on options.
pub const MAX_DNS_OPTIONS: usize = network::MAX_DNS_OPTIONS;
/// Longest option (`name:value`), as the pod takes it.
pub const MAX_DNS_OPTION_LEN: usize = 64;
/// Longest search domain (a DNS name).
const MAX_DOMAIN_LEN: usize = 253;

pub(super) fn check_dns_config(errors: &mut Errors, path: &str, dns: &DnsConfig) {
    let before = errors.0.len();
    let servers = dns.name_servers.len();
    errors.check(
        servers > 0,
        format!("{path}.nameServers"),
        "at least one name server is required",
    );
    errors.check(
        servers <= MAX_NAME_SERVERS,
        format!("{path}.nameServers"),
        format!(
            "{servers} name servers, at most {MAX_NAME_SERVERS} are allowed (resolvers read only the first three)"
        ),
    );
    for (index, server) in dns.name_servers.iter().enumerate() {
        let field = format!("{path}.nameServers[{index}]");
        match server.parse::<IpAddr>() {
            Ok(addr) => errors.check(
                !addr.is_unspecified() && !addr.is_multicast(),
                field,
                format!("{addr} is not a unicast address"),
            ),
            Err(_) => errors.add(field, format!("{server:?} is not an IPv4 or IPv6 address")),
        }
    }

    let domains = dns.search_domains.len();
    errors.check(
        domains <= MAX_SEARCH_DOMAINS,
        format!("{path}.searchDomains"),
        format!("{domains} search domains, at most {MAX_SEARCH_DOMAINS} are allowed"),
    );
    let chars: usize = dns.search_domains.iter().map(|d| d.len() + 1).sum();
    errors.check(
        chars <= MAX_SEARCH_CHARS,
        format!("{path}.searchDomains"),
        format!(
            "the search domains take {chars} characters (one separator each), at most {MAX_SEARCH_CHARS} are allowed"
        ),
    );
    for (index, domain) in dns.search_domains.iter().enumerate() {
        errors.check(
            is_search_domain(domain),
            format!("{path}.searchDomains[{index}]"),
            format!(
                "{domain:?} is not a DNS-1123 subdomain (dot-separated labels of 1-63 lowercase letters, digits or inner '-'; at most {MAX_DOMAIN_LEN} characters; a final '.' allowed)"
            ),
        );
    }

    let options = dns.options.len();
    errors.check(
        options <= MAX_DNS_OPTIONS,
        format!("{path}.options"),
        format!("{options} options, at most {MAX_DNS_OPTIONS} are allowed"),
    );
    for (index, option) in dns.options.iter().enumerate() {
        errors.check(
            is_option(option),
            format!("{path}.options[{index}]"),
            format!(
                "{option:?} is not a resolver option: `name` or `name:value` of letters, digits, '-', '_' or '.' (e.g. ndots:2), at most {MAX_DNS_OPTION_LEN} characters"
            ),
        );
    }

    if errors.0.len() == before {
        pod_check(errors, path, dns);
    }
}

/// Kubernetes' rule: a DNS-1123 subdomain once a final '.' is removed.
fn is_search_domain(domain: &str) -> bool {
    let name = domain.strip_suffix('.').unwrap_or(domain);
    !name.is_empty() && name.len() <= MAX_DOMAIN_LEN && name.split('.').all(super::is_dns_label)
}

fn is_option(option: &str) -> bool {
    let word = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    };
    let (name, value) = match option.split_once(':') {
        Some((name, value)) => (name, Some(value)),
        None => (option, None),
    };
    option.len() <= MAX_DNS_OPTION_LEN && word(name) && value.is_none_or(word)
}

/// The pod's verdict, its field renamed to the API's (`nameservers` -> `nameServers`,
/// `searches` -> `searchDomains`).
fn pod_check(errors: &mut Errors, path: &str, dns: &DnsConfig) {
    let config = agent::DnsConfig {
        nameservers: dns.name_servers.clone(),
        searches: dns.search_domains.clone(),
        options: dns.options.clone(),
        ..Default::default()
    };
    if let Err(err) = network::dns("", &config) {
        errors.add(api_field(path, &err.field), err.reason);
    }
}

/// `.nameservers[1]` (the pod's field under an empty root) as `<path>.nameServers[1]`.
fn api_field(path: &str, pod_field: &str) -> String {
    let field = pod_field.strip_prefix('.').unwrap_or(pod_field);
    let field = if let Some(rest) = field.strip_prefix("nameservers") {
        format!("nameServers{rest}")
    } else if let Some(rest) = field.strip_prefix("searches") {
        format!("searchDomains{rest}")
    } else {
        field.to_string()
    };
    if field.is_empty() {
        path.to_string()
    } else {
        format!("{path}.{field}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_fields_are_named_as_the_api_names_them() {
        assert_eq!(
            api_field("dnsConfig", ".nameservers[1]"),
            "dnsConfig.nameServers[1]"
        );
        assert_eq!(
            api_field("dnsConfig", ".searches"),
            "dnsConfig.searchDomains"
        );
        assert_eq!(
            api_field("dnsConfig", ".options[0]"),
            "dnsConfig.options[0]"
        );
        assert_eq!(api_field("dnsConfig", ""), "dnsConfig");
    }
}
