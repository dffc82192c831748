//! The agent's options on the kernel command line (`eci.*` parameters).

use std::collections::HashMap;

/// What the VMM asked of the guest through the kernel command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootOptions {
    /// `eci.selftest=1`: run the in-guest self-test, report on the console and power off.
    pub selftest: bool,
    /// `eci.cgroup_v1=1`: also mount the cgroup v1 hierarchies (hybrid layout).
    pub cgroup_v1: bool,
    /// `eci.hostname=NAME`: the guest's hostname; the kernel's default otherwise.
    pub hostname: Option<String>,
}

/// Why a command-line option was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("kernel command line: {key}={value:?}: {reason}")]
pub struct CmdlineError {
    pub key: String,
    pub value: String,
    pub reason: &'static str,
}

impl BootOptions {
    /// Parses the text of /proc/cmdline. Parameters without the `eci.` prefix are the kernel's and
    /// ignored; unknown `eci.` parameters are ignored too, so newer hosts can boot older agents.
    pub fn parse(cmdline: &str) -> Result<Self, CmdlineError> {
        let params: HashMap<&str, &str> = cmdline
            .split_whitespace()
            .filter_map(|word| word.strip_prefix("eci."))
            .map(|word| word.split_once('=').unwrap_or((word, "1")))
            .collect();
        let flag = |key: &str| -> Result<bool, CmdlineError> {
            match params.get(key).copied() {
                None | Some("0") => Ok(false),
                Some("1") => Ok(true),
                Some(other) => Err(CmdlineError {
                    key: format!("eci.{key}"),
                    value: other.to_string(),
                    reason: "expected 0 or 1",
                }),
            }
        };
        let hostname = match params.get("hostname").copied() {
            None => None,
            Some(name) if valid_hostname(name) => Some(name.to_string()),
            Some(name) => {
                return Err(CmdlineError {
                    key: "eci.hostname".into(),
                    value: name.to_string(),
                    reason: "expected 1 to 64 characters of letters, digits, '-' and '.'",
                })
            }
        };
        Ok(Self {
            selftest: flag("selftest")?,
            cgroup_v1: flag("cgroup_v1")?,
            hostname,
        })
    }
}

fn valid_hostname(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_when_no_eci_parameters() {
        let opts = BootOptions::parse("console=ttyS0 reboot=t panic=-1\n").unwrap();
        assert_eq!(opts, BootOptions::default());
    }

    #[test]
    fn reads_selftest_cgroup_v1_and_hostname() {
        let opts =
            BootOptions::parse("console=ttyS0 eci.selftest=1 eci.cgroup_v1 eci.hostname=pod-a.b")
                .unwrap();
        assert!(opts.selftest);
        assert!(opts.cgroup_v1);
        assert_eq!(opts.hostname.as_deref(), Some("pod-a.b"));
    }

    #[test]
    fn zero_disables_and_unknown_keys_are_ignored() {
        let opts = BootOptions::parse("eci.selftest=0 eci.future=x").unwrap();
        assert!(!opts.selftest);
    }

    #[test]
    fn rejects_bad_flag_value_naming_the_key() {
        let err = BootOptions::parse("eci.selftest=yes").unwrap_err();
        assert_eq!(err.key, "eci.selftest");
        assert!(err.to_string().contains("expected 0 or 1"), "{err}");
    }

    #[test]
    fn rejects_bad_hostname() {
        let err = BootOptions::parse("eci.hostname=a/b").unwrap_err();
        assert_eq!(err.key, "eci.hostname");
        let long = format!("eci.hostname={}", "a".repeat(65));
        assert!(BootOptions::parse(&long).is_err());
    }
}
