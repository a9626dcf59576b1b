//! Latency histograms and counters. Each shard thread records into its own histograms (no locks
//! on the hot path); shards, agents and the coordinator merge them by adding counts, which is
//! exact: a merged histogram equals one histogram of every value. Between processes a
//! histogram travels as HdrHistogram's V2 + DEFLATE encoding, base64 in JSON.

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// Values are microseconds; anything above an hour is recorded as an hour.
pub const HIGHEST_US: u64 = 3_600_000_000;

/// A histogram with the bounds every part of a run uses (1 µs .. 1 h, 3 significant digits).
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_US, 3).expect("static histogram bounds")
}

/// Records a duration in nanoseconds as microseconds (rounded, saturating at [`HIGHEST_US`]).
#[inline]
pub fn record_ns(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record((ns.saturating_add(500) / 1000).min(HIGHEST_US));
}

/// V2 + DEFLATE, base64.
pub fn encode(h: &Histogram<u64>) -> String {
    let mut out = Vec::new();
    V2DeflateSerializer::new()
        .serialize(h, &mut out)
        .expect("serializing a histogram into memory");
    base64::engine::general_purpose::STANDARD.encode(out)
}

/// The inverse of [`encode`]; the result has the bounds it was encoded with.
pub fn decode(s: &str) -> Result<Histogram<u64>, String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| format!("histogram base64: {e}"))?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| format!("histogram V2: {e:?}"))
}

/// Adds `src` into `dst` (same bounds everywhere, so this cannot fail in practice).
pub fn add(dst: &mut Histogram<u64>, src: &Histogram<u64>) {
    dst.add(src)
        .expect("histograms of one run share their bounds");
}

macro_rules! counters {
    ($($(#[$m:meta])* $f:ident),* $(,)?) => {
        /// Every count of a run. All are sums over agents, so merging is field-wise addition.
        #[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(default)]
        pub struct Counters {
            $($(#[$m])* pub $f: u64,)*
            /// `error` replies to sends, by code.
            pub send_errors_by_code: BTreeMap<String, u64>,
        }
        impl Counters {
            pub fn add(&mut self, o: &Counters) {
                $(self.$f += o.$f;)*
                for (k, v) in &o.send_errors_by_code {
                    *self.send_errors_by_code.entry(k.clone()).or_default() += v;
                }
            }
        }
    };
}

counters! {
    /// Connections that completed the WebSocket handshake.
    connected,
    /// Connections that could not be opened.
    connect_errors,
    /// `join` requests answered with an error or not at all.
    join_errors,
    /// Connections that ended before the run did.
    disconnects,
    /// Messages written (room sends and DMs).
    sent,
    /// Of those, direct messages.
    sent_dm,
    /// Messages whose intended send time lies in the measured window (after warm-up).
    sent_measured,
    /// Sends answered with `ack`.
    acked,
    /// Sends answered with `error`.
    send_errors,
    /// Sends with neither an `ack` nor an `error` by the end of the drain.
    unacked,
    /// `msg` frames received, over all receivers (duplicates included).
    delivered,
    /// Receptions the acked messages call for (room members, or the two users of a DM).
    expected_deliveries,
    /// Receptions that never happened (a receiver's gap, or its missing tail).
    lost,
    /// Of those, receptions of direct messages.
    lost_dm,
    /// Receptions of a seq the receiver already had.
    duplicated,
    /// Receptions that filled a gap, i.e. came after a later seq.
    reordered,
    /// `msg` frames for a room or DM the receiver is not part of in the layout.
    stray,
    /// Frames that could not be parsed as a server message.
    unparsed,
    /// Messages picked for the persistence sample.
    persist_sampled,
    /// Of those, rows seen in PostgreSQL.
    persist_found,
    /// Of those, rows not seen before the persistence timeout.
    persist_missing,
    /// Connections that ended and were opened again (`reconnect`).
    reconnects,
    /// `resumed` replies received after reconnecting.
    resumes,
    /// Of those, `complete: false`: the server could not recover every missed message.
    resume_incomplete,
    /// Sends written again: unanswered when their connection ended, or answered `unavailable`.
    retries,
    /// `unavailable` replies to sends (retried when `reconnect` is on, else send errors).
    unavailable,
    /// Acks for a send that was already acked (a re-sent message answered twice).
    duplicate_acks,
    /// Stalled connections (`stalled`) that the server closed.
    stalled_disconnected,
}

impl Counters {
    /// Receptions that the verification flags as wrong.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let mut say = |n: u64, what: &str| {
            if n > 0 {
                p.push(format!("{n} {what}"));
            }
        };
        if self.lost_dm > 0 {
            say(
                self.lost,
                &format!("lost receptions ({} of direct messages)", self.lost_dm),
            );
        } else {
            say(self.lost, "lost receptions");
        }
        say(self.duplicated, "duplicated receptions");
        say(self.reordered, "reordered receptions");
        say(self.unacked, "unacked sends");
        say(self.stray, "stray messages");
        say(self.connect_errors, "connect errors");
        say(self.join_errors, "join errors");
        say(self.disconnects, "unexpected disconnects");
        say(
            self.persist_missing,
            "sampled messages never seen in PostgreSQL",
        );
        p
    }
}

/// The latency histograms of a run (microseconds).
#[derive(Clone, Debug)]
pub struct Hists {
    /// Intended send time → each receiver's reception (measured window only).
    pub delivery: Histogram<u64>,
    /// Intended send time → the sender's `ack`.
    pub ack: Histogram<u64>,
    /// Intended send time → row visible in PostgreSQL (sampled).
    pub persist: Histogram<u64>,
    /// Intended send time → the moment the load generator wrote the message: its own lag.
    pub send_lag: Histogram<u64>,
}

impl Default for Hists {
    fn default() -> Self {
        Hists {
            delivery: new_hist(),
            ack: new_hist(),
            persist: new_hist(),
            send_lag: new_hist(),
        }
    }
}

impl Hists {
    pub fn add(&mut self, o: &Hists) {
        add(&mut self.delivery, &o.delivery);
        add(&mut self.ack, &o.ack);
        add(&mut self.persist, &o.persist);
        add(&mut self.send_lag, &o.send_lag);
    }
    pub fn to_wire(&self) -> HistsWire {
        HistsWire {
            delivery: encode(&self.delivery),
            ack: encode(&self.ack),
            persist: encode(&self.persist),
            send_lag: encode(&self.send_lag),
        }
    }
}

/// [`Hists`] as V2 + DEFLATE base64 strings, for JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HistsWire {
    pub delivery: String,
    pub ack: String,
    pub persist: String,
    pub send_lag: String,
}

impl HistsWire {
    pub fn decode(&self) -> Result<Hists, String> {
        Ok(Hists {
            delivery: decode(&self.delivery)?,
            ack: decode(&self.ack)?,
            persist: decode(&self.persist)?,
            send_lag: decode(&self.send_lag)?,
        })
    }
}

/// The usual percentiles of a histogram, in milliseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub min_ms: f64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p99_9_ms: f64,
    pub p99_99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            min_ms: ms(h.min()),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p99_9_ms: ms(h.value_at_quantile(0.999)),
            p99_99_ms: ms(h.value_at_quantile(0.9999)),
            max_ms: ms(h.max()),
        }
    }
}

/// One second of a run (seconds count from the common start, warm-up included): counts of
/// what happened in it and the delivery latencies of receptions in it.
#[derive(Clone, Debug)]
pub struct Tick {
    pub second: u64,
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
    pub errors: u64,
    pub latency: Histogram<u64>,
}

impl Tick {
    pub fn new(second: u64) -> Tick {
        Tick {
            second,
            sent: 0,
            acked: 0,
            delivered: 0,
            errors: 0,
            latency: new_hist(),
        }
    }
    pub fn add(&mut self, o: &Tick) {
        self.sent += o.sent;
        self.acked += o.acked;
        self.delivered += o.delivered;
        self.errors += o.errors;
        add(&mut self.latency, &o.latency);
    }
    pub fn to_wire(&self) -> TickWire {
        TickWire {
            second: self.second,
            sent: self.sent,
            acked: self.acked,
            delivered: self.delivered,
            errors: self.errors,
            latency: encode(&self.latency),
        }
    }
}

/// [`Tick`] for JSON.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TickWire {
    pub second: u64,
    pub sent: u64,
    pub acked: u64,
    pub delivered: u64,
    pub errors: u64,
    pub latency: String,
}

impl TickWire {
    pub fn decode(&self) -> Result<Tick, String> {
        Ok(Tick {
            second: self.second,
            sent: self.sent,
            acked: self.acked,
            delivered: self.delivered,
            errors: self.errors,
            latency: decode(&self.latency)?,
        })
    }
}

/// Merges the ticks of `sources` contributors (shards, or agents): a second is complete once
/// every contributor reported it; [`TickMerger::finish`] releases the rest.
pub struct TickMerger {
    sources: usize,
    pending: BTreeMap<u64, (usize, Tick)>,
    ready: VecDeque<Tick>,
}

impl TickMerger {
    pub fn new(sources: usize) -> TickMerger {
        TickMerger {
            sources,
            pending: BTreeMap::new(),
            ready: VecDeque::new(),
        }
    }

    /// Adds one contributor's tick; returns the seconds now complete, in order.
    pub fn push(&mut self, tick: Tick) -> Vec<Tick> {
        let entry = self
            .pending
            .entry(tick.second)
            .or_insert_with(|| (0, Tick::new(tick.second)));
        entry.0 += 1;
        entry.1.add(&tick);
        // Release complete seconds from the front only, so seconds come out in order.
        while let Some((&s, (n, _))) = self.pending.first_key_value() {
            if *n < self.sources {
                break;
            }
            let (_, (_, t)) = self.pending.remove_entry(&s).expect("first key");
            self.ready.push_back(t);
        }
        self.ready.drain(..).collect()
    }

    /// Everything still pending (a contributor that stopped early), in order.
    pub fn finish(&mut self) -> Vec<Tick> {
        std::mem::take(&mut self.pending)
            .into_values()
            .map(|(_, t)| t)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Merging per-agent histograms after a V2+DEFLATE round trip equals one histogram of all
    /// values: same counts in every bucket, so every percentile, min, max, mean and count agree.
    #[test]
    fn merge_after_v2_deflate_round_trip_is_exact() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut all = new_hist();
        let mut agents = vec![new_hist(), new_hist(), new_hist()];
        for i in 0..200_000u64 {
            // A wide spread: mostly sub-millisecond, a tail up to minutes, some saturated.
            let v = match i % 100 {
                0 => rng.u64(1_000_000..300_000_000),
                1..=9 => rng.u64(10_000..1_000_000),
                99 if i % 10_000 == 99 => u64::MAX / 2,
                _ => rng.u64(0..10_000),
            };
            let ns = v.saturating_mul(1000);
            record_ns(&mut all, ns);
            record_ns(&mut agents[rng.usize(0..3)], ns);
        }
        let mut merged = new_hist();
        for h in &agents {
            let wire = encode(h);
            let back = decode(&wire).unwrap();
            assert_eq!(&back, h, "round trip of one agent's histogram");
            add(&mut merged, &back);
        }
        assert_eq!(merged, all);
        assert_eq!(merged.len(), all.len());
        assert_eq!(merged.max(), all.max());
        assert_eq!(merged.min(), all.min());
        assert_eq!(merged.mean(), all.mean());
        for q in [0.0, 0.5, 0.9, 0.99, 0.999, 0.9999, 0.99999, 1.0] {
            assert_eq!(
                merged.value_at_quantile(q),
                all.value_at_quantile(q),
                "q={q}"
            );
        }
        assert_eq!(Percentiles::of(&merged), Percentiles::of(&all));
        // The whole set of histograms, through the JSON form.
        let a = Hists {
            delivery: agents[0].clone(),
            ..Default::default()
        };
        let json = serde_json::to_string(&a.to_wire()).unwrap();
        let back: HistsWire = serde_json::from_str(&json).unwrap();
        assert_eq!(back.decode().unwrap().delivery, agents[0]);
    }

    #[test]
    fn counters_add_field_wise() {
        let mut a = Counters {
            sent: 3,
            lost: 1,
            ..Default::default()
        };
        a.send_errors_by_code.insert("rate_limited".into(), 2);
        let mut b = a.clone();
        b.add(&a);
        assert_eq!(b.sent, 6);
        assert_eq!(b.lost, 2);
        assert_eq!(b.send_errors_by_code["rate_limited"], 4);
        assert!(b.problems().iter().any(|p| p.contains("lost")));
    }

    #[test]
    fn tick_merger_releases_complete_seconds_in_order() {
        let mut m = TickMerger::new(2);
        let t = |s, sent| Tick {
            sent,
            ..Tick::new(s)
        };
        assert!(m.push(t(0, 1)).is_empty());
        assert!(m.push(t(1, 1)).is_empty());
        let out = m.push(t(0, 2));
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].second, out[0].sent), (0, 3));
        let rest = m.finish();
        assert_eq!((rest[0].second, rest[0].sent), (1, 1));
    }
}
