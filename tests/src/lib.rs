//! Test fixtures shared by the end-to-end test tiers.
//!
//! - [`bins`]: find workspace binaries (e.g. `eci-agent`) next to the test executable.
//! - [`rootfs`]: an offline busybox rootfs / bundle from Debian's busybox-static.
//! - [`agent`]: a local-mode `eci-agent` process with a ttrpc client and stream helpers.
//! - [`containerd`]: a private containerd; [`cni`]: one with CRI and CNI in its own network
//!   namespace; [`cri`]: a CRI client; [`registry`]: docker-registry with credentials;
//!   [`eci_server`]: a running `eci serve`.

pub mod agent;
pub mod bins;
pub mod cni;
pub mod containerd;
pub mod cri;
pub mod eci_server;
pub mod images;
pub mod registry;
pub mod rootfs;

/// Whether the test runs as root; tests that need root print a SKIP line otherwise.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}
