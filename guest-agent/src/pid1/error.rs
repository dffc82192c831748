//! Errors of the PID 1 duties.

use std::io;

/// Why an init step failed. Each variant names the step; the cause is the source.
#[derive(Debug, thiserror::Error)]
pub enum Pid1Error {
    #[error("mounting {fstype} on {target}")]
    Mount {
        fstype: String,
        target: String,
        #[source]
        source: nix::Error,
    },
    #[error("creating directory {path}")]
    CreateDir {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("making the initramfs root pivotable ({step})")]
    Reroot {
        step: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("opening the console")]
    Console(#[source] nix::Error),
    #[error("reading the kernel command line")]
    Cmdline(#[source] io::Error),
    #[error("setting the hostname to {0:?}")]
    Hostname(String, #[source] nix::Error),
    #[error("bringing up the loopback interface ({step})")]
    Loopback {
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("forking the agent process")]
    Fork(#[source] nix::Error),
    #[error("waiting for signals")]
    Signals(#[source] nix::Error),
}
