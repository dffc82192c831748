//! Firecracker's hybrid vsock on the host side: every guest port is a unix socket.
//!
//! - Host-initiated: a host process connects to `uds` and writes `CONNECT <port>\n`; the
//!   muxer sends REQUEST to the guest and, on RESPONSE, writes `OK <host port>\n` back.
//! - Guest-initiated: REQUEST to host port P connects to `<uds>_<P>`.
//!
//! Flow control follows the virtio-vsock credit scheme in both directions. The muxer knows
//! nothing about virtqueues or the event loop: packets in and out, plus a list of epoll
//! interest changes the device applies.
//!
//! Limits, as Firecracker's: a host-initiated connection the guest has not answered within
//! [`CONNECT_TIMEOUT`] is reset (host stream closed, RST to the guest), and a guest holds at
//! most [`MAX_CONNECTIONS`] connections (a REQUEST beyond gets RST; a host connection beyond is
//! closed). Expiry runs on every muxer entry point and on the device's periodic timer.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmm_sys_util::epoll::EventSet;

use super::packet::*;

/// Bytes of guest-to-host data we buffer per connection (our advertised `buf_alloc`). 1 MiB
/// measured ~1.5x the throughput of 256 KiB here; it is only used when the host reads slowly.
pub const CONN_BUF_SIZE: u32 = 1024 * 1024;
/// Send a credit update once this much buffer has been freed since the last one.
const CREDIT_UPDATE_THRESHOLD: u32 = CONN_BUF_SIZE / 4;
/// First host-side port handed to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Longest `CONNECT <port>\n` line accepted.
const MAX_CONNECT_LINE: usize = 32;
/// How long a host-initiated connection waits for the guest's RESPONSE (Firecracker: 2 s).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections one guest may hold at once (Firecracker: 1023).
pub const MAX_CONNECTIONS: usize = 1023;

/// The muxer's limits; [`MuxerLimits::default`] is Firecracker's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MuxerLimits {
    pub connect_timeout: Duration,
    pub max_connections: usize,
}

impl Default for MuxerLimits {
    fn default() -> Self {
        Self {
            connect_timeout: CONNECT_TIMEOUT,
            max_connections: MAX_CONNECTIONS,
        }
    }
}

pub type ConnKey = (u32, u32); // (host port, guest port)

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnState {
    /// Host-initiated, REQUEST queued or sent, waiting for the guest's RESPONSE.
    Connecting,
    Established,
}

struct Conn {
    stream: UnixStream,
    state: ConnState,
    /// While Connecting: when the connection is given up if the guest has not answered.
    connect_deadline: Option<Instant>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    /// Bytes from the guest written to the host stream.
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    /// Guest-to-host bytes the host stream has not taken yet.
    tx_buf: VecDeque<u8>,
    /// Control packets to send to the guest, in order (op, flags).
    pending: VecDeque<(u16, u32)>,
    /// The host stream may have data; its read interest is off until a read would block.
    readable: bool,
    host_eof: bool,
}

impl Conn {
    fn new(stream: UnixStream, state: ConnState) -> Self {
        Conn {
            stream,
            state,
            connect_deadline: None,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            tx_buf: VecDeque::new(),
            pending: VecDeque::new(),
            readable: false,
            host_eof: false,
        }
    }

    /// Bytes the guest can still take.
    fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    fn interest(&self) -> Option<EventSet> {
        let mut set = EventSet::empty();
        if !self.readable && !self.host_eof {
            set |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() {
            set |= EventSet::OUT;
        }
        (!set.is_empty()).then_some(set)
    }

    /// Writes guest data straight to the stream when nothing is queued before it; buffers
    /// what the stream does not take. Err means the stream is dead.
    fn write_or_buffer(&mut self, data: &[u8]) -> std::io::Result<()> {
        let mut done = 0;
        if self.tx_buf.is_empty() {
            while done < data.len() {
                match self.stream.write(&data[done..]) {
                    Ok(0) => return Err(ErrorKind::WriteZero.into()),
                    Ok(n) => done += n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            self.fwd_cnt += Wrapping(done as u32);
        }
        self.tx_buf.extend(&data[done..]);
        self.flush()
    }

    /// Writes as much of tx_buf as the stream takes. Err means the stream is dead.
    fn flush(&mut self) -> std::io::Result<()> {
        while !self.tx_buf.is_empty() {
            let (a, _) = self.tx_buf.as_slices();
            match self.stream.write(a) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD
            && !self.pending.iter().any(|(op, _)| *op == OP_CREDIT_UPDATE)
        {
            self.pending.push_back((OP_CREDIT_UPDATE, 0));
        }
        Ok(())
    }
}

struct Accepting {
    stream: UnixStream,
    line: Vec<u8>,
}

/// Counters for tests and `info`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MuxerStats {
    pub bad_packets: u64,
    pub resets_sent: u64,
    /// Host-initiated connections the guest did not answer in time.
    pub connect_timeouts: u64,
    /// Connections refused because the guest held [`MuxerLimits::max_connections`].
    pub over_limit: u64,
}

pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    conns: HashMap<ConnKey, Conn>,
    by_fd: HashMap<RawFd, ConnKey>,
    accepting: HashMap<RawFd, Accepting>,
    orphan_rst: VecDeque<Header>,
    next_local_port: u32,
    limits: MuxerLimits,
    /// Epoll interest changes for the device to apply: `Some(set)` add/modify, `None` remove.
    pub interest: Vec<(RawFd, Option<EventSet>)>,
    /// Streams to close once their epoll registration is removed.
    pub graveyard: Vec<UnixStream>,
    pub stats: MuxerStats,
}

impl Muxer {
    /// Binds the hybrid vsock socket at `uds_path` (a stale socket file is replaced), with
    /// Firecracker's limits.
    pub fn new(guest_cid: u64, uds_path: &Path) -> std::io::Result<Self> {
        Self::with_limits(guest_cid, uds_path, MuxerLimits::default())
    }

    /// Like [`Muxer::new`] with other limits (tests).
    pub fn with_limits(
        guest_cid: u64,
        uds_path: &Path,
        limits: MuxerLimits,
    ) -> std::io::Result<Self> {
        if let Ok(meta) = std::fs::symlink_metadata(uds_path) {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_socket() {
                std::fs::remove_file(uds_path)?;
            }
        }
        let listener = UnixListener::bind(uds_path)?;
        listener.set_nonblocking(true)?;
        Ok(Muxer {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            accepting: HashMap::new(),
            orphan_rst: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            limits,
            interest: Vec::new(),
            graveyard: Vec::new(),
            stats: MuxerStats::default(),
        })
    }

    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Whether a host-initiated connection waits for the guest (the device's timer is needed).
    pub fn has_connecting(&self) -> bool {
        self.conns.values().any(|c| c.connect_deadline.is_some())
    }

    /// Resets every host-initiated connection whose guest did not answer by its deadline:
    /// the host stream is closed and the guest gets RST (a late RESPONSE then finds nothing).
    pub fn expire(&mut self, now: Instant) {
        let expired: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| c.connect_deadline.is_some_and(|d| d <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in expired {
            self.stats.connect_timeouts += 1;
            self.reset_conn(key);
        }
    }

    /// Whether one more connection would exceed the limit (counted when refused).
    fn at_limit(&mut self) -> bool {
        let full = self.conns.len() >= self.limits.max_connections;
        if full {
            self.stats.over_limit += 1;
        }
        full
    }

    /// Drops every connection and pending accept (the guest driver reset the device: its
    /// side of every stream is gone). The listener stays.
    pub fn reset_all(&mut self) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for k in keys {
            self.remove_conn(k);
        }
        let fds: Vec<RawFd> = self.accepting.keys().copied().collect();
        for fd in fds {
            self.drop_accepting(fd);
        }
        self.orphan_rst.clear();
    }

    /// Accepts pending host connections; each must send `CONNECT <port>\n` first.
    pub fn accept_ready(&mut self) {
        self.expire(Instant::now());
        while let Ok((stream, _)) = self.listener.accept() {
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = stream.as_raw_fd();
            self.interest.push((fd, Some(EventSet::IN)));
            self.accepting.insert(
                fd,
                Accepting {
                    stream,
                    line: Vec::new(),
                },
            );
        }
    }

    /// A host stream is ready.
    pub fn stream_ready(&mut self, fd: RawFd, set: EventSet) {
        self.expire(Instant::now());
        if self.accepting.contains_key(&fd) {
            self.read_connect_line(fd);
            return;
        }
        let Some(key) = self.by_fd.get(&fd).copied() else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if set
            .intersects(EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP | EventSet::ERROR)
        {
            conn.readable = true;
        }
        if set.contains(EventSet::OUT) && conn.flush().is_err() {
            self.reset_conn(key);
            return;
        }
        self.update_interest(key);
    }

    fn read_connect_line(&mut self, fd: RawFd) {
        let Some(acc) = self.accepting.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        // One byte at a time: nothing after the newline may be consumed here.
        loop {
            match acc.stream.read(&mut byte) {
                Ok(0) => return self.drop_accepting(fd),
                Ok(_) if byte[0] == b'\n' => break,
                Ok(_) if acc.line.len() < MAX_CONNECT_LINE => acc.line.push(byte[0]),
                Ok(_) => return self.drop_accepting(fd),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.drop_accepting(fd),
            }
        }
        let port = std::str::from_utf8(&acc.line)
            .ok()
            .and_then(|l| l.trim_end_matches('\r').strip_prefix("CONNECT "))
            .and_then(|p| p.trim().parse::<u32>().ok());
        let Some(port) = port else {
            return self.drop_accepting(fd);
        };
        if self.at_limit() {
            return self.drop_accepting(fd);
        }
        let acc = self.accepting.remove(&fd).expect("checked above");
        let local = self.alloc_local_port(port);
        let mut conn = Conn::new(acc.stream, ConnState::Connecting);
        conn.connect_deadline = Some(Instant::now() + self.limits.connect_timeout);
        conn.readable = false;
        conn.pending.push_back((OP_REQUEST, 0));
        let key = (local, port);
        self.by_fd.insert(fd, key);
        self.conns.insert(key, conn);
        // No reads until the guest accepts.
        self.interest.push((fd, None));
    }

    fn drop_accepting(&mut self, fd: RawFd) {
        if let Some(acc) = self.accepting.remove(&fd) {
            self.interest.push((fd, None));
            self.graveyard.push(acc.stream);
        }
    }

    fn alloc_local_port(&mut self, peer: u32) -> u32 {
        loop {
            let p = self.next_local_port;
            self.next_local_port = self.next_local_port.wrapping_add(1).max(FIRST_LOCAL_PORT);
            if !self.conns.contains_key(&(p, peer)) {
                return p;
            }
        }
    }

    fn update_interest(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.get(&key) {
            self.interest.push((c.stream.as_raw_fd(), c.interest()));
        }
    }

    fn remove_conn(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.remove(&key) {
            let fd = c.stream.as_raw_fd();
            self.by_fd.remove(&fd);
            self.interest.push((fd, None));
            self.graveyard.push(c.stream);
        }
    }

    /// Drops the connection and tells the guest.
    fn reset_conn(&mut self, key: ConnKey) {
        self.remove_conn(key);
        self.queue_orphan_rst(key.0, key.1);
    }

    fn queue_orphan_rst(&mut self, local: u32, peer: u32) {
        self.stats.resets_sent += 1;
        self.orphan_rst.push_back(Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: local,
            dst_port: peer,
            type_: TYPE_STREAM,
            op: OP_RST,
            ..Default::default()
        });
    }

    /// Handles one packet from the guest. Malformed packets are counted and answered with
    /// RST where a reply makes sense.
    pub fn send(&mut self, pkt: TxPacket) {
        self.expire(Instant::now());
        let h = pkt.hdr;
        let (src_cid, dst_cid, type_, op) = (h.src_cid, h.dst_cid, h.type_, h.op);
        let key: ConnKey = (h.dst_port, h.src_port);
        if src_cid != self.guest_cid || dst_cid != HOST_CID {
            self.stats.bad_packets += 1;
            return;
        }
        if type_ != TYPE_STREAM {
            self.stats.bad_packets += 1;
            if op != OP_RST {
                self.queue_orphan_rst(key.0, key.1);
            }
            return;
        }
        if op == OP_REQUEST {
            return self.guest_connect(key, &h);
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            if op != OP_RST {
                self.queue_orphan_rst(key.0, key.1);
            }
            return;
        };
        conn.peer_buf_alloc = h.buf_alloc;
        conn.peer_fwd_cnt = Wrapping(h.fwd_cnt);
        match op {
            OP_RESPONSE if conn.state == ConnState::Connecting => {
                conn.state = ConnState::Established;
                conn.connect_deadline = None;
                conn.tx_buf.extend(format!("OK {}\n", key.0).as_bytes());
                // The OK line is ours, not guest data: do not count it as forwarded.
                conn.fwd_cnt -= Wrapping(conn.tx_buf.len() as u32);
                if conn.flush().is_err() {
                    return self.reset_conn(key);
                }
                self.update_interest(key);
            }
            OP_RW if conn.state == ConnState::Established => {
                let room = (CONN_BUF_SIZE as usize).saturating_sub(conn.tx_buf.len());
                if pkt.data.len() > room {
                    // The guest ignored our credit: refuse rather than buffer without bound.
                    self.stats.bad_packets += 1;
                    return self.reset_conn(key);
                }
                if conn.write_or_buffer(&pkt.data).is_err() {
                    return self.reset_conn(key);
                }
                self.update_interest(key);
            }
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => {
                if !conn.pending.iter().any(|(o, _)| *o == OP_CREDIT_UPDATE) {
                    conn.pending.push_back((OP_CREDIT_UPDATE, 0));
                }
            }
            OP_SHUTDOWN => {
                let _ = conn.flush();
                if h.flags & SHUTDOWN_SEND != 0 {
                    let _ = conn.stream.shutdown(std::net::Shutdown::Write);
                }
                if h.flags & (SHUTDOWN_SEND | SHUTDOWN_RCV) == SHUTDOWN_SEND | SHUTDOWN_RCV {
                    self.reset_conn(key);
                }
            }
            OP_RST => self.remove_conn(key),
            _ => {
                self.stats.bad_packets += 1;
                self.reset_conn(key);
            }
        }
    }

    fn guest_connect(&mut self, key: ConnKey, h: &Header) {
        if self.conns.contains_key(&key) {
            self.stats.bad_packets += 1;
            return self.reset_conn(key);
        }
        if self.at_limit() {
            return self.queue_orphan_rst(key.0, key.1);
        }
        let path = format!("{}_{}", self.uds_path.display(), key.0);
        let stream = match connect_nonblocking(Path::new(&path)) {
            Ok(s) => s,
            Err(_) => return self.queue_orphan_rst(key.0, key.1),
        };
        let fd = stream.as_raw_fd();
        let mut conn = Conn::new(stream, ConnState::Established);
        conn.peer_buf_alloc = h.buf_alloc;
        conn.peer_fwd_cnt = Wrapping(h.fwd_cnt);
        conn.pending.push_back((OP_RESPONSE, 0));
        self.by_fd.insert(fd, key);
        self.conns.insert(key, conn);
        self.update_interest(key);
    }

    /// Whether a packet for the guest may be ready.
    pub fn has_rx(&self) -> bool {
        !self.orphan_rst.is_empty()
            || self.conns.values().any(|c| {
                !c.pending.is_empty()
                    || (c.state == ConnState::Established && c.readable && c.peer_credit() > 0)
            })
    }

    fn header(&self, key: ConnKey, op: u16, flags: u32) -> Header {
        let fwd = self.conns.get(&key).map_or(0, |c| c.fwd_cnt.0);
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.0,
            dst_port: key.1,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: CONN_BUF_SIZE,
            fwd_cnt: fwd,
            len: 0,
        }
    }

    /// The next packet for the guest with at most `max_data` payload bytes, if any.
    pub fn recv(&mut self, max_data: usize) -> Option<(Header, Vec<u8>)> {
        self.expire(Instant::now());
        if let Some(h) = self.orphan_rst.pop_front() {
            return Some((h, Vec::new()));
        }
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            let conn = self.conns.get_mut(&key)?;
            if let Some((op, flags)) = conn.pending.pop_front() {
                conn.last_fwd_cnt_sent = conn.fwd_cnt;
                let hdr = self.header(key, op, flags);
                return Some((hdr, Vec::new()));
            }
            if conn.state != ConnState::Established || !conn.readable {
                continue;
            }
            let want = max_data.min(conn.peer_credit() as usize).min(MAX_PKT_DATA);
            if want == 0 {
                continue;
            }
            let mut buf = vec![0u8; want];
            match conn.stream.read(&mut buf) {
                Ok(0) => {
                    conn.readable = false;
                    conn.host_eof = true;
                    conn.pending
                        .push_back((OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND));
                    self.update_interest(key);
                }
                Ok(n) => {
                    buf.truncate(n);
                    conn.rx_cnt += Wrapping(n as u32);
                    conn.last_fwd_cnt_sent = conn.fwd_cnt;
                    let hdr = self.header(key, OP_RW, 0);
                    return Some((hdr, buf));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    conn.readable = false;
                    self.update_interest(key);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => self.reset_conn(key),
            }
        }
        // A state change above may have queued a control packet.
        if let Some(h) = self.orphan_rst.pop_front() {
            return Some((h, Vec::new()));
        }
        let key = self
            .conns
            .iter()
            .find(|(_, c)| !c.pending.is_empty())
            .map(|(k, _)| *k)?;
        let conn = self.conns.get_mut(&key)?;
        let (op, flags) = conn.pending.pop_front()?;
        conn.last_fwd_cnt_sent = conn.fwd_cnt;
        Some((self.header(key, op, flags), Vec::new()))
    }
}

/// Connects without blocking: a host listener with a full backlog refuses (EAGAIN) instead
/// of stalling the event loop, so a guest cannot hang the VMM by connecting in a loop.
fn connect_nonblocking(path: &Path) -> std::io::Result<UnixStream> {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: zeroed sockaddr_un is valid; we fill family and path below.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= addr.sun_path.len() {
        return Err(ErrorKind::InvalidInput.into());
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain socket(2); the fd is owned immediately below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh socket that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: addr is a valid sockaddr_un and the length covers it.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_un as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}

impl Drop for Muxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    const CID: u64 = 3;

    fn pkt(src: u32, dst: u32, op: u16, data: &[u8]) -> TxPacket {
        TxPacket {
            hdr: Header {
                src_cid: CID,
                dst_cid: HOST_CID,
                src_port: src,
                dst_port: dst,
                len: data.len() as u32,
                type_: TYPE_STREAM,
                op,
                buf_alloc: 64 * 1024,
                ..Default::default()
            },
            data: data.to_vec(),
        }
    }

    fn drain_interest(m: &mut Muxer) {
        m.interest.clear();
        m.graveyard.clear();
    }

    #[test]
    fn host_initiated_connect_handshake_and_data() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let mut m = Muxer::new(CID, &uds).unwrap();
        let mut host = UnixStream::connect(&uds).unwrap();
        host.write_all(b"CONNECT 1024\n").unwrap();
        m.accept_ready();
        let fd = m.accepting.keys().next().copied().unwrap();
        m.stream_ready(fd, EventSet::IN);
        let (h, _) = m.recv(4096).unwrap();
        assert_eq!((h.op, h.dst_port, h.dst_cid), (OP_REQUEST, 1024, CID));
        let local = h.src_port;
        m.send(pkt(1024, local, OP_RESPONSE, b""));
        let mut line = String::new();
        BufReader::new(host.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, format!("OK {local}\n"));
        // guest -> host
        m.send(pkt(1024, local, OP_RW, b"ping"));
        let mut buf = [0u8; 4];
        host.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        // host -> guest
        host.write_all(b"pong").unwrap();
        m.stream_ready(fd, EventSet::IN);
        let (h, data) = m.recv(4096).unwrap();
        assert_eq!((h.op, data.as_slice()), (OP_RW, &b"pong"[..]));
        assert_eq!({ h.fwd_cnt }, 4, "fwd_cnt counts guest data only");
        drop(host);
        m.stream_ready(fd, EventSet::IN | EventSet::HANG_UP);
        let (h, _) = m.recv(4096).unwrap();
        assert_eq!({ h.op }, OP_SHUTDOWN);
        m.send(pkt(1024, local, OP_RST, b""));
        assert_eq!(m.connection_count(), 0);
        drain_interest(&mut m);
        drop(m);
        assert!(!uds.exists(), "socket file removed on drop");
    }

    #[test]
    fn guest_initiated_connects_to_port_socket_or_gets_rst() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let mut m = Muxer::new(CID, &uds).unwrap();
        m.send(pkt(5000, 52, OP_REQUEST, b""));
        let (h, _) = m.recv(100).unwrap();
        assert_eq!({ h.op }, OP_RST, "nobody listens on v.sock_52");
        let l = UnixListener::bind(dir.path().join("v.sock_52")).unwrap();
        m.send(pkt(5000, 52, OP_REQUEST, b""));
        let (h, _) = m.recv(100).unwrap();
        assert_eq!((h.op, h.src_port, h.dst_port), (OP_RESPONSE, 52, 5000));
        assert!(connect_nonblocking(Path::new("/nonexistent/x")).is_err());
        let (mut s, _) = l.accept().unwrap();
        m.send(pkt(5000, 52, OP_RW, b"hello"));
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        // A driver reset closes the host side of every stream.
        m.reset_all();
        drain_interest(&mut m);
        assert_eq!(m.connection_count(), 0);
        assert_eq!(s.read(&mut buf).unwrap(), 0, "host sees EOF");
    }

    #[test]
    fn hostile_packets_are_refused_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Muxer::new(CID, &dir.path().join("v.sock")).unwrap();
        // Wrong source cid: dropped silently.
        let mut p = pkt(1, 2, OP_RW, b"x");
        p.hdr.src_cid = 99;
        m.send(p);
        assert_eq!(m.stats.bad_packets, 1);
        assert!(!m.has_rx());
        // Datagram type: RST.
        let mut p = pkt(1, 2, OP_REQUEST, b"");
        p.hdr.type_ = 2;
        m.send(p);
        assert_eq!({ m.recv(10).unwrap().0.op }, OP_RST);
        // Data for an unknown connection: RST.
        m.send(pkt(1, 2, OP_RW, b"zz"));
        assert_eq!({ m.recv(10).unwrap().0.op }, OP_RST);
        // Overrunning our credit resets the connection.
        let _l = UnixListener::bind(dir.path().join("v.sock_7")).unwrap();
        m.send(pkt(9, 7, OP_REQUEST, b""));
        let _ = m.recv(10);
        // Nobody reads the host side, so the socket buffer fills and then our buffer does.
        for _ in 0..64 {
            m.send(pkt(9, 7, OP_RW, &vec![0u8; 64 * 1024]));
        }
        assert_eq!(m.connection_count(), 0, "credit violation resets");
    }

    #[test]
    fn malformed_connect_lines_close_the_stream() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let mut m = Muxer::new(CID, &uds).unwrap();
        for line in [&b"HELLO 1\n"[..], b"CONNECT x\n", &[b'A'; 40]] {
            let mut host = UnixStream::connect(&uds).unwrap();
            host.write_all(line).unwrap();
            m.accept_ready();
            let fds: Vec<_> = m.accepting.keys().copied().collect();
            for fd in fds {
                m.stream_ready(fd, EventSet::IN);
            }
            assert!(m.accepting.is_empty() && m.conns.is_empty(), "{line:?}");
            drain_interest(&mut m);
            let mut b = [0u8; 1];
            match host.read(&mut b) {
                Ok(n) => assert_eq!(n, 0, "closed"),
                Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset),
            }
        }
    }

    /// A host process connects and asks for a guest port; the guest never answers.
    fn host_connect(m: &mut Muxer, uds: &Path, port: u32) -> UnixStream {
        let mut host = UnixStream::connect(uds).unwrap();
        host.write_all(format!("CONNECT {port}\n").as_bytes())
            .unwrap();
        m.accept_ready();
        let fds: Vec<_> = m.accepting.keys().copied().collect();
        for fd in fds {
            m.stream_ready(fd, EventSet::IN);
        }
        host
    }

    /// A host connection stuck in Connecting (the guest never sends RESPONSE) is given up
    /// after CONNECT_TIMEOUT, as in Firecracker: the host sees EOF and the guest gets RST. Real
    /// time, through the muxer's own entry points only.
    #[test]
    fn unanswered_host_connection_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let mut m = Muxer::new(CID, &uds).unwrap();
        let mut host = host_connect(&mut m, &uds, 1024);
        let (h, _) = m.recv(4096).unwrap();
        assert_eq!({ h.op }, OP_REQUEST);
        assert_eq!(m.connection_count(), 1);
        std::thread::sleep(Duration::from_millis(2100));
        let (h, _) = m.recv(4096).expect("a RST for the expired connection");
        assert_eq!((h.op, h.dst_port), (OP_RST, 1024));
        assert_eq!(m.connection_count(), 0);
        drain_interest(&mut m);
        host.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 1];
        assert_eq!(host.read(&mut b).unwrap(), 0, "the host stream is closed");
    }

    #[test]
    fn connect_deadline_is_the_limit_and_an_answer_clears_it() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let limits = MuxerLimits {
            connect_timeout: Duration::from_secs(60),
            ..Default::default()
        };
        let mut m = Muxer::with_limits(CID, &uds, limits).unwrap();
        let _a = host_connect(&mut m, &uds, 1024);
        let _b = host_connect(&mut m, &uds, 1025);
        assert!(m.has_connecting());
        let (req, _) = m.recv(4096).unwrap();
        let (req2, _) = m.recv(4096).unwrap();
        // The guest answers one of them: only the other one expires.
        m.send(pkt(req.dst_port, req.src_port, OP_RESPONSE, b""));
        m.expire(Instant::now() + Duration::from_secs(59));
        assert_eq!(m.connection_count(), 2, "not yet");
        m.expire(Instant::now() + Duration::from_secs(61));
        assert_eq!(m.connection_count(), 1);
        assert!(!m.has_connecting());
        assert_eq!(m.stats.connect_timeouts, 1);
        let (rst, _) = m.recv(4096).unwrap();
        assert_eq!((rst.op, rst.dst_port), (OP_RST, req2.dst_port));
    }

    /// A guest may not open connections without bound (Firecracker caps them at 1023): the
    /// first REQUEST over the limit gets RST, and the host sockets stay at the limit.
    #[test]
    fn guest_connections_are_capped() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Muxer::new(CID, &dir.path().join("v.sock")).unwrap();
        let listener = UnixListener::bind(dir.path().join("v.sock_52")).unwrap();
        listener.set_nonblocking(true).unwrap();
        let mut accepted = Vec::new();
        for port in 0..=MAX_CONNECTIONS as u32 {
            m.send(pkt(10_000 + port, 52, OP_REQUEST, b""));
            while let Ok((s, _)) = listener.accept() {
                accepted.push(s);
            }
        }
        let mut answers = Vec::new();
        while let Some((h, _)) = m.recv(100) {
            answers.push((h.op, h.dst_port));
        }
        drain_interest(&mut m);
        let responses = answers.iter().filter(|(op, _)| *op == OP_RESPONSE).count();
        assert_eq!(responses, MAX_CONNECTIONS);
        assert!(
            answers.contains(&(OP_RST, 10_000 + MAX_CONNECTIONS as u32)),
            "the connection over the limit was not refused"
        );
        assert_eq!(m.connection_count(), MAX_CONNECTIONS);
        assert_eq!(m.stats.over_limit, 1);
    }

    #[test]
    fn host_connections_over_the_limit_are_closed() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let limits = MuxerLimits {
            max_connections: 1,
            ..Default::default()
        };
        let mut m = Muxer::with_limits(CID, &uds, limits).unwrap();
        let _first = host_connect(&mut m, &uds, 1024);
        let mut second = host_connect(&mut m, &uds, 1025);
        drain_interest(&mut m);
        assert_eq!(m.connection_count(), 1);
        assert_eq!(m.stats.over_limit, 1);
        let mut b = [0u8; 1];
        match second.read(&mut b) {
            Ok(n) => assert_eq!(n, 0, "closed"),
            Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset),
        }
    }
}
