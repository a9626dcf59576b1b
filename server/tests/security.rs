//! Who may connect: JWT identity (401 before the upgrade), the Origin allow-list (403) and the
//! per-node connection limit (503), through a real client. DM privacy, the rate limit and the
//! drain are covered in protocol.rs.

mod support;

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;
use std::time::{SystemTime, UNIX_EPOCH};
use support::client::{send_req, Client};
use support::Server;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;

const SECRET: &str = "test-secret-please-rotate";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(secret: &str, claims: serde_json::Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// The HTTP status of a refused upgrade, or 101.
async fn upgrade_status(url: &str, origin: Option<&str>) -> u16 {
    let mut req = url.into_client_request().unwrap();
    if let Some(o) = origin {
        req.headers_mut().insert("Origin", o.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => 101,
        Err(WsError::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("{url}: {e}"),
    }
}

#[tokio::test]
async fn jwt_names_the_user_and_bad_tokens_get_401() {
    let server = Server::start(&["--jwt-secret", SECRET]);
    let base = format!("ws://{}/ws", server.addr);
    let good = token(SECRET, json!({"sub":"alice","exp":now() + 60}));

    // The token's subject is the user; ?user= is ignored.
    let mut alice = Client::connect(&format!("{base}?token={good}&user=mallory"), "alice").await;
    alice.join("r").await;
    alice.send(send_req("r", "c1", "hi")).await;
    let (m, _) = alice.until("msg").await;
    assert_eq!(m["from"], "alice");

    let refused = [
        ("missing token", format!("{base}?user=alice")),
        (
            "wrong secret",
            format!(
                "{base}?token={}",
                token("other", json!({"sub":"alice","exp":now() + 60}))
            ),
        ),
        (
            "expired",
            format!(
                "{base}?token={}",
                token(SECRET, json!({"sub":"alice","exp":now() - 3600}))
            ),
        ),
        (
            "no exp",
            format!("{base}?token={}", token(SECRET, json!({"sub":"alice"}))),
        ),
        (
            "no sub",
            format!("{base}?token={}", token(SECRET, json!({"exp":now() + 60}))),
        ),
        (
            "invalid user id",
            format!(
                "{base}?token={}",
                token(SECRET, json!({"sub":"a b","exp":now() + 60}))
            ),
        ),
        ("garbage", format!("{base}?token=not.a.jwt")),
        (
            "not valid yet (nbf in an hour)",
            format!(
                "{base}?token={}",
                token(
                    SECRET,
                    json!({"sub":"alice","exp":now() + 7200,"nbf":now() + 3600})
                )
            ),
        ),
    ];
    for (why, url) in refused {
        assert_eq!(upgrade_status(&url, None).await, 401, "{why}");
    }
}

#[tokio::test]
async fn the_origin_allow_list_refuses_other_browsers() {
    let server = Server::start(&[
        "--allowed-origins",
        "https://chat.example.com,http://localhost:3000",
    ]);
    let url = server.ws_url("o");
    assert_eq!(
        upgrade_status(&url, Some("https://chat.example.com")).await,
        101
    );
    assert_eq!(
        upgrade_status(&url, Some("http://localhost:3000")).await,
        101
    );
    assert_eq!(
        upgrade_status(&url, Some("https://evil.example")).await,
        403
    );
    assert_eq!(
        upgrade_status(&url, None).await,
        101,
        "non-browser clients send no Origin"
    );

    // --require-origin: only the listed browsers, nobody without an Origin.
    let strict = Server::start(&[
        "--allowed-origins",
        "https://chat.example.com",
        "--require-origin",
    ]);
    let url = strict.ws_url("o");
    assert_eq!(upgrade_status(&url, None).await, 403);
    assert_eq!(
        upgrade_status(&url, Some("https://chat.example.com")).await,
        101
    );
}

#[test]
fn an_empty_jwt_secret_or_a_lone_require_origin_is_refused_at_start() {
    for (args, why) in [
        (vec!["--jwt-secret", ""], "--jwt-secret must not be empty"),
        (
            vec!["--jwt-secret", "   "],
            "--jwt-secret must not be empty",
        ),
        (
            vec!["--require-origin"],
            "--require-origin needs --allowed-origins",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
            .args(["--listen", "127.0.0.1:0"])
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{args:?}: {err}");
    }
}

#[test]
fn a_second_standalone_server_on_a_served_port_is_refused() {
    // SO_REUSEPORT would let it bind and take half of the clients, into rooms of its own.
    let port = chat_testkit::free_port();
    let listen = format!("127.0.0.1:{port}");
    let start = || support::Server::start_with_args(&["--listen", &listen, "--threads", "2"]);
    let first = start();
    assert_eq!(first.addr.port(), port);
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_chat-server"))
        .args(["--listen", &listen])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = second.kill();
            panic!("a second server started on {listen} and shares it with the first");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("Another process serves it"), "{err}");
    // The first one still serves; its answer leaves the server's side in TIME_WAIT.
    let resp = support::raw_ws::http(first.addr, &support::raw_ws::http_request("/healthz", &[]));
    assert_eq!(resp.status, 200);
    // A restart on the same port right after the first one ended is not refused.
    drop(first);
    let again = start();
    assert_eq!(again.addr.port(), port);
}

#[tokio::test]
async fn head_answers_the_headers_without_a_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start(&[]);
    for path in ["/", "/healthz", "/metrics", "/nope"] {
        let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        s.write_all(format!("HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        let text = String::from_utf8_lossy(&out);
        let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
        assert!(body.is_empty(), "HEAD {path} sent a body: {body:?}");
        assert!(
            head.to_ascii_lowercase().contains("content-length:"),
            "{head}"
        );
    }
}

#[tokio::test]
async fn the_connection_limit_answers_503() {
    let server = Server::start(&["--max-connections", "2"]);
    let _a = Client::connect(&server.ws_url("a"), "a").await;
    let _b = Client::connect(&server.ws_url("b"), "b").await;
    assert_eq!(upgrade_status(&server.ws_url("c"), None).await, 503);
    drop(_a);
    // Once a connection is gone there is room again.
    let mut status = 0;
    for _ in 0..50 {
        status = upgrade_status(&server.ws_url("c"), None).await;
        if status == 101 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status, 101);
}

#[tokio::test]
async fn unfinished_request_heads_are_cut_and_count_against_the_limit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start(&["--head-timeout-ms", "1000", "--max-connections", "20"]);
    // 20 sockets that start a head and never finish it (slowloris).
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"GET /ws HTTP/1.1\r\n").await.unwrap();
        slow.push(s);
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        upgrade_status(&server.ws_url("real"), None).await,
        503,
        "unfinished heads count against --max-connections"
    );
    let started = std::time::Instant::now();
    for s in &mut slow {
        let mut out = Vec::new();
        tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("the server closed the unfinished head")
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out).starts_with("HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&out)
        );
    }
    println!(
        "unfinished heads closed {:?} after the check",
        started.elapsed()
    );
    assert_eq!(upgrade_status(&server.ws_url("real"), None).await, 101);
}

/// `join`/`history`/`resume` are rate-limited per connection like `send` (each reads a room's
/// state; in cluster mode Redis and PostgreSQL), and a connection may be in at most
/// `--max-rooms-per-conn` rooms.
#[tokio::test]
async fn room_requests_are_rate_limited_and_rooms_per_connection_bounded() {
    let server = Server::start(&[
        "--room-rate-limit",
        "1",
        "--room-rate-burst",
        "5",
        "--max-rooms-per-conn",
        "3",
    ]);
    let mut c = Client::connect(&server.ws_url("a"), "a").await;
    for i in 0..3 {
        c.join(&format!("r{i}")).await;
    }
    // A fourth room is refused; the three joined are still served (re-joining one is fine).
    c.send(json!({"type":"join","room":"r3"})).await;
    let e = c.expect("error").await;
    assert_eq!(e["code"], "forbidden", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("at most 3 rooms"),
        "{e}"
    );
    c.send(json!({"type":"resume","room":"r4","after":0})).await;
    assert_eq!(c.expect("error").await["code"], "forbidden");

    // Five requests were the burst (3 joins + 2 refused); the next ones are over the rate.
    c.send_all((0..5).map(|_| json!({"type":"history","room":"r0"})))
        .await;
    let mut limited = 0;
    for _ in 0..5 {
        let m = c.recv().await;
        if m["type"] == "error" && m["code"] == "rate_limited" {
            limited += 1;
        }
    }
    assert!(
        limited >= 4,
        "history beyond the burst is rate_limited ({limited} of 5)"
    );
    // Sends have their own budget.
    c.send(send_req("r0", "c1", "still sending")).await;
    c.until("ack").await;
    // Leaving makes room for another.
    c.send(json!({"type":"leave","room":"r1"})).await;
    c.until("left").await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    c.send(json!({"type":"join","room":"r5"})).await;
    assert_eq!(c.expect("joined").await["room"], "r5");
}

/// Out of file descriptors, a waiting client is answered `503` at once (not left in the
/// backlog), the node counts it, and it accepts again as soon as descriptors free up.
#[tokio::test]
async fn out_of_file_descriptors_is_answered_503_and_recovers() {
    let server = Server::start(&[]);
    let pid = server.child.id();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let limit = format!("--nofile={}:{}", open + 4, open + 4);
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &limit])
        .status()
        .expect("prlimit (util-linux)");
    assert!(status.success());

    let url = server.ws_url("a");
    let mut held = Vec::new();
    let refused = loop {
        assert!(held.len() < 20, "never ran out of descriptors");
        let attempt = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await
        .expect("a client at the descriptor limit is answered, not left waiting");
        match attempt {
            Ok((ws, _)) => held.push(ws),
            Err(WsError::Http(resp)) => break resp,
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(refused.status().as_u16(), 503);
    assert_eq!(
        refused
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap()),
        Some("1")
    );
    assert!(!held.is_empty(), "some connections fit under the limit");

    // Descriptors free up: the node accepts again.
    held.clear();
    let mut back = false;
    for _ in 0..50 {
        if upgrade_status(&url, None).await == 101 {
            back = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(back, "accepts again once connections closed");
}

/// `--max-connections-per-ip`: one address holds at most that many sockets (handshaking ones
/// included); the next gets `429`, and a closed one frees its place.
#[tokio::test]
async fn connections_per_address_are_bounded() {
    let server = Server::start(&["--max-connections-per-ip", "3"]);
    let url = server.ws_url("a");
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(
            tokio_tungstenite::connect_async(url.as_str())
                .await
                .unwrap()
                .0,
        );
    }
    // A socket that never finishes its head holds a place too.
    let _slow = std::net::TcpStream::connect(server.addr).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(upgrade_status(&url, None).await, 429);
    held.pop();
    let mut back = 0;
    for _ in 0..50 {
        back = upgrade_status(&url, None).await;
        if back == 101 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(back, 101, "a closed connection gives its place back");
}
