//! The `eci` binary as a script uses it: files in JSON or YAML, tables and `-o json`, exit codes
//! (0 ok, 1 API error with its field, 2 usage, 3 unreachable, exec = the command's), against the
//! real HTTP server over a recording backend.

mod common;

use std::process::{Command, Output};

use common::{Call, Harness};

/// Serves `harness` on a loopback port from a thread of its own; stops when the test ends.
struct Server {
    url: String,
    harness: Harness,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start() -> Server {
        let harness = Harness::new(64.0);
        let app = harness.app.clone();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        Server {
            url,
            harness,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    fn eci(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_eci"))
            .arg("--endpoint")
            .arg(&self.url)
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const GROUP_YAML: &str = "\
name: web
restartPolicy: OnFailure
containers:
  - name: app
    image: busybox
    cpu: 1
    memory: 2
    commands: [sleep, '3600']
tags:
  - key: env
    value: prod
";

#[test]
fn create_from_yaml_then_list_describe_and_delete() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("group.yaml");
    std::fs::write(&file, GROUP_YAML).unwrap();
    let out = server.eci(&["create", "-f", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    assert!(id.starts_with("eci-"), "{id}");

    let out = server.eci(&["ls"]);
    assert_eq!(out.status.code(), Some(0));
    let table = text(&out.stdout);
    let mut lines = table.lines();
    assert!(lines.next().unwrap().starts_with("ID "), "{table}");
    let row = lines.next().unwrap();
    assert!(
        row.starts_with(&id) && row.contains(" web ") && row.contains("Pending"),
        "{row}"
    );

    let out = server.eci(&["-o", "json", "ls", "--tag", "env=prod"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["containerGroups"][0]["id"], id.as_str());
    let out = server.eci(&["-o", "json", "ls", "--tag", "env=dev"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list["totalCount"], 0);

    let out = server.eci(&["describe", &id]);
    let described = text(&out.stdout);
    assert!(
        described.contains("Restart policy: OnFailure"),
        "{described}"
    );
    assert!(
        described.contains("app ") && described.contains("Waiting"),
        "{described}"
    );
    let out = server.eci(&["-o", "json", "describe", &id]);
    let group: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(group["spec"]["containers"][0]["commands"][1], "3600");

    let out = server.eci(&["delete", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        server.harness.calls().last(),
        Some(&Call::Delete(id.clone()))
    );
    let out = server.eci(&["describe", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("NotFound"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn api_errors_exit_1_with_the_field() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.json");
    std::fs::write(
        &file,
        r#"{"name": "web", "containers": [{"name": "app", "image": "busybox", "cpu": 100}]}"#,
    )
    .unwrap();
    let out = server.eci(&["create", "-f", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("InvalidParameter") && stderr.contains("cpu"),
        "{stderr}"
    );
    assert!(server.harness.calls().is_empty());
}

#[test]
fn usage_errors_exit_2_and_an_unreachable_server_3() {
    let server = Server::start();
    let out = server.eci(&["create"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = server.eci(&["create", "-f", "/nonexistent/group.yaml"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    std::fs::write(&file, "name: [unclosed").unwrap();
    let out = server.eci(&["create", "-f", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_eci"))
        .args(["--endpoint", &format!("http://127.0.0.1:{port}"), "ls"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        text(&out.stderr).contains("cannot reach"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn exec_exits_with_the_commands_code_and_logs_print_the_stream() {
    let server = Server::start();
    let id = {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("group.yaml");
        std::fs::write(&file, GROUP_YAML).unwrap();
        let out = server.eci(&["create", "-f", file.to_str().unwrap()]);
        text(&out.stdout).trim().to_string()
    };
    // The recording backend answers "ran <command>" with exit code 3.
    let out = server.eci(&["exec", &id, "app", "--", "echo", "hi"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(text(&out.stdout), "ran echo hi\n");
    let out = server.eci(&["logs", &id, "app", "--tail", "2"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "line 1\nline 2\n");
    let out = server.eci(&["logs", &id, "nope"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn image_caches_and_quota() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cache.json");
    std::fs::write(&file, r#"{"name": "base", "images": ["busybox"]}"#).unwrap();
    let out = server.eci(&["image-cache", "create", "-f", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    let out = server.eci(&["image-cache", "ls"]);
    let table = text(&out.stdout);
    assert!(table.contains(&id) && table.contains("Creating"), "{table}");
    let out = server.eci(&["-o", "json", "image-cache", "describe", &id]);
    let cache: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(cache["retentionDays"], 7);
    let out = server.eci(&["image-cache", "rm", &id]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(server.harness.calls().last(), Some(&Call::DeleteCache(id)));
    let out = server.eci(&["-o", "json", "quota"]);
    let quota: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(quota["vcpuQuota"], 64.0);
}
