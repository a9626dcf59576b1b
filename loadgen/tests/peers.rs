//! Each protocol module against the real peer it was written for (peers/peer.sh): Socket.IO
//! with its Redis adapter, Sockudo (Pusher), Node `ws` + ioredis and the naive Rust server,
//! each on 2 nodes on the local Redis, 2 s at 100 msg/s, every delivery verified. The peers are
//! installed by `peers/peer.sh install`, never by the test command: a peer that is not
//! installed prints `SKIPPED:` (and fails under `CHAT_REQUIRE_PEERS=1`).

mod support;

use loadgen::coordinator;
use loadgen::proto::Protocol;
use loadgen::scenario::Scenario;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn peer(args: &[&str]) -> Option<String> {
    let out = Command::new(repo().join("peers/peer.sh"))
        .args(args)
        .current_dir(repo())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Whether `name` is installed (without installing it: that is peer.sh's job, not the test's).
fn installed(name: &str) -> bool {
    let tools = std::env::var("CHAT_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/chat-tools")
        });
    let naive = std::env::var("PEERS_NAIVE_TARGET")
        .map(PathBuf::from)
        .unwrap_or_else(|_| tools.join("peers/naive-target"));
    match name {
        "socketio" | "nodews" => tools.join("peers/node_modules/socket.io").is_dir(),
        "sockudo" => tools.join("bin/sockudo").is_file(),
        "naive" => naive.join("release/naive-chat").is_file(),
        _ => false,
    }
}

async fn verified_run(name: &str, protocol: Protocol) {
    if !installed(name) {
        let msg = format!("SKIPPED: peer {name} is not installed (peers/peer.sh install {name})");
        assert!(std::env::var("CHAT_REQUIRE_PEERS").is_err(), "{msg}");
        println!("{msg}");
        return;
    }
    assert!(
        peer(&["start", name]).is_some(),
        "peers/peer.sh start {name}"
    );
    let urls = peer(&["urls", name]).unwrap();
    let scenario = Scenario {
        name: name.into(),
        urls: urls.split(',').map(String::from).collect(),
        protocol,
        rooms: 10,
        members: 5,
        senders: 10,
        rate: 100.0,
        warmup: 0.5,
        duration: 1.5,
        ..Scenario::default()
    };
    let result = coordinator::run(&support::run_options(scenario, name)).await;
    peer(&["stop", name]);
    let r = result.unwrap();
    print!("{}", r.summary());
    let c = &r.counters;
    assert!(r.verdict.ok, "{name}: {:?}", r.verdict.problems);
    assert_eq!((c.sent, c.acked), (200, 200), "{name}");
    assert_eq!(
        c.delivered,
        200 * 5,
        "{name}: every member, the sender included"
    );
    assert_eq!((c.lost, c.duplicated, c.reordered), (0, 0, 0), "{name}");
}

// One test at a time: the peers share Redis and the machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_peer_passes_verification() {
    verified_run("socketio", Protocol::Socketio).await;
    verified_run("sockudo", Protocol::Pusher).await;
    verified_run("nodews", Protocol::Chat).await;
    verified_run("naive", Protocol::Chat).await;
}
