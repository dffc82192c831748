//! The shim's Task API driven directly over ttrpc, without containerd in between: for what
//! containerd's own clean-up would hide (after a failed create it deletes the task and shuts the
//! shim down at once). A private containerd still receives the shim's events.

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use containerd_shim::protos::{
    protobuf::well_known_types::any::Any, shim::shim::ShutdownRequest, shim_async::TaskClient,
};
use eci_tests::containerd::Containerd;

/// A shim server of one pod, started the way `containerd-shim-eci-v2 start` starts it.
pub struct DirectShim {
    child: Child,
    dir: tempfile::TempDir,
    pub client: TaskClient,
    /// Runtime options naming a local-mode shim config (`hypervisor = "none"`).
    pub options: Any,
}

impl DirectShim {
    /// Starts the server of pod `pod_id` for `ctd` (its address and namespace key the pod's
    /// directory, its ttrpc socket takes the events) and connects to it.
    pub async fn start(ctd: &Containerd, pod_id: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("eci-direct-")
            .tempdir_in("/tmp")
            .unwrap();
        // The shim logs to `log` in its working directory (a FIFO containerd makes).
        std::fs::write(dir.path().join("log"), "").unwrap();
        let config = dir.path().join("shim.toml");
        std::fs::write(&config, "hypervisor = \"none\"\nlog_level = \"debug\"\n").unwrap();
        let socket = dir.path().join("shim.sock");
        let mut child = Command::new(super::shim_binary())
            .args(["-namespace", &ctd.namespace, "-id", pod_id, "-address"])
            .arg(&ctd.socket)
            .args(["-publish-binary", "/bin/true", "-socket"])
            .arg(format!("unix://{}", socket.display()))
            .env("TTRPC_ADDRESS", format!("{}.ttrpc", ctd.socket.display()))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the shim server");
        // The server closes its stdout once it serves (or dies).
        let mut sink = Vec::new();
        let _ = child.stdout.take().unwrap().read_to_end(&mut sink);
        let client = ttrpc::r#async::Client::connect(&format!("unix://{}", socket.display()))
            .await
            .expect("connect to the shim");
        Self {
            child,
            dir,
            client: TaskClient::new(client),
            options: runtime_options(&config),
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Asks the shim to shut down (as containerd does once the pod has no task) and waits for
    /// it to exit.
    pub async fn shutdown(mut self) {
        let _ = self
            .client
            .shutdown(ctx(), &ShutdownRequest::default())
            .await;
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        panic!("the shim did not exit after Shutdown");
    }
}

impl Drop for DirectShim {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A request context with a generous deadline.
pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(Duration::from_secs(60).as_nanos() as i64)
}

/// containerd's `runtimeoptions.v1.Options` with `config_path` (field 2) set.
fn runtime_options(config: &Path) -> Any {
    let path = config.display().to_string();
    let mut value = vec![0x12, u8::try_from(path.len()).expect("short config path")];
    value.extend_from_slice(path.as_bytes());
    Any {
        type_url: "runtimeoptions.v1.Options".into(),
        value,
        ..Default::default()
    }
}

/// A bundle directory under `dir` whose config.json runs `args` in a busybox rootfs.
pub fn bundle(dir: &Path, args: &[&str]) -> (PathBuf, eci_tests::rootfs::BusyboxBundle) {
    let busybox = eci_tests::rootfs::BusyboxBundle::new().expect("busybox bundle");
    let mut spec = eci_tests::agent::default_spec(args);
    spec.root_mut()
        .as_mut()
        .unwrap()
        .set_path(busybox.bundle().join("rootfs"));
    let bundle = dir.join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    spec.save(bundle.join("config.json")).unwrap();
    (bundle, busybox)
}
