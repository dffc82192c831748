//! An image pulled with credentials from a local registry (docker-registry with htpasswd on
//! loopback) runs with io.containerd.eci.v2.

mod shim_common;

use eci_tests::registry::{self, Registry};
use shim_common::*;

#[test]
fn image_pulled_with_credentials_runs() {
    if eci_tests::prereq::skip_unless_ready(registry::missing_tools()) {
        return;
    }
    let Some(ctd) = containerd_with_busybox() else {
        return;
    };
    let registry = Registry::start().expect("start docker-registry");
    let tar = eci_tests::images::busybox_tar().unwrap();
    let reference = registry
        .push_oci_archive(&tar, "eci/busybox", "1")
        .expect("push busybox");

    // Without credentials the registry refuses: the pull below really uses them.
    let anonymous = ctd.ctr(&["images", "pull", "--plain-http", &reference]);
    assert!(
        !anonymous.status.success(),
        "registry must require credentials"
    );

    ctd.ctr_ok(&[
        "images",
        "pull",
        "--plain-http",
        "--user",
        &registry.credentials(),
        &reference,
    ]);
    let id = unique("pulled");
    let out = ctd.ctr_ok(&[
        "run",
        "--rm",
        "--runtime",
        ECI,
        &reference,
        &id,
        "echo",
        "pulled and ran",
    ]);
    assert_eq!(out, "pulled and ran\n");
    assert_nothing_left(&ctd, &[id]);
}
