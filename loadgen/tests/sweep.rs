//! `loadgen sweep` against a real `chat-server` (skipped with `SKIPPED:` when it is not built):
//! the rates it runs, where it stops, and which failing steps it runs again. A step that
//! missed only its p99 bound is retried (`Plan::retries`); a step that lost messages is not.

mod support;

use loadgen::coordinator::RunOptions;
use loadgen::scenario::{Pause, Scenario};
use loadgen::sweep::{self, Plan};

fn options(addr: &str, name: &str) -> RunOptions {
    let scenario = Scenario {
        urls: vec![format!("ws://{addr}")],
        rooms: 2,
        members: 3,
        senders: 2,
        warmup: 0.2,
        duration: 1.0,
        ..Scenario::default()
    };
    support::run_options(scenario, name)
}

fn plan(p99_ms: f64, retries: u32) -> Plan {
    Plan {
        rates: vec![100.0, 200.0],
        start: 0.0,
        factor: 2.0,
        step: None,
        max: 0.0,
        p99_ms,
        keep_going: false,
        retries,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passing_steps_run_once_and_p99_misses_are_retried_before_the_sweep_stops() {
    let Some(server) = support::start_chat_server() else {
        return;
    };

    // A bound every run meets: both rates pass at the first attempt.
    let opts = options(&server.addr, "sweep-pass");
    let r = sweep::sweep(&opts, &plan(10_000.0, 2)).await.unwrap();
    assert_eq!(r.best_rate, Some(200.0));
    assert_eq!(r.steps.len(), 2);
    for st in &r.steps {
        assert!(st.pass && st.problems.is_empty(), "{st:?}");
        assert_eq!(st.attempts_p99_ms.len(), 1, "{st:?}");
        assert_eq!(st.attempts_p99_ms[0], st.p99_ms);
    }

    // A bound no run meets (no delivery takes 0 ms): the first rate is run 1 + 2 times, every
    // attempt recorded in its own directory, and the sweep stops there.
    let opts = options(&server.addr, "sweep-miss");
    let r = sweep::sweep(&opts, &plan(0.0, 2)).await.unwrap();
    assert_eq!(r.best_rate, None);
    assert_eq!(r.steps.len(), 1, "the sweep went on after a failed step");
    let st = &r.steps[0];
    assert!(!st.pass && st.problems.is_empty(), "{st:?}");
    assert_eq!(st.attempts_p99_ms.len(), 3, "{st:?}");
    assert!(st.attempts_p99_ms.iter().all(|p| *p > 0.0));
    assert_eq!(
        st.p99_ms, st.attempts_p99_ms[2],
        "the step reports its last attempt"
    );
    let dir = opts.results_dir.join("sweep-miss");
    for d in ["rate-100", "rate-100-try-2", "rate-100-try-3"] {
        assert!(dir.join(d).join("result.json").is_file(), "{d} missing");
    }
    assert!(!dir.join("rate-200").exists());
    let md = std::fs::read_to_string(dir.join("sweep.md")).unwrap();
    assert!(md.contains("FAIL p99 (attempt 3; earlier p99 "), "{md}");
    let back: sweep::SweepResult =
        serde_json::from_slice(&std::fs::read(dir.join("sweep.json")).unwrap()).unwrap();
    assert_eq!(back.steps[0].attempts_p99_ms, st.attempts_p99_ms);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_lost_messages_is_not_retried() {
    // Pinged after 1 s of silence and closed after 2: the load thread that freezes for 3 s
    // (without --reconnect) loses what was sent to its connections meanwhile.
    let Some(server) =
        support::start_chat_server_with(&["--idle-ping", "1", "--close-timeout", "1"])
    else {
        return;
    };
    let mut opts = options(&server.addr, "sweep-loss");
    opts.scenario.rooms = 4;
    opts.scenario.members = 4;
    opts.scenario.senders = 4;
    opts.scenario.duration = 4.0;
    opts.scenario.threads = 2;
    opts.scenario.inject_pause = Some(Pause {
        at: 1.0,
        length: 3.0,
    });
    opts.scenario.drain_timeout = 3.0;
    let r = sweep::sweep(&opts, &plan(10_000.0, 3)).await.unwrap();
    assert_eq!(r.best_rate, None);
    assert_eq!(r.steps.len(), 1);
    let st = &r.steps[0];
    assert!(!st.pass, "{st:?}");
    assert!(
        !st.problems.is_empty(),
        "the frozen connections lost nothing: {st:?}"
    );
    assert_eq!(
        st.attempts_p99_ms.len(),
        1,
        "a lossy step was retried: {st:?}"
    );
}
