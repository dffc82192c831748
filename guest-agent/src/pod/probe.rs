//! Liveness, readiness and startup probes: one task per probe, started with the container.
//! The startup probe gates the others. A probe's result becomes SUCCESS after successThreshold
//! consecutive successes and FAILURE after failureThreshold consecutive failures; every change
//! (the first result included) is published as a ProbeEvent. Liveness (or startup) reaching
//! FAILURE stops the container (preStop, SIGTERM, grace, SIGKILL) with reason
//! LIVENESS_PROBE_FAILED.

use super::{action, event, lifecycle, Ctx};
use eci_protocol::agent::{event::Kind, ExitReason, ProbeKind, ProbeResult};
use eci_protocol::annotations::Probe;

/// Starts the container's probe tasks.
pub fn spawn_all(ctx: &Ctx) {
    let a = &ctx.features.annotations;
    for (kind, probe) in [
        (ProbeKind::STARTUP, &a.startup),
        (ProbeKind::LIVENESS, &a.liveness),
        (ProbeKind::READINESS, &a.readiness),
    ] {
        if let Some(probe) = probe.clone() {
            let ctx2 = ctx.clone();
            let task = tokio::spawn(async move { run(ctx2, kind, probe).await });
            ctx.features.add_task(task.abort_handle());
        }
    }
}

fn exec_id(kind: ProbeKind) -> &'static str {
    match kind {
        ProbeKind::STARTUP => "eci-probe-startup",
        ProbeKind::LIVENESS => "eci-probe-liveness",
        _ => "eci-probe-readiness",
    }
}

fn name(kind: ProbeKind) -> &'static str {
    match kind {
        ProbeKind::STARTUP => "startup",
        ProbeKind::LIVENESS => "liveness",
        _ => "readiness",
    }
}

/// One probe's loop; ends when the container exits (or is stopped, for liveness and startup).
async fn run(ctx: Ctx, kind: ProbeKind, probe: Probe) {
    let init = ctx.target.container.init.clone();
    let until_exit = async {
        if kind != ProbeKind::STARTUP {
            let mut started = ctx.features.started.subscribe();
            if started.wait_for(|s| *s).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(probe.initial_delay).await;
        probe_loop(&ctx, kind, &probe).await;
    };
    tokio::select! {
        _ = until_exit => {}
        _ = init.wait() => {}
    }
}

async fn probe_loop(ctx: &Ctx, kind: ProbeKind, probe: &Probe) {
    let mut tick = tokio::time::interval(probe.period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut successes, mut failures) = (0u32, 0u32);
    let mut result = ProbeResult::PROBE_RESULT_UNKNOWN;
    loop {
        tick.tick().await;
        if kind != ProbeKind::READINESS && ctx.features.is_stopping() {
            return;
        }
        let began = std::time::Instant::now();
        let outcome = action::run(&ctx.target, exec_id(kind), &probe.handler, probe.timeout).await;
        tracing::debug!(
            container = %ctx.features.id,
            probe = name(kind),
            ok = outcome.ok,
            took_ms = began.elapsed().as_millis() as u64,
            "probe ran"
        );
        if outcome.ok {
            successes += 1;
            failures = 0;
            if successes >= probe.success_threshold {
                result = ProbeResult::SUCCESS;
            }
        } else {
            failures += 1;
            successes = 0;
            if failures >= probe.failure_threshold {
                result = ProbeResult::FAILURE;
            }
        }
        let consecutive = successes.max(failures);
        let fatal = result == ProbeResult::FAILURE && kind != ProbeKind::READINESS;
        let message = if fatal {
            format!(
                "{} probe failed {consecutive} times: {}; the container will be killed",
                name(kind),
                outcome.message
            )
        } else {
            outcome.message.clone()
        };
        if let Some(e) = ctx
            .features
            .record_probe(kind, result, &message, consecutive)
        {
            tracing::info!(container = %ctx.features.id, probe = name(kind), result = ?result, message = %message, "probe result changed");
            ctx.events.push(event(Kind::Probe(e)));
        }
        match (kind, result) {
            (ProbeKind::STARTUP, ProbeResult::SUCCESS) => {
                ctx.features.started.send_replace(true);
                return;
            }
            (ProbeKind::STARTUP | ProbeKind::LIVENESS, ProbeResult::FAILURE) => {
                ctx.features.set_kill_reason(
                    ExitReason::LIVENESS_PROBE_FAILED,
                    format!("{} probe failed: {}", name(kind), outcome.message),
                );
                let grace = probe
                    .termination_grace
                    .unwrap_or_else(|| ctx.features.annotations.grace());
                // The stop runs as its own task: it outlives this probe loop, which ends with
                // the init's exit.
                lifecycle::spawn_stop(ctx, libc::SIGTERM, grace, false);
                return;
            }
            _ => {}
        }
    }
}
