//! The v1.1 mix (`churn`, `typing_rate`, `read_rate`, `present`) against a real `chat-server`:
//! standalone, and two nodes on a private Redis, where presence events cross nodes. Every
//! count the mix verifies is checked here to the exact number the scenario implies.

mod support;

use chat_testkit::RedisServer;
use loadgen::coordinator;
use loadgen::report::RunResult;
use loadgen::scenario::Scenario;

/// 4 rooms of 5 (4 senders, 100 msg/s) for 0.5 + 3 s, with 8 churning users (a 1 s period),
/// 16 typing/s, 20 reads/s and 30 present users.
fn mix(urls: Vec<String>) -> Scenario {
    Scenario {
        urls,
        churn: 8,
        churn_period: 1.0,
        typing_rate: 16.0,
        read_rate: 20.0,
        present: 30,
        ..support::scenario("unused:1", (4, 5, 4), 100.0, (0.5, 3.0))
    }
}

fn check(r: &RunResult) {
    print!("{}", r.summary());
    assert!(r.verdict.ok, "{:?}", r.verdict.problems);
    let s = r.social.as_ref().expect("the mix's result");
    let c = &s.counters;
    assert_eq!(
        (c.devices, c.present, c.setup_errors, c.errors),
        (8, 30, 0, 0)
    );
    // 3.5 s of 1 s periods: every churning user comes 3 or 4 times, and leaves as often.
    assert!((24..=32).contains(&c.churn_joins), "{c:?}");
    assert_eq!(c.churn_leaves, c.churn_joins);
    // Both devices of the room see every arrival and every departure, in turn.
    assert_eq!(c.online, 2 * c.churn_joins, "{c:?}");
    assert_eq!(c.offline, c.online, "{c:?}");
    assert_eq!((c.presence_out_of_turn, c.presence_unmatched), (0, 0));
    assert!(c.typing_sent > 0 && c.typing_received > 0, "{c:?}");
    assert_eq!((c.typing_to_self, c.typing_too_often), (0, 0));
    assert!(c.read_sent > 20, "{c:?}");
    // Each read is answered on its device; a move also reaches the other device.
    assert!(c.read_received >= c.read_sent, "{c:?}");
    assert_eq!((c.read_backwards, c.read_disagree), (0, 0));
    let timed = s.presence_same_node.count + s.presence_cross_node.count;
    assert_eq!(timed, c.online + c.offline, "every event timed");
    // The messages themselves are verified as ever.
    assert_eq!(r.counters.lost + r.counters.duplicated, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn social_mix_standalone() {
    let Some(server) = support::start_chat_server() else {
        return;
    };
    let sc = mix(vec![format!("ws://{}", server.addr)]);
    let r = coordinator::run(&support::run_options(sc, "social-standalone"))
        .await
        .unwrap();
    check(&r);
    assert_eq!(r.social.as_ref().unwrap().presence_cross_node.count, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn social_mix_on_two_nodes_crosses_nodes() {
    let redis = RedisServer::start();
    let url = redis.url();
    let Some(a) = support::start_chat_server_with(&["--redis", &url]) else {
        return;
    };
    let b = support::start_chat_server_with(&["--redis", &url]).expect("built");
    let sc = mix(vec![format!("ws://{}", a.addr), format!("ws://{}", b.addr)]);
    let r = coordinator::run(&support::run_options(sc, "social-cluster"))
        .await
        .unwrap();
    check(&r);
    let s = r.social.as_ref().unwrap();
    // Each room's devices sit on both nodes: half of all events cross nodes.
    assert_eq!(s.presence_cross_node.count, s.presence_same_node.count);
}
