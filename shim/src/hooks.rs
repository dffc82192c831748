//! OCI hooks that belong on the host: prestart, createRuntime, poststart, poststop.
//!
//! Each hook runs with the container's state JSON on stdin and its own timeout. The shim strips
//! these hooks from the spec it sends to the agent (they must not run a second time inside the
//! sandbox); createContainer and startContainer hooks stay in the spec for the agent.

use std::{io::Read, process::Stdio, time::Duration};

use oci_spec::runtime::{Hook, Hooks, Spec};
use serde::Serialize;

use crate::reaper::ExitSubscription;

/// Hooks without a timeout get this long.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("{stage} hook {path}: cannot start")]
    Spawn {
        stage: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{stage} hook {path} exited with status {status}: {stderr}")]
    Failed {
        stage: &'static str,
        path: String,
        status: i32,
        stderr: String,
    },
    #[error("{stage} hook {path} timed out after {timeout:?}")]
    TimedOut {
        stage: &'static str,
        path: String,
        timeout: Duration,
    },
}

/// The OCI state document hooks read on stdin.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct State<'a> {
    pub oci_version: &'a str,
    pub id: &'a str,
    pub status: &'a str,
    pub pid: u32,
    pub bundle: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotations: Option<&'a std::collections::HashMap<String, String>>,
}

/// The host hooks of a spec, kept when the spec goes to the agent without them.
#[derive(Debug, Clone, Default)]
pub struct HostHooks {
    pub prestart: Vec<Hook>,
    pub create_runtime: Vec<Hook>,
    pub poststart: Vec<Hook>,
    pub poststop: Vec<Hook>,
}

impl HostHooks {
    /// Removes the host hooks from `spec` and returns them.
    #[allow(deprecated)]
    pub fn take_from(spec: &mut Spec) -> Self {
        let Some(hooks) = spec.hooks().clone() else {
            return Self::default();
        };
        let taken = Self {
            prestart: hooks.prestart().clone().unwrap_or_default(),
            create_runtime: hooks.create_runtime().clone().unwrap_or_default(),
            poststart: hooks.poststart().clone().unwrap_or_default(),
            poststop: hooks.poststop().clone().unwrap_or_default(),
        };
        let mut kept = Hooks::default();
        kept.set_create_container(hooks.create_container().clone());
        kept.set_start_container(hooks.start_container().clone());
        let empty = kept.create_container().is_none() && kept.start_container().is_none();
        spec.set_hooks(if empty { None } else { Some(kept) });
        taken
    }
}

/// Runs `hooks` one after the other; the first failure stops the run.
pub async fn run(stage: &'static str, hooks: &[Hook], state: &State<'_>) -> Result<(), HookError> {
    let input = serde_json::to_vec(state).expect("state serializes");
    for hook in hooks {
        run_one(stage, hook, &input).await?;
    }
    Ok(())
}

/// Runs `hooks` and logs failures instead of returning them (poststart, poststop).
pub async fn run_logged(stage: &'static str, hooks: &[Hook], state: &State<'_>) {
    if let Err(e) = run(stage, hooks, state).await {
        log::warn!("{e}");
    }
}

async fn run_one(stage: &'static str, hook: &Hook, input: &[u8]) -> Result<(), HookError> {
    let path = hook.path().display().to_string();
    let timeout = hook
        .timeout()
        .filter(|t| *t > 0)
        .map(|t| Duration::from_secs(t as u64))
        .unwrap_or(DEFAULT_TIMEOUT);
    let mut command = std::process::Command::new(hook.path());
    if let Some(args) = hook.args() {
        // args[0] is the program name as the hook sees it.
        use std::os::unix::process::CommandExt;
        if let Some(name) = args.first() {
            command.arg0(name);
        }
        command.args(args.iter().skip(1));
    }
    command.env_clear();
    for entry in hook.env().iter().flatten() {
        if let Some((k, v)) = entry.split_once('=') {
            command.env(k, v);
        }
    }
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let spawn_error = |source| HookError::Spawn {
        stage,
        path: path.clone(),
        source,
    };
    let subscription = ExitSubscription::new().await.map_err(spawn_error)?;
    let mut child = command.spawn().map_err(spawn_error)?;
    let pid = child.id() as i32;
    let stdin = child.stdin.take();
    let input = input.to_vec();
    // A hook may ignore its stdin; writing must neither block the shim nor fail the hook.
    std::thread::spawn(move || {
        if let Some(mut stdin) = stdin {
            use std::io::Write;
            let _ = stdin.write_all(&input);
        }
    });
    let stderr = child.stderr.take();
    let stderr_reader = tokio::task::spawn_blocking(move || {
        let mut text = String::new();
        if let Some(stderr) = stderr {
            let _ = stderr.take(4096).read_to_string(&mut text);
        }
        text
    });
    let (status, timed_out) = subscription.wait_or_kill(pid, timeout).await;
    if timed_out {
        return Err(HookError::TimedOut {
            stage,
            path,
            timeout,
        });
    }
    if status != 0 {
        let stderr = tokio::time::timeout(Duration::from_secs(1), stderr_reader)
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or_default();
        return Err(HookError::Failed {
            stage,
            path,
            status,
            stderr: stderr.trim().to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(deprecated)]
    #[test]
    fn host_hooks_leave_the_spec_and_container_hooks_stay() {
        let hook = |p: &str| {
            let mut h = Hook::default();
            h.set_path(p.into());
            h
        };
        let mut hooks = Hooks::default();
        hooks.set_prestart(Some(vec![hook("/pre")]));
        hooks.set_create_runtime(Some(vec![hook("/cr")]));
        hooks.set_poststart(Some(vec![hook("/ps")]));
        hooks.set_poststop(Some(vec![hook("/stop")]));
        hooks.set_start_container(Some(vec![hook("/sc")]));
        let mut spec = Spec::default();
        spec.set_hooks(Some(hooks));
        let taken = HostHooks::take_from(&mut spec);
        assert_eq!(taken.prestart.len(), 1);
        assert_eq!(taken.create_runtime[0].path().to_str(), Some("/cr"));
        assert_eq!(taken.poststop.len(), 1);
        let kept = spec.hooks().clone().unwrap();
        assert!(
            kept.prestart().is_none()
                && kept.create_runtime().is_none()
                && kept.poststop().is_none()
        );
        assert_eq!(kept.start_container().as_ref().unwrap().len(), 1);

        let mut bare = Spec::default();
        bare.set_hooks(None);
        assert!(HostHooks::take_from(&mut bare).create_runtime.is_empty());
    }

    #[test]
    fn state_json_has_oci_field_names() {
        let state = State {
            oci_version: "1.0.2",
            id: "c",
            status: "created",
            pid: 42,
            bundle: "/b",
            annotations: None,
        };
        let json = serde_json::to_value(&state).unwrap();
        assert_eq!(json["ociVersion"], "1.0.2");
        assert_eq!(json["pid"], 42);
        assert!(json.get("annotations").is_none());
    }
}
