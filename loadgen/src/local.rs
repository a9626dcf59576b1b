//! The runtime every load thread runs on: a current-thread tokio runtime with a `LocalSet`,
//! so that a thread's tasks share `Rc`/`RefCell` state without locks (the shard threads, the
//! v1.1 mix's thread, the floor's reader).

use std::future::Future;

/// Runs `f` to completion on the calling thread, on a runtime of its own (`what` names it in
/// the panic if the runtime cannot be built).
pub fn block_on_local<F: Future>(what: &str, f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{what} runtime: {e}"));
    tokio::task::LocalSet::new().block_on(&rt, f)
}
