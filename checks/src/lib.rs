//! The repository checks (issue #11: "the repository checks in a crate of their own"): the
//! deployment files are code nobody runs where this project is developed (no Docker engine,
//! no Kubernetes cluster), so they are read and checked against what can run here: the
//! binaries' real `--help`, the services they name, `promtool`, `kubernetes-validate`, and a
//! real Prometheus scraping a real cluster.

pub mod compose;
pub mod compose_merge;
pub mod help;
pub mod k8s;
pub mod layout;
pub mod problems;
pub mod prometheus;

use std::path::{Path, PathBuf};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("checks/ is in the repository")
        .to_path_buf()
}

/// Whether the external tool `name` (promtool, prometheus, kubernetes-validate) is on PATH.
/// Without it the check says `SKIPPED`, or fails under `CHAT_REQUIRE_OPS=1` (scripts/test.sh,
/// after scripts/setup.sh installed it).
pub fn tool(name: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|p| p.join(name).is_file()));
    if !found {
        assert_ne!(
            std::env::var("CHAT_REQUIRE_OPS").as_deref(),
            Ok("1"),
            "CHAT_REQUIRE_OPS=1 but {name} is not installed (scripts/setup.sh --ops)"
        );
        eprintln!("SKIPPED: {name} is not installed (scripts/setup.sh --ops installs it)");
    }
    found
}

/// Runs `cmd`, returning (success, stdout + stderr).
pub fn run(cmd: &mut std::process::Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}
