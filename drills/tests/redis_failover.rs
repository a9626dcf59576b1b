//! Drill: a Redis Cluster failover that loses acked-looking writes.
//!
//! Redis Cluster of 3 masters + 3 replicas (`cluster-node-timeout` 1.5 s); both nodes run with
//! `--redis-replicas 1` (see server/src/bus/replication.rs). 6 s into the load, the master
//! holding the most rooms gets its replica SIGSTOPped (it stops reading replication); 16 MB of
//! filler written to that master fill the replication link's socket buffers, so that the chat
//! writes that follow cannot reach the replica; a second later the master is SIGKILLed and the
//! replica resumed: it is promoted without those writes. The killed master is then started
//! again (empty) and joins as the new master's replica.
//!
//! Checked as the case really happening: the promoted replica's `seq` of the master's rooms is
//! behind the value the master had when it died (the writes it missed), and both nodes saw the
//! slot map change. Proves: no (room, seq) acked for two messages, every room's acked seqs go
//! up, every acked (room, seq) is a PostgreSQL row with the acked cid, and every member (none
//! of them ever disconnected) received every acked message live, in order.

use chat_drills::{scenario, Cluster, Load, Options, Report};
use chat_testkit::process::send_signal;
use chat_testkit::{redis_cli, RedisCluster};
use loadgen::schedule::parse_cid;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const NODE_TIMEOUT_MS: u64 = 1_500;
const FILLER_MB: usize = 16;

/// The rooms (seq keys) a master holds, with their seq: `room -> seq`.
fn room_seqs(port: u16) -> BTreeMap<String, u64> {
    let keys = redis_cli(port, &["--scan", "--pattern", "chat:{*}:seq"]);
    keys.lines()
        .filter(|k| !k.contains("{dm:"))
        .filter_map(|k| {
            let room = k.strip_prefix("chat:{")?.strip_suffix("}:seq")?.to_string();
            let v = redis_cli(port, &["get", k]).parse().ok()?;
            Some((room, v))
        })
        .collect()
}

/// `SET key <mb MB>` over raw RESP (a 1 MB argument is too long for a command line).
fn write_filler(port: u16, tag: &str, mb: usize) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the master");
    let value = vec![b'x'; 1 << 20];
    for i in 0..mb {
        let key = format!("chat:{{{tag}}}:filler:{i}");
        let head = format!(
            "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n${}\r\n",
            key.len(),
            value.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&value).unwrap();
        s.write_all(b"\r\n").unwrap();
        let mut ok = [0u8; 5];
        s.read_exact(&mut ok).unwrap();
        assert_eq!(&ok, b"+OK\r\n");
    }
}

fn wait_master(cluster: &RedisCluster, node: usize, timeout: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if cluster.replication_field(node, "role").as_deref() == Some("master") {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_failover_that_loses_writes_reuses_no_seq_and_loses_no_ack() {
    let _guard = chat_drills::exclusive().await;
    let mut report = Report::new("redis-failover");
    let mut opts = Options::new("redis-failover");
    opts.redis_cluster = Some((1, NODE_TIMEOUT_MS));
    opts.node_args = ["--redis-replicas", "1", "--redis-wait-ms", "300"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let Some(mut cluster) = Cluster::start(opts).await else {
        return;
    };
    // 10 % direct messages: user channels must survive the failover too.
    let mut sc = scenario(cluster.drill, cluster.urls());
    sc.dm_share = 0.1;
    let mut load = Load::start(sc);

    load.at(6.0).await;
    let rc = cluster.redis_cluster.as_mut().expect("a Redis Cluster");
    // The master with the most rooms, and its replica.
    let masters: Vec<usize> = (0..rc.nodes().len())
        .filter(|&i| rc.replication_field(i, "role").as_deref() == Some("master"))
        .collect();
    let (master, rooms_before) = masters
        .iter()
        .map(|&m| (m, room_seqs(rc.nodes()[m].port())))
        .max_by_key(|(_, rooms)| rooms.len())
        .expect("masters");
    let replica = rc.replicas_of(master)[0];
    let tag = rooms_before.keys().next().cloned().unwrap_or_default();
    let (master_port, replica_pid) = (
        rc.nodes()[master].port(),
        rc.nodes()[replica].pid().unwrap(),
    );
    send_signal(replica_pid, "STOP");
    load.mark("replica stopped");
    tokio::task::spawn_blocking(move || write_filler(master_port, &tag, FILLER_MB))
        .await
        .unwrap();
    load.mark("filler written");
    load.at(8.0).await;
    let rc = cluster.redis_cluster.as_mut().unwrap();
    let at_kill = room_seqs(master_port);
    rc.node(master).kill();
    send_signal(replica_pid, "CONT");
    load.mark("master killed, replica resumed");
    let promoted_after = {
        let rc: &RedisCluster = rc;
        wait_master(rc, replica, Duration::from_secs(20))
    };
    load.mark("replica promoted");
    let at_promotion = room_seqs(rc.nodes()[replica].port());
    rc.node(master).start_again();
    load.mark("old master back as a replica");

    let (run, _) = cluster.finish(load, &mut report).await;
    let c = &run.result.counters;

    // The case really happened: the promoted replica missed writes the master had made.
    let missed: u64 = at_kill
        .iter()
        .map(|(room, &s)| s.saturating_sub(at_promotion.get(room).copied().unwrap_or(0)))
        .sum();
    report.field("rooms_on_master", at_kill.len());
    report.field("writes_missed_by_promoted_replica", missed);
    report.field(
        "promotion_s",
        promoted_after.map_or("never".into(), |d| format!("{:.1}", d.as_secs_f64())),
    );
    report.check(
        promoted_after.is_some() && missed > 0,
        format!(
            "the promoted replica missed writes: seqs at the kill {at_kill:?}, after the promotion {at_promotion:?}"
        ),
    );
    // Seqs the dead master gave to writes nobody saw, given again by the new master.
    let reissued = run
        .result
        .acks
        .iter()
        .filter(|a| {
            let (Some(&killed), Some(&promoted)) =
                (at_kill.get(&a.room), at_promotion.get(&a.room))
            else {
                return false;
            };
            a.seq > promoted && a.seq <= killed
        })
        .count();
    report.field("seqs_reissued_never_shown_before", reissued);
    let changes = cluster.node_metrics("chat_redis_topology_changes_total");
    report.field("topology_changes_seen", changes.iter().sum::<f64>());
    report.check(
        changes.iter().all(|&c| c >= 1.0),
        format!("every node saw the slot map change (per node {changes:?})"),
    );

    // Each connection's acked seqs increase, in the order the acks came and in the order the
    // messages were sent (the cid says which connection, `role`, and in which order, `k`).
    // A message answered `unavailable` and re-sent is left out of both orders: its retry is a
    // later request that either finds its first seq (the dedupe, guarantee 4: its ack then
    // comes after later seqs) or, if the failover lost that attempt, gets a new one (then
    // after messages sent later). A reused seq shows in both orders and in the conflicts above.
    let mut by_conn: BTreeMap<(&str, u32), Vec<(u64, u64)>> = BTreeMap::new();
    let mut refused = 0;
    for a in &run.result.acks {
        if a.refused {
            refused += 1;
            continue;
        }
        let (role, k, _) = parse_cid(a.cid.as_bytes()).expect("a loadgen cid");
        by_conn.entry((&a.room, role)).or_default().push((k, a.seq));
    }
    let mut backwards = Vec::new();
    for ((room, role), acks) in &mut by_conn {
        for w in acks.windows(2) {
            if w[1].1 <= w[0].1 {
                backwards.push(format!(
                    "{room} conn {role}: ack {} after {}",
                    w[1].1, w[0].1
                ));
            }
        }
        acks.sort();
        for w in acks.windows(2) {
            if w[1].1 <= w[0].1 {
                backwards.push(format!(
                    "{room} conn {role}: sent later, seq {} < {}",
                    w[1].1, w[0].1
                ));
            }
        }
    }
    report.field("acks_after_unavailable", refused);
    report.check(
        backwards.is_empty(),
        format!(
            "each connection's acked seqs increase in ack order and in send order ({} acks, {refused} re-sent after `unavailable` left out; {backwards:?})",
            run.result.acks.len()
        ),
    );
    report.check(
        c.reconnects == 0,
        format!(
            "no member was disconnected ({} reconnects): every delivery above was live",
            c.reconnects
        ),
    );
    let (killed_at, promoted_at) = (
        run.mark("master killed, replica resumed"),
        run.mark("replica promoted"),
    );
    let stopped_at = run.mark("replica stopped");
    let quiet: Vec<u64> = run
        .seconds_within(stopped_at, run.result.scenario.total_secs())
        .iter()
        .filter(|s| s.acked == 0)
        .map(|s| s.second)
        .collect();
    report.field("seconds_without_acks", format!("{} {quiet:?}", quiet.len()));
    report.field(
        "killed_to_promoted_s",
        format!("{:.1}", promoted_at - killed_at),
    );
    report.field(
        "ack_p99_ms",
        format!("{:.1}", run.result.latency.ack.p99_ms),
    );
    report.field(
        "ack_max_ms",
        format!("{:.1}", run.result.latency.ack.max_ms),
    );
    report.field("series", run.series_text());
    report.finish();
}
