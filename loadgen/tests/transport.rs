//! `loadgen transport` against a real `chat-server` (skipped with `SKIPPED:` when it is not
//! built): 50 connections in rooms of 10, 4 KiB chat-like bodies, over `ws://` without and with
//! permessage-deflate and over `wss://` (an rcgen certificate) with it. Nothing may be lost,
//! deflate must be negotiated on every connection, and it must cut the wire bytes per delivery.

mod support;

use loadgen::transport::{self, TransportArgs, TransportResult};
use std::path::PathBuf;

fn args(url: String, ca: Option<PathBuf>, deflate: bool, server_pid: u32) -> TransportArgs {
    TransportArgs {
        url,
        ca,
        deflate,
        conns: 50,
        room_size: 10,
        body: 4096,
        rate: 100.0,
        warmup: 0.5,
        duration: 1.5,
        drain: 3.0,
        server_pid: Some(server_pid),
    }
}

async fn measure(a: TransportArgs) -> TransportResult {
    let r = transport::run(&a).await.expect("transport run");
    println!("{}", r.summary());
    assert!(r.verified(), "{r:?}");
    assert_eq!((r.lost, r.extra, r.delivered), (0, 0, r.expected));
    // 5 rooms at 20 msg/s for 2 s, each message to its 10 members.
    assert!((190..=210).contains(&r.sent), "{r:?}");
    assert_eq!(r.deflate_negotiated, if a.deflate { 50 } else { 0 });
    assert!(
        r.window_deliveries > 0 && r.server_cpu_seconds.is_some(),
        "{r:?}"
    );
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_and_tls_with_and_without_deflate() {
    let dir = support::temp_dir("transport");
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();

    let Some(plain) = support::start_chat_server() else {
        return;
    };
    let url = format!("ws://{}", plain.addr);
    let off = measure(args(url.clone(), None, false, plain.child.id())).await;
    let on = measure(args(url, None, true, plain.child.id())).await;
    assert!(!off.tls && !on.tls);
    // The same messages (about 4.2 KB of msg JSON each), fewer bytes when compressed.
    assert!(
        on.wire_bytes_per_delivery < 0.8 * off.wire_bytes_per_delivery,
        "{on:?} vs {off:?}"
    );
    assert!(off.wire_bytes_per_delivery > 4096.0 && on.app_bytes_per_delivery > 4096.0);
    drop(plain);

    let tls_flags = [
        "--tls-cert",
        cert_file.to_str().unwrap(),
        "--tls-key",
        key_file.to_str().unwrap(),
    ];
    let server = support::start_chat_server_with(&tls_flags).expect("built above");
    let port = server.addr.rsplit_once(':').unwrap().1;
    let url = format!("wss://localhost:{port}");
    let tls_on = measure(args(url, Some(cert_file), true, server.child.id())).await;
    assert!(tls_on.tls);
    assert!(
        tls_on.wire_bytes_per_delivery < 0.8 * off.wire_bytes_per_delivery,
        "{tls_on:?} vs {off:?}"
    );
    // TLS records add their overhead to the same compressed frames.
    assert!(tls_on.wire_bytes_per_delivery > on.wire_bytes_per_delivery);
    let _ = std::fs::remove_dir_all(dir);
}
