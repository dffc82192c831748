//! CRI port-forward of a VM pod, guest side: a PORT_FORWARD stream (see `stream.proto`) becomes
//! a TCP connection to that port on the loopback of the guest's network namespace, which every
//! container of the pod shares. The shim's end of it is `shim/src/vm/port_forward.rs`.

use crate::stdio::copy;
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// How long connecting to the pod's port may take before the forward is refused.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to `port` on 127.0.0.1, else on ::1 (as containerd tries them), or why
/// neither answered.
pub fn connect(port: u16) -> Result<TcpStream, String> {
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT).or_else(|e4| {
        TcpStream::connect_timeout(&v6, CONNECT_TIMEOUT)
            .map_err(|e6| format!("connect to port {port} in the pod: {v4}: {e4}; {v6}: {e6}"))
    })
}

/// Carries bytes both ways between the stream and the pod's connection until both directions
/// ended; the end of one direction is passed on as a half close.
pub fn splice(stream: UnixStream, tcp: TcpStream) {
    let (Ok(stream_w), Ok(tcp_r)) = (stream.try_clone(), tcp.try_clone()) else {
        return;
    };
    let upstream = std::thread::Builder::new()
        .name("port-forward".into())
        .spawn(move || {
            copy(&mut &stream, &mut &tcp);
            let _ = tcp.shutdown(Shutdown::Write);
        });
    copy(&mut &tcp_r, &mut &stream_w);
    let _ = stream_w.shutdown(Shutdown::Write);
    if let Ok(upstream) = upstream {
        let _ = upstream.join();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    #[test]
    fn a_forward_carries_both_directions_and_passes_the_half_close_on() {
        let server = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = server.local_addr().unwrap().port();
        let echo = std::thread::spawn(move || {
            let (mut conn, _) = server.accept().unwrap();
            let mut got = Vec::new();
            conn.read_to_end(&mut got).unwrap();
            conn.write_all(b"echo:").unwrap();
            conn.write_all(&got).unwrap();
        });
        let (mut client, agent_end) = UnixStream::pair().unwrap();
        let forward = std::thread::spawn(move || splice(agent_end, connect(port).unwrap()));
        client.write_all(b"ping").unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).unwrap();
        assert_eq!(answer, "echo:ping");
        echo.join().unwrap();
        forward.join().unwrap();
    }

    #[test]
    fn a_port_nobody_listens_on_is_refused_with_its_number() {
        let port = {
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
            l.local_addr().unwrap().port()
        };
        let error = connect(port).unwrap_err();
        assert!(error.contains(&format!("port {port}")), "{error}");
    }
}
