//! PID 1 of the pod VM: an init's duties before the agent serves.
//!
//! [`run`] mounts the base file systems, makes the initramfs root pivotable for containers, sets
//! the hostname, brings up `lo`, then forks: the child is the agent (serving the API on vsock
//! port 1024, or running the self-test when the kernel command line says `eci.selftest=1`), and
//! PID 1 stays a small supervisor that reaps zombies and powers the VM off when the agent ends.
//! Any fatal error powers the VM off with a console message instead of panicking the kernel.
//!
//! Owns: mounts, console, hostname, loopback and reaping in the guest. Must not touch container
//! state (that is the container core's), nor run anything when the process is not PID 1.

mod agent;
mod cmdline;
pub(crate) mod console;
mod error;
mod mounts;
pub(crate) mod net;
mod power;
mod selftest;
mod supervise;

use std::time::Instant;

pub use cmdline::{BootOptions, CmdlineError};
pub use error::Pid1Error;

use console::pid1_log;
use power::power_off;

/// The vsock port the agent API is served on.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// True when this process is the init of its PID namespace (the guest's, in a VM).
pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// Does an init's work and runs the agent; never returns (the VM powers off at the end).
pub fn run() -> ! {
    let started = Instant::now();
    install_panic_hook();
    let opts = match init() {
        Ok(opts) => opts,
        Err(e) => power_off(&format!("init failed: {}", error_chain(&e))),
    };
    pid1_log!("init done in {} ms", started.elapsed().as_millis());
    let orphan = opts.selftest.then(selftest::make_orphan);
    supervise::spawn_agent_and_supervise(|| agent::run(&opts, orphan))
}

/// The init steps, in order: /proc first (the command line lives there), then the rest.
fn init() -> Result<BootOptions, Pid1Error> {
    mounts::make_root_pivotable()?;
    mounts::mount_base()?;
    console::ensure_stdio()?;
    let text = std::fs::read_to_string("/proc/cmdline").map_err(Pid1Error::Cmdline)?;
    let opts = BootOptions::parse(&text).map_err(|e| {
        Pid1Error::Cmdline(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    })?;
    mounts::mount_cgroups(opts.cgroup_v1)?;
    if let Some(name) = &opts.hostname {
        nix::unistd::sethostname(name).map_err(|e| Pid1Error::Hostname(name.clone(), e))?;
    }
    net::loopback_up()?;
    Ok(opts)
}

/// A panic in PID 1 would end in "Attempted to kill init!" and a kernel panic: log it and power
/// off instead. Other processes (the forked agent) keep the default behaviour.
fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if is_pid1() {
            power_off(&format!("panic: {info}"));
        }
        default(info);
    }));
}

/// "outer: inner: innermost", for console messages.
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
