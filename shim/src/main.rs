//! `containerd-shim-eci-v2`: thin entry point; everything lives in the `eci_shim` library.

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Ok(flags) = containerd_shim::parse(&args[1..]) {
        if flags.version {
            println!(
                "{} {} ({})",
                env!("CARGO_PKG_NAME"),
                env!("CARGO_PKG_VERSION"),
                eci_shim::RUNTIME_ID
            );
            return;
        }
        if flags.action == "start" {
            match eci_shim::lifecycle::start(&flags) {
                Ok(address) => {
                    print!("{address}");
                    return;
                }
                Err(e) => {
                    eprintln!("{}: start: {e:#}", eci_shim::RUNTIME_ID);
                    std::process::exit(1);
                }
            }
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(containerd_shim::asynchronous::run::<
        eci_shim::lifecycle::EciShim,
    >(
        eci_shim::RUNTIME_ID,
        Some(eci_shim::lifecycle::library_config()),
    ));
}
