//! The device cgroup on cgroup v2: a `BPF_PROG_TYPE_CGROUP_DEVICE` program attached to the
//! container's cgroup, built from the spec's `linux.resources.devices` plus the devices every
//! container gets, as runc does.
//!
//! Hand-written (about 150 lines) because libcgroups enforces device rules on v2 only with its
//! `cgroupsv2_devices` feature, which needs libbpf-sys (C, with libelf and zlib) that does not
//! link into the static musl agent. The program is the same as runc's and libcgroups': rules
//! are checked from the last to the first, the first that matches decides, and nothing
//! matching means deny. On cgroup v1 libcontainer writes `devices.allow`/`devices.deny` itself.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use crate::error::{AgentError, Result};

/// `struct bpf_insn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    code: u8,
    /// dst in the low nibble, src in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const LDX_MEM_W: u8 = 0x61;
const ALU32_AND_K: u8 = 0x54;
const ALU32_RSH_K: u8 = 0x74;
const ALU32_MOV_K: u8 = 0xb4;
const ALU32_MOV_X: u8 = 0xbc;
const JMP_JNE_K: u8 = 0x55;
const JMP_JNE_X: u8 = 0x5d;
const JMP_EXIT: u8 = 0x95;

const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

fn access_bits(access: Option<&str>) -> i32 {
    let access = access.filter(|a| !a.is_empty()).unwrap_or("rwm");
    access.chars().fold(0, |bits, c| {
        bits | match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            _ => 0,
        }
    })
}

/// What every container may use whatever its spec says (libcgroups' and runc's defaults):
/// mknod of any node, and /dev/null, zero, full, random, urandom, tty, console, ptmx, pts
/// and net/tun.
pub fn default_rules() -> Vec<LinuxDeviceCgroup> {
    let rule = |typ, major: Option<i64>, minor: Option<i64>, access: &str| {
        let mut r = LinuxDeviceCgroup::default();
        r.set_allow(true);
        r.set_typ(Some(typ));
        r.set_major(major);
        r.set_minor(minor);
        r.set_access(Some(access.into()));
        r
    };
    use LinuxDeviceType::{B, C};
    let mut rules = vec![rule(C, None, None, "m"), rule(B, None, None, "m")];
    for (major, minor) in [
        (1, 3),
        (1, 5),
        (1, 7),
        (1, 8),
        (1, 9),
        (5, 0),
        (5, 1),
        (5, 2),
        (10, 200),
    ] {
        rules.push(rule(C, Some(major), Some(minor), "rwm"));
    }
    rules.push(rule(C, Some(136), None, "rwm"));
    rules
}

/// The program for `rules` (in spec order, later ones winning).
pub fn program(rules: &[LinuxDeviceCgroup]) -> Vec<Insn> {
    // r2 = device type, r3 = requested access, r4 = major, r5 = minor (bpf_cgroup_dev_ctx).
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU32_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_MEM_W, 3, 1, 0, 0),
        insn(ALU32_RSH_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    for rule in rules.iter().rev() {
        let typ = match rule.typ() {
            Some(LinuxDeviceType::B) => Some(DEV_BLOCK),
            Some(LinuxDeviceType::A) | None => None,
            Some(_) => Some(DEV_CHAR),
        };
        let access = access_bits(rule.access().as_deref());
        // Each check jumps to the next rule on a mismatch; `usize::MAX` marks the offset to fix.
        let mut block: Vec<Insn> = Vec::new();
        if let Some(t) = typ {
            block.push(insn(JMP_JNE_K, 2, 0, 0, t));
        }
        if access != ACC_READ | ACC_WRITE | ACC_MKNOD {
            // The request must lie within the rule's access: (r3 & access) == r3.
            block.push(insn(ALU32_MOV_X, 1, 3, 0, 0));
            block.push(insn(ALU32_AND_K, 1, 0, 0, access));
            block.push(insn(JMP_JNE_X, 1, 3, 0, 0));
        }
        if let Some(major) = rule.major().filter(|m| *m >= 0) {
            block.push(insn(JMP_JNE_K, 4, 0, 0, major as i32));
        }
        if let Some(minor) = rule.minor().filter(|m| *m >= 0) {
            block.push(insn(JMP_JNE_K, 5, 0, 0, minor as i32));
        }
        block.push(insn(ALU32_MOV_K, 0, 0, 0, rule.allow() as i32));
        block.push(insn(JMP_EXIT, 0, 0, 0, 0));
        let len = block.len();
        let mut conditional = false;
        for (k, i) in block.iter_mut().enumerate() {
            if i.code == JMP_JNE_K || i.code == JMP_JNE_X {
                i.off = (len - k - 1) as i16;
                conditional = true;
            }
        }
        p.extend(block);
        if !conditional {
            // A rule matching every request decides them all: the verifier refuses the
            // unreachable rules (and default) after it.
            return p;
        }
    }
    p.push(insn(ALU32_MOV_K, 0, 0, 0, 0));
    p.push(insn(JMP_EXIT, 0, 0, 0, 0));
    p
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// The BPF_PROG_LOAD part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

/// The BPF_PROG_ATTACH part of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is the #[repr(C)] prefix of `union bpf_attr` this command reads, with its
    // size; the kernel zero-extends the rest.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Loads the program for `rules` and attaches it to the cgroup directory `cgroup_dir`.
pub fn apply(cgroup_dir: &Path, rules: &[LinuxDeviceCgroup]) -> Result<()> {
    let prog = program(rules);
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 16 * 1024];
    let mut load = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: prog.len() as u32,
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        ..Default::default()
    };
    let fd = bpf(BPF_PROG_LOAD, &mut load).map_err(|e| {
        let verifier = String::from_utf8_lossy(&log);
        let verifier = verifier.trim_end_matches('\0').trim();
        AgentError::Io {
            context: format!("load the device cgroup program (verifier: {verifier})"),
            source: e,
        }
    })?;
    // SAFETY: BPF_PROG_LOAD returned a new descriptor that nothing else owns.
    let prog_fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let dir = std::fs::File::open(cgroup_dir).map_err(|e| AgentError::Io {
        context: format!("open the cgroup {}", cgroup_dir.display()),
        source: e,
    })?;
    let mut attach = ProgAttachAttr {
        target_fd: dir.as_raw_fd() as u32,
        attach_bpf_fd: prog_fd.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
    };
    bpf(BPF_PROG_ATTACH, &mut attach).map_err(|e| AgentError::Io {
        context: format!(
            "attach the device cgroup program to {}",
            cgroup_dir.display()
        ),
        source: e,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::LinuxDeviceCgroupBuilder;

    /// Runs the program on one request, interpreting the few instructions it uses.
    fn run(p: &[Insn], typ: i32, access: i32, major: u32, minor: u32) -> bool {
        let ctx = [(access << 16 | typ) as u32, major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0;
        loop {
            let i = p[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_MEM_W => r[dst] = u64::from(ctx[(i.off / 4) as usize]),
                ALU32_AND_K => r[dst] = (r[dst] as u32 & i.imm as u32) as u64,
                ALU32_RSH_K => r[dst] = (r[dst] as u32 >> i.imm) as u64,
                ALU32_MOV_K => r[dst] = i.imm as u32 as u64,
                ALU32_MOV_X => r[dst] = r[src] as u32 as u64,
                JMP_JNE_K if r[dst] != i.imm as i64 as u64 => pc += i.off as usize,
                JMP_JNE_X if r[dst] != r[src] => pc += i.off as usize,
                JMP_JNE_K | JMP_JNE_X => {}
                JMP_EXIT => return r[0] == 1,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    fn rule(
        allow: bool,
        typ: LinuxDeviceType,
        major: Option<i64>,
        access: &str,
    ) -> LinuxDeviceCgroup {
        let mut b = LinuxDeviceCgroupBuilder::default()
            .allow(allow)
            .typ(typ)
            .access(access);
        if let Some(m) = major {
            b = b.major(m);
        }
        b.build().unwrap()
    }

    const RW: i32 = ACC_READ | ACC_WRITE;

    /// Whether every instruction can be reached from the first (the verifier refuses a program
    /// with unreachable instructions).
    fn all_reachable(p: &[Insn]) -> bool {
        let mut seen = vec![false; p.len()];
        let mut todo = vec![0usize];
        while let Some(pc) = todo.pop() {
            if pc >= p.len() || std::mem::replace(&mut seen[pc], true) {
                continue;
            }
            match p[pc].code {
                JMP_EXIT => {}
                JMP_JNE_K | JMP_JNE_X => {
                    todo.push(pc + 1);
                    todo.push(pc + 1 + p[pc].off as usize);
                }
                _ => todo.push(pc + 1),
            }
        }
        seen.iter().all(|s| *s)
    }

    #[test]
    fn a_rule_matching_everything_ends_the_program() {
        let deny_all = rule(false, LinuxDeviceType::A, None, "rwm");
        let mut with_defaults = vec![deny_all.clone()];
        with_defaults.extend(default_rules());
        for rules in [
            vec![deny_all.clone()],
            with_defaults,
            vec![
                rule(true, LinuxDeviceType::C, Some(1), "rwm"),
                deny_all.clone(),
            ],
            vec![],
        ] {
            let p = program(&rules);
            assert!(all_reachable(&p), "{rules:?}");
            assert_eq!(p.last().unwrap().code, JMP_EXIT);
        }
        // Last in the spec wins: deny-all after everything denies everything.
        let p = program(&[rule(true, LinuxDeviceType::C, Some(1), "rwm"), deny_all]);
        assert!(!run(&p, DEV_CHAR, ACC_READ, 1, 3));
    }

    #[test]
    fn containerd_default_rules_allow_only_the_defaults_and_what_is_added() {
        // containerd's spec: deny everything, then the runtime's defaults, then a device of
        // the container's own (c 243:0, a VFIO group node in the guest).
        let mut rules = vec![rule(false, LinuxDeviceType::A, None, "rwm")];
        rules.extend(default_rules());
        let mut vfio = rule(true, LinuxDeviceType::C, Some(243), "rwm");
        vfio.set_minor(Some(0));
        rules.push(vfio);
        let p = program(&rules);
        assert!(run(&p, DEV_CHAR, RW, 1, 3), "/dev/null");
        assert!(run(&p, DEV_CHAR, RW, 136, 7), "a pts");
        assert!(run(&p, DEV_CHAR, RW, 243, 0), "the added node");
        assert!(!run(&p, DEV_CHAR, RW, 243, 1), "its neighbour");
        assert!(!run(&p, DEV_BLOCK, ACC_READ, 254, 0), "a guest disk");
        assert!(run(&p, DEV_BLOCK, ACC_MKNOD, 254, 0), "mknod is allowed");
        assert!(!run(&p, DEV_BLOCK, ACC_MKNOD | ACC_READ, 254, 0));
    }

    #[test]
    fn later_rules_win_and_no_match_denies() {
        let allow_all = rule(true, LinuxDeviceType::A, None, "rwm");
        let deny_disk = rule(false, LinuxDeviceType::B, Some(254), "w");
        let p = program(&[allow_all.clone(), deny_disk.clone()]);
        assert!(run(&p, DEV_BLOCK, ACC_READ, 254, 0));
        assert!(!run(&p, DEV_BLOCK, ACC_WRITE, 254, 0));
        assert!(run(&p, DEV_CHAR, ACC_WRITE, 254, 0));
        let p = program(&[deny_disk, allow_all]);
        assert!(run(&p, DEV_BLOCK, ACC_WRITE, 254, 0));
        assert!(!run(&program(&[]), DEV_CHAR, ACC_READ, 1, 3));
    }
}
