//! `eci-agent`: PID 1 of the pod VM, or `eci-agent --local --listen PATH` on a host.

use anyhow::Context;
use clap::Parser;
use eci_agent::{Config, Listen};
use std::path::PathBuf;

/// ECI guest agent.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Run on the host (container isolation only, not a sandbox) instead of in a VM.
    #[arg(long)]
    local: bool,
    /// Local mode: unix socket of the ttrpc API.
    #[arg(long, required_if_eq("local", "true"))]
    listen: Option<PathBuf>,
    /// Local mode: unix socket of the stdio streams (default: the --listen path + ".io").
    #[arg(long)]
    stream_listen: Option<PathBuf>,
    /// Directory for bundles and runtime state.
    #[arg(long, default_value = "/run/eci-agent")]
    state_dir: PathBuf,
}

/// The log goes to a private duplicate of stderr (close-on-exec): libcontainer logs from the
/// container's init process after it has put the container's stdio on fds 0-2, and those lines
/// belong in the agent's log, not in the container's stderr.
fn log_writer() -> anyhow::Result<std::sync::Mutex<std::fs::File>> {
    use std::os::fd::AsFd;
    let fd = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .context("duplicate stderr for the log")?;
    Ok(std::sync::Mutex::new(std::fs::File::from(fd)))
}

/// The runtime helper's log: the agent's log on fd 4, kept out of the container's programs by
/// close-on-exec. None when the fd is not open.
fn helper_log() -> Option<std::fs::File> {
    use std::os::fd::FromRawFd;
    let fd = eci_agent::helper::LOG_FD;
    nix::fcntl::fcntl(
        fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .ok()?;
    // SAFETY: fd 4 is open (fcntl succeeded); the agent put its log there for this process and
    // nothing else here uses it.
    Some(unsafe { std::fs::File::from_raw_fd(fd) })
}

fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    if argv.len() == 3 && argv[1] == eci_agent::helper::HELPER_FLAG {
        if let Some(log) = helper_log() {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_env("ECI_AGENT_LOG")
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
                )
                .with_writer(std::sync::Mutex::new(log))
                .init();
        }
        std::process::exit(eci_agent::helper::main(&argv[2]));
    }
    if std::process::id() == 1 {
        eci_agent::pid1::run();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ECI_AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(
                    // libcontainer warns that it has no seccomp: the agent installs the profile itself.
                    "info,libcgroups=error,libcontainer=warn,libcontainer::process::init::process=error",
                )),
        )
        .with_writer(log_writer()?)
        .init();
    let args = Args::parse();
    let listen = if args.local {
        let api = args.listen.context("--local needs --listen PATH")?;
        let streams = args.stream_listen.unwrap_or_else(|| {
            let mut p = api.clone().into_os_string();
            p.push(".io");
            p.into()
        });
        tracing::warn!(
            "local mode: containers get container isolation only; this is not a sandbox"
        );
        Listen::Local { api, streams }
    } else {
        Listen::guest()
    };
    let config = Config {
        listen,
        state_dir: args.state_dir,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(eci_agent::serve(config)).context("agent")
}
