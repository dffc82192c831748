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

/// `KVM_RUN`, the only ioctl a vCPU thread issues once running.
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

/// Filter for vCPU threads: KVM_RUN and the exits' device work (serial output, eventfds).
pub fn vcpu_filter() -> Result<BpfProgram, SeccompError> {
    let mut cond = BTreeMap::new();
    cond.insert(libc::SYS_ioctl, ioctl_only(&[KVM_RUN])?);
    build(&[], cond)
}

/// Filter for the event-loop thread. Unix sockets only.
pub fn event_loop_filter() -> Result<BpfProgram, SeccompError> {
    let mut cond = BTreeMap::new();
    cond.insert(libc::SYS_ioctl, ioctl_only(&[FIONBIO])?);
    cond.insert(
        libc::SYS_socket,
        vec![SeccompRule::new(vec![SeccompCondition::new(
            0,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            libc::AF_UNIX as u64,
        )?])?],
    );
    build(EVENT_LOOP, cond)
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
