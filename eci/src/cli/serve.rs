//! `eci serve`: the store, the runtime (CRI) and the API server in one process.

use std::sync::Arc;

use tokio::signal::unix::{signal, SignalKind};

use super::{CliError, ServeArgs};
use crate::runtime::{Controller, RuntimeConfig};
use crate::server::{self, AppState};
use crate::store::Store;

fn failed(what: &str, err: impl std::fmt::Display) -> CliError {
    CliError::Other(format!("{what}: {err}"))
}

pub async fn run(args: ServeArgs) -> Result<i32, CliError> {
    if !(args.vcpu_quota.is_finite() && args.vcpu_quota >= 0.0) {
        return Err(CliError::Usage(format!(
            "--vcpu-quota must be a number of vCPUs >= 0, got {}",
            args.vcpu_quota
        )));
    }
    if let Some(dir) = &args.cni_conf_dir {
        let config = crate::runtime::cni::write_default_config(dir).map_err(|e| {
            failed(
                &format!("cannot write the CNI config in {}", dir.display()),
                e,
            )
        })?;
        tracing::info!(config = %config.display(), "CNI network config");
    }
    let store = Store::open(&args.data_dir).map_err(|e| {
        failed(
            &format!("cannot open the state in {}", args.data_dir.display()),
            error_chain(&e),
        )
    })?;
    let mut config = RuntimeConfig::new(args.data_dir.clone(), args.containerd.clone());
    config.runtime_handler = args.runtime_handler.clone();
    for bdf in &args.gpu_pool {
        let ok = bdf.len() == 12
            && bdf.as_bytes()[4] == b':'
            && bdf.as_bytes()[7] == b':'
            && bdf.as_bytes()[10] == b'.';
        if !ok {
            return Err(CliError::Usage(format!(
                "--gpu-pool: `{bdf}` is not a PCI address (DDDD:BB:DD.F)"
            )));
        }
    }
    config.gpu_pool = args.gpu_pool.clone();
    let controller = Controller::new(store.clone(), config);
    // Groups of an earlier run come back first; containerd being down is not fatal (the
    // runtime retries), so a failed reconcile is logged and serving goes on.
    if let Err(err) = controller.reconcile().await {
        tracing::error!(error = %err, "reconciling stored groups with containerd failed");
    }
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|e| failed(&format!("cannot listen on {}", args.listen), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| failed("listening socket", e))?;
    eprintln!("eci: listening on {addr}");
    tracing::info!(%addr, data_dir = %args.data_dir.display(), containerd = %args.containerd.display(), "serving the ECI API");
    let state = AppState::new(store, Arc::new(controller), args.vcpu_quota)
        .with_gpu_quota(args.gpu_pool.len() as u32);
    server::serve(listener, state, shutdown_signal())
        .await
        .map_err(|e| failed("server", e))?;
    tracing::info!("stopped");
    Ok(0)
}

/// Completes on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the process still dies on the default action.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
