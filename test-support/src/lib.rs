//! What a test does when the machine lacks something it needs. Shared by the tests of every
//! crate (a dev-dependency only; it depends on nothing, so that even `eci-vmm` can use it).
//!
//! The rule (DESIGN.md, "No test passes by skipping"):
//! - a missing **prerequisite** (a tool, a package, root, a network namespace, a tap, a socket)
//!   fails the test under `CI=true`, naming what is missing; outside CI it prints
//!   `SKIP (<test>: missing prerequisite: <what>)` so that a developer's `make test` still
//!   counts it;
//! - missing **hardware** (no `/dev/kvm`) prints `SKIP (<test>: <what>)` everywhere.
//!
//! `make test` counts the `SKIP (` lines. They are written straight to the process's stderr,
//! not through `eprintln!`, because the test harness captures `eprintln!` of passing tests.

use std::io::Write;

/// Whether the tests run under CI (`CI=true`, as CI services and `.ci/run` set it).
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// The running test's name: the test harness names each test's thread after the test.
fn test_name() -> String {
    std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .unwrap_or("test")
        .to_owned()
}

/// Prints one SKIP line past the test harness's output capture.
fn print_skip(reason: &str) {
    let line = format!("SKIP ({}: {reason})\n", test_name());
    let _ = std::io::stderr().write_all(line.as_bytes());
}

/// Reports a missing prerequisite of the running test: panics under CI, otherwise prints a SKIP
/// line. The caller returns from the test afterwards.
#[track_caller]
pub fn missing_prerequisite(what: &str) {
    if under_ci() {
        panic!(
            "{}: missing prerequisite under CI=true: {what}",
            test_name()
        );
    }
    print_skip(&format!("missing prerequisite: {what}"));
}

/// Reports hardware the machine lacks (e.g. `/dev/kvm`): a SKIP line, also under CI.
pub fn missing_hardware(what: &str) {
    print_skip(what);
}

/// `true` when `missing` names a prerequisite (reported as [`missing_prerequisite`]): the test
/// returns then. `false` when nothing is missing.
#[track_caller]
pub fn skip_unless_ready(missing: Option<String>) -> bool {
    match missing {
        Some(what) => {
            missing_prerequisite(&what);
            true
        }
        None => false,
    }
}

/// Why `tool` cannot run here (it is not on PATH), if it cannot.
pub fn missing_tool(tool: &str) -> Option<String> {
    let on_path = std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|dir| {
            use std::os::unix::fs::PermissionsExt;
            dir.join(tool)
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    });
    (!on_path).then(|| format!("`{tool}` is not on PATH (scripts/install-deps.sh installs it)"))
}

/// Why the test cannot run without root, if it is not root.
pub fn missing_root() -> Option<String> {
    // The effective uid, read without a libc dependency.
    let euid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().nth(1).map(str::to_owned))
        });
    (euid.as_deref() != Some("0")).then(|| "root (run the tests as root)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_tools_on_path_and_names_missing_ones() {
        assert_eq!(missing_tool("sh"), None);
        let missing = missing_tool("no-such-tool-eci").unwrap();
        assert!(missing.contains("no-such-tool-eci"), "{missing}");
    }

    #[test]
    fn nothing_missing_means_run() {
        assert!(!skip_unless_ready(None));
    }

    #[test]
    #[should_panic(expected = "missing prerequisite under CI=true: `no-such-tool-eci`")]
    fn a_missing_prerequisite_fails_under_ci() {
        // The only test of this crate that reads CI, so setting it races with nothing.
        std::env::set_var("CI", "true");
        skip_unless_ready(missing_tool("no-such-tool-eci"));
    }
}
