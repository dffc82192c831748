//! In-guest self-test (`eci.selftest=1` on the kernel command line).
//!
//! Drives the agent the way the shim does, as a client of its API over vsock loopback (ttrpc on
//! port 1024, stdio streams on port 1025), with containers on the busybox rootfs that only the
//! self-test initramfs carries (rootfs/build.sh). Also checks PID 1's zombie reaping with an
//! orphan PID 1 makes before it forks the agent. Each check
//! returns what failed; the caller prints `eci-selftest: PASS` or `eci-selftest: FAIL: <what>`.

use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use eci_protocol::agent::{
    CreateContainerRequest, ProcessRequest, RemoveContainerRequest, StartContainerRequest,
    StdioConfig,
};
use eci_protocol::agent_ttrpc::AgentClient;
use eci_protocol::framing::{read_frame, write_frame};
use eci_protocol::stream::{StreamAck, StreamHeader, StreamKind};
use eci_protocol::AGENT_STREAM_VSOCK_PORT;
use oci_spec::runtime::{MountBuilder, RootBuilder, Spec};
use vsock::{VsockAddr, VsockStream};

use super::agent::local_api_address;

/// The busybox rootfs of the self-test's containers (second initramfs segment).
const ROOTFS: &str = "/selftest/rootfs";
const VMADDR_CID_LOCAL: u32 = 1;
/// Per API call and per stream read; TCG on a busy host is slow.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
const REAP_TIMEOUT: Duration = Duration::from_secs(20);
/// Size limit of the emptyDir and the namespaced sysctl the limits container checks.
const EMPTYDIR_SIZE: &str = "size=1m";
const SYSCTL: (&str, &str) = ("net.ipv4.ip_default_ttl", "42");

/// Runs every check in order; the first failure ends the test. `orphan` is what
/// [`make_orphan`] returned in PID 1.
pub(super) async fn run(orphan: Result<u32, String>) -> Result<(), String> {
    if !PathBuf::from(ROOTFS).join("bin/busybox").is_file() {
        return Err(format!("{ROOTFS} missing: boot the self-test initramfs"));
    }
    let orphan = orphan.map_err(|e| format!("making an orphan for PID 1: {e}"))?;
    tokio::task::spawn_blocking(move || orphan_reaped_by_pid1(orphan))
        .await
        .map_err(|e| format!("orphan check: {e}"))??;
    let client = ttrpc::r#async::Client::connect(&local_api_address())
        .await
        .map_err(|e| format!("connect to {}: {e}", local_api_address()))?;
    let client = AgentClient::new(client);
    container_output_and_exit_code(&client).await?;
    emptydir_limit_and_namespaced_sysctl(&client).await?;
    Ok(())
}

/// A container prints a line and exits with 7: both must arrive as sent.
async fn container_output_and_exit_code(client: &AgentClient) -> Result<(), String> {
    let spec = spec(&["/bin/sh", "-c", "echo hello-from-container; exit 7"])?;
    let out = run_container(client, "selftest-hello", spec).await?;
    if out.stdout != "hello-from-container\n" {
        return Err(format!(
            "container stdout {:?} (stderr {:?}), expected \"hello-from-container\\n\"",
            out.stdout, out.stderr
        ));
    }
    if out.exit_code != 7 {
        return Err(format!("container exit code {}, expected 7", out.exit_code));
    }
    Ok(())
}

/// A tmpfs emptyDir of 1 MiB takes 256 KiB and refuses 2 MiB; a sysctl of the container's
/// network namespace reads back inside it and leaves the guest's own value alone.
async fn emptydir_limit_and_namespaced_sysctl(client: &AgentClient) -> Result<(), String> {
    let script = "\
        dd if=/dev/zero of=/data/small bs=1024 count=256 2>/dev/null && echo small-write-ok; \
        if dd if=/dev/zero of=/data/big bs=1024 count=2048 2>/dev/null; \
        then echo limit-not-enforced; else echo limit-enforced; fi; \
        echo ttl=$(cat /proc/sys/net/ipv4/ip_default_ttl)";
    let mut spec = spec(&["/bin/sh", "-c", script])?;
    let emptydir = MountBuilder::default()
        .destination("/data")
        .typ("tmpfs")
        .source("tmpfs")
        .options(vec!["nosuid".into(), "nodev".into(), EMPTYDIR_SIZE.into()])
        .build()
        .map_err(|e| format!("emptyDir mount: {e}"))?;
    spec.mounts_mut()
        .get_or_insert_with(Vec::new)
        .push(emptydir);
    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    linux.set_sysctl(Some(HashMap::from([(
        SYSCTL.0.to_string(),
        SYSCTL.1.to_string(),
    )])));
    let guest_before = read_guest_sysctl()?;
    let out = run_container(client, "selftest-limits", spec).await?;
    let expected = format!("small-write-ok\nlimit-enforced\nttl={}\n", SYSCTL.1);
    if out.stdout != expected {
        return Err(format!(
            "limits container printed {:?} (stderr {:?}), expected {expected:?}",
            out.stdout, out.stderr
        ));
    }
    if out.exit_code != 0 {
        return Err(format!("limits container exit code {}", out.exit_code));
    }
    let guest_after = read_guest_sysctl()?;
    if guest_after != guest_before {
        return Err(format!(
            "{} leaked into the guest: {guest_before} before, {guest_after} after",
            SYSCTL.0
        ));
    }
    Ok(())
}

fn read_guest_sysctl() -> Result<String, String> {
    let path = format!("/proc/sys/{}", SYSCTL.0.replace('.', "/"));
    std::fs::read_to_string(&path)
        .map(|v| v.trim().to_string())
        .map_err(|e| format!("reading {path}: {e}"))
}

/// A default OCI spec (new pid, net, ipc, uts, mount namespaces) on the busybox rootfs.
fn spec(args: &[&str]) -> Result<Spec, String> {
    let mut spec = Spec::default();
    let root = RootBuilder::default()
        .path(ROOTFS)
        .readonly(true)
        .build()
        .map_err(|e| format!("spec root: {e}"))?;
    spec.set_root(Some(root));
    let process = spec.process_mut().get_or_insert_with(Default::default);
    process.set_args(Some(args.iter().map(|a| a.to_string()).collect()));
    process.set_terminal(Some(false));
    Ok(spec)
}

struct Outcome {
    stdout: String,
    stderr: String,
    exit_code: i32,
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(CALL_TIMEOUT.as_nanos() as i64)
}

/// Create, attach stdout and stderr, start, wait, collect the output, remove (also on failure).
async fn run_container(client: &AgentClient, id: &str, spec: Spec) -> Result<Outcome, String> {
    let req = CreateContainerRequest {
        container_id: id.to_string(),
        oci_spec_json: serde_json::to_vec(&spec).map_err(|e| format!("spec JSON: {e}"))?,
        stdio: Some(StdioConfig {
            stdout: true,
            stderr: true,
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    client
        .create_container(ctx(), &req)
        .await
        .map_err(|e| format!("CreateContainer {id}: {e}"))?;
    let outcome = attach_start_wait(client, id).await;
    let remove = RemoveContainerRequest {
        container_id: id.to_string(),
        force: true,
        ..Default::default()
    };
    let removed = client.remove_container(ctx(), &remove).await;
    let outcome = outcome?;
    removed.map_err(|e| format!("RemoveContainer {id}: {e}"))?;
    Ok(outcome)
}

async fn attach_start_wait(client: &AgentClient, id: &str) -> Result<Outcome, String> {
    let mut readers = Vec::new();
    for kind in [StreamKind::STDOUT, StreamKind::STDERR] {
        let conn = attach(id, kind)?;
        readers.push(tokio::task::spawn_blocking(move || read_all(conn, kind)));
    }
    let start = StartContainerRequest {
        container_id: id.to_string(),
        ..Default::default()
    };
    client
        .start_container(ctx(), &start)
        .await
        .map_err(|e| format!("StartContainer {id}: {e}"))?;
    let wait = ProcessRequest {
        container_id: id.to_string(),
        ..Default::default()
    };
    let exit = client
        .wait_process(ctx(), &wait)
        .await
        .map_err(|e| format!("WaitProcess {id}: {e}"))?;
    let mut texts = Vec::new();
    for reader in readers {
        texts.push(reader.await.map_err(|e| format!("stream reader: {e}"))??);
    }
    let stderr = texts.pop().unwrap_or_default();
    let stdout = texts.pop().unwrap_or_default();
    Ok(Outcome {
        stdout,
        stderr,
        exit_code: exit.exit_code,
    })
}

/// Opens one stdio stream of the container's init process (stream.proto).
fn attach(id: &str, kind: StreamKind) -> Result<VsockStream, String> {
    let what = format!("{kind:?} stream of {id}");
    let mut conn = VsockStream::connect(&VsockAddr::new(VMADDR_CID_LOCAL, AGENT_STREAM_VSOCK_PORT))
        .map_err(|e| format!("{what}: connect: {e}"))?;
    conn.set_read_timeout(Some(CALL_TIMEOUT))
        .map_err(|e| format!("{what}: {e}"))?;
    let header = StreamHeader {
        container_id: id.to_string(),
        kind: kind.into(),
        ..Default::default()
    };
    write_frame(&mut conn, &header).map_err(|e| format!("{what}: header: {e}"))?;
    let ack: StreamAck = read_frame(&mut conn).map_err(|e| format!("{what}: ack: {e}"))?;
    if !ack.ok {
        return Err(format!("{what}: refused: {}", ack.error));
    }
    Ok(conn)
}

fn read_all(mut conn: VsockStream, kind: StreamKind) -> Result<String, String> {
    let mut text = String::new();
    conn.read_to_string(&mut text)
        .map_err(|e| format!("reading {kind:?}: {e}"))?;
    Ok(text)
}

/// Run by PID 1 before it forks the agent: a shell starts a background `sleep 1` and exits, so
/// the sleep becomes an orphan re-parented to PID 1 (the agent, a child subreaper, is not its
/// ancestor). Returns the orphan's pid for [`orphan_reaped_by_pid1`].
pub(super) fn make_orphan() -> Result<u32, String> {
    let busybox = format!("{ROOTFS}/bin/busybox");
    let output = Command::new(&busybox)
        .args([
            "sh",
            "-c",
            "busybox sleep 1 </dev/null >/dev/null 2>&1 & echo $!",
        ])
        .output()
        .map_err(|e| format!("running {busybox} sh: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.trim()
        .parse()
        .map_err(|_| format!("shell printed {text:?}, expected a pid"))
}

/// The orphan made by [`make_orphan`] must belong to PID 1 and vanish once it exits (a zombie
/// left behind means PID 1 does not reap).
fn orphan_reaped_by_pid1(pid: u32) -> Result<(), String> {
    if let Some(ppid) = proc_stat_field(pid, 1) {
        if ppid != "1" {
            return Err(format!("orphan {pid} has parent {ppid}, not PID 1"));
        }
    }
    let deadline = Instant::now() + REAP_TIMEOUT;
    while Instant::now() < deadline {
        match proc_stat_field(pid, 0) {
            None => return Ok(()),
            Some(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
    let state = proc_stat_field(pid, 0).unwrap_or_default();
    Err(format!(
        "orphan {pid} not reaped by PID 1 within {REAP_TIMEOUT:?} (state {state})"
    ))
}

/// Field `index` after the command name of /proc/PID/stat (0: state, 1: ppid); None when the
/// process is gone.
fn proc_stat_field(pid: u32, index: usize) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(index).map(str::to_string)
}
