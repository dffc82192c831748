//! Whether this host's /dev/kvm can boot a pod VM.

use std::path::Path;

use crate::hypervisor::SandboxError;

/// Ok when /dev/kvm is backed by VMX or SVM. PVM-backed KVM (kvm_pvm) emulates a guest's kernel
/// code instruction by instruction: a stock Linux guest does not boot in useful time there.
pub fn check() -> Result<(), SandboxError> {
    check_in(Path::new("/"))
}

fn check_in(root: &Path) -> Result<(), SandboxError> {
    let unusable = |reason: &str| SandboxError::NoKvm(reason.to_owned());
    if !root.join("dev/kvm").exists() {
        return Err(unusable(
            "/dev/kvm does not exist (no hardware virtualization here)",
        ));
    }
    let module = |m: &str| root.join("sys/module").join(m).exists();
    if module("kvm_pvm") {
        return Err(unusable(
            "/dev/kvm is backed by PVM (kvm_pvm), which cannot boot the pod's Linux guest; \
             run on a VMX/SVM host (or inside scripts/testhost)",
        ));
    }
    if !module("kvm_intel") && !module("kvm_amd") {
        return Err(unusable(
            "/dev/kvm is backed by neither kvm_intel nor kvm_amd",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(files: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for f in files {
            let p = dir.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::create_dir_all(&p).unwrap();
        }
        dir
    }

    #[test]
    fn refuses_pvm_and_missing_kvm_saying_why() {
        let none = host(&[]);
        let err = check_in(none.path()).unwrap_err().to_string();
        assert!(err.contains("/dev/kvm does not exist"), "{err}");
        let pvm = host(&["dev/kvm", "sys/module/kvm_pvm"]);
        let err = check_in(pvm.path()).unwrap_err().to_string();
        assert!(err.contains("PVM") && err.contains("VMX/SVM"), "{err}");
        let svm = host(&["dev/kvm", "sys/module/kvm_amd"]);
        assert!(check_in(svm.path()).is_ok());
        let vmx = host(&["dev/kvm", "sys/module/kvm_intel"]);
        assert!(check_in(vmx.path()).is_ok());
    }
}
