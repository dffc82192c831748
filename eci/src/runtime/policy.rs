//! Restart policy and back-off, as kubelet does them: a container that exited is restarted when
//! the policy says so, after a delay that starts at `initial` and doubles per restart up to
//! `max`; a container that ran for `reset_after` without exiting starts again from `initial`.
//! The group's phase follows from its app containers.

use std::time::Duration;

use crate::model::{ContainerState, GroupStatus, RestartPolicy};

/// Environment variables that shorten the back-off (tests): milliseconds.
pub const ENV_BACKOFF_INITIAL_MS: &str = "ECI_RESTART_BACKOFF_INITIAL_MS";
pub const ENV_BACKOFF_MAX_MS: &str = "ECI_RESTART_BACKOFF_MAX_MS";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// Uptime after which an exit no longer counts as a crash loop.
    pub reset_after: Duration,
}

impl Default for Backoff {
    /// kubelet's: 10 s doubling, capped at 5 minutes, reset after 10 minutes of running.
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(10),
            max: Duration::from_secs(300),
            reset_after: Duration::from_secs(600),
        }
    }
}

impl Backoff {
    /// The default, with `initial`/`max` overridden by [`ENV_BACKOFF_INITIAL_MS`] and
    /// [`ENV_BACKOFF_MAX_MS`] when set to a number.
    pub fn from_env() -> Self {
        let ms = |name| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .map(Duration::from_millis)
        };
        let mut backoff = Self::default();
        if let Some(initial) = ms(ENV_BACKOFF_INITIAL_MS) {
            backoff.initial = initial;
            backoff.max = backoff.max.max(initial);
        }
        if let Some(max) = ms(ENV_BACKOFF_MAX_MS) {
            backoff.max = max.max(backoff.initial);
        }
        backoff
    }

    /// Delay before restart number `crashes + 1` (`crashes` = consecutive crash restarts so far).
    pub fn delay(&self, crashes: u32) -> Duration {
        let factor = 1u32.checked_shl(crashes.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// Whether a container that exited with `exit_code` is started again.
pub fn should_restart(policy: RestartPolicy, exit_code: i32) -> bool {
    match policy {
        RestartPolicy::Always => true,
        RestartPolicy::OnFailure => exit_code != 0,
        RestartPolicy::Never => false,
    }
}

/// The restart of an app container that exited with `exit_code` after running `ran_for`, with
/// `crashes` consecutive restarts before: `None` when the policy keeps it stopped, else the
/// back-off delay and the new crash count (a long run resets the count first).
pub fn next_restart(
    policy: RestartPolicy,
    backoff: &Backoff,
    exit_code: i32,
    crashes: u32,
    ran_for: Option<Duration>,
) -> Option<(Duration, u32)> {
    if !should_restart(policy, exit_code) {
        return None;
    }
    let crashes = if ran_for.is_some_and(|r| r >= backoff.reset_after) {
        0
    } else {
        crashes
    };
    Some((backoff.delay(crashes), crashes.saturating_add(1)))
}

/// Whether a failed init container is retried (kubelet: unless the policy is Never).
pub fn retry_init(policy: RestartPolicy) -> bool {
    policy != RestartPolicy::Never
}

/// The group's status once it has started, from its app containers' (state, exit code):
/// Running while any runs or will be restarted; when all have terminated for good, Succeeded if
/// every one exited 0, else Failed.
pub fn group_phase(
    policy: RestartPolicy,
    containers: &[(ContainerState, Option<i32>)],
) -> GroupStatus {
    let finished = containers.iter().all(|(state, exit)| {
        *state == ContainerState::Terminated && !should_restart(policy, exit.unwrap_or(-1))
    });
    if !finished || containers.is_empty() {
        return GroupStatus::Running;
    }
    if containers.iter().all(|(_, exit)| *exit == Some(0)) {
        GroupStatus::Succeeded
    } else {
        GroupStatus::Failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_ten_seconds_and_caps_at_five_minutes() {
        let b = Backoff::default();
        let delays: Vec<u64> = (0..7).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(b.delay(u32::MAX).as_secs(), 300);
    }

    #[test]
    fn backoff_env_overrides() {
        // Only this test sets these variables in this test binary.
        std::env::set_var(ENV_BACKOFF_INITIAL_MS, "100");
        std::env::set_var(ENV_BACKOFF_MAX_MS, "400");
        let b = Backoff::from_env();
        std::env::remove_var(ENV_BACKOFF_INITIAL_MS);
        std::env::remove_var(ENV_BACKOFF_MAX_MS);
        assert_eq!(b.initial, Duration::from_millis(100));
        assert_eq!(b.max, Duration::from_millis(400));
        assert_eq!(b.delay(1), Duration::from_millis(200));
        assert_eq!(b.delay(5), Duration::from_millis(400));
    }

    #[test]
    fn restart_policy_decisions() {
        use RestartPolicy::*;
        assert!(should_restart(Always, 0) && should_restart(Always, 1));
        assert!(!should_restart(OnFailure, 0) && should_restart(OnFailure, 1));
        assert!(should_restart(OnFailure, 137));
        assert!(!should_restart(Never, 0) && !should_restart(Never, 1));
        assert!(retry_init(Always) && retry_init(OnFailure) && !retry_init(Never));
    }

    #[test]
    fn crash_loop_backs_off_and_a_long_run_resets_it() {
        use RestartPolicy::*;
        let b = Backoff::default();
        let short = Some(Duration::from_secs(1));
        // A crash loop: 10 s, 20 s, 40 s ... as the crash count grows.
        let mut crashes = 0;
        let mut delays = Vec::new();
        for _ in 0..4 {
            let (delay, next) = next_restart(OnFailure, &b, 1, crashes, short).unwrap();
            delays.push(delay.as_secs());
            crashes = next;
        }
        assert_eq!(delays, [10, 20, 40, 80]);
        // After ten minutes of running, the next failure starts over at 10 s.
        let long = Some(Duration::from_secs(601));
        assert_eq!(
            next_restart(OnFailure, &b, 1, crashes, long),
            Some((Duration::from_secs(10), 1))
        );
        // Clean exits under OnFailure and anything under Never stay stopped.
        assert_eq!(next_restart(OnFailure, &b, 0, 3, short), None);
        assert_eq!(next_restart(Never, &b, 1, 0, short), None);
        assert_eq!(
            next_restart(Always, &b, 0, 0, None),
            Some((Duration::from_secs(10), 1))
        );
    }

    #[test]
    fn group_phase_from_containers() {
        use ContainerState::*;
        use RestartPolicy::*;
        let done_ok = (Terminated, Some(0));
        let done_bad = (Terminated, Some(1));
        let running = (Running, None);
        assert_eq!(
            group_phase(Never, &[done_ok, done_ok]),
            GroupStatus::Succeeded
        );
        assert_eq!(
            group_phase(Never, &[done_ok, done_bad]),
            GroupStatus::Failed
        );
        assert_eq!(
            group_phase(Never, &[done_ok, running]),
            GroupStatus::Running
        );
        // OnFailure restarts the failed one: still Running; a clean exit is final.
        assert_eq!(group_phase(OnFailure, &[done_bad]), GroupStatus::Running);
        assert_eq!(group_phase(OnFailure, &[done_ok]), GroupStatus::Succeeded);
        // Always never finishes.
        assert_eq!(group_phase(Always, &[done_ok]), GroupStatus::Running);
    }
}
