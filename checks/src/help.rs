//! The workspace's binaries and their real `--help`: every flag a deployment file passes
//! (docker-compose.yml, deploy/k8s/) must be one the binary lists, with a value exactly when
//! it takes one. One walk ([`check_command`]) serves every file that runs a binary.

use crate::problems::Problems;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace's binaries a deployment may run: (binary, cargo package, its listen flag, whose
/// default binds loopback only, so that a container must set it).
pub const BINARIES: &[(&str, &str, Option<&str>)] = &[
    ("chat-server", "chat-server", Some("--listen")),
    ("chat-persister", "chat-persister", Some("--metrics-listen")),
    ("loadgen", "loadgen", None),
];

pub fn flag_pairs(args: &[String]) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if let Some(rest) = a.strip_prefix("--") {
            if let Some((f, v)) = rest.split_once('=') {
                out.push((format!("--{f}"), Some(v.to_string())));
            } else if args.get(i + 1).is_some_and(|n| !n.starts_with("--")) {
                out.push((a.clone(), Some(args[i + 1].clone())));
                i += 1;
            } else {
                out.push((a.clone(), None));
            }
        }
        i += 1;
    }
    out
}

/// The directory holding the workspace's binaries, when all are built.
pub fn binaries() -> Option<PathBuf> {
    // The test executable is `<target>/<profile>/deps/<test>-<hash>`.
    let exe = std::env::current_exe().expect("the test executable's path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lives in <target>/<profile>/deps")
        .to_path_buf();
    let missing: Vec<&str> = BINARIES
        .iter()
        .map(|(b, _, _)| *b)
        .filter(|b| !dir.join(b).exists())
        .collect();
    if missing.is_empty() {
        return Some(dir);
    }
    let build = BINARIES
        .iter()
        .map(|(_, pkg, _)| format!("-p {pkg}"))
        .collect::<Vec<_>>()
        .join(" ");
    assert_ne!(
        std::env::var("CHAT_REQUIRE_E2E").as_deref(),
        Ok("1"),
        "CHAT_REQUIRE_E2E=1 but {missing:?} not built in {} (cargo build {build})",
        dir.display()
    );
    eprintln!(
        "SKIPPED: {missing:?} not built in {}: the compose flags are not checked (cargo build {build})",
        dir.display()
    );
    None
}

/// Long flags of a `--help` text: name -> takes a value.
pub fn help_flags(help: &str) -> BTreeMap<String, bool> {
    let mut out = BTreeMap::new();
    for line in help.lines() {
        let indent = line.len() - line.trim_start().len();
        let line = line.trim_start();
        // clap puts options at an indent of 2 (`-h, --help`) or 6; descriptions deeper.
        if !line.starts_with('-') || indent > 8 {
            continue;
        }
        for part in line.split(", ") {
            if let Some(rest) = part.strip_prefix("--") {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                let takes_value = rest[name.len()..].trim_start().starts_with(['<', '[', '=']);
                out.insert(format!("--{name}"), takes_value);
            }
        }
    }
    out
}

/// The `--help` of `bin SUB...` (`sub`: subcommands, e.g. `loadgen run`), as flag -> takes a value.
pub fn help_of(dir: &Path, bin: &str, sub: &[&str]) -> BTreeMap<String, bool> {
    let out = Command::new(dir.join(bin))
        .args(sub)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("run {bin} --help: {e}"));
    assert!(
        out.status.success(),
        "{bin} {sub:?} --help failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let help = help_flags(&String::from_utf8_lossy(&out.stdout));
    assert!(
        help.contains_key("--help") && help.len() > 3,
        "could not read the flags of `{bin} {sub:?} --help`: {help:?}"
    );
    help
}

/// Checks one command line (`args[0]` the binary, then subcommands, then flags) against the
/// binary's real `--help`: every flag exists, a value follows exactly the flags that take one.
/// `who` names the command in the problems (a compose service, a k8s container).
pub fn check_command(dir: &Path, who: &str, args: &[String], p: &mut Problems) {
    let Some(bin) = args.first() else {
        p.push(format!("{who}: empty command"));
        return;
    };
    // `loadgen run ...`: the words before the first flag are subcommands.
    let sub: Vec<&str> = args[1..]
        .iter()
        .take_while(|a| !a.starts_with('-'))
        .map(String::as_str)
        .collect();
    let help = help_of(dir, bin, &sub);
    let n = who;
    let cmd = std::iter::once(bin.as_str())
        .chain(sub.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    // Walk the words as clap would: a flag, its value if it takes one, and nothing else.
    let mut expect_value = false;
    for a in &args[1 + sub.len()..] {
        if let Some(f) = a.strip_prefix("--") {
            let f = format!("--{}", f.split('=').next().unwrap());
            match help.get(&f) {
                None => {
                    p.push(format!(
                        "{n}: `{f}` is not a flag of `{cmd}` (its --help lists {})",
                        help.keys().cloned().collect::<Vec<_>>().join(" ")
                    ));
                    expect_value = false;
                }
                Some(takes) => expect_value = *takes && !a.contains('='),
            }
        } else if expect_value {
            expect_value = false;
        } else {
            p.push(format!(
                "{n}: `{a}` follows a flag of `{cmd}` that takes no value"
            ));
        }
    }
    p.check(!expect_value, || {
        format!("{n}: the last flag of `{cmd}` needs a value")
    });
    for (f, v) in flag_pairs(args) {
        if help.get(&f) == Some(&true) {
            p.check(v.is_some(), || {
                format!("{n}: `{f}` of `{cmd}` needs a value")
            });
        }
    }
}

/// The environment fallbacks (`[env: CHAT_X=]`) a `--help` text lists.
pub fn help_envs(help: &str) -> BTreeSet<String> {
    help.match_indices("[env: ")
        .filter_map(|(i, m)| {
            let rest = &help[i + m.len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

/// The whole `--help` text of `bin` (no subcommand).
pub fn help_text(dir: &Path, bin: &str) -> String {
    let out = Command::new(dir.join(bin))
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("run {bin} --help: {e}"));
    assert!(out.status.success(), "{bin} --help failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
