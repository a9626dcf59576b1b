//! The repository checks (issue #11: "the repository checks in a crate of their own"): the
//! deployment files are code nobody runs where this project is developed (no Docker engine,
//! no Kubernetes cluster), so they are read and checked against what can run here: the
//! binaries' real `--help`, the services they name, `promtool`, `kubernetes-validate`, and a
//! real Prometheus scraping a real cluster.

pub mod compose;
pub mod help;
pub mod problems;

use std::path::{Path, PathBuf};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("checks/ is in the repository")
        .to_path_buf()
}
