//! A running `eci serve` (the control plane's REST API) for end-to-end tests: started on a free
//! loopback port with its own data dir, killed with SIGKILL and restarted on demand, stopped on
//! drop.

use std::{
    ffi::OsString,
    io,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// How to start `eci serve`.
#[derive(Debug, Clone)]
pub struct EciServeOptions {
    /// The `eci` binary.
    pub binary: PathBuf,
    /// containerd's socket (CRI).
    pub containerd: PathBuf,
    /// The data dir (SQLite state); kept across restarts.
    pub data_dir: PathBuf,
    /// Arguments appended to `eci serve ...` (e.g. `--vcpu-quota 64`).
    pub extra_args: Vec<String>,
    /// Extra environment (e.g. a shorter restart back-off).
    pub env: Vec<(String, String)>,
}

pub struct EciServer {
    options: EciServeOptions,
    child: Option<Child>,
    /// `127.0.0.1:<port>`.
    pub addr: String,
    /// `http://127.0.0.1:<port>`, the CLI's `--endpoint`.
    pub url: String,
    log: PathBuf,
}

impl EciServer {
    pub fn start(options: EciServeOptions) -> io::Result<Self> {
        std::fs::create_dir_all(&options.data_dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let log = options
            .data_dir
            .parent()
            .unwrap_or(&options.data_dir)
            .join(format!("eci-serve-{port}.log"));
        let mut server = Self {
            url: format!("http://{addr}"),
            addr,
            options,
            child: None,
            log,
        };
        server.spawn()?;
        Ok(server)
    }

    /// The command line `eci serve` runs with.
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "serve".into(),
            "--listen".into(),
            self.addr.clone().into(),
            "--data-dir".into(),
            self.options.data_dir.clone().into(),
            "--containerd".into(),
            self.options.containerd.clone().into(),
            "--runtime-handler".into(),
            crate::cni::ECI_HANDLER.into(),
        ];
        args.extend(self.options.extra_args.iter().map(OsString::from));
        args
    }

    fn spawn(&mut self) -> io::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut command = Command::new(&self.options.binary);
        command
            .args(self.args())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (key, value) in &self.options.env {
            command.env(key, value);
        }
        self.child = Some(command.spawn()?);
        self.wait_listening()
    }

    fn wait_listening(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::net::TcpStream::connect(&self.addr).is_ok() {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(io::Error::other(format!(
                    "eci serve exited ({status}):\n{}",
                    self.log_tail()
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "eci serve did not listen on {}:\n{}",
                    self.addr,
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server with SIGKILL (no clean shutdown) and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again with the same port, data dir and options.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill9();
        self.spawn()
    }

    /// Stops the server with SIGTERM (SIGKILL after 10 s) and reaps it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        crate::terminate(&mut child, Duration::from_secs(10));
    }

    pub fn data_dir(&self) -> &Path {
        &self.options.data_dir
    }

    /// The last lines of the server's log (for failure messages).
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for EciServer {
    fn drop(&mut self) {
        self.stop();
    }
}
