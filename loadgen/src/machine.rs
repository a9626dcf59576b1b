//! Where and with what a result was produced: hardware, OS, tool versions and the commit, so
//! that two results can be compared knowing whether they came from the same setup.

use serde::{Deserialize, Serialize};
use std::process::Command;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub memory_bytes: u64,
    /// `uname -r`.
    pub kernel: String,
    /// `PRETTY_NAME` of `/etc/os-release`.
    pub os: String,
    pub hostname: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Versions {
    pub loadgen: String,
    /// `rustc --version` where a toolchain is installed.
    pub rustc: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Commit {
    /// `git rev-parse HEAD`.
    pub hash: Option<String>,
    /// Tracked files outside `results/` differ from the commit.
    pub dirty: bool,
}

impl Machine {
    pub fn probe() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == "model name").then(|| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_bytes = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024);
        let os = std::fs::read_to_string("/etc/os-release")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_else(|| "unknown".into());
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        };
        Machine {
            cpu_model,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_bytes,
            kernel: read("/proc/sys/kernel/osrelease"),
            os,
            hostname: read("/proc/sys/kernel/hostname"),
        }
    }
}

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl Versions {
    pub fn probe() -> Versions {
        Versions {
            loadgen: env!("CARGO_PKG_VERSION").to_string(),
            rustc: output("rustc", &["--version"]),
        }
    }
}

impl Commit {
    pub fn probe() -> Commit {
        Commit {
            hash: output("git", &["rev-parse", "HEAD"]),
            // Changes under results/ do not count: a run set writes there while it runs.
            dirty: output(
                "git",
                &[
                    "status",
                    "--porcelain",
                    "--untracked-files=no",
                    "--",
                    ":(top)",
                    ":(top,exclude)results",
                ],
            )
            .is_some_and(|s| !s.is_empty()),
        }
    }
}

/// The command line as typed, quoted where needed.
pub fn command_line() -> String {
    std::env::args()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "\"'$\\".contains(c)) {
                format!("'{}'", a.replace('\'', r"'\''"))
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
