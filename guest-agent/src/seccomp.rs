//! OCI `linux.seccomp` compiled to BPF in pure Rust (seccompiler), because libcontainer's own
//! seccomp support links the C libseccomp, which does not build into the static musl agent.
//!
//! seccompiler filters have one action on match and one on mismatch, whereas an OCI profile has
//! an action per rule. The profile becomes a stack of filters, which the kernel evaluates
//! together, keeping the highest-precedence result:
//! - one "default" filter: any syscall matching any rule of the profile -> ALLOW, else the
//!   profile's default action;
//! - one filter per distinct non-ALLOW rule action: matching rules -> that action, else ALLOW.
//!
//! A syscall matching a rule of action A thus gets A (every action outranks ALLOW); any other
//! syscall gets the default action. Syscall names unknown on this architecture are skipped, as
//! runc does.

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator, LinuxSyscall};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;
use std::str::FromStr;

/// Why a seccomp profile could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The profile uses an action seccompiler cannot express.
    #[error("action {0:?} is not supported")]
    UnsupportedAction(LinuxSeccompAction),
    /// seccompiler refused a rule or the filter.
    #[error("rule for {syscall} does not compile")]
    Rule {
        /// The syscall of the rule.
        syscall: String,
        /// The underlying failure.
        #[source]
        source: seccompiler::BackendError,
    },
    /// seccompiler refused the filter.
    #[error("filter does not compile")]
    Filter(#[source] seccompiler::BackendError),
}

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

const EPERM: u32 = libc::EPERM as u32;

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<SeccompAction, SeccompError> {
    use LinuxSeccompAction as A;
    Ok(match a {
        A::ScmpActAllow => SeccompAction::Allow,
        A::ScmpActKill | A::ScmpActKillThread => SeccompAction::KillThread,
        A::ScmpActKillProcess => SeccompAction::KillProcess,
        A::ScmpActTrap => SeccompAction::Trap,
        A::ScmpActErrno => SeccompAction::Errno(errno.unwrap_or(EPERM)),
        A::ScmpActTrace => SeccompAction::Trace(errno.unwrap_or(EPERM)),
        A::ScmpActLog => SeccompAction::Log,
        other => return Err(SeccompError::UnsupportedAction(other)),
    })
}

/// The conditions of one OCI rule (all must hold), or None for an unconditional rule.
fn conditions(name: &str, rule: &LinuxSyscall) -> Result<Option<SeccompRule>, SeccompError> {
    let Some(args) = rule.args().as_ref().filter(|a| !a.is_empty()) else {
        return Ok(None);
    };
    let err = |source| SeccompError::Rule {
        syscall: name.to_string(),
        source,
    };
    let mut conds = Vec::with_capacity(args.len());
    for arg in args {
        let (op, value) = match arg.op() {
            LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, arg.value()),
            LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, arg.value()),
            LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, arg.value()),
            LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, arg.value()),
            LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, arg.value()),
            LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, arg.value()),
            // libseccomp: (arg & value) == valueTwo.
            LinuxSeccompOperator::ScmpCmpMaskedEq => (
                SeccompCmpOp::MaskedEq(arg.value()),
                arg.value_two().unwrap_or(0),
            ),
        };
        let index = u8::try_from(arg.index()).unwrap_or(u8::MAX);
        conds.push(SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value).map_err(err)?);
    }
    SeccompRule::new(conds).map(Some).map_err(err)
}

/// Rules per syscall number; an empty list means "matches unconditionally".
#[derive(Default)]
struct RuleSet(BTreeMap<i64, Option<Vec<SeccompRule>>>);

impl RuleSet {
    fn add(&mut self, nr: i64, rule: Option<SeccompRule>) {
        let entry = self.0.entry(nr).or_insert_with(|| Some(Vec::new()));
        match (entry.as_mut(), rule) {
            // Already unconditional: stays so.
            (None, _) => {}
            (Some(_), None) => *entry = None,
            (Some(rules), Some(rule)) => rules.push(rule),
        }
    }

    fn compile(
        self,
        on_match: SeccompAction,
        on_mismatch: SeccompAction,
    ) -> Result<BpfProgram, SeccompError> {
        let rules = self
            .0
            .into_iter()
            .map(|(nr, rules)| (nr, rules.unwrap_or_default()))
            .collect();
        let filter =
            SeccompFilter::new(rules, on_mismatch, on_match, ARCH).map_err(SeccompError::Filter)?;
        BpfProgram::try_from(filter).map_err(SeccompError::Filter)
    }
}

/// Compiles `profile` into the filters to install, in order.
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<BpfProgram>, SeccompError> {
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    let mut matched_anything = RuleSet::default();
    let mut per_action: Vec<(SeccompAction, RuleSet)> = Vec::new();
    for rule in profile.syscalls().iter().flatten() {
        let act = action(rule.action(), rule.errno_ret())?;
        for name in rule.names() {
            let Ok(nr) = syscalls::Sysno::from_str(name) else {
                tracing::debug!(syscall = %name, "seccomp: syscall unknown on this architecture, skipped");
                continue;
            };
            let nr = nr.id() as i64;
            let cond = conditions(name, rule)?;
            matched_anything.add(nr, cond.clone());
            if act != SeccompAction::Allow {
                let idx = match per_action.iter().position(|(a, _)| *a == act) {
                    Some(i) => i,
                    None => {
                        per_action.push((act.clone(), RuleSet::default()));
                        per_action.len() - 1
                    }
                };
                per_action[idx].1.add(nr, cond);
            }
        }
    }
    let mut programs = Vec::new();
    if default != SeccompAction::Allow {
        programs.push(matched_anything.compile(SeccompAction::Allow, default)?);
    }
    for (act, rules) in per_action {
        if !rules.0.is_empty() {
            programs.push(rules.compile(act, SeccompAction::Allow)?);
        }
    }
    Ok(programs)
}

/// Installs `programs` in the calling thread without setting no_new_privileges, as runc does
/// for a process that does not ask for it: that needs CAP_SYS_ADMIN. When the process lacks it,
/// no_new_privileges is set (with a warning) so that the profile is enforced rather than
/// dropped. (seccompiler's own `apply_filter` always sets no_new_privileges, which changes what
/// setuid programs do; hence the system call here.)
pub fn install(programs: &[BpfProgram]) -> std::io::Result<()> {
    for program in programs {
        match set_filter(program) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
                tracing::warn!(
                    "seccomp without CAP_SYS_ADMIN: setting no_new_privileges to enforce the profile"
                );
                // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1) takes no pointers and only affects this
                // process.
                if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                set_filter(program)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// seccomp(SECCOMP_SET_MODE_FILTER) of one program for the calling thread.
fn set_filter(program: &BpfProgram) -> std::io::Result<()> {
    if program.is_empty() {
        return Err(std::io::Error::other("empty seccomp program"));
    }
    let len = u16::try_from(program.len())
        .map_err(|_| std::io::Error::other("seccomp program longer than 65535 instructions"))?;
    let fprog = libc::sock_fprog {
        len,
        // seccompiler's sock_filter is #[repr(C)] {u16, u8, u8, u32}, the kernel's layout.
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: the kernel copies the program from `fprog` during the call; both outlive it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: serde_json::Value) -> LinuxSeccomp {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn allow_list_compiles_to_default_filter_only() {
        let p = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["read", "write", "no_such_syscall"], "action": "SCMP_ACT_ALLOW"}]
        }));
        assert_eq!(compile(&p).unwrap().len(), 1);
    }

    #[test]
    fn deny_list_compiles_one_filter_per_action() {
        let p = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
                {"names": ["personality"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
                 "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_NE"}]},
                {"names": ["reboot"], "action": "SCMP_ACT_KILL_PROCESS"}
            ]
        }));
        assert_eq!(compile(&p).unwrap().len(), 2);
    }

    #[test]
    fn notify_is_refused() {
        let p = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOTIFY"}]
        }));
        assert!(matches!(
            compile(&p),
            Err(SeccompError::UnsupportedAction(_))
        ));
    }

    #[test]
    fn filter_enforced_in_a_child_process() {
        let p = profile(serde_json::json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]
        }));
        let programs = compile(&p).unwrap();
        // SAFETY: the child only calls async-signal-safe functions (prctl, seccomp, getppid,
        // _exit) before exiting.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let code = match install(&programs) {
                    // SAFETY: a plain syscall without arguments.
                    Ok(()) => match unsafe { libc::syscall(libc::SYS_getppid) } {
                        // As root (with CAP_SYS_ADMIN) the filter goes in without
                        // no_new_privileges.
                        -1 if std::io::Error::last_os_error().raw_os_error() == Some(38) => {
                            // SAFETY: prctl(PR_GET_NO_NEW_PRIVS) takes no pointers.
                            let nnp = unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) };
                            let is_root = nix::unistd::geteuid().is_root();
                            if is_root && nnp != 0 {
                                3
                            } else {
                                0
                            }
                        }
                        _ => 1,
                    },
                    Err(_) => 2,
                };
                // SAFETY: leaves the forked child without running the parent's destructors.
                unsafe { libc::_exit(code) };
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }
}
