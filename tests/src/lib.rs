//! Test fixtures shared by the end-to-end test tiers.
//!
//! - [`bins`]: find workspace binaries (e.g. `eci-agent`) next to the test executable.
//! - [`rootfs`]: an offline busybox rootfs / bundle from Debian's busybox-static.
//! - [`agent`]: a local-mode `eci-agent` process with a ttrpc client and stream helpers.
//! - [`containerd`]: a private containerd; [`cni`]: one with CRI and CNI in its own network
//!   namespace; [`census`]: what the runtime holds on the host, for leak checks; [`cri`]: a CRI client; [`registry`]: docker-registry with credentials;
//!   [`eci_server`]: a running `eci serve`.
//! - [`vm`]: the VM tiers' guest images, KVM check and console watcher; [`vfio`]: the VFIO
//!   tiers' test devices and guest program.

pub mod agent;
pub mod bins;
pub mod census;
pub mod cni;
pub mod containerd;
pub mod cri;
pub mod eci_server;
pub mod images;
pub mod registry;
pub mod rootfs;
pub mod vfio;
pub mod vm;

/// What a test does when a prerequisite is missing (fail under CI, SKIP line otherwise).
pub use eci_test_support as prereq;

/// Whether the test runs as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Stops `child` with SIGTERM, SIGKILL after `grace`, and reaps it.
pub fn terminate(child: &mut std::process::Child, grace: std::time::Duration) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}
