//! The open-model sender: a sending connection's roles, each on its [`Schedule`], every
//! message made at its intended time (or at once when behind) and queued in the connection's
//! [`Outbox`].

use super::outbox::{Outbox, Pending};
use super::state::Shard;
use crate::client;
use crate::schedule::Schedule;
use crate::stats::record_ns;
use bytes::Bytes;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// One sending connection's roles, each on its open-model schedule.
struct RoleRun {
    role: u32,
    schedule: Schedule,
    k: u64,
    room_head: Bytes,
    dm_head: Option<Bytes>,
}

/// Makes every message at (or, when behind, as soon as possible after) its intended time and
/// queues it in the connection's [`Outbox`]; messages due together leave as one batch.
pub(super) async fn sender_task(sh: Rc<Shard>, c: u32, ob: Rc<Outbox>) {
    let start = sh.wait_start().await;
    let layout = sh.layout.clone();
    let s = sh.scenario.clone();
    let per_sender = s.rate / s.senders as f64;
    let mut runs: Vec<RoleRun> = layout.conn_roles[c as usize]
        .iter()
        .map(|&ri| {
            let role = &layout.roles[ri as usize];
            RoleRun {
                role: ri,
                schedule: Schedule::new(
                    per_sender,
                    s.total_secs(),
                    role.slot,
                    layout.roles.len(),
                    s.dm_share,
                ),
                k: 0,
                room_head: s.protocol.send_head(&layout.room(role.room)),
                dm_head: role.dm_peer.map(|p| client::dm_head(&layout.user(p))),
            }
        })
        .collect();
    let authority = &sh.targets[layout.conn_url[c as usize] as usize].authority;
    let mut enc = s.protocol.encoder(s.body, &s.pusher_app, authority);
    while let Some(next) = runs
        .iter()
        .filter(|r| r.k < r.schedule.count)
        .map(|r| r.schedule.intended(r.k))
        .min()
    {
        let due = start + Duration::from_nanos(next);
        if Instant::now() < due {
            sh.timer.sleep_until(due).await;
        }
        let now_ns = start.elapsed().as_nanos() as u64;
        for r in runs.iter_mut() {
            while r.k < r.schedule.count {
                let t = r.schedule.intended(r.k);
                if t > now_ns {
                    break;
                }
                let dm = r.schedule.is_dm(r.k) && r.dm_head.is_some();
                let head = match (&r.dm_head, dm) {
                    (Some(h), true) => h,
                    _ => &r.room_head,
                };
                let msg = enc.encode(head, r.role, r.k, t);
                let key = (r.role, r.k);
                if s.reconnect {
                    let pending = Pending {
                        msg: msg.clone(),
                        written: 0,
                        attempts: 0,
                    };
                    ob.pending.borrow_mut().insert(key, pending);
                }
                let _ = ob.messages.send((key, msg));
                sh.totals.sent.fetch_add(1, Relaxed);
                let mut st = sh.stats.borrow_mut();
                st.tick.sent += 1;
                st.counters.sent_dm += u64::from(dm);
                if t >= sh.warmup_ns {
                    st.counters.sent_measured += 1;
                    record_ns(&mut st.hists.send_lag, now_ns - t);
                }
                r.k += 1;
            }
        }
        // Let the writer take the batch before the next wake-up.
        tokio::task::yield_now().await;
    }
    sh.totals.senders_left.fetch_sub(1, Relaxed);
}
