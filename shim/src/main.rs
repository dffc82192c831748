//! `containerd-shim-eci-v2`: thin entry point; everything lives in the `eci_shim` library.

use std::io::Write;

use containerd_shim::protos::protobuf::Message;
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
    if flags.action == "start" {
        match lifecycle::start(&flags) {
            Ok(address) => print!("{address}"),
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
            Ok(response) => {
                let bytes = response.write_to_bytes().unwrap_or_default();
                let _ = std::io::stdout().write_all(&bytes);
            }
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

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("{RUNTIME_ID}: {what}: {e}");
    std::process::exit(1);
}
