//! Replays from PostgreSQL: what `history` and `resume` need from older than the Redis cache.
//!
//! A reconnect storm is many clients resuming at once, each maybe thousands of messages behind,
//! and every one of those reads lands on PostgreSQL. Two bounds keep that from melting the
//! database or the node:
//!
//! - **Places** (`--pg-replays`, a semaphore on the bus thread): at most that many replays
//!   read PostgreSQL at once on this node; the others wait their turn, up to
//!   `--pg-replay-wait`, and are then answered `unavailable` (the client retries).
//! - **Pages at the client's pace**: a `resume` reads [`PAGE`] rows at a time, oldest first,
//!   and hands each page to the connection's core right away (`Reply::ResumePart`); the next
//!   page is read only once the client has taken the last one (the connection's
//!   [`ReplayGauge`] is back under `--outbound-limit`). So a replay holds one page in memory,
//!   a fast reader gets its whole backlog, and a client that stops reading holds its place
//!   until it is closed as idle, not the memory of all it asked for.
//!
//! At most [`RESUME_FROM_STORE_MAX`] rows are replayed (the newest of the missing range);
//! beyond that the reply says `complete: false`.

use super::{Bus, Name};
use crate::messages::{ReplayGauge, Reply, ReplyTo};
use chat_wire::frame::{encode_frame, OpCode};
use std::time::Duration;

/// Most messages one `resume` reads from PostgreSQL.
pub const RESUME_FROM_STORE_MAX: u64 = 10_000;

/// Rows per query of a replay.
pub const PAGE: u32 = 500;

/// What a replay that found no place answers.
pub const BUSY: &str = "too many replays from PostgreSQL at once; retry";

/// How often a paced replay looks whether its client has read the last page.
const PACE_POLL: Duration = Duration::from_millis(2);

/// How the PostgreSQL part of a `resume` went.
pub enum StoreReplay {
    /// Pages were sent: `next` is the seq after the last one sent in order from the start,
    /// `gapless` whether nothing was missing on the way (or whether PostgreSQL failed).
    Sent { next: u64, gapless: bool },
    /// No place within `--pg-replay-wait`.
    Busy,
}

impl Bus {
    /// Waits for a place to read PostgreSQL; `None` after `--pg-replay-wait`.
    async fn replay_place(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let wait = self.cfg.pg_replay_wait;
        match tokio::time::timeout(wait, self.pg_replays.acquire()).await {
            Ok(Ok(permit)) => Some(permit),
            _ => {
                crate::metrics::inc(&self.node.metrics.bus.pg_replays_refused);
                None
            }
        }
    }

    /// The newest `limit` stored messages older than `older_than` (a `history` page; at most
    /// 100, one query). Without PostgreSQL, none.
    pub(super) async fn history_from_store(
        &self,
        room: &Name,
        older_than: u64,
        limit: u32,
    ) -> Result<Vec<Vec<u8>>, &'static str> {
        let Some(pg) = &self.pg else {
            return Ok(Vec::new());
        };
        let Some(_place) = self.replay_place().await else {
            return Err(BUSY);
        };
        pg.page_before(room, older_than, limit).await.map_err(|e| {
            tracing::warn!(%room, error = %e, "history from PostgreSQL failed");
            "PostgreSQL is unavailable; retry"
        })
    }

    /// Sends the stored messages `first..cached_from` of `room` to the connection of `to`,
    /// page by page at its pace (the newest [`RESUME_FROM_STORE_MAX`] of them at most).
    pub(super) async fn resume_from_store(
        &self,
        room: &Name,
        first: u64,
        cached_from: u64,
        to: ReplyTo,
        gauge: &ReplayGauge,
    ) -> StoreReplay {
        let Some(pg) = &self.pg else {
            return StoreReplay::Sent {
                next: first,
                gapless: false,
            };
        };
        let Some(_place) = self.replay_place().await else {
            return StoreReplay::Busy;
        };
        let start = first.max(cached_from.saturating_sub(RESUME_FROM_STORE_MAX));
        let (mut next, mut gapless) = (start, start == first);
        let limit = self.node.config.outbound_limit;
        loop {
            let page = match pg.page_from(room, next, cached_from, PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(%room, error = %e, "resume from PostgreSQL failed; reporting incomplete");
                    gapless = false;
                    break;
                }
            };
            let full = page.len() == PAGE as usize;
            let mut frames = Vec::with_capacity(page.len());
            for m in &page {
                match super::msg_head(m) {
                    Some(h) if h.seq >= next => {
                        gapless &= h.seq == next;
                        next = h.seq + 1;
                        frames.push(encode_frame(OpCode::Text, m));
                    }
                    _ => gapless = false,
                }
            }
            if !frames.is_empty() {
                self.reply(to, Reply::ResumePart(frames));
            }
            if !full || next >= cached_from {
                break;
            }
            // The next page once the client has read this one (or never, if it left).
            // The core counts the page only when it gets it: wait for that first.
            tokio::time::sleep(PACE_POLL).await;
            while gauge.waiting() > limit && !gauge.is_gone() {
                tokio::time::sleep(PACE_POLL).await;
            }
            if gauge.is_gone() {
                break;
            }
        }
        StoreReplay::Sent { next, gapless }
    }
}
