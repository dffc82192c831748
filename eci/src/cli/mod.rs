//! The `eci` command line: `eci serve` and a client of the REST API.
//!
//! Exit codes: 0 ok, 1 API error (message with the field printed), 2 usage, 3 the server cannot
//! be reached; `exec` exits with the command's exit code.

mod client;
mod commands;
mod exec_stream;
mod output;
mod serve;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use client::{CliError, Client};

/// Default API endpoint (also `ECI_ENDPOINT`).
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:8080";

#[derive(Debug, Parser)]
#[command(
    name = "eci",
    version,
    about = "ECI control plane: REST API server and client"
)]
pub struct Cli {
    /// API endpoint of `eci serve`.
    #[arg(long, global = true, env = "ECI_ENDPOINT", default_value = DEFAULT_ENDPOINT)]
    pub endpoint: String,
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the API server.
    Serve(ServeArgs),
    /// Create a container group from a JSON or YAML file ("-" for stdin).
    Create {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// List container groups.
    #[command(alias = "list")]
    Ls {
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        status: Option<String>,
        /// key=value (or key).
        #[arg(long)]
        tag: Option<String>,
    },
    /// Show one container group.
    Describe { id: String },
    /// Delete a container group.
    #[command(alias = "rm")]
    Delete { id: String },
    /// Restart every container of a group.
    Restart { id: String },
    /// Update a group from a JSON or YAML file (images, env, resources, tags).
    Update {
        id: String,
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Print a container's log.
    Logs {
        id: String,
        container: String,
        /// Keep streaming new lines.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(long)]
        tail: Option<u64>,
        /// Only lines of the last N seconds.
        #[arg(long)]
        since_seconds: Option<u64>,
        /// Prefix lines with their time.
        #[arg(long)]
        timestamps: bool,
    },
    /// Run a command in a container; exits with its exit code.
    Exec {
        /// Keep stdin open (attach it to the command).
        #[arg(short = 'i', long)]
        stdin: bool,
        /// Allocate a terminal (with -i: an interactive shell).
        #[arg(short = 't', long)]
        tty: bool,
        id: String,
        container: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Show a group's events.
    Events { id: String },
    /// Show a group's metrics.
    Metrics { id: String },
    /// Manage image caches.
    #[command(subcommand)]
    ImageCache(ImageCacheCommand),
    /// Show the vCPU quota and use.
    Quota,
    /// Print the OpenAPI document (offline).
    Openapi,
}

#[derive(Debug, Subcommand)]
pub enum ImageCacheCommand {
    /// Create an image cache from a JSON or YAML file.
    Create {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// List image caches.
    #[command(alias = "list")]
    Ls,
    /// Show one image cache with its events.
    Describe { id: String },
    /// Delete an image cache.
    #[command(alias = "delete")]
    Rm { id: String },
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port, printed on stderr).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Where the SQLite state and pod files live.
    #[arg(long, default_value = "/var/lib/eci")]
    pub data_dir: PathBuf,
    /// containerd's socket (CRI).
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    pub containerd: PathBuf,
    /// CRI runtime handler of the pods.
    #[arg(long, default_value = "eci")]
    pub runtime_handler: String,
    /// Most vCPUs all live groups may use together.
    #[arg(long, default_value_t = 64.0)]
    pub vcpu_quota: f64,
    /// This node's GPUs for `gpu` groups: PCI addresses (bound to vfio-pci), comma-separated
    /// or repeated. Their number is the GPU quota.
    #[arg(long, value_delimiter = ',')]
    pub gpu_pool: Vec<String>,
    /// Write the default CNI bridge config here unless the directory already holds one
    /// (containerd's CRI `conf_dir`, usually /etc/cni/net.d).
    #[arg(long)]
    pub cni_conf_dir: Option<PathBuf>,
}

/// Runs the parsed command line; returns the process exit code.
pub async fn run(cli: Cli) -> i32 {
    let result = match cli.command {
        Command::Serve(args) => serve::run(args).await,
        Command::Openapi => {
            output::print_json(&crate::openapi::document());
            Ok(0)
        }
        command => {
            let client = Client::new(&cli.endpoint);
            commands::run(&client, cli.output, command).await
        }
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("eci: {err}");
            err.exit_code()
        }
    }
}
