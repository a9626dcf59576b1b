//! What a drill prints: each check it made (`ok` / `FAILED`), then one line that is easy to
//! grep, `DRILL <name>: sent=.. acked=.. delivered=.. persisted=.. lost=0 duplicated=0 ...`.
//! All checks are made and printed before the drill fails on the first bad one. These lines go
//! to the process's stdout directly, so `cargo test` shows them for passing drills too.

use crate::load::Finished;
use crate::pg::{ack_conflicts, Persisted};
use std::fmt::Display;
use std::io::Write;
use std::time::Instant;

pub struct Report {
    drill: String,
    started: Instant,
    checks: Vec<(bool, String)>,
    fields: Vec<(String, String)>,
}

impl Report {
    pub fn new(drill: &str) -> Report {
        Report {
            drill: drill.to_string(),
            started: Instant::now(),
            checks: Vec::new(),
            fields: Vec::new(),
        }
    }

    /// Notes which broker the drill ran against (tansu, or the mock cluster without it).
    pub fn cluster(&mut self, cluster: &crate::Cluster) {
        self.field("broker", cluster.kafka.kind());
    }

    /// A `key=value` on the DRILL line.
    pub fn field(&mut self, key: &str, value: impl Display) {
        self.fields.push((key.to_string(), value.to_string()));
    }

    /// One check: printed at the end, fails the drill when false.
    pub fn check(&mut self, ok: bool, what: impl Into<String>) -> bool {
        self.checks.push((ok, what.into()));
        ok
    }

    /// The counts every drill prints, and the checks every drill makes: the loadgen verdict
    /// (nothing lost, duplicated or reordered, every send answered) and PostgreSQL (every
    /// acked message a row with its cid, no message on two rows, no seq acked twice).
    pub fn standard(&mut self, run: &Finished, p: &Persisted) {
        let r = &run.result;
        let c = &r.counters;
        for (k, v) in [
            ("sent", c.sent),
            ("acked", c.acked),
            ("delivered", c.delivered),
            ("expected", c.expected_deliveries),
            ("persisted", p.rows),
            ("lost", c.lost),
            ("duplicated", c.duplicated),
            ("reordered", c.reordered),
            ("unacked", c.unacked),
            ("missing_rows", p.missing),
            ("duplicate_rows", p.duplicate_rows),
            ("wrong_cid_rows", p.wrong_cid),
            ("reconnects", c.reconnects),
            ("resumes", c.resumes),
            ("resume_incomplete", c.resume_incomplete),
            ("retries", c.retries),
            ("unavailable", c.unavailable),
            ("send_errors", c.send_errors),
        ] {
            self.field(k, v);
        }
        self.field(
            "delivery_p99_ms",
            format!("{:.1}", r.latency.delivery.p99_ms),
        );
        self.check(
            r.verdict.ok,
            format!("loadgen verdict ok (problems: {:?})", r.verdict.problems),
        );
        self.check(
            c.sent > 0 && c.acked > 0,
            "traffic flowed (sent > 0, acked > 0)",
        );
        self.check(
            c.lost == 0 && c.duplicated == 0 && c.reordered == 0,
            format!(
                "every receiver got every seq once, in order (lost {}, duplicated {}, reordered {})",
                c.lost, c.duplicated, c.reordered
            ),
        );
        self.check(
            c.unacked == 0,
            format!("every send answered by the end (unacked {})", c.unacked),
        );
        self.check(
            r.acks.len() as u64 >= c.acked,
            format!("the acks were recorded ({} of {})", r.acks.len(), c.acked),
        );
        let (seq_reused, cid_moved) = ack_conflicts(&r.acks);
        self.check(
            seq_reused == 0 && cid_moved == 0,
            format!(
                "no (room, seq) acked for two messages ({seq_reused}), no message acked at two seqs ({cid_moved})"
            ),
        );
        self.check(
            p.missing == 0 && p.wrong_cid == 0,
            format!(
                "every acked (room, seq) is a row with the acked cid (missing {}, other cid {}) {:?}",
                p.missing, p.wrong_cid, p.examples
            ),
        );
        self.check(
            p.duplicate_rows == 0,
            format!(
                "no message on two rows: count(*) = count(DISTINCT cid) per room (duplicates {}) {:?}",
                p.duplicate_rows, p.examples
            ),
        );
    }

    /// The checks of a drill that fails `what` (the persister, PostgreSQL) but not the path of
    /// a send: every send was acked without an error, and exactly the acked messages are rows
    /// (none that nobody acked).
    pub fn sends_independent_of(&mut self, what: &str, run: &Finished, p: &Persisted) {
        let c = &run.result.counters;
        self.check(
            c.acked == c.sent && c.send_errors == 0,
            format!(
                "sends do not depend on {what}: all {} acked, {} errors",
                c.sent, c.send_errors
            ),
        );
        self.check(
            p.rows == c.acked && p.unacked_rows == 0,
            format!(
                "exactly the acked messages are rows: {} rows, {} acked, {} rows nobody acked",
                p.rows, c.acked, p.unacked_rows
            ),
        );
    }

    /// Prints the checks and the DRILL line; panics when a check failed.
    pub fn finish(mut self) {
        self.field(
            "secs",
            format!("{:.0}", self.started.elapsed().as_secs_f64()),
        );
        let mut text = format!("---- drill {}: checks\n", self.drill);
        for (ok, what) in &self.checks {
            text += &format!("  [{}] {what}\n", if *ok { "ok" } else { "FAILED" });
        }
        let failed: Vec<&String> = self
            .checks
            .iter()
            .filter(|(ok, _)| !ok)
            .map(|(_, w)| w)
            .collect();
        let fields: Vec<String> = self
            .fields
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        text += &format!(
            "DRILL {}: {} checks={} {}\n",
            self.drill,
            if failed.is_empty() {
                "PASSED"
            } else {
                "FAILED"
            },
            self.checks.len(),
            fields.join(" ")
        );
        // Straight to the process's stdout: `cargo test` captures print!/println! of passing
        // tests, and these lines are what a CI log should show of every drill.
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
        assert!(failed.is_empty(), "drill {} failed: {failed:?}", self.drill);
    }
}
