//! The v1.1 mix beside the messages (PROTOCOL.md, "v1.1 additions"): presence churn, `typing`
//! and read pointers, driven and verified by a thread of its own, so the message engine and its
//! verification stay as they are (its members see the new events as unknown types).
//!
//! Who takes part (names carry the share's prefix, like every other name of a run):
//! * per room `r`, a reader user `<prefix>o<r>` on two devices, one on node `r % nodes` and
//!   one on the next: both watch presence and typing; in turn they move the user's read
//!   pointer to the latest seq they saw (`read_rate` over all rooms), and send `typing` now
//!   and then (which the other device, the same user, must not get);
//! * churning users `<prefix>c<i>` in room `i % rooms`, on node `(r + 1 + i / rooms) % nodes`:
//!   connect, join, send `typing` while in (`typing_rate` over all of them), close after half
//!   of `churn_period`, connect again after the other half, until the end of the run;
//! * present users `<prefix>p<i>` in rooms `<prefix>pr<i / 10>` of their own: they join before
//!   the start and stay until the end (presence held while messages flow).
//!
//! What is verified (each a problem in the verdict when not zero), see [`SocialCounters`]:
//! * presence: every device sees, per churning user, `online` and `offline` in turn, starting
//!   with `online`, and once the churning users are gone every `online` has its `offline`;
//! * typing: never from the device's own user, never two from one user in one room less than a
//!   second apart (with [`TYPING_SLACK_MS`] for the path);
//! * read: no device's pointer ever goes backwards, and at the end both devices of a user hold
//!   the highest seq either asked for.
//!
//! Presence latency is measured from the churning user's `join` (or close) to each device's
//! `online` (`offline`), and reported apart for devices on another node than the churner.
//!
//! The files: this one holds the counters, the report and the thread; `device.rs` a reader's
//! device; `churn.rs` the churning and the present users; `list.rs` the `presence-list`
//! command (time to list a large room).

mod churn;
mod device;
pub mod list;

use crate::client::{self, ConnConfig, Target, Ws};
use crate::scenario::{Layout, Scenario};
use crate::stats::{self, new_hist, Percentiles};
use chat_wire::protocol::scan::{self, Val};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

/// Allowance under one second between two `typing` events of one user in one room, for the
/// jitter of the path between the room's owner and the receiving device.
pub const TYPING_SLACK_MS: u64 = 100;

macro_rules! social_counters {
    ($($(#[$m:meta])* $f:ident),* $(,)?) => {
        /// What the v1.1 mix did and what its verification found; sums over agents.
        #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(default)]
        pub struct SocialCounters {
            $($(#[$m])* pub $f: u64,)*
        }
        impl SocialCounters {
            pub fn add(&mut self, o: &SocialCounters) {
                $(self.$f += o.$f;)*
            }
        }
    };
}

social_counters! {
    /// Reader devices connected and joined.
    devices,
    /// Present users connected and joined.
    present,
    /// Churning users' connects that joined their room.
    churn_joins,
    /// Churning users' closes.
    churn_leaves,
    /// Connections or joins of the mix that failed.
    setup_errors,
    /// `online` events about churning users, over all devices.
    online,
    /// `offline` events about churning users, over all devices.
    offline,
    /// `online` for a user the device already had online, or `offline` for one it did not.
    presence_out_of_turn,
    /// Churning users a device still had online once they were all gone and the drain ended.
    presence_unmatched,
    /// `typing` requests sent.
    typing_sent,
    /// `typing` events received.
    typing_received,
    /// `typing` events from the receiving device's own user.
    typing_to_self,
    /// `typing` events from one user in one room less than a second apart.
    typing_too_often,
    /// `read` requests sent.
    read_sent,
    /// `read` frames received (answers and other devices' moves).
    read_received,
    /// `read` frames lower than one the device had before.
    read_backwards,
    /// Users whose devices did not both end at the highest seq asked.
    read_disagree,
    /// `error` frames the mix received.
    errors,
}

impl SocialCounters {
    /// What the verification flags as wrong.
    pub fn problems(&self) -> Vec<String> {
        [
            (self.setup_errors, "social connections or joins failed"),
            (self.presence_out_of_turn, "presence events out of turn"),
            (
                self.presence_unmatched,
                "online events never matched by offline",
            ),
            (self.typing_to_self, "typing events to the typing user"),
            (self.typing_too_often, "typing events under a second apart"),
            (self.read_backwards, "read pointers that went backwards"),
            (
                self.read_disagree,
                "users whose devices disagree on the read pointer",
            ),
            (self.errors, "error replies to the social mix"),
        ]
        .into_iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect()
    }
}

/// A share's v1.1 mix, measured: for the coordinator to merge.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SocialReport {
    pub counters: SocialCounters,
    /// Presence latency, devices on the churner's node (V2 + DEFLATE, base64).
    pub presence_same_node: String,
    /// Presence latency, devices on another node.
    pub presence_cross_node: String,
}

/// The mix in `result.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SocialResult {
    pub counters: SocialCounters,
    /// `join` / close to `online` / `offline`, device on the churning user's node.
    pub presence_same_node: Percentiles,
    /// The same, device on another node.
    pub presence_cross_node: Percentiles,
}

impl SocialResult {
    /// A line for the terminal.
    pub fn summary(&self) -> String {
        let c = &self.counters;
        let (a, b) = (&self.presence_same_node, &self.presence_cross_node);
        format!(
            "social: {} joins/{} leaves, online {} offline {}, presence ms p50/p99 same node \
             {:.3}/{:.3} other node {:.3}/{:.3}; typing {} sent {} received; read {} sent {} \
             received\n",
            c.churn_joins,
            c.churn_leaves,
            c.online,
            c.offline,
            a.p50_ms,
            a.p99_ms,
            b.p50_ms,
            b.p99_ms,
            c.typing_sent,
            c.typing_received,
            c.read_sent,
            c.read_received
        )
    }

    /// The report.md section.
    pub fn markdown(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::from("\n## v1.1 mix (presence, typing, read pointers)\n\n");
        let _ = writeln!(
            s,
            "| presence event latency (ms) | count | p50 | p99 | p99.9 | max |\n| --- | ---: | ---: | ---: | ---: | ---: |"
        );
        for (name, p) in [
            ("device on the churner's node", &self.presence_same_node),
            ("device on another node", &self.presence_cross_node),
        ] {
            let _ = writeln!(
                s,
                "| {name} | {} | {:.3} | {:.3} | {:.3} | {:.3} |",
                p.count, p.p50_ms, p.p99_ms, p.p99_9_ms, p.max_ms
            );
        }
        let _ = writeln!(s, "\n| counter | value |\n| --- | ---: |");
        if let Some(obj) = serde_json::to_value(&self.counters)
            .ok()
            .as_ref()
            .and_then(|v| v.as_object())
        {
            for (k, v) in obj {
                let _ = writeln!(s, "| {k} | {v} |");
            }
        }
        s
    }
}

/// Merges the shares' reports.
pub fn merge(reports: &[SocialReport]) -> Result<SocialResult, String> {
    let mut counters = SocialCounters::default();
    let (mut same, mut cross) = (new_hist(), new_hist());
    for r in reports {
        counters.add(&r.counters);
        stats::add(&mut same, &stats::decode(&r.presence_same_node)?);
        stats::add(&mut cross, &stats::decode(&r.presence_cross_node)?);
    }
    Ok(SocialResult {
        counters,
        presence_same_node: Percentiles::of(&same),
        presence_cross_node: Percentiles::of(&cross),
    })
}

/// The fields of a v1.1 frame the mix reads.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Event<'a> {
    pub kind: &'a [u8],
    pub room: &'a [u8],
    /// `user` of `online`/`offline`, `from` of `typing`.
    pub user: &'a [u8],
    pub seq: u64,
}

pub(crate) fn parse(b: &[u8]) -> Option<Event<'_>> {
    let mut e = Event::default();
    scan::walk(b, |k, v| match (k, v) {
        (b"type", Val::Str(v)) => e.kind = v,
        (b"room", Val::Str(v)) => e.room = v,
        (b"user" | b"from", Val::Str(v)) => e.user = v,
        (b"seq", Val::Raw(v)) => e.seq = crate::schedule::parse_u64(v).unwrap_or(0),
        _ => {}
    })?;
    Some(e)
}

/// A reader user's pointer as each of its two devices last heard it, and the highest seq
/// either device asked for.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Pointers {
    pub asked: u64,
    pub heard: [u64; 2],
}

impl Pointers {
    /// Both devices hold the highest seq either asked for.
    pub fn agreed(&self) -> bool {
        self.heard == [self.asked; 2]
    }
}

/// What the mix's tasks share on its one thread.
pub(crate) struct Mix {
    pub layout: Arc<Layout>,
    pub scenario: Arc<Scenario>,
    pub targets: Arc<Vec<Target>>,
    pub cfg: ConnConfig,
    pub counters: RefCell<SocialCounters>,
    pub same_node: RefCell<Histogram<u64>>,
    pub cross_node: RefCell<Histogram<u64>>,
    /// Churning user -> when it last sent `join` or closed, and whether that was a join.
    pub last_move: RefCell<HashMap<u32, (Instant, bool)>>,
    /// (device, churning user) pairs that are online in the device's view.
    pub online_now: Cell<u64>,
    /// Per room: its reader user's read pointers.
    pub pointers: RefCell<Vec<Pointers>>,
    pub first_error: RefCell<Option<String>>,
}

impl Mix {
    pub fn error(&self, e: String) {
        self.counters.borrow_mut().setup_errors += 1;
        self.first_error.borrow_mut().get_or_insert(e);
    }

    /// An `error` frame `who` received: counted, and the first one kept.
    pub fn error_reply(&self, who: &str, frame: &str) {
        self.counters.borrow_mut().errors += 1;
        self.first_error
            .borrow_mut()
            .get_or_insert_with(|| format!("{who}: {frame}"));
    }

    /// `open` for every item, 200 at a time: what opened, in order; each failure is a setup
    /// error.
    pub async fn open_all<I: Copy, T, F: Future<Output = Result<T, String>>>(
        &self,
        items: &[I],
        open: impl Fn(I) -> F,
    ) -> Vec<T> {
        let mut out = Vec::with_capacity(items.len());
        for chunk in items.chunks(200) {
            let opened = futures_util::future::join_all(chunk.iter().map(|&i| open(i))).await;
            for r in opened {
                match r {
                    Ok(t) => out.push(t),
                    Err(e) => self.error(e),
                }
            }
        }
        out
    }

    /// Node of churning user `i`.
    pub fn churner_node(&self, i: u32) -> u32 {
        let nodes = self.targets.len() as u32;
        let r = i % self.layout.rooms;
        (r + 1 + i / self.layout.rooms) % nodes
    }

    /// Opens `user`'s connection on `node`.
    pub async fn open(&self, user: &str, node: u32) -> Result<Ws, String> {
        let target = &self.targets[node as usize];
        client::connect(target, None, &client::chat_path(user), self.cfg).await
    }

    /// Joins `room` on `ws`; the `joined` reply's seq.
    pub async fn join(ws: &mut Ws, room: &str) -> Result<u64, String> {
        ws.send(client::join(room))
            .await
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let m = tokio::time::timeout_at(deadline.into(), ws.next())
                .await
                .map_err(|_| format!("{room}: no joined within 30 s"))?;
            match m {
                Some(Ok(Message::Text(t))) => {
                    let Some(e) = parse(t.as_bytes()) else {
                        continue;
                    };
                    match e.kind {
                        b"joined" => return Ok(e.seq),
                        b"error" => return Err(format!("join {room}: {}", t.as_str())),
                        _ => {}
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("join {room}: {e}")),
                None => return Err(format!("join {room}: closed")),
            }
        }
    }

    /// Whether every device has seen every churning user leave and both devices of every
    /// reader hold the highest pointer asked.
    pub fn settled(&self) -> bool {
        self.online_now.get() == 0 && self.pointers.borrow().iter().all(Pointers::agreed)
    }
}

/// The mix of a share, connected and waiting for the start.
pub struct Social {
    start_tx: oneshot::Sender<Instant>,
    report_rx: oneshot::Receiver<(SocialReport, Option<String>)>,
}

/// Whether the scenario asks for the mix at all.
pub fn wanted(s: &Scenario) -> bool {
    s.churn > 0 || s.read_rate > 0.0 || s.present > 0
}

/// Connects the share's reader devices and present users on a thread of their own; returns
/// once they are in (setup errors are counted, not fatal).
pub async fn prepare(
    layout: Arc<Layout>,
    scenario: Arc<Scenario>,
    targets: Arc<Vec<Target>>,
    cfg: ConnConfig,
) -> Result<Social, String> {
    let (ready_tx, ready_rx) = oneshot::channel();
    let (start_tx, start_rx) = oneshot::channel();
    let (report_tx, report_rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("loadgen-social".into())
        .spawn(move || {
            let mix = Rc::new(Mix {
                layout,
                scenario,
                targets,
                cfg,
                counters: RefCell::default(),
                same_node: RefCell::new(new_hist()),
                cross_node: RefCell::new(new_hist()),
                last_move: RefCell::default(),
                online_now: Cell::new(0),
                pointers: RefCell::default(),
                first_error: RefCell::default(),
            });
            let report = crate::local::block_on_local("social", run(mix, ready_tx, start_rx));
            let _ = report_tx.send(report);
        })
        .map_err(|e| format!("spawning the social thread: {e}"))?;
    ready_rx
        .await
        .map_err(|_| "the social thread died while connecting".to_string())?;
    Ok(Social {
        start_tx,
        report_rx,
    })
}

impl Social {
    pub fn start(self, at: Instant) -> oneshot::Receiver<(SocialReport, Option<String>)> {
        let _ = self.start_tx.send(at);
        self.report_rx
    }
}

async fn run(
    mix: Rc<Mix>,
    ready_tx: oneshot::Sender<()>,
    start_rx: oneshot::Receiver<Instant>,
) -> (SocialReport, Option<String>) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let readers = if mix.scenario.churn > 0 || mix.scenario.read_rate > 0.0 {
        device::connect_all(&mix).await
    } else {
        Vec::new()
    };
    let present = churn::connect_present(&mix, stop_rx.clone()).await;
    let _ = ready_tx.send(());
    let Ok(start) = start_rx.await else {
        return (report(&mix), Some("the run never started".into()));
    };
    let end = start + Duration::from_secs_f64(mix.scenario.total_secs());
    let mut devices = Vec::new();
    for r in readers {
        devices.push(tokio::task::spawn_local(device::run(
            mix.clone(),
            r,
            start,
            end,
            stop_rx.clone(),
        )));
    }
    let churners: Vec<_> = (0..mix.scenario.churn as u32)
        .map(|i| tokio::task::spawn_local(churn::churner(mix.clone(), i, start, end)))
        .collect();
    for c in churners {
        let _ = c.await;
    }
    // Every churning user is gone: wait for the devices' last `offline`s (and read answers).
    let deadline = Instant::now().max(end) + Duration::from_secs_f64(mix.scenario.drain_timeout);
    while Instant::now() < deadline && !mix.settled() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop_tx.send(true);
    for d in devices {
        let _ = d.await;
    }
    let disagree = mix.pointers.borrow().iter().filter(|p| !p.agreed()).count();
    mix.counters.borrow_mut().read_disagree += disagree as u64;
    for p in present {
        let _ = p.await;
    }
    let e = mix.first_error.borrow().clone();
    (report(&mix), e)
}

fn report(mix: &Mix) -> SocialReport {
    SocialReport {
        counters: mix.counters.borrow().clone(),
        presence_same_node: stats::encode(&mix.same_node.borrow()),
        presence_cross_node: stats::encode(&mix.cross_node.borrow()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v1_1_frames() {
        let e = parse(br#"{"type":"online","room":"r","user":"lg-a0-c3"}"#).unwrap();
        assert_eq!(
            (e.kind, e.room, e.user),
            (&b"online"[..], &b"r"[..], &b"lg-a0-c3"[..])
        );
        let e = parse(br#"{"type":"typing","room":"r","from":"u"}"#).unwrap();
        assert_eq!((e.kind, e.user), (&b"typing"[..], &b"u"[..]));
        let e = parse(br#"{"type":"read","room":"r","seq":17}"#).unwrap();
        assert_eq!((e.kind, e.seq), (&b"read"[..], 17));
        assert_eq!(parse(b"nope"), None);
    }

    #[test]
    fn problems_name_what_went_wrong() {
        let mut c = SocialCounters {
            online: 4,
            offline: 4,
            ..SocialCounters::default()
        };
        assert!(c.problems().is_empty());
        c.read_backwards = 1;
        c.presence_unmatched = 2;
        let p = c.problems().join(", ");
        assert!(p.contains("2 online events never matched"), "{p}");
        assert!(p.contains("1 read pointers that went backwards"), "{p}");
        let mut d = c.clone();
        d.add(&c);
        assert_eq!(d.presence_unmatched, 4);
    }
}
