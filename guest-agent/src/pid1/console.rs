//! The kernel console as PID 1's stdio, and the log lines written to it.

use nix::fcntl::{fcntl, open, FcntlArg, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{close, dup2};

use super::error::Pid1Error;

/// Writes one line to the console (stderr, which is /dev/console once [`ensure_stdio`] ran).
pub fn log(args: std::fmt::Arguments<'_>) {
    eprintln!("eci-agent: {args}");
}

/// `pid1_log!("...")`: a console line prefixed with `eci-agent: `.
macro_rules! pid1_log {
    ($($arg:tt)*) => { $crate::pid1::console::log(format_args!($($arg)*)) };
}
pub(crate) use pid1_log;

/// The kernel gives /init the console as fds 0-2 only when the initramfs holds a /dev/console
/// node. When it did not, open the console from devtmpfs (mounted by then) and install it.
pub fn ensure_stdio() -> Result<(), Pid1Error> {
    if fcntl(2, FcntlArg::F_GETFD).is_ok() {
        return Ok(());
    }
    let fd = open(
        "/dev/console",
        OFlag::O_RDWR | OFlag::O_NOCTTY,
        Mode::empty(),
    )
    .map_err(Pid1Error::Console)?;
    for target in 0..=2 {
        if target != fd {
            dup2(fd, target).map_err(Pid1Error::Console)?;
        }
    }
    if fd > 2 {
        close(fd).map_err(Pid1Error::Console)?;
    }
    Ok(())
}
