//! nerdctl 2.x with `--runtime io.containerd.eci.v2` on containerd 2.x (both built by
//! `scripts/install-deps.sh`): run --rm, a published port answered through nerdctl's CNI set-up
//! (its OCI createRuntime hook, run by the shim), exec, logs, stop, rm.
//!
//! containerd and nerdctl run in a network namespace the test creates, so nerdctl's bridge,
//! iptables rules and veths live there and go with it; nerdctl's data root, CNI config and
//! namespace are the test's own. The shim's mode comes from `ECI_SHIM_CONFIG` (the fixture's:
//! local mode unless `ECI_TEST_HYPERVISOR=eci-vmm` makes it VM mode), as nerdctl passes no runtime options.

mod shim_common;

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use eci_tests::{
    cni::Netns,
    containerd::{self, Containerd, ContainerdOptions, Version},
    images,
};
use shim_common::*;

/// What the web image serves.
const PAGE: &str = "hello from busybox httpd in eci";

struct Nerdctl<'a> {
    ctd: &'a Containerd,
    netns: &'a Netns,
    data_root: PathBuf,
    cni_conf: PathBuf,
}

impl Nerdctl<'_> {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.netns.path().display()))
            .arg("--")
            .arg(containerd::tools_bin().join("nerdctl"))
            .arg("--address")
            .arg(&self.ctd.socket)
            .args(["--namespace", &self.ctd.namespace])
            .arg("--data-root")
            .arg(&self.data_root)
            .args(["--cni-path", eci_tests::cni::CNI_BIN_DIR])
            .arg("--cni-netconfpath")
            .arg(&self.cni_conf)
            .args(args);
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run nerdctl")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "nerdctl {args:?} failed ({}):\nstdout: {}\nstderr: {}\ncontainerd log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.ctd.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// An HTTP GET of `/` at `addr`, made from inside network namespace `netns`.
fn http_get(netns: &Path, addr: &str) -> std::io::Result<String> {
    let netns = netns.to_path_buf();
    let addr = addr.to_owned();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&netns)?;
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let mut stream = std::net::TcpStream::connect(&addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    })
    .join()
    .expect("http thread")
}

#[test]
fn nerdctl_runs_publishes_execs_logs_stops_and_removes() {
    if !eci_tests::is_root() {
        eprintln!("SKIP: nerdctl tests need root");
        return;
    }
    for tool in ["containerd", "ctr", "nerdctl"] {
        let path = containerd::tools_bin().join(tool);
        assert!(
            path.is_file(),
            "{} is missing: run scripts/install-deps.sh",
            path.display()
        );
    }
    if let Some(reason) = images::missing_tools() {
        panic!("{reason}: run scripts/install-deps.sh");
    }
    let shim = shim_binary();
    eci_tests::bins::require_workspace_binary("eci-agent");
    let netns = Netns::create().expect("create a network namespace");
    let tmp = tempfile::Builder::new()
        .prefix("eci-nerdctl-")
        .tempdir()
        .unwrap();
    let ctd = Containerd::start(ContainerdOptions {
        netns: Some(netns.name.clone()),
        path_dirs: vec![shim.parent().unwrap().to_path_buf()],
        namespace: Some("nerdctl-test".into()),
        version: Some(Version::V2),
        ..Default::default()
    })
    .expect("start containerd 2.x");
    ctd.import_busybox().expect("import busybox");
    let web_tar = tmp.path().join("web.tar");
    let script = format!(
        "mkdir -p /www && echo '{PAGE}' > /www/index.html && echo serving && exec httpd -f -v -p 80 -h /www"
    );
    images::build_image_tar(&web_tar, &["sh", "-c", &script]).expect("build the web image");
    ctd.import(&web_tar, "eci.local/web");
    let nerdctl = Nerdctl {
        ctd: &ctd,
        netns: &netns,
        data_root: tmp.path().join("data"),
        cni_conf: tmp.path().join("net.d"),
    };
    let eci = ["--runtime", ECI];

    let hi = nerdctl.ok(&[
        &["run", "--rm"],
        &eci[..],
        &[images::BUSYBOX_IMAGE, "echo", "hi"],
    ]
    .concat());
    assert_eq!(hi, "hi\n");

    let id = nerdctl
        .ok(&[
            &["run", "-d", "--name", "web", "-p", "8080:80"],
            &eci[..],
            &["eci.local/web:latest"],
        ]
        .concat())
        .trim()
        .to_owned();
    assert_eq!(id.len(), 64, "nerdctl run -d prints the container id: {id}");
    // nerdctl's createRuntime hook gave the container an address on its bridge and the port
    // mapping; the request goes to the namespace's own address of that bridge.
    let ip = nerdctl
        .ok(&[
            "inspect",
            "--format",
            "{{.NetworkSettings.IPAddress}}",
            "web",
        ])
        .trim()
        .to_owned();
    assert!(ip.contains('.'), "the container has an address: {ip:?}");
    let gateway = format!("{}.1", ip.rsplit_once('.').unwrap().0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let answer = loop {
        match http_get(&netns.path(), &format!("{gateway}:8080")) {
            Ok(answer) if answer.contains(PAGE) => break answer,
            other if Instant::now() > deadline => {
                panic!("no answer on {gateway}:8080: {other:?}\n{}", ctd.log_tail())
            }
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    assert!(
        answer.starts_with("HTTP/1.") && answer.contains(" 200 "),
        "{answer}"
    );

    let page = nerdctl.ok(&["exec", "web", "cat", "/www/index.html"]);
    assert_eq!(page.trim(), PAGE);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = nerdctl.run(&["logs", "web"]);
        let logs = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if logs.contains("serving") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "logs lack the first line: {logs}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    nerdctl.ok(&["stop", "-t", "2", "web"]);
    let status = nerdctl.ok(&["inspect", "--format", "{{.State.Status}}", "web"]);
    assert_eq!(status.trim(), "exited");
    nerdctl.ok(&["rm", "web"]);
    let listed = nerdctl.ok(&["ps", "-a", "--format", "{{.Names}}"]);
    assert!(!listed.contains("web"), "rm removed it: {listed}");
    assert!(
        http_get(&netns.path(), &format!("{gateway}:8080")).is_err(),
        "the published port is gone with the container"
    );
    assert_nothing_left(&ctd, &[id]);
}
