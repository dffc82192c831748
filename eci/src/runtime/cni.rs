//! The CNI network `eci serve` documents and writes on first use: a CNI 1.0 conflist with the
//! `bridge` plugin (host-local IPAM, the bridge as the pods' gateway, no masquerading) followed by
//! `loopback`, both from containernetworking-plugins (`/usr/lib/cni` on Debian).
//!
//! containerd's CRI plugin reads the first conflist of its `conf_dir` (`max_conf_num = 1` by
//! default), so [`write_default_config`] writes only when the directory holds none.

use std::{
    io,
    path::{Path, PathBuf},
};

use serde_json::json;

/// Where Debian's containernetworking-plugins package installs the plugins.
pub const DEFAULT_PLUGIN_DIR: &str = "/usr/lib/cni";
/// The bridge `eci serve` creates when it writes the default config.
pub const DEFAULT_BRIDGE: &str = "eci0";
/// The pods' subnet of the default config.
pub const DEFAULT_SUBNET: &str = "10.88.0.0/16";
/// The network (and host-local store) name of the default config.
pub const DEFAULT_NETWORK_NAME: &str = "eci";
/// File name of the default config; "10-" sorts it before most hand-written ones.
pub const DEFAULT_CONFIG_FILE: &str = "10-eci.conflist";

/// A bridge network: every pod gets a veth on `bridge` and an address from `subnet`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeNetwork {
    /// Network name (also the host-local store's subdirectory name).
    pub name: String,
    /// Linux bridge name (at most 15 bytes, the kernel's IFNAMSIZ - 1).
    pub bridge: String,
    /// IPv4 subnet in CIDR notation, e.g. `10.88.0.0/16`.
    pub subnet: String,
    /// host-local's `dataDir` (where it records leases); `None` keeps its default
    /// `/var/lib/cni/networks`. Tests point it at their own temp dir.
    pub ipam_data_dir: Option<PathBuf>,
}

impl BridgeNetwork {
    pub fn new(bridge: &str, subnet: &str) -> Self {
        Self {
            name: DEFAULT_NETWORK_NAME.into(),
            bridge: bridge.into(),
            subnet: subnet.into(),
            ipam_data_dir: None,
        }
    }

    /// The CNI 1.0 conflist (pretty JSON).
    pub fn conflist(&self) -> String {
        let mut ipam = json!({
            "type": "host-local",
            "ranges": [[{ "subnet": self.subnet }]],
            "routes": [{ "dst": "0.0.0.0/0" }],
        });
        if let Some(dir) = &self.ipam_data_dir {
            ipam["dataDir"] = json!(dir.display().to_string());
        }
        let conf = json!({
            "cniVersion": "1.0.0",
            "name": self.name,
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self.bridge,
                    "isGateway": true,
                    "ipMasq": false,
                    "hairpinMode": true,
                    "ipam": ipam,
                },
                { "type": "loopback" },
            ],
        });
        serde_json::to_string_pretty(&conf).expect("a JSON value always serialises")
    }
}

/// The conflist of a bridge network named `eci` on `bridge` with addresses from `subnet`.
pub fn bridge_conflist(bridge: &str, subnet: &str) -> String {
    BridgeNetwork::new(bridge, subnet).conflist()
}

/// Writes the default network ([`DEFAULT_BRIDGE`], [`DEFAULT_SUBNET`]) to
/// `dir/10-eci.conflist` unless `dir` already holds a CNI config (`*.conf`, `*.conflist`,
/// `*.json`), creating `dir` if needed. Returns the config file CRI will use: the one written, or
/// the first existing one in name order (containerd's choice too).
pub fn write_default_config(dir: &Path) -> io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    if let Some(existing) = existing_configs(dir)?.into_iter().next() {
        return Ok(existing);
    }
    let path = dir.join(DEFAULT_CONFIG_FILE);
    // Write then rename, so containerd (which watches the directory) never sees half a file.
    let tmp = dir.join(format!(".{DEFAULT_CONFIG_FILE}.tmp"));
    std::fs::write(&tmp, bridge_conflist(DEFAULT_BRIDGE, DEFAULT_SUBNET))?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

/// CNI config files in `dir`, sorted by name (as libcni's ConfFiles).
fn existing_configs(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let is_config = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| matches!(e, "conf" | "conflist" | "json"));
        if is_config && path.is_file() {
            found.push(path);
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_has_bridge_with_host_local_and_loopback() {
        let v: serde_json::Value =
            serde_json::from_str(&bridge_conflist("br-test", "10.99.0.0/24")).unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        assert_eq!(v["name"], "eci");
        let plugins = v["plugins"].as_array().unwrap();
        assert_eq!(plugins.len(), 2);
        assert_eq!(plugins[0]["type"], "bridge");
        assert_eq!(plugins[0]["bridge"], "br-test");
        assert_eq!(plugins[0]["isGateway"], true);
        assert_eq!(plugins[0]["ipMasq"], false);
        assert_eq!(plugins[0]["ipam"]["type"], "host-local");
        assert_eq!(plugins[0]["ipam"]["ranges"][0][0]["subnet"], "10.99.0.0/24");
        assert!(plugins[0]["ipam"].get("dataDir").is_none());
        assert_eq!(plugins[1]["type"], "loopback");
    }

    #[test]
    fn ipam_data_dir_is_passed_on() {
        let mut net = BridgeNetwork::new("b", "10.1.0.0/24");
        net.ipam_data_dir = Some("/tmp/x".into());
        let v: serde_json::Value = serde_json::from_str(&net.conflist()).unwrap();
        assert_eq!(v["plugins"][0]["ipam"]["dataDir"], "/tmp/x");
    }

    #[test]
    fn writes_default_only_when_dir_has_no_config() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("net.d");
        let written = write_default_config(&dir).unwrap();
        assert_eq!(written, dir.join(DEFAULT_CONFIG_FILE));
        let text = std::fs::read_to_string(&written).unwrap();
        assert!(text.contains(DEFAULT_BRIDGE) && text.contains(DEFAULT_SUBNET));
        // Second call: keeps it (no rewrite, no temp file left).
        assert_eq!(write_default_config(&dir).unwrap(), written);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);

        // A directory with the user's own config is left alone.
        let own = tmp.path().join("own");
        std::fs::create_dir(&own).unwrap();
        std::fs::write(own.join("05-mine.conf"), "{}").unwrap();
        std::fs::write(own.join("README"), "not a config").unwrap();
        assert_eq!(
            write_default_config(&own).unwrap(),
            own.join("05-mine.conf")
        );
        assert!(!own.join(DEFAULT_CONFIG_FILE).exists());
    }

    /// A network namespace made (and removed on drop) by a test.
    struct TestNetns(String);

    impl TestNetns {
        fn add(name: String) -> Self {
            let ok = std::process::Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "ip netns add {name}");
            Self(name)
        }
    }

    impl Drop for TestNetns {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &self.0])
                .status();
        }
    }

    /// Runs one plugin of the conflist like libcni does (name and cniVersion injected), with
    /// "host" as the plugin's own netns and "pod" as the container's.
    fn run_plugin(
        host: &TestNetns,
        pod: &TestNetns,
        conflist: &serde_json::Value,
        index: usize,
        command: &str,
        prev: Option<&serde_json::Value>,
    ) -> serde_json::Value {
        use std::io::Write;
        let mut conf = conflist["plugins"][index].clone();
        conf["name"] = conflist["name"].clone();
        conf["cniVersion"] = conflist["cniVersion"].clone();
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        let plugin = format!("{DEFAULT_PLUGIN_DIR}/{}", conf["type"].as_str().unwrap());
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", &host.0, &plugin])
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &pod.0)
            .env("CNI_NETNS", format!("/run/netns/{}", pod.0))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", DEFAULT_PLUGIN_DIR)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{plugin} {command}: {stdout}");
        if stdout.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&stdout).unwrap()
        }
    }

    /// The written config works with the real plugins: the bridge plugin gives the pod an
    /// address in the subnet and the loopback plugin passes the result on. Runs in two network
    /// namespaces of its own (the "host" one holds the bridge), removed at the end.
    #[test]
    fn real_plugins_give_the_pod_an_address() {
        if eci_test_support::skip_unless_ready(eci_test_support::missing_root()) {
            return;
        }
        if !Path::new(DEFAULT_PLUGIN_DIR).join("bridge").exists() {
            eci_test_support::missing_prerequisite(&format!(
                "CNI plugins in {DEFAULT_PLUGIN_DIR} (containernetworking-plugins)"
            ));
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        // tempfile's random directory name makes the namespace names unique.
        let unique = tmp
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let host = TestNetns::add(format!("eci-cni-h{unique}"));
        let pod = TestNetns::add(format!("eci-cni-p{unique}"));
        let mut net = BridgeNetwork::new("eci-test0", "10.77.0.0/24");
        net.ipam_data_dir = Some(tmp.path().join("ipam"));
        let conflist: serde_json::Value = serde_json::from_str(&net.conflist()).unwrap();

        let bridge = run_plugin(&host, &pod, &conflist, 0, "ADD", None);
        let address = bridge["ips"][0]["address"].as_str().unwrap().to_owned();
        assert!(address.starts_with("10.77.0."), "{bridge}");
        let result = run_plugin(&host, &pod, &conflist, 1, "ADD", Some(&bridge));
        assert_eq!(result["ips"][0]["address"], address.as_str());
        let shown = std::process::Command::new("ip")
            .args(["netns", "exec", &pod.0, "ip", "-o", "addr", "show", "eth0"])
            .output()
            .unwrap();
        let ip = address.split('/').next().unwrap();
        assert!(String::from_utf8_lossy(&shown.stdout).contains(ip));

        run_plugin(&host, &pod, &conflist, 1, "DEL", None);
        run_plugin(&host, &pod, &conflist, 0, "DEL", None);
        let leases = std::fs::read_dir(tmp.path().join("ipam/eci"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("10."))
            .count();
        assert_eq!(leases, 0, "DEL releases the address");
    }
}
