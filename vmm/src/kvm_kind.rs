//! Which kind of KVM backs /dev/kvm. Tests and benchmarks print it; nothing may assume speed
//! from it, but PVM cannot run a stock Linux guest (its CPL0 code is emulated).

use std::fmt;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmKind {
    /// Pagetable-based virtualization (kvm_pvm): guest CPL0 emulated, CPL3 native.
    Pvm,
    /// Intel VT-x.
    Vmx,
    /// AMD-V.
    Svm,
    /// /dev/kvm exists but the module is not one of the above.
    Unknown,
    /// No /dev/kvm.
    Absent,
}

impl KvmKind {
    pub fn detect() -> Self {
        Self::detect_in(Path::new("/"))
    }

    /// Detects under `root` (a test seam for the sysfs and /dev lookups).
    pub fn detect_in(root: &Path) -> Self {
        if !root.join("dev/kvm").exists() {
            return KvmKind::Absent;
        }
        let module = |m: &str| root.join("sys/module").join(m).exists();
        if module("kvm_pvm") {
            KvmKind::Pvm
        } else if module("kvm_intel") {
            KvmKind::Vmx
        } else if module("kvm_amd") {
            KvmKind::Svm
        } else {
            KvmKind::Unknown
        }
    }

    /// Whether a stock Linux guest can boot on this KVM.
    pub fn runs_linux_guests(self) -> bool {
        matches!(self, KvmKind::Vmx | KvmKind::Svm)
    }
}

impl fmt::Display for KvmKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KvmKind::Pvm => "pvm (kvm_pvm: guest CPL0 emulated, CPL3 native)",
            KvmKind::Vmx => "vmx (kvm_intel)",
            KvmKind::Svm => "svm (kvm_amd)",
            KvmKind::Unknown => "unknown kvm module",
            KvmKind::Absent => "no /dev/kvm",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_from_sysfs_layout() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(KvmKind::detect_in(dir.path()), KvmKind::Absent);
        std::fs::create_dir_all(dir.path().join("dev")).unwrap();
        std::fs::write(dir.path().join("dev/kvm"), b"").unwrap();
        assert_eq!(KvmKind::detect_in(dir.path()), KvmKind::Unknown);
        std::fs::create_dir_all(dir.path().join("sys/module/kvm_intel")).unwrap();
        assert_eq!(KvmKind::detect_in(dir.path()), KvmKind::Vmx);
        std::fs::create_dir_all(dir.path().join("sys/module/kvm_pvm")).unwrap();
        assert_eq!(KvmKind::detect_in(dir.path()), KvmKind::Pvm);
        assert!(!KvmKind::Pvm.runs_linux_guests());
    }
}
