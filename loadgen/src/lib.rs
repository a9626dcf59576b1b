//! `loadgen`: the chat backend's load generator, as a library so that its tests can drive every
//! part in-process (the binary in `main.rs` is only the command line).
//!
//! A run is an *open model*: every sender has a fixed schedule of intended send times, and each
//! latency is measured from the intended time, so a stalled server (or a stalled load generator)
//! shows up in the numbers instead of silently slowing the load down (coordinated omission).
//! Every delivered message is checked against its room's sequence, and the result says whether
//! the load generator, not the server, was the bottleneck.
//!
//! | module | concept |
//! | --- | --- |
//! | [`scenario`] | what load to apply: flags or TOML, the split over agents, who joins and sends where |
//! | [`timer`] | precise (timerfd) wake-ups for the senders, instead of tokio's 1 ms timer |
//! | [`schedule`] | the open model: intended send times, which sends are DMs, the `cid` that carries the time |
//! | [`client`] | one WebSocket connection: connect (bound to a source IP), requests, parsing replies |
//! | [`proto`] | the protocols spoken: chat, Socket.IO, Pusher (one file each), the same scenario for all |
//! | [`json`] | the allocation-free scanner every protocol's parser uses |
//! | [`local`] | the runtime of every load thread: current-thread tokio with a `LocalSet` |
//! | [`engine`] | one process's share of a run: shard threads, connection and sender tasks |
//! | [`social`] | the v1.1 mix beside the messages: presence churn, typing, read pointers, verified |
//! | [`verify`] | per room and receiver: every seq exactly once, in order |
//! | [`stats`] | histograms and counters, their V2+DEFLATE form and exact merging, per-second ticks |
//! | [`persist`] | sampled persistence latency: polls PostgreSQL until a message's row is there |
//! | [`agent`] | `loadgen agent`: runs a share for a remote coordinator (JSON lines over TCP) |
//! | [`coordinator`] | `loadgen run`: splits, starts agents together, merges, reports |
//! | [`cpu`] | CPU use: this process and its threads, the machine, each server node's `/metrics` |
//! | [`machine`] | hardware, OS, versions and commit for the result |
//! | [`report`] | `result.json` and `report.md` |
//! | [`plot`] | the SVG plots |
//! | [`compare`] | `loadgen compare`: two results side by side |
//! | [`sweep`] | `loadgen sweep`: the highest rate that keeps p99 under a bound with zero loss |
//! | [`floor`] | `loadgen floor` and `--floor`: the kernel's own cost of the same deliveries (loopback writes, no protocol) |
//! | [`transport`] | `loadgen transport`: TLS and permessage-deflate, server CPU and wire bytes per delivery (its own client on chat-wire's frames) |
//! | [`flood`] | `loadgen flood`: closed-loop accepted-messages/s ceiling |

pub mod agent;
pub mod client;
pub mod compare;
pub mod coordinator;
pub mod cpu;
pub mod engine;
pub mod flood;
pub mod floor;
pub mod json;
pub mod local;
pub mod machine;
pub mod persist;
pub mod plot;
pub mod proto;
pub mod report;
pub mod scenario;
pub mod schedule;
pub mod social;
pub mod stats;
pub mod sweep;
pub mod timer;
pub mod transport;
pub mod verify;
