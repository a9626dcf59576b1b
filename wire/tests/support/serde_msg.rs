//! The `serde_json` derives the readers of a `msg` used before `MsgView`: the reference that
//! `wire/tests/msg_view.rs` holds `MsgView` to, and the baseline `bench/benches/json.rs`
//! measures it against (both include this file by path).

use serde::Deserialize;
use std::borrow::Cow;

/// The cluster bus's routing head (server/src/bus/cluster/resp.rs).
#[derive(Deserialize)]
pub struct SerdeHead<'a> {
    #[serde(borrow)]
    pub room: Cow<'a, str>,
    pub seq: u64,
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    #[serde(default)]
    pub ts: u64,
}

/// The persister's row (persister/src/batch.rs).
#[derive(Deserialize)]
pub struct SerdeRow<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow)]
    pub room: Cow<'a, str>,
    pub seq: i64,
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    #[serde(borrow)]
    pub from: Cow<'a, str>,
    pub ts: i64,
    #[serde(borrow)]
    pub body: Cow<'a, str>,
    #[serde(default, borrow)]
    pub cid: Option<Cow<'a, str>>,
}
