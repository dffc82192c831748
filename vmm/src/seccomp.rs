//! Seccomp allowlists per thread kind (seccompiler) and the capability drop. The lists are
//! what each thread does once the VM is set up (collected with strace over every test guest):
//! opening /dev/kvm, creating the VM, taps and sockets all happen before the filters apply.
//! A call outside the list kills the process: a guest that makes the VMM do something new is
//! an incident, not a case to handle.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the seccomp filter failed")]
    Build(#[from] seccompiler::BackendError),
    #[error("installing the seccomp filter failed")]
    Apply(#[from] seccompiler::Error),
    #[error("dropping capabilities failed")]
    Caps(#[from] caps::errors::CapsError),
}

/// `KVM_RUN`, what a vCPU thread issues once running (besides reading its registers when the
/// guest stops).
const KVM_RUN: u64 = 0xae80;
/// `FIONBIO`, used by std's set_nonblocking.
const FIONBIO: u64 = 0x5421;

/// Syscalls every thread needs (memory management, locks, signals, exit).
const COMMON: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_futex,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_mprotect,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_sched_yield,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_clock_gettime,
    libc::SYS_nanosleep,
    libc::SYS_clock_nanosleep,
    libc::SYS_close,
    libc::SYS_fcntl,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// What the event-loop thread does: epoll, sockets (vsock, control socket), file I/O for
/// virtio-blk, tap I/O, entropy, kicking vCPU threads.
const EVENT_LOOP: &[i64] = &[
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_ctl,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_shutdown,
    libc::SYS_setsockopt,
    libc::SYS_getsockopt,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_getrandom,
    libc::SYS_tgkill,
    libc::SYS_tkill, // musl's pthread_kill
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_poll,
    libc::SYS_ppoll,
    libc::SYS_statx,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
];

fn build(
    extra: &[i64],
    conditional: BTreeMap<i64, Vec<SeccompRule>>,
) -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = conditional;
    for &nr in COMMON.iter().chain(extra) {
        rules.insert(nr, vec![]);
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )?;
    Ok(filter.try_into()?)
}

fn ioctl_only(requests: &[u64]) -> Result<Vec<SeccompRule>, SeccompError> {
    requests
        .iter()
        .map(|&r| {
            Ok(SeccompRule::new(vec![SeccompCondition::new(
                1,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                r,
            )?])?)
        })
        .collect()
}

/// `_IO(';', 100 + n)`: the VFIO ioctls (linux/vfio.h).
const fn vfio_io(n: u32) -> u64 {
    use vmm_sys_util::ioctl::{ioctl_expr, _IOC_NONE};
    ioctl_expr(_IOC_NONE, b';' as u32, 100 + n, 0)
}
/// `_IOR(KVMIO, nr, T)` (linux/kvm.h).
const fn kvm_ior<T>(nr: u32) -> u64 {
    use vmm_sys_util::ioctl::{ioctl_expr, _IOC_READ};
    ioctl_expr(_IOC_READ, 0xae, nr, std::mem::size_of::<T>() as u32)
}
/// `_IOW(KVMIO, nr, T)` (linux/kvm.h).
const fn kvm_iow<T>(nr: u32) -> u64 {
    use vmm_sys_util::ioctl::{ioctl_expr, _IOC_WRITE};
    ioctl_expr(_IOC_WRITE, 0xae, nr, std::mem::size_of::<T>() as u32)
}
const VFIO_GROUP_UNSET_CONTAINER: u64 = vfio_io(5);
const VFIO_DEVICE_SET_IRQS: u64 = vfio_io(10);
const VFIO_DEVICE_RESET: u64 = vfio_io(11);
/// Read when the guest stops by shutdown, to say where it stood.
const KVM_GET_REGS: u64 = kvm_ior::<kvm_bindings::kvm_regs>(0x81);
const KVM_GET_SREGS: u64 = kvm_ior::<kvm_bindings::kvm_sregs>(0x83);
const KVM_SET_USER_MEMORY_REGION: u64 = kvm_iow::<kvm_bindings::kvm_userspace_memory_region>(0x46);
const KVM_SET_GSI_ROUTING: u64 = kvm_iow::<kvm_bindings::kvm_irq_routing>(0x6a);
const KVM_SET_DEVICE_ATTR: u64 = kvm_iow::<kvm_bindings::kvm_device_attr>(0xe1);

/// What a vCPU thread does for VFIO devices: configuration space and trapped BAR accesses
/// (pread/pwrite on the device), MSI/MSI-X changes (VFIO_DEVICE_SET_IRQS, KVM_SET_GSI_ROUTING)
/// and BAR relocation (KVM_SET_USER_MEMORY_REGION).
const VCPU_VFIO_SYSCALLS: &[i64] = &[libc::SYS_pread64, libc::SYS_pwrite64];
const VCPU_VFIO_IOCTLS: &[u64] = &[
    VFIO_DEVICE_SET_IRQS,
    KVM_SET_GSI_ROUTING,
    KVM_SET_USER_MEMORY_REGION,
];
/// What the event-loop thread does for VFIO when the VM ends: disable interrupts, reset the
/// device, release the group (vfio-ioctls reads the group link in sysfs to find it).
const EVENT_LOOP_VFIO_SYSCALLS: &[i64] = &[libc::SYS_readlink, libc::SYS_readlinkat];
const EVENT_LOOP_VFIO_IOCTLS: &[u64] = &[
    VFIO_DEVICE_SET_IRQS,
    VFIO_DEVICE_RESET,
    VFIO_GROUP_UNSET_CONTAINER,
    KVM_SET_DEVICE_ATTR,
];

/// Filter for vCPU threads: KVM_RUN, the exits' device work (serial output, eventfds), and
/// reading the registers when the guest shuts down.
pub fn vcpu_filter() -> Result<BpfProgram, SeccompError> {
    vcpu_filter_for(false)
}

/// The vCPU filter, with what VFIO devices need when `vfio`.
pub fn vcpu_filter_for(vfio: bool) -> Result<BpfProgram, SeccompError> {
    let mut cond = BTreeMap::new();
    let mut ioctls = vec![KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS];
    if vfio {
        ioctls.extend_from_slice(VCPU_VFIO_IOCTLS);
    }
    cond.insert(libc::SYS_ioctl, ioctl_only(&ioctls)?);
    build(if vfio { VCPU_VFIO_SYSCALLS } else { &[] }, cond)
}

/// Filter for the event-loop thread. Unix sockets only.
pub fn event_loop_filter() -> Result<BpfProgram, SeccompError> {
    event_loop_filter_for(false)
}

/// The event-loop filter, with what VFIO teardown needs when `vfio`.
pub fn event_loop_filter_for(vfio: bool) -> Result<BpfProgram, SeccompError> {
    let mut cond = BTreeMap::new();
    let mut ioctls = vec![FIONBIO];
    if vfio {
        ioctls.extend_from_slice(EVENT_LOOP_VFIO_IOCTLS);
    }
    cond.insert(libc::SYS_ioctl, ioctl_only(&ioctls)?);
    cond.insert(
        libc::SYS_socket,
        vec![SeccompRule::new(vec![SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::AF_UNIX as u64,
        )?])?],
    );
    let mut extra = EVENT_LOOP.to_vec();
    if vfio {
        extra.extend_from_slice(EVENT_LOOP_VFIO_SYSCALLS);
    }
    build(&extra, cond)
}

pub fn apply(filter: &BpfProgram) -> Result<(), SeccompError> {
    Ok(seccompiler::apply_filter(filter)?)
}

/// Drops every capability of the calling thread (and of threads it creates afterwards):
/// bounding set first when we may (CAP_SETPCAP; an unprivileged VMM has nothing to drop
/// there that it could ever regain under no_new_privs), then ambient, inheritable, permitted,
/// effective.
pub fn drop_capabilities() -> Result<(), SeccompError> {
    use caps::{CapSet, Capability};
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        for cap in caps::all() {
            if caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false) {
                caps::drop(None, CapSet::Bounding, cap)?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    caps::clear(None, CapSet::Permitted)?;
    caps::clear(None, CapSet::Effective)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile() {
        assert!(!vcpu_filter().unwrap().is_empty());
        assert!(!event_loop_filter().unwrap().is_empty());
        assert!(vcpu_filter_for(true).unwrap().len() > vcpu_filter().unwrap().len());
        assert!(event_loop_filter_for(true).unwrap().len() > event_loop_filter().unwrap().len());
    }

    #[test]
    fn ioctl_numbers_match_the_bindings() {
        // The values in linux/vfio.h and linux/kvm.h on x86_64.
        assert_eq!(VFIO_DEVICE_SET_IRQS, 0x3b6e);
        assert_eq!(VFIO_DEVICE_RESET, 0x3b6f);
        assert_eq!(VFIO_GROUP_UNSET_CONTAINER, 0x3b69);
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_GET_SREGS, 0x8138_ae83);
        assert_eq!(KVM_SET_USER_MEMORY_REGION, 0x4020_ae46);
        assert_eq!(KVM_SET_GSI_ROUTING, 0x4008_ae6a);
        assert_eq!(KVM_SET_DEVICE_ATTR, 0x4018_aee1);
    }

    #[test]
    fn filter_kills_disallowed_calls_in_a_child() {
        // Fork so the kill hits a throwaway process; the child tries a forbidden socket
        // family and must die by SIGSYS.
        let prog = event_loop_filter().unwrap();
        // SAFETY: the child only calls async-signal-safe functions before _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            if seccompiler::apply_filter(&prog).is_err() {
                // SAFETY: _exit in the forked child.
                unsafe { libc::_exit(3) };
            }
            // SAFETY: plain syscall; AF_INET is outside the allowlist.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            // SAFETY: _exit in the forked child.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }
}
