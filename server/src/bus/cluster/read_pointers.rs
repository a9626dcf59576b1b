//! v1.1 read pointers in cluster mode: Redis (the cache, [`crate::bus::redis_presence`]'s
//! `READ_LUA`) in front of PostgreSQL's `read_pointers`.
//!
//! **Read pointers** are written to PostgreSQL first when the node has a store (`INSERT ...
//! ON CONFLICT DO UPDATE SET seq = GREATEST(...)`: durable before the answer, and monotonic
//! whatever order nodes write in), then to the Redis cache, which also tells the user's other
//! connections. `joined`/`resumed` read the cache, and PostgreSQL when Redis has no entry (a
//! restarted Redis), putting what it found back (`HSETNX`, so a newer pointer is never
//! overwritten).

use super::resp::value_u64;
use super::social::json_str;
use super::Bus;
use crate::bus::redis::{self as keys, key_slot};
use crate::bus::redis_presence as pkeys;
use crate::messages::{Name, Reply, ReplyTo};
use chat_wire::protocol::{reply, ErrorCode, RequestError};
use redis::Value;
use std::rc::Rc;

impl Bus {
    /// `user`'s read pointer in `room`: the Redis cache, else PostgreSQL (put back in the
    /// cache), else 0.
    pub(super) async fn read_pointer(&self, room: &str, user: &str) -> u64 {
        let key = pkeys::read_key(room);
        let mut hget = redis::cmd("HGET");
        hget.arg(&key).arg(user);
        if let Ok(mut v) = self.run_retrying(&[(key_slot(&key), hget)]).await {
            if let Some(Ok(v @ (Value::BulkString(_) | Value::Int(_)))) = v.pop() {
                return value_u64(&v);
            }
        }
        let Some(pg) = &self.pg else {
            return 0;
        };
        match pg.read_pointer(room, user).await {
            Ok(seq) => {
                let mut put = redis::cmd("HSETNX");
                put.arg(&key).arg(user).arg(seq);
                let _ = self.run_retrying(&[(key_slot(&key), put)]).await;
                seq
            }
            Err(e) => {
                tracing::warn!(room, user, error = %e, "read pointer not found in PostgreSQL; answering 0");
                0
            }
        }
    }

    pub(super) async fn read(self: Rc<Self>, room: Name, user: Name, seq: u64, to: ReplyTo) {
        let floor = self
            .state
            .borrow()
            .high_seq
            .get(&room)
            .copied()
            .unwrap_or(0);
        let mut get = redis::cmd("GET");
        get.arg(keys::seq_key(&room));
        let latest = match self
            .run_retrying(&[(key_slot(&keys::seq_key(&room)), get)])
            .await
        {
            Ok(mut v) => match v.pop() {
                Some(Ok(Value::Nil)) => floor,
                Some(Ok(v)) => value_u64(&v),
                _ => {
                    return self.reply_error(
                        to,
                        ErrorCode::Unavailable,
                        "Redis is unavailable; retry",
                        None,
                    )
                }
            },
            Err(_) => {
                return self.reply_error(
                    to,
                    ErrorCode::Unavailable,
                    "Redis is unavailable; retry",
                    None,
                )
            }
        };
        if seq > latest {
            let e = RequestError::new(
                ErrorCode::BadRequest,
                format!("seq {seq} is past the room's latest message ({latest})"),
            );
            return self.reply(to, Reply::Frames(vec![reply::error(&e)]));
        }
        let mut pointer = seq;
        if let Some(pg) = &self.pg {
            match pg.save_read_pointer(&room, &user, seq).await {
                Ok(p) => pointer = p,
                Err(e) => {
                    tracing::warn!(%room, error = %e, "read pointer not saved");
                    let msg = "PostgreSQL is unavailable; the read pointer was not saved, retry";
                    return self.reply_error(to, ErrorCode::Unavailable, msg, None);
                }
            }
        }
        let except = format!("{}:{}:{}", self.node_hex(), to.core, to.conn);
        let keys = [pkeys::read_key(&room), keys::seq_key(&room)];
        let args = vec![
            user.as_bytes().to_vec(),
            pointer.to_string().into_bytes(),
            latest.max(pointer).to_string().into_bytes(),
            keys::user_channel(&user).into_bytes(),
            pkeys::event_payload(&except, b""),
            json_str(&room),
        ];
        match self.eval_text(pkeys::READ_LUA, &keys, &args).await {
            Some(Value::Array(r)) if r.len() == 2 => {
                let now = value_u64(&r[0]).max(pointer);
                self.reply(to, Reply::Frames(vec![reply::read(&room, now)]));
            }
            _ => self.reply_error(
                to,
                ErrorCode::Unavailable,
                "Redis is unavailable; retry",
                None,
            ),
        }
    }
}
