//! Verified load through the loadgen library while the drill injects its faults: the run goes
//! on a task of its own, the drill sleeps until a fault is due ([`Load::at`]), injects it and
//! notes the moment ([`Load::mark`]); afterwards the marks are placed on the run's per-second
//! series (seconds since the run's common start).

use loadgen::coordinator::{self, RunOptions};
use loadgen::report::RunResult;
use loadgen::scenario::Scenario;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Time between the start command and the common start instant of the senders.
const START_DELAY: Duration = Duration::from_millis(200);

/// The drills' load: 20 rooms × 5 members, 10 senders at 300 msg/s in total, 1 s warm-up and
/// 25 s measured, clients that reconnect, resume and retry like production clients, every ack
/// kept for the PostgreSQL checks.
pub fn scenario(drill: &str, urls: Vec<String>) -> Scenario {
    Scenario {
        name: drill.to_string(),
        urls,
        rooms: 20,
        members: 5,
        senders: 10,
        rate: 300.0,
        body: 100,
        warmup: 1.0,
        duration: 25.0,
        drain_timeout: 30.0,
        reconnect: true,
        record_acks: true,
        ..Scenario::default()
    }
}

/// Where loadgen writes each drill's result files (`<target>/drill-results/<drill>/`) and the
/// processes their logs (`.../<drill>/logs/`), kept for a look after a failure.
pub fn results_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    exe.ancestors()
        .nth(3)
        .map(|target| target.join("drill-results"))
        .unwrap_or_else(std::env::temp_dir)
}

/// A run in progress.
pub struct Load {
    handle: tokio::task::JoinHandle<Result<RunResult, String>>,
    started: Instant,
    marks: Vec<(String, Instant)>,
}

/// A finished run with the drill's marks on its time line.
pub struct Finished {
    pub result: RunResult,
    /// (what, seconds since the common start of the senders).
    pub marks: Vec<(String, f64)>,
}

impl Load {
    pub fn start(scenario: Scenario) -> Load {
        let opts = RunOptions {
            scenario,
            agents: Vec::new(),
            results_dir: results_dir(),
            command_line: "chat-drills".into(),
            progress: false,
            plots: false,
            start_delay: START_DELAY,
        };
        let started = Instant::now();
        let handle = tokio::spawn(async move { coordinator::run(&opts).await });
        Load {
            handle,
            started,
            marks: Vec::new(),
        }
    }

    /// Sleeps until `secs` after [`Load::start`] (connection setup, well under a second here,
    /// included: the senders start a little later).
    pub async fn at(&self, secs: f64) {
        let due = self.started + Duration::from_secs_f64(secs);
        tokio::time::sleep_until(due.into()).await;
    }

    /// Notes that `what` happened now.
    pub fn mark(&mut self, what: &str) {
        eprintln!(
            "drill: {:6.2} s  {what}",
            self.started.elapsed().as_secs_f64()
        );
        self.marks.push((what.to_string(), Instant::now()));
    }

    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits for the run; panics when it could not run at all.
    pub async fn finish(self) -> Finished {
        let result = self
            .handle
            .await
            .expect("the load task")
            .unwrap_or_else(|e| panic!("the load run failed: {e}"));
        // The senders' common start: after the setup of the (single, in-process) share.
        let setup = result
            .agents
            .iter()
            .map(|a| a.setup_seconds)
            .fold(0.0, f64::max);
        let start = self.started + Duration::from_secs_f64(setup) + START_DELAY;
        let marks = self
            .marks
            .into_iter()
            .map(|(what, at)| {
                let t = if at >= start {
                    (at - start).as_secs_f64()
                } else {
                    -(start - at).as_secs_f64()
                };
                (what, t)
            })
            .collect();
        Finished { result, marks }
    }
}

impl Finished {
    /// Seconds since the start at which `what` was marked.
    pub fn mark(&self, what: &str) -> f64 {
        self.marks
            .iter()
            .find(|(w, _)| w == what)
            .unwrap_or_else(|| panic!("no mark {what:?}"))
            .1
    }

    /// The series points whose whole second lies within `from..to` (seconds since the start).
    pub fn seconds_within(&self, from: f64, to: f64) -> Vec<&loadgen::report::SecondPoint> {
        self.result
            .series
            .iter()
            .filter(|p| p.second as f64 >= from && (p.second + 1) as f64 <= to)
            .collect()
    }

    /// The per-second series as `second:sent/acked/errors` for the report.
    pub fn series_text(&self) -> String {
        self.result
            .series
            .iter()
            .map(|p| format!("{}:{}/{}/{}", p.second, p.sent, p.acked, p.errors))
            .collect::<Vec<_>>()
            .join(" ")
    }
}
