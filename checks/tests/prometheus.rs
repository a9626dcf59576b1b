//! `deploy/prometheus/` and `deploy/grafana/` against the real thing: `promtool` checks the
//! configs (`prometheus.yml`, and `prometheus.tls.yml` of docker-compose.tls.yml) and the rules
//! and runs the rules' unit tests; `prometheus.tls.yml` scrapes a real TLS node whose
//! certificate `scripts/tls-cert.sh` made; a real Prometheus (the Debian
//! `prometheus` binary, private port and data directory, 1 s scrapes) scrapes a real 2-node
//! cluster (private Redis, Kafka, PostgreSQL database, the persister) under a short verified
//! load, and every query of every dashboard panel must return a finite sample.

use chat_checks::help::binaries;
use chat_checks::prometheus::{dashboard_queries, has_finite_sample, Prometheus};
use chat_checks::{root, run, tool};
use chat_drills::ws::Client;
use chat_drills::{scenario, Cluster, Load, Options, Report};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn promtool_accepts_the_config_and_the_rules_and_their_unit_tests_pass() {
    if !tool("promtool") {
        return;
    }
    let dir = chat_checks::prometheus::dir();
    for args in [
        vec!["check", "config", "prometheus.yml"],
        vec!["check", "config", "prometheus.tls.yml"],
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts.test.yml"],
    ] {
        let (ok, out) = run(Command::new("promtool").args(&args).current_dir(&dir));
        assert!(ok, "promtool {args:?}:\n{out}");
        assert!(out.contains("SUCCESS"), "promtool {args:?}:\n{out}");
    }
    // Every alert is unit-tested.
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("alerts.test.yml")).unwrap();
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!(
                "alertname: {alert}\n        exp_alerts:\n          - "
            )),
            "{alert} has no firing case in alerts.test.yml"
        );
    }
}

/// Messages of the probe room: more than the Redis cache keeps of it with `--history-len 10`
/// (the stream is trimmed approximately, in nodes of 100 entries).
const PROBE_MESSAGES: u32 = 300;

/// A room with more messages than the nodes' Redis cache holds, then a resume from its start:
/// the node reads the older ones from PostgreSQL (`chat_postgres_read_seconds`).
async fn read_past_the_cache(cluster: &Cluster) {
    let mut c = Client::connect(cluster.nodes[0].addr, "ops-probe")
        .await
        .expect("connect");
    c.send(json!({"type": "join", "room": "ops-probe"}))
        .await
        .unwrap();
    for i in 0..PROBE_MESSAGES {
        let m = json!({"type": "send", "room": "ops-probe", "cid": format!("p{i}"), "body": "x"});
        c.send(m).await.unwrap();
    }
    let mut acks = 0;
    while acks < PROBE_MESSAGES {
        let v = c.recv(Duration::from_secs(20)).await.expect("acks");
        acks += (v["type"] == "ack") as u32;
    }
    c.resume("ops-probe", 0).await.expect("resume");
    c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_panel_returns_data_from_a_real_prometheus() {
    if !tool("prometheus") {
        return;
    }
    let _one_at_a_time = chat_drills::exclusive().await;
    let mut opts = Options::new("ops-dashboard");
    opts.node_args = vec!["--history-len".into(), "10".into()];
    let Some(mut cluster) = Cluster::start(opts).await else {
        return;
    };
    let work = chat_testkit::TempDir::new("prometheus");
    let nodes = cluster.nodes.iter().map(|n| n.addr.to_string()).collect();
    let persister = vec![cluster.persister.metrics_addr().to_string()];
    let prom = Prometheus::start(
        work.path(),
        chat_testkit::free_port(),
        &[("chat-node", nodes), ("chat-persister", persister)],
    );

    let mut sc = scenario(cluster.drill, cluster.urls());
    sc.duration = 12.0;
    let load = Load::start(sc);
    let mut report = Report::new("ops-dashboard");
    let (run, persisted) = cluster.finish(load, &mut report).await;
    // After the load: Prometheus has scraped the read counter at 0 many times by now.
    read_past_the_cache(&cluster).await;
    assert!(
        run.result.acks.len() > 1000,
        "the load ran: {} acks",
        run.result.acks.len()
    );
    assert_eq!(persisted.missing, 0, "every acked message persisted");

    // Prometheus loaded the shipped rules and scrapes all three targets.
    let up = prom
        .query("sum(up{job=~\"chat-node|chat-persister\"})")
        .unwrap();
    assert_eq!(
        up[0]["value"][1],
        "3",
        "targets up: {up}\n{}",
        prom.log_tail()
    );
    let (_, rules) = prom.get("/api/v1/rules").unwrap();
    let alerts = rules.matches("\"type\":\"alerting\"").count();
    assert!(alerts >= 12, "alerts.yml loaded: {alerts} alerting rules");

    let text = std::fs::read_to_string(root().join("deploy/grafana/chat.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("chat.json");
    let queries = dashboard_queries(&dashboard, "1m");
    assert!(queries.len() >= 30, "{} queries", queries.len());
    // The rates need two scrapes inside their window after the last change: a few seconds.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut empty: Vec<String>;
    loop {
        empty = queries
            .iter()
            .filter(|(_, q)| !prom.query(q).is_ok_and(|r| has_finite_sample(&r)))
            .map(|(t, q)| format!("{t}: {q} -> {:?}", prom.query(q)))
            .collect();
        if empty.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(
        empty.is_empty(),
        "{} of {} panel queries return no data:\n{}",
        empty.len(),
        queries.len(),
        empty.join("\n")
    );
    eprintln!("DASHBOARD: {} panel queries returned data", queries.len());
}

/// A process killed when dropped.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn prometheus_tls_yml_scrapes_a_real_tls_node_with_the_scripts_certificate() {
    if !tool("prometheus") || !tool("openssl") {
        return;
    }
    let Some(bins) = binaries() else { return };
    let work = chat_testkit::TempDir::new("prometheus-tls");
    let tls = work.path().join("tls");
    let script = root().join("scripts/tls-cert.sh");
    let (ok, out) = run(Command::new(&script).env("TLS_DIR", &tls));
    assert!(ok && out.contains("wrote"), "scripts/tls-cert.sh:\n{out}");
    let (ok, out) = run(Command::new(&script).env("TLS_DIR", &tls));
    assert!(
        ok && out.contains("kept"),
        "a second run keeps the pair:\n{out}"
    );

    let mut node = Kill(
        Command::new(bins.join("chat-server"))
            .args(["--listen", "127.0.0.1:0", "--threads", "1", "--tls-cert"])
            .arg(tls.join("cert.pem"))
            .arg("--tls-key")
            .arg(tls.join("key.pem"))
            .stdout(Stdio::piped())
            .spawn()
            .expect("start chat-server"),
    );
    let mut lines = BufReader::new(node.0.stdout.take().unwrap()).lines();
    let first = lines.next().expect("a first line").unwrap();
    let addr = first
        .strip_prefix("listening on https://")
        .unwrap_or_else(|| panic!("chat-server with the script's certificate said {first:?}"))
        .to_string();

    let prom = Prometheus::start_config(
        "prometheus.tls.yml",
        work.path(),
        chat_testkit::free_port(),
        &[("chat-node", vec![addr])],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let up = prom.query("up{job=\"chat-node\"}").unwrap();
        if up[0]["value"][1] == "1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the TLS node is not up in Prometheus: {up}\n{}",
            prom.log_tail()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(lines);
}
