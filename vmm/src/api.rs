//! Control socket: JSON lines over a unix stream socket. Each request is one object,
//! `{"op": "pause" | "resume" | "shutdown" | "info"}`, answered by one object with `"ok"`.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventOps, Events, MutEventSubscriber};
use serde::{Deserialize, Serialize};
use serde_json::json;
use vmm_sys_util::epoll::EventSet;

use crate::devices::bus::lock;
use crate::vmm::{ExitState, VcpuHandles, VmExit};

/// Longest request line accepted.
pub const MAX_REQUEST_LINE: usize = 4096;
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);
const LISTENER: u32 = 0;
const CONN: u32 = 1;

/// A virtio device as the control socket reports it; `metrics` are read live.
#[derive(Clone, Serialize)]
pub struct DeviceInfo {
    pub kind: String,
    pub mmio_base: u64,
    pub irq: u32,
    #[serde(skip)]
    pub transport: Option<Arc<Mutex<crate::devices::virtio::mmio::MmioTransport>>>,
}

impl std::fmt::Debug for DeviceInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceInfo")
            .field("kind", &self.kind)
            .field("mmio_base", &self.mmio_base)
            .field("irq", &self.irq)
            .finish()
    }
}

impl DeviceInfo {
    fn report(&self) -> serde_json::Value {
        let mut v = json!({"kind": self.kind, "mmio_base": self.mmio_base, "irq": self.irq});
        if let Some(t) = &self.transport {
            let t = lock(t);
            v["activated"] = json!(t.device().is_active());
            v["metrics"] = t.device().metrics();
            v["progress"] = t.progress();
        }
        v
    }
}

pub fn device_kind_name(type_id: u32) -> &'static str {
    use crate::devices::virtio::*;
    match type_id {
        TYPE_NET => "net",
        TYPE_BLOCK => "block",
        TYPE_RNG => "rng",
        TYPE_VSOCK => "vsock",
        TYPE_FS => "fs",
        _ => "unknown",
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct VmInfo {
    pub vcpus: u8,
    pub memory_mib: u64,
    pub kvm: String,
    pub devices: Vec<DeviceInfo>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Request {
    Pause,
    Resume,
    Shutdown,
    Info,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    op: Request,
}

/// Parses one request line; the error text names what is wrong.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    serde_json::from_slice::<RawRequest>(line)
        .map(|r| r.op)
        .map_err(|e| {
            format!("invalid request ({e}); expected {{\"op\": \"pause|resume|shutdown|info\"}}")
        })
}

pub struct ApiServer {
    path: PathBuf,
    listener: UnixListener,
    conns: HashMap<RawFd, (UnixStream, Vec<u8>)>,
    info: VmInfo,
    vcpus: Arc<Mutex<VcpuHandles>>,
    exit: Arc<Mutex<ExitState>>,
}

impl ApiServer {
    pub fn new(
        path: &Path,
        info: VmInfo,
        vcpus: Arc<Mutex<VcpuHandles>>,
        exit: Arc<Mutex<ExitState>>,
    ) -> std::io::Result<Self> {
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        Ok(ApiServer {
            path: path.to_path_buf(),
            listener,
            conns: HashMap::new(),
            info,
            vcpus,
            exit,
        })
    }

    fn handle(&mut self, req: Request) -> serde_json::Value {
        match req {
            Request::Pause | Request::Resume => {
                let pause = req == Request::Pause;
                let done = lock(&self.vcpus).set_paused(pause, PAUSE_TIMEOUT);
                let state = if pause { "paused" } else { "running" };
                if done {
                    json!({"ok": true, "state": state})
                } else {
                    json!({"ok": false, "error": format!("vCPUs did not reach `{state}` in time")})
                }
            }
            Request::Shutdown => {
                lock(&self.exit).exit.get_or_insert(VmExit::Requested);
                json!({"ok": true, "state": "shutting down"})
            }
            Request::Info => {
                let paused = lock(&self.vcpus).is_paused();
                json!({
                    "ok": true,
                    "state": if paused { "paused" } else { "running" },
                    "pid": std::process::id(),
                    "vcpus": self.info.vcpus,
                    "memory_mib": self.info.memory_mib,
                    "kvm": self.info.kvm,
                    "devices": self.info.devices.iter().map(DeviceInfo::report).collect::<Vec<_>>(),
                })
            }
        }
    }

    fn close(&mut self, fd: RawFd, ops: &mut EventOps) {
        if let Some((s, _)) = self.conns.remove(&fd) {
            let _ = ops.remove(Events::with_data(&s, CONN, EventSet::IN));
        }
    }

    fn serve(&mut self, fd: RawFd, ops: &mut EventOps) {
        let mut chunk = [0u8; 1024];
        let Some((stream, buf)) = self.conns.get_mut(&fd) else {
            return;
        };
        let closed = loop {
            match stream.read(&mut chunk) {
                Ok(0) => break true,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break true,
            }
        };
        let mut replies = Vec::new();
        let mut too_long = false;
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            replies.push(parse_request(&line[..line.len() - 1]));
        }
        if buf.len() > MAX_REQUEST_LINE {
            too_long = true;
        }
        let mut out = Vec::new();
        for r in replies {
            let v = match r {
                Ok(req) => self.handle(req),
                Err(e) => json!({"ok": false, "error": e}),
            };
            out.extend_from_slice(v.to_string().as_bytes());
            out.push(b'\n');
        }
        if too_long {
            let e = format!("request line longer than {MAX_REQUEST_LINE} bytes");
            out.extend_from_slice(json!({"ok": false, "error": e}).to_string().as_bytes());
            out.push(b'\n');
        }
        if let Some((stream, _)) = self.conns.get_mut(&fd) {
            // Replies are small; a client that does not read them loses them.
            let _ = stream.set_nonblocking(false);
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = stream.write_all(&out);
            let _ = stream.set_nonblocking(true);
        }
        if closed || too_long {
            self.close(fd, ops);
        }
    }
}

impl MutEventSubscriber for ApiServer {
    fn init(&mut self, ops: &mut EventOps) {
        let _ = ops.add(Events::with_data(&self.listener, LISTENER, EventSet::IN));
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.data() == LISTENER {
            while let Ok((s, _)) = self.listener.accept() {
                if s.set_nonblocking(true).is_ok()
                    && ops.add(Events::with_data(&s, CONN, EventSet::IN)).is_ok()
                {
                    self.conns.insert(s.as_raw_fd(), (s, Vec::new()));
                }
            }
        } else {
            self.serve(events.fd(), ops);
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_errors_say_why() {
        assert_eq!(parse_request(br#"{"op":"pause"}"#), Ok(Request::Pause));
        assert_eq!(parse_request(br#"{"op": "info"}"#), Ok(Request::Info));
        let e = parse_request(br#"{"op":"reboot"}"#).unwrap_err();
        assert!(e.contains("reboot"), "{e}");
        let e = parse_request(br#"{"op":"info","x":1}"#).unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
        assert!(parse_request(b"not json").is_err());
    }
}
