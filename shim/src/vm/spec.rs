//! VM mode: a container's namespaces as the guest must see them.
//!
//! containerd names the pod's namespaces by host paths: the network namespace CNI set up, and
//! `/proc/<sandbox pid>/ns/<type>` for the sandbox container's IPC, UTS and PID namespaces
//! (CRI). In a VM the pod's network is the VM's own (its eth0 carries the pod's interfaces), so
//! every network namespace is dropped, with a path (CNI's) or without (a new one, which the
//! shim made on the host for the VM, see `netns.rs`): the container stays in the guest's, where
//! the agent configured the pod's interfaces. The sandbox's pid as containerd knows it is the
//! VMM's; its namespaces in the guest are those of the sandbox container's init, by its pid in
//! the guest.

use std::path::PathBuf;

use oci_spec::runtime::{LinuxNamespaceType, Spec};

use crate::error::ShimError;

/// Rewrites `spec`'s namespace paths for the guest. `vmm_pid` is the pid containerd knows the
/// sandbox by; `sandbox_agent_pid` the sandbox container's init in the guest, when it exists.
pub fn adapt_namespaces(
    spec: &mut Spec,
    vmm_pid: i32,
    sandbox_agent_pid: Option<u32>,
) -> Result<(), ShimError> {
    let Some(namespaces) = spec
        .linux_mut()
        .as_mut()
        .and_then(|l| l.namespaces_mut().as_mut())
    else {
        return Ok(());
    };
    let mut adapted = Vec::with_capacity(namespaces.len());
    for mut ns in std::mem::take(namespaces) {
        if ns.typ() == LinuxNamespaceType::Network {
            continue; // the VM's network is the pod's
        }
        let Some(path) = ns.path().clone() else {
            adapted.push(ns);
            continue;
        };
        let text = path.display().to_string();
        let kind = text
            .strip_prefix(&format!("/proc/{vmm_pid}/ns/"))
            .filter(|k| !k.contains('/'));
        match (kind, sandbox_agent_pid) {
            (Some(kind), Some(pid)) => {
                ns.set_path(Some(PathBuf::from(format!("/proc/{pid}/ns/{kind}"))));
                adapted.push(ns);
            }
            _ => {
                return Err(ShimError::InvalidArgument(format!(
                    "linux.namespaces: {:?} namespace path {text} is not the pod sandbox's \
                     (a VM pod cannot join a host namespace)",
                    ns.typ()
                )));
            }
        }
    }
    *namespaces = adapted;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxBuilder, LinuxNamespaceBuilder, SpecBuilder};

    fn spec(namespaces: &[(LinuxNamespaceType, Option<&str>)]) -> Spec {
        let namespaces: Vec<_> = namespaces
            .iter()
            .map(|(t, p)| {
                let mut b = LinuxNamespaceBuilder::default().typ(*t);
                if let Some(p) = p {
                    b = b.path(*p);
                }
                b.build().unwrap()
            })
            .collect();
        SpecBuilder::default()
            .linux(
                LinuxBuilder::default()
                    .namespaces(namespaces)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap()
    }

    fn paths(spec: &Spec) -> Vec<(LinuxNamespaceType, Option<String>)> {
        spec.linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| (n.typ(), n.path().as_ref().map(|p| p.display().to_string())))
            .collect()
    }

    #[test]
    fn a_new_network_namespace_is_the_vms_too() {
        use LinuxNamespaceType::*;
        let mut s = spec(&[(Network, None), (Mount, None)]);
        adapt_namespaces(&mut s, 4242, None).unwrap();
        assert_eq!(paths(&s), vec![(Mount, None)]);
    }

    #[test]
    fn sandbox_namespaces_map_to_the_guest_and_the_network_is_the_vms() {
        use LinuxNamespaceType::*;
        let mut s = spec(&[
            (Network, Some("/var/run/netns/cni-1")),
            (Ipc, Some("/proc/4242/ns/ipc")),
            (Uts, Some("/proc/4242/ns/uts")),
            (Pid, None),
            (Mount, None),
        ]);
        adapt_namespaces(&mut s, 4242, Some(7)).unwrap();
        assert_eq!(
            paths(&s),
            vec![
                (Ipc, Some("/proc/7/ns/ipc".into())),
                (Uts, Some("/proc/7/ns/uts".into())),
                (Pid, None),
                (Mount, None),
            ]
        );
    }

    #[test]
    fn foreign_host_namespaces_are_refused_naming_the_path() {
        use LinuxNamespaceType::*;
        let mut s = spec(&[(Ipc, Some("/proc/1/ns/ipc"))]);
        let err = adapt_namespaces(&mut s, 4242, Some(7))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/proc/1/ns/ipc") && err.contains("linux.namespaces"),
            "{err}"
        );
        let mut s = spec(&[(Ipc, Some("/proc/4242/ns/ipc"))]);
        assert!(
            adapt_namespaces(&mut s, 4242, None).is_err(),
            "no sandbox container yet"
        );
    }
}
