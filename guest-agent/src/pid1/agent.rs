//! The agent process forked by PID 1: serves the API on vsock, says `eci-agent: ready` once a
//! real client call answers, and runs the self-test when asked.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use eci_protocol::agent::PingRequest;
use eci_protocol::agent_ttrpc::AgentClient;
use nix::sys::signal::{raise, Signal};
use tokio::task::{JoinError, JoinHandle};

use super::cmdline::BootOptions;
use super::console::pid1_log;
use super::{error_chain, selftest, AGENT_VSOCK_PORT};
use crate::{serve, Config, Listen, ServeError};

/// Where the agent keeps bundles and libcontainer state (on the /run tmpfs).
const STATE_DIR: &str = "/run/eci-agent";
/// The guest's own vsock address (vsock loopback), for probing the API like the host would.
const VMADDR_CID_LOCAL: u32 = 1;
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// The ttrpc address of the agent's own API through vsock loopback.
pub(super) fn local_api_address() -> String {
    format!("vsock://{VMADDR_CID_LOCAL}:{AGENT_VSOCK_PORT}")
}

/// Runs the agent; returns the process exit code (0: served and stopped cleanly, or self-test
/// passed). `orphan`: the self-test's orphan made by PID 1 (only with `eci.selftest=1`).
pub(super) fn run(opts: &BootOptions, orphan: Option<Result<u32, String>>) -> i32 {
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            pid1_log!("starting the async runtime: {e}");
            return 1;
        }
    };
    let selftest = opts
        .selftest
        .then(|| orphan.unwrap_or_else(|| Err("none made".into())));
    runtime.block_on(serve_and_report(selftest))
}

/// The agent's default log filter (as in main.rs); `ECI_AGENT_LOG=...` on the kernel command line
/// reaches /init as an environment variable and overrides it.
const DEFAULT_LOG_FILTER: &str =
    "info,libcgroups=error,libcontainer=warn,libcontainer::process::init::process=error";

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ECI_AGENT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    // A private close-on-exec duplicate of the console: libcontainer logs from a container's init
    // process after it has put the container's stdio on fds 0-2, and those lines belong here.
    let console = match std::io::stderr().as_fd().try_clone_to_owned() {
        Ok(fd) => std::fs::File::from(fd),
        Err(e) => {
            pid1_log!("no log: duplicating the console: {e}");
            return;
        }
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(console))
        .try_init();
}

/// `selftest`: run the self-test (with PID 1's orphan) instead of serving until SIGTERM.
async fn serve_and_report(selftest: Option<Result<u32, String>>) -> i32 {
    let config = Config {
        listen: Listen::guest(),
        state_dir: STATE_DIR.into(),
    };
    let mut server = tokio::spawn(serve(config));
    if let Err(reason) = wait_until_serving(&server).await {
        pid1_log!("not serving: {reason}");
        if server.is_finished() {
            log_server_end(server.await);
        }
        return 1;
    }
    pid1_log!("ready");
    let Some(orphan) = selftest else {
        return log_server_end(server.await);
    };
    let verdict = selftest::run(orphan).await;
    match &verdict {
        Ok(()) => eprintln!("eci-selftest: PASS"),
        Err(what) => eprintln!("eci-selftest: FAIL: {what}"),
    }
    // Stop the server the way the VMM would (SIGTERM), which also removes any container left.
    let _ = raise(Signal::SIGTERM);
    match tokio::time::timeout(SHUTDOWN_TIMEOUT, &mut server).await {
        Ok(result) => {
            log_server_end(result);
        }
        Err(_) => pid1_log!("the agent did not stop within {SHUTDOWN_TIMEOUT:?} of SIGTERM"),
    }
    i32::from(verdict.is_err())
}

/// Logs how the server task ended; returns the matching exit code.
fn log_server_end(result: Result<Result<(), ServeError>, JoinError>) -> i32 {
    match result {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            pid1_log!("agent: {}", error_chain(&e));
            1
        }
        Err(e) => {
            pid1_log!("agent task: {e}");
            1
        }
    }
}

/// Polls the API with Ping over vsock loopback until it answers: "ready" then means a host
/// client can be served, not merely that a socket was bound.
async fn wait_until_serving(server: &JoinHandle<Result<(), ServeError>>) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut last_error = String::from("no attempt");
    while Instant::now() < deadline {
        if server.is_finished() {
            return Err("the server stopped before serving".into());
        }
        match ping().await {
            Ok(()) => return Ok(()),
            Err(e) => last_error = e,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(format!(
        "no Ping answer on {} within {READY_TIMEOUT:?}: {last_error}",
        local_api_address()
    ))
}

async fn ping() -> Result<(), String> {
    let client = ttrpc::r#async::Client::connect(&local_api_address())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let ctx = ttrpc::context::with_timeout(Duration::from_secs(5).as_nanos() as i64);
    AgentClient::new(client)
        .ping(ctx, &PingRequest::default())
        .await
        .map(|_| ())
        .map_err(|e| format!("Ping: {e}"))
}
