//! `eci serve` as a process, without containerd: it listens, answers, stops cleanly on SIGTERM,
//! and a restarted server finds the groups the previous one stored. Everything that needs
//! containerd is tested end to end in tests/tests/eci_e2e.rs.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A running `eci serve` on a free port; killed on drop if still running.
struct Serve {
    child: Child,
    url: String,
}

impl Serve {
    fn start(data_dir: &std::path::Path) -> Serve {
        let mut child = Command::new(env!("CARGO_BIN_EXE_eci"))
            .args(["serve", "--listen", "127.0.0.1:0", "--vcpu-quota", "8"])
            .arg("--data-dir")
            .arg(data_dir)
            // Nothing listens there: the runtime must cope with containerd being absent.
            .arg("--containerd")
            .arg(data_dir.join("no-containerd.sock"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("eci serve exited before listening")
                .unwrap();
            if let Some(addr) = line.strip_prefix("eci: listening on ") {
                break addr.to_string();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Serve {
            child,
            url: format!("http://{addr}"),
        }
    }

    fn eci(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_eci"))
            .arg("--endpoint")
            .arg(&self.url)
            .args(args)
            .output()
            .unwrap()
    }

    /// SIGTERM, then the exit status (SIGKILL after 10 s).
    fn stop(mut self) -> Option<i32> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn serve_answers_stops_on_sigterm_and_keeps_its_groups_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let file = dir.path().join("group.json");
    std::fs::write(
        &file,
        r#"{"name": "kept", "cpu": 2, "memory": 4,
            "containers": [{"name": "app", "image": "busybox"}]}"#,
    )
    .unwrap();

    let server = Serve::start(&data_dir);
    let quota = json(&server.eci(&["-o", "json", "quota"]));
    assert_eq!(
        quota,
        serde_json::json!({"vcpuQuota": 8.0, "vcpuUsed": 0.0, "gpuQuota": 0, "gpuUsed": 0})
    );
    let created = json(&server.eci(&["-o", "json", "create", "-f", file.to_str().unwrap()]));
    let id = created["id"].as_str().unwrap().to_string();
    // The OpenAPI document is served by the real process too.
    let document: serde_json::Value = serde_json::from_slice(
        &Command::new(env!("CARGO_BIN_EXE_eci"))
            .arg("openapi")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(document["paths"]["/v1/containerGroups"]["post"].is_object());
    assert_eq!(
        server.stop(),
        Some(0),
        "eci serve did not exit 0 on SIGTERM"
    );

    let server = Serve::start(&data_dir);
    let group = json(&server.eci(&["-o", "json", "describe", &id]));
    assert_eq!(group["name"], "kept");
    assert_eq!(
        (group["cpu"].as_f64(), group["memory"].as_f64()),
        (Some(2.0), Some(4.0))
    );
    let list = json(&server.eci(&["-o", "json", "ls", "--name", "kept"]));
    assert_eq!(list["totalCount"], 1);
    assert_eq!(server.stop(), Some(0));
}

#[test]
fn serve_refuses_a_bad_quota_and_an_unusable_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_eci"))
        .args(["serve", "--listen", "127.0.0.1:0", "--vcpu-quota=-1"])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--vcpu-quota"));
    let file = dir.path().join("a-file");
    std::fs::write(&file, "").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_eci"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot open the state"), "{stderr}");
}
