//! postStart and preStop hooks and the graceful stop sequence (Kubernetes semantics):
//! preStop within the grace period, the stop signal to the init process, wait, SIGKILL to every
//! process of the container.

use super::{action, lifecycle_event, Ctx};
use eci_protocol::agent::{ExitReason, LifecycleHook};
use std::time::{Duration, Instant};

/// Exec id of the postStart hook process.
pub const POST_START_EXEC_ID: &str = "eci-hook-post-start";
/// Exec id of the preStop hook process.
pub const PRE_STOP_EXEC_ID: &str = "eci-hook-pre-stop";
/// Time the container always gets between the stop signal and SIGKILL when preStop used up the
/// grace period (kubelet's minimum).
const MIN_GRACE_AFTER_PRE_STOP: Duration = Duration::from_secs(2);

/// Starts the postStart hook, if any, concurrently with the entrypoint. On failure the hook's
/// LifecycleEvent says so and the container is stopped with reason POST_START_HOOK_FAILED.
pub fn spawn_post_start(ctx: &Ctx) {
    let Some(hook) = ctx.features.annotations.post_start.clone() else {
        return;
    };
    let ctx2 = ctx.clone();
    let task = tokio::spawn(async move {
        let ctx = ctx2;
        let timeout = ctx.features.annotations.grace();
        let outcome = tokio::select! {
            o = action::run(&ctx.target, POST_START_EXEC_ID, &hook, timeout) => o,
            _ = ctx.target.container.init.wait() => return,
        };
        let id = &ctx.features.id;
        ctx.events.push(lifecycle_event(
            id,
            LifecycleHook::POST_START,
            outcome.ok,
            &outcome.message,
        ));
        if outcome.ok {
            tracing::info!(container = %id, "postStart hook succeeded");
            return;
        }
        tracing::warn!(container = %id, message = %outcome.message, "postStart hook failed: killing the container");
        ctx.features.set_kill_reason(
            ExitReason::POST_START_HOOK_FAILED,
            format!("postStart hook failed: {}", outcome.message),
        );
        stop(&ctx, libc::SIGTERM, ctx.features.annotations.grace(), false).await;
    });
    ctx.features.add_task(task.abort_handle());
}

/// Starts the stop sequence in the background unless one already runs or the init has exited.
pub fn spawn_stop(ctx: &Ctx, signal: i32, grace: Duration, skip_pre_stop: bool) {
    let ctx2 = ctx.clone();
    let task = tokio::spawn(async move { stop(&ctx2, signal, grace, skip_pre_stop).await });
    ctx.features.add_task(task.abort_handle());
}

/// The stop sequence; returns once the init process has exited.
pub async fn stop(ctx: &Ctx, signal: i32, grace: Duration, skip_pre_stop: bool) {
    let init = ctx.target.container.init.clone();
    if init.exit_status().is_some() || !ctx.features.begin_stop() {
        return;
    }
    let id = &ctx.features.id;
    let deadline = Instant::now() + grace;
    if let (false, Some(hook)) = (skip_pre_stop, ctx.features.annotations.pre_stop.as_ref()) {
        let outcome = tokio::select! {
            o = action::run(&ctx.target, PRE_STOP_EXEC_ID, hook, grace.max(Duration::from_secs(1))) => Some(o),
            _ = init.wait() => None,
            // The hook's own timeouts are per step; the grace period bounds the whole of it.
            _ = tokio::time::sleep(grace.max(Duration::from_secs(1))) => Some(action::Outcome {
                ok: false,
                message: format!("did not finish within the grace period ({}s)", grace.as_secs()),
            }),
        };
        if let Some(outcome) = outcome {
            tracing::info!(container = %id, ok = outcome.ok, message = %outcome.message, "preStop hook ran");
            ctx.events.push(lifecycle_event(
                id,
                LifecycleHook::PRE_STOP,
                outcome.ok,
                &outcome.message,
            ));
        }
    }
    if init.exit_status().is_none() {
        tracing::info!(container = %id, signal, grace_s = grace.as_secs(), "stopping the container");
        // SAFETY: kill(2) takes no pointers; the init is our registered, unreaped child.
        unsafe { libc::kill(init.pid, signal) };
    }
    let remaining = deadline
        .saturating_duration_since(Instant::now())
        .max(if grace.is_zero() {
            Duration::ZERO
        } else {
            MIN_GRACE_AFTER_PRE_STOP.min(grace)
        });
    if tokio::time::timeout(remaining, init.wait()).await.is_err() {
        tracing::info!(container = %id, "grace period over: SIGKILL");
        if let Err(e) = ctx.target.container.signal_all(libc::SIGKILL) {
            tracing::warn!(container = %id, error = %e.chain(), "SIGKILL the container");
        }
        init.wait().await;
    }
}
