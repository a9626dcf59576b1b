//! The real `chat-persister` binary as a child process, for the tests that follow a message to
//! PostgreSQL (`e2e.rs`, `api_durability.rs`). It comes from the same target directory
//! (`cargo build -p chat-persister`); without it the tests say `SKIPPED`, or fail when
//! `CHAT_REQUIRE_E2E=1` (as `scripts/test.sh` sets).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// A running persister, killed when dropped.
pub struct Persister(Child);

impl Persister {
    /// Starts the persister on `brokers` and `postgres` (20 ms batches); `None` (after
    /// `SKIPPED: ...`) when it is not built.
    pub fn start(brokers: &str, postgres: &str) -> Option<Persister> {
        let Some(bin) = binary() else {
            assert_ne!(
                std::env::var("CHAT_REQUIRE_E2E").as_deref(),
                Ok("1"),
                "chat-persister is not built"
            );
            eprintln!("SKIPPED: chat-persister is not built (cargo build -p chat-persister)");
            return None;
        };
        let mut child = Command::new(bin)
            .args(["--kafka", brokers, "--postgres", postgres])
            .args(["--metrics-listen", "127.0.0.1:0", "--batch-wait-ms", "20"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start chat-persister");
        let first = BufReader::new(child.stdout.take().unwrap()).lines().next();
        assert!(
            first.is_some_and(|l| l.is_ok_and(|l| l.starts_with("metrics on"))),
            "persister started"
        );
        Some(Persister(child))
    }
}

/// `chat-persister` next to the test executable's directory (`<target>/<profile>/deps/`).
fn binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let bin = exe.parent()?.parent()?.join("chat-persister");
    bin.exists().then_some(bin)
}

impl Drop for Persister {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
