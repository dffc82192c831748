//! Locating the workspace's binaries from a test executable.

use std::path::PathBuf;

/// The cargo target profile directory (`target/debug`) the running test executable belongs to:
/// test executables live in `<profile>/deps/`.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let deps = exe.parent().expect("test executable has a directory");
    deps.parent().expect("deps has a parent").to_path_buf()
}

/// The workspace binary `name` (e.g. `eci-agent`) next to this test's target directory, or
/// None when it has not been built (`make test` builds the whole workspace first).
pub fn workspace_binary(name: &str) -> Option<PathBuf> {
    let path = profile_dir().join(name);
    path.is_file().then_some(path)
}

/// Like [`workspace_binary`], but panics with a hint when the binary is missing: a missing
/// workspace binary is a broken build, not something to skip.
pub fn require_workspace_binary(name: &str) -> PathBuf {
    workspace_binary(name).unwrap_or_else(|| {
        panic!(
            "{name} not found in {}: build it first (cargo build -p <its package>, or make test)",
            profile_dir().display()
        )
    })
}
