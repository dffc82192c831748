//! `containerd-shim-eci-v2`: thin entry point; everything lives in the `eci_shim` library.

use std::io::{IsTerminal, Read, Write};

use containerd_shim::protos::{
    protobuf::Message,
    types::introspection::{RuntimeInfo, RuntimeVersion},
};
use eci_shim::{lifecycle, RUNTIME_ID};

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let flags = match containerd_shim::parse(&args[1..]) {
        Ok(flags) => flags,
        Err(e) => fail("arguments", e),
    };
    if flags.version {
        println!(
            "{} {} ({RUNTIME_ID})",
            env!("CARGO_PKG_NAME"),
            env!("CARGO_PKG_VERSION")
        );
        return;
    }
    if flags.info {
        // containerd 2.x asks with `-info` (runtime options on stdin) what the runtime is.
        let info = RuntimeInfo {
            name: RUNTIME_ID.to_owned(),
            version: Some(RuntimeVersion {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        let _ = read_stdin();
        write_stdout(&info.write_to_bytes().unwrap_or_default());
        return;
    }
    if flags.action == "start" {
        match lifecycle::start(&flags, &read_stdin()) {
            Ok(reply) => write_stdout(&reply),
            Err(e) => fail("start", format!("{e:#}")),
        }
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail("tokio runtime", e));
    match flags.action.as_str() {
        "delete" => match runtime.block_on(lifecycle::cleanup(&flags)) {
            Ok(response) => write_stdout(&response.write_to_bytes().unwrap_or_default()),
            Err(e) => fail("delete", format!("{e:#}")),
        },
        "" => {
            if flags.socket.is_empty() {
                fail("serve", "-socket is required");
            }
            if let Err(e) = runtime.block_on(lifecycle::serve(&flags)) {
                fail("serve", format!("{e:#}"));
            }
        }
        other => fail("arguments", format!("unknown action {other:?}")),
    }
    // Threads still blocked in system calls (e.g. opening a FIFO nobody opened) must not keep
    // the process alive.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
}

/// What containerd piped to the shim (nothing when run by hand from a terminal), at most 10 MiB
/// as containerd sends.
fn read_stdin() -> Vec<u8> {
    let stdin = std::io::stdin();
    let mut input = Vec::new();
    if !stdin.is_terminal() {
        if let Err(e) = stdin.lock().take(10 << 20).read_to_end(&mut input) {
            fail("read stdin", e);
        }
    }
    input
}

fn write_stdout(bytes: &[u8]) {
    let mut stdout = std::io::stdout();
    if let Err(e) = stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        fail("write stdout", e);
    }
}

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("{RUNTIME_ID}: {what}: {e}");
    std::process::exit(1);
}
