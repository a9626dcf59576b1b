//! Problems are collected, then reported all at once: one failing check names every mistake
//! in a file, not only the first.

use std::fmt::Write as _;

#[derive(Default)]
pub struct Problems(pub Vec<String>);

impl Problems {
    pub fn push(&mut self, p: String) {
        self.0.push(p);
    }
    pub fn check(&mut self, ok: bool, p: impl FnOnce() -> String) {
        if !ok {
            self.0.push(p());
        }
    }
    pub fn assert_none(self, what: &str) {
        if self.0.is_empty() {
            return;
        }
        let mut msg = format!("{what}: {} problem(s):\n", self.0.len());
        for p in &self.0 {
            let _ = writeln!(msg, "  - {p}");
        }
        panic!("{msg}");
    }
}
