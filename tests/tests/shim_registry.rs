//! An image pulled with credentials from a local registry (docker-registry with htpasswd on
//! loopback) runs with io.containerd.eci.v2.

mod shim_common;

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use shim_common::*;

const USER: &str = "eci";
const PASSWORD: &str = "s3cret-pass";

/// docker-registry with htpasswd auth on a free loopback port; killed on drop.
struct Registry {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn missing_tools() -> Option<String> {
    for tool in ["docker-registry", "htpasswd", "skopeo"] {
        if Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            return Some(format!("{tool} is not installed"));
        }
    }
    None
}

fn start_registry() -> Registry {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = Command::new("htpasswd")
        .args(["-Bbn", USER, PASSWORD])
        .output()
        .unwrap();
    assert!(htpasswd.status.success());
    std::fs::write(dir.path().join("htpasswd"), &htpasswd.stdout).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let config = format!(
        "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {data}\nhttp:\n  addr: {addr}\nauth:\n  htpasswd:\n    realm: eci-test\n    path: {htpasswd}\n",
        data = dir.path().join("data").display(),
        htpasswd = dir.path().join("htpasswd").display(),
    );
    let config_path = dir.path().join("config.yml");
    std::fs::write(&config_path, config).unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Owned by the guard from here on: killed and reaped on every path, panics included.
    let registry = Registry {
        child,
        addr,
        _dir: dir,
    };
    for _ in 0..200 {
        if std::net::TcpStream::connect(&registry.addr).is_ok() {
            return registry;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("docker-registry did not listen on {}", registry.addr);
}

#[test]
fn image_pulled_with_credentials_runs() {
    if let Some(reason) = missing_tools() {
        eprintln!("SKIP: {reason}");
        return;
    }
    let Some(ctd) = containerd_with_busybox() else {
        return;
    };
    let registry = start_registry();
    let reference = format!("{}/eci/busybox:1", registry.addr);
    let tar = eci_tests::images::busybox_tar().unwrap();
    let push = Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--dest-creds",
            &format!("{USER}:{PASSWORD}"),
        ])
        .arg(format!("oci-archive:{}:latest", tar.display()))
        .arg(format!("docker://{reference}"))
        .output()
        .unwrap();
    assert!(
        push.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&push.stderr)
    );

    // Without credentials the registry refuses: the pull below really uses them.
    let anonymous = ctd.ctr(&["images", "pull", "--plain-http", &reference]);
    assert!(
        !anonymous.status.success(),
        "registry must require credentials"
    );

    ctd.ctr_ok(&[
        "images",
        "pull",
        "--plain-http",
        "--user",
        &format!("{USER}:{PASSWORD}"),
        &reference,
    ]);
    let id = unique("pulled");
    let out = ctd.ctr_ok(&[
        "run",
        "--rm",
        "--runtime",
        ECI,
        &reference,
        &id,
        "echo",
        "pulled and ran",
    ]);
    assert_eq!(out, "pulled and ran\n");
    assert_nothing_left(&ctd, &[id]);
}
