//! `eci`: the ECI control plane's server (`eci serve`) and CLI. All logic lives in the library.

use clap::Parser;

fn main() {
    let cli = eci::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("eci: cannot start the async runtime: {err}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(eci::cli::run(cli));
    // Dropping the runtime could wait on blocking tasks (stdin readers); exit right away.
    std::process::exit(code);
}
