//! TLS on the listen port (`--tls-cert`, `--tls-key`; PROTOCOL.md "Transport additions (v1.1)"),
//! through a real rustls client against certificates each test generates: `wss://` and
//! `https://` over TLS 1.3 and 1.2 with ALPN `http/1.1`, the 400 for plain HTTP on the TLS port,
//! a SIGHUP reload that new connections see and open ones survive (and a broken reload that
//! changes nothing), and startup refusing a missing key.

mod support;

use chat_testkit::{send_signal, TempDir};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::client::{send_req, TIMEOUT};
use support::Server;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, ProtocolVersion, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

type Wss = WebSocketStream<TlsStream<TcpStream>>;

/// A self-signed certificate for `localhost` and 127.0.0.1, named `name`.
struct Cert {
    der: CertificateDer<'static>,
    cert_pem: String,
    key_pem: String,
}

fn self_signed(name: &str) -> Cert {
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Cert {
        der: cert.der().clone(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// `cert.pem` and `key.pem` in a directory of their own.
struct Files {
    dir: TempDir,
}

impl Files {
    fn new(cert: &Cert) -> Files {
        let files = Files {
            dir: TempDir::new("tls"),
        };
        files.write(cert);
        files
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    fn write(&self, cert: &Cert) {
        std::fs::write(self.cert(), &cert.cert_pem).unwrap();
        std::fs::write(self.key(), &cert.key_pem).unwrap();
    }

    fn start(&self) -> Server {
        self.start_with(&[])
    }

    fn start_with(&self, extra: &[&str]) -> Server {
        let (cert, key) = (self.cert(), self.key());
        let mut args = vec![
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        Server::start(&args)
    }
}

/// A client that trusts `trusted` and speaks only `version` (TLS 1.2 or 1.3), offering ALPN
/// `http/1.1`.
#[allow(deprecated)] // ring has no post-quantum key exchange; the server uses ring too.
fn client(trusted: &[&Cert], version: &'static rustls::SupportedProtocolVersion) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for c in trusted {
        roots.add(c.der.clone()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

fn tls13(trusted: &[&Cert]) -> TlsConnector {
    client(trusted, &rustls::version::TLS13)
}

async fn handshake(tls: &TlsConnector, addr: SocketAddr) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(TIMEOUT, tls.connect(name, tcp))
        .await
        .expect("handshake in time")
        .expect("TLS handshake")
}

/// The certificate the server presented.
fn peer_cert(s: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().expect("a certificate")[0].clone()
}

async fn wss(tls: &TlsConnector, addr: SocketAddr, user: &str) -> Wss {
    let stream = handshake(tls, addr).await;
    let url = format!("wss://localhost:{}/ws?user={user}", addr.port());
    let (ws, resp) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("WebSocket upgrade over TLS");
    assert_eq!(resp.status(), 101);
    ws
}

async fn send(ws: &mut Wss, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

/// The next JSON text message (pings skipped).
async fn next_json(ws: &mut Wss) -> Value {
    loop {
        let msg = tokio::time::timeout(TIMEOUT, ws.next())
            .await
            .unwrap_or_else(|_| panic!("nothing within {TIMEOUT:?}"))
            .expect("connection open")
            .expect("frame");
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// Reads until a message of type `ty` (skipping the others) and returns it.
async fn until(ws: &mut Wss, ty: &str) -> Value {
    loop {
        let v = next_json(ws).await;
        if v["type"] == ty {
            return v;
        }
    }
}

/// join, send, then the `ack` and the room's `msg`: the chat protocol works over `ws`.
async fn round_trip(ws: &mut Wss, room: &str, cid: &str) {
    send(ws, json!({"type":"join","room":room})).await;
    until(ws, "joined").await;
    send_and_ack(ws, room, cid).await;
}

/// Sends `cid` to `room` (joined) and reads both its `ack` and its `msg`, in either order.
async fn send_and_ack(ws: &mut Wss, room: &str, cid: &str) {
    send(ws, send_req(room, cid, cid)).await;
    let (mut acked, mut echoed) = (false, false);
    while !(acked && echoed) {
        let v = next_json(ws).await;
        match v["type"].as_str() {
            Some("ack") if v["cid"] == cid => acked = true,
            Some("msg") if v["body"] == cid => echoed = true,
            _ => {}
        }
    }
}

/// One HTTP/1.1 request over `stream`; (status, body).
async fn http_get<S>(mut stream: S, path: &str) -> (u16, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    // The server closes after the answer; a missing close_notify shows only as an error here.
    let _ = tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut out)).await;
    parse_response(&out)
}

fn parse_response(raw: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(raw);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}

#[tokio::test]
async fn wss_over_tls13_and_tls12_negotiates_http11() {
    let cert = self_signed("chat test");
    let files = Files::new(&cert);
    let server = files.start();

    for (version, wanted) in [
        (&rustls::version::TLS13, ProtocolVersion::TLSv1_3),
        (&rustls::version::TLS12, ProtocolVersion::TLSv1_2),
    ] {
        let tls = client(&[&cert], version);
        let stream = handshake(&tls, server.addr).await;
        let conn = stream.get_ref().1;
        assert_eq!(conn.protocol_version(), Some(wanted));
        assert_eq!(conn.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(peer_cert(&stream), cert.der);
        drop(stream);

        let mut ws = wss(&tls, server.addr, "alice").await;
        round_trip(&mut ws, &format!("tls-{wanted:?}"), &format!("{wanted:?}")).await;
    }
}

#[tokio::test]
async fn https_serves_healthz_and_metrics() {
    let cert = self_signed("chat test");
    let files = Files::new(&cert);
    let server = files.start();
    let tls = tls13(&[&cert]);

    let (status, body) = http_get(handshake(&tls, server.addr).await, "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    // Plain HTTP on the TLS port: a plain 400 that says what to use instead.
    let (status, body) = plain_http_get(server.addr, "/healthz");
    assert_eq!(status, 400);
    assert!(
        body.contains("this port speaks TLS: use https:// or wss://"),
        "{body}"
    );

    // The refusal counts as a failed handshake.
    let (status, metrics) = http_get(handshake(&tls, server.addr).await, "/metrics").await;
    assert_eq!(status, 200);
    // One series per core: chat_tls_handshake_failures_total{core="0"} N
    let failures: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("chat_tls_handshake_failures_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(failures >= 1, "{failures}");
}

#[tokio::test]
async fn both_io_drivers_batch_writes_and_bound_a_stalled_handshake() {
    let cert = self_signed("chat test");
    let files = Files::new(&cert);
    let tls = tls13(&[&cert]);
    for driver in ["auto", "epoll"] {
        let server = files.start_with(&["--io-driver", driver, "--head-timeout-ms", "300"]);

        // Pipelined sends: acks and msgs leave in multi-frame batches, many per TLS record.
        let mut ws = wss(&tls, server.addr, "alice").await;
        send(&mut ws, json!({"type":"join","room":"p"})).await;
        until(&mut ws, "joined").await;
        for i in 0..300 {
            let body = format!("{i:0>200}");
            ws.feed(Message::text(
                send_req("p", &i.to_string(), &body).to_string(),
            ))
            .await
            .unwrap();
        }
        ws.flush().await.unwrap();
        let (mut acks, mut msgs) = (0, 0);
        while acks < 300 || msgs < 300 {
            match next_json(&mut ws).await["type"].as_str() {
                Some("ack") => acks += 1,
                Some("msg") => msgs += 1,
                other => panic!("{driver}: unexpected {other:?}"),
            }
        }

        let (status, _) = plain_http_get(server.addr, "/");
        assert_eq!(status, 400, "{driver}");

        // A client that starts a handshake and stalls is closed after --head-timeout-ms.
        let mut stalled = std::net::TcpStream::connect(server.addr).unwrap();
        stalled.write_all(&[0x16, 3, 1]).unwrap();
        stalled.set_read_timeout(Some(TIMEOUT)).unwrap();
        let started = Instant::now();
        let n = stalled.read(&mut [0; 64]).expect("closed, not timed out");
        assert_eq!(n, 0, "{driver}");
        assert!(started.elapsed() < Duration::from_secs(3), "{driver}");
    }
}

/// A plain-text HTTP request, answer read to the server's close.
fn plain_http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("answer, then close");
    parse_response(&out)
}

#[tokio::test]
async fn sighup_reloads_the_certificate_without_dropping_connections() {
    let (a, b) = (self_signed("cert A"), self_signed("cert B"));
    let files = Files::new(&a);
    let mut server = files.start();
    let tls = tls13(&[&a, &b]);

    let mut old = wss(&tls, server.addr, "alice").await;
    round_trip(&mut old, "r", "before").await;
    assert_eq!(peer_cert(&handshake(&tls, server.addr).await), a.der);

    files.write(&b);
    send_signal(server.child.id(), "HUP");
    wait_for_cert(&tls, server.addr, &b).await;

    // The connection opened under A still works.
    send_and_ack(&mut old, "r", "after").await;
    // And a new one under B does too.
    let mut new = wss(&tls, server.addr, "bob").await;
    round_trip(&mut new, "r2", "new").await;

    // A reload from a broken file keeps B.
    std::fs::write(files.cert(), "not a certificate\n").unwrap();
    send_signal(server.child.id(), "HUP");
    // A key that belongs to another certificate is refused too.
    files.write(&Cert {
        key_pem: a.key_pem.clone(),
        ..self_signed("mismatched")
    });
    send_signal(server.child.id(), "HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(peer_cert(&handshake(&tls, server.addr).await), b.der);
    send_and_ack(&mut old, "r", "still").await;
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server survives bad reloads"
    );
}

/// Handshakes until the server presents `cert` (a reload happens after SIGHUP arrives).
async fn wait_for_cert(tls: &TlsConnector, addr: SocketAddr, cert: &Cert) {
    let deadline = Instant::now() + TIMEOUT;
    while peer_cert(&handshake(tls, addr).await) != cert.der {
        assert!(Instant::now() < deadline, "no reload within {TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn startup_refuses_a_missing_key_or_a_lone_flag() {
    let cert = self_signed("chat test");
    let files = Files::new(&cert);
    let cert_path = files.cert();
    let cert_arg = cert_path.to_str().unwrap();
    let missing = files.dir.path().join("missing-key.pem");

    let (code, err) = fails_to_start(&[
        "--tls-cert",
        cert_arg,
        "--tls-key",
        missing.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(
        err.contains("--tls-key")
            && err.contains("missing-key.pem")
            && err.contains("No such file"),
        "{err}"
    );

    let (code, err) = fails_to_start(&["--tls-cert", cert_arg]);
    assert_ne!(code, 0);
    assert!(err.contains("--tls-key"), "{err}");

    // A key file that holds no key.
    let (code, err) = fails_to_start(&["--tls-cert", cert_arg, "--tls-key", cert_arg]);
    assert_ne!(code, 0);
    assert!(err.contains("--tls-key"), "{err}");
}

/// Starts the server with `args`, which must make it exit within [`TIMEOUT`]: (code, stderr).
fn fails_to_start(args: &[&str]) -> (i32, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(["--listen", "127.0.0.1:0", "--threads", "1"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server started with {args:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code().unwrap_or(-1), err)
}
