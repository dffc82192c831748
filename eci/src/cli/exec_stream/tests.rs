//! The channel protocol against a fake streaming server (containerd's is exercised end to end
//! through the runtime).

use super::*;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// What the fake server saw from the client.
#[derive(Debug, Default)]
struct Seen {
    stdin: Vec<u8>,
    resizes: Vec<serde_json::Value>,
    closed_stdin: bool,
}

/// A one-connection fake: speaks `protocol`, echoes stdin upper-cased on stdout, and once stdin
/// carried "exit" (or was closed, v5) sends `status` and closes.
// The handshake callback's error type is tungstenite's (large) HTTP response.
#[allow(clippy::result_large_err)]
async fn fake_server(
    protocol: &'static str,
    status: serde_json::Value,
) -> (String, tokio::task::JoinHandle<Seen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let callback = |request: &Request, mut response: Response| {
            let offered = request
                .headers()
                .get("Sec-WebSocket-Protocol")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            assert!(offered.contains(protocol), "client offered {offered:?}");
            response
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(protocol));
            Ok(response)
        };
        let mut socket = tokio_tungstenite::accept_hdr_async(tcp, callback)
            .await
            .unwrap();
        // Like the kubelet streaming server: an empty frame per channel first.
        for channel in [STDOUT, STDERR, STATUS] {
            socket.send(Message::binary(vec![channel])).await.unwrap();
        }
        socket
            .send(Message::binary(b"\x02warming up\n".to_vec()))
            .await
            .unwrap();
        let mut seen = Seen::default();
        while let Some(Ok(message)) = socket.next().await {
            let Message::Binary(data) = message else {
                continue;
            };
            match (data[0], &data[1..]) {
                (STDIN, payload) => {
                    seen.stdin.extend_from_slice(payload);
                    let mut echo = vec![STDOUT];
                    echo.extend(payload.to_ascii_uppercase());
                    socket.send(Message::binary(echo)).await.unwrap();
                    if seen.stdin.ends_with(b"exit\n") {
                        break;
                    }
                }
                (RESIZE, payload) => seen.resizes.push(serde_json::from_slice(payload).unwrap()),
                (CLOSE, [STDIN]) => {
                    seen.closed_stdin = true;
                    break;
                }
                other => panic!("unexpected frame {other:?}"),
            }
        }
        let mut frame = vec![STATUS];
        frame.extend(serde_json::to_vec(&status).unwrap());
        socket.send(Message::binary(frame)).await.unwrap();
        let _ = socket.close(None).await;
        seen
    });
    (format!("http://{addr}/exec/token"), task)
}

fn failure(code: &str) -> serde_json::Value {
    serde_json::json!({
        "metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
        "message": format!("command terminated with non-zero exit code: {code}"),
        "details": {"causes": [{"reason": "ExitCode", "message": code}]}
    })
}

#[tokio::test]
async fn v4_session_copies_streams_sends_resizes_and_returns_the_exit_code() {
    let (uri, server) = fake_server("v4.channel.k8s.io", failure("7")).await;
    let (resize_tx, resize_rx) = mpsc::unbounded_channel();
    resize_tx
        .send(TermSize {
            width: 120,
            height: 40,
        })
        .unwrap();
    let stdin: &[u8] = b"ls\nexit\n";
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let code = stream_exec(&uri, Some(stdin), &mut stdout, &mut stderr, Some(resize_rx))
        .await
        .unwrap();
    assert_eq!(code, 7);
    assert_eq!(stdout, b"LS\nEXIT\n");
    // The server's stderr, and possibly (depending on when stdin's end was read) the note
    // that v4 cannot pass the end of stdin on.
    let stderr = String::from_utf8(stderr).unwrap();
    assert!(stderr.contains("warming up\n"), "{stderr}");
    assert!(
        stderr
            .lines()
            .all(|l| l == "warming up" || l.contains("end of stdin")),
        "{stderr}"
    );
    let seen = server.await.unwrap();
    assert_eq!(seen.stdin, b"ls\nexit\n");
    assert_eq!(
        seen.resizes,
        [serde_json::json!({"Width": 120, "Height": 40})]
    );
    assert!(!seen.closed_stdin);
}

#[tokio::test]
async fn v5_closes_stdin_at_its_end_and_success_is_zero() {
    let (uri, server) = fake_server(
        "v5.channel.k8s.io",
        serde_json::json!({"metadata": {}, "status": "Success"}),
    )
    .await;
    let stdin: &[u8] = b"data";
    let mut stdout = Vec::new();
    let code = stream_exec(&uri, Some(stdin), &mut stdout, std::io::sink(), None)
        .await
        .unwrap();
    assert_eq!(code, 0);
    assert_eq!(stdout, b"DATA");
    let seen = server.await.unwrap();
    assert!(seen.closed_stdin);
}

#[test]
fn status_documents() {
    assert_eq!(exit_code(br#"{"status":"Success"}"#).unwrap(), 0);
    assert_eq!(
        exit_code(failure("130").to_string().as_bytes()).unwrap(),
        130
    );
    let err = exit_code(br#"{"status":"Failure","message":"container not found"}"#).unwrap_err();
    assert!(err.to_string().contains("container not found"), "{err}");
    assert!(exit_code(b"not json").is_err());
}

#[tokio::test]
async fn an_unreachable_stream_is_an_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let result = stream_exec(
        &format!("http://{addr}/exec/x"),
        None::<&[u8]>,
        std::io::sink(),
        std::io::sink(),
        None,
    )
    .await;
    assert!(result.is_err());
}
