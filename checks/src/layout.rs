//! The layout rules of issue #11, read off the source tree: no source file over
//! [`MAX_LINES`] lines, and no import cycle among the modules of a crate.
//!
//! A module's references are the paths it names outside comments and its `#[cfg(test)]`
//! module: `crate::a::b`, `super::x` (and `super::super::`), `self::c` and a child module's
//! name (`c::f`, `use c::{..}`), each taken to the deepest module of the crate it reaches. Two
//! modules that reach each other through such references are a cycle. A module naming one of
//! its own ancestors (`super::Bus` in `bus/cluster/publish.rs`) does not count: a parent and
//! the files it is split into are one concept, which dispatches to its parts and lends them
//! its types; what must not happen is siblings, or cousins, leaning on each other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The longest a source file may be (issue #11: tests included, generated files excepted).
pub const MAX_LINES: usize = 600;

/// Extensions of the files that count as source.
const SOURCE: &[&str] = &["rs", "py", "sh", "js"];

/// Directories that hold no source of ours: build output, dependencies, data, fuzz inputs.
const SKIPPED_DIRS: &[&str] = &[
    ".git",
    "target",
    "node_modules",
    "corpus",
    "artifacts",
    "results",
    ".cluster",
    ".run",
];

/// Every source file under `root`, as paths relative to it, sorted.
pub fn source_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if path.is_dir() {
            if !SKIPPED_DIRS.contains(&name.as_ref()) {
                walk(root, &path, out);
            }
        } else if path
            .extension()
            .is_some_and(|e| SOURCE.contains(&e.to_string_lossy().as_ref()))
        {
            out.push(path.strip_prefix(root).expect("under root").to_path_buf());
        }
    }
}

/// The modules of the crate whose sources are in `src`: module path (`""` for the root,
/// `bus::cluster` ...) -> the module's code, without comments and `#[cfg(test)]` modules.
pub fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut files = Vec::new();
    walk(src, src, &mut files);
    for file in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "rs"))
    {
        let text = std::fs::read_to_string(src.join(file)).expect("readable source");
        out.insert(module_path(file), code_of(&text));
    }
    out
}

/// `main.rs`/`lib.rs` -> `""`, `a/mod.rs` -> `a`, `a/b.rs` -> `a::b`.
fn module_path(file: &Path) -> String {
    let mut parts: Vec<String> = file
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.len() == 1 && (parts[0] == "main" || parts[0] == "lib")
        || parts.last().unwrap() == "mod"
    {
        parts.pop();
    }
    parts.join("::")
}

/// The code of a file without its comments and its `#[cfg(test)]` module (whose `super`
/// is the file's own module, and which no other module uses).
fn code_of(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t == "#[cfg(test)]"
            && lines
                .peek()
                .is_some_and(|l| l.trim_start().starts_with("mod "))
        {
            break;
        }
        if t.starts_with("//")
            || (t.starts_with("mod ") || t.starts_with("pub mod ")) && t.ends_with(';')
        {
            continue;
        }
        // A comment after code (` // `; a URL in a string has no space before its `//`).
        out.push_str(line.split(" // ").next().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Which modules each module references (see the module comment), itself and its ancestors
/// left out.
pub fn references(modules: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut out = BTreeMap::new();
    for (module, code) in modules {
        let mut to = BTreeSet::new();
        for path in paths(code) {
            if let Some(target) = resolve(module, &path, modules) {
                if &target != module && !is_ancestor(&target, module) {
                    to.insert(target);
                }
            }
        }
        out.insert(module.clone(), to);
    }
    out
}

/// Whether module `a` contains module `b` (the root contains every other module).
fn is_ancestor(a: &str, b: &str) -> bool {
    a.is_empty() && !b.is_empty() || b.starts_with(&format!("{a}::"))
}

/// Every `a::b::c` path in `code` (identifier segments; `{` groups of a `use` opened).
fn paths(code: &str) -> Vec<Vec<String>> {
    let bytes = code.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if !ident(bytes[i]) || (i > 0 && (ident(bytes[i - 1]) || bytes[i - 1] == b':')) {
            i += 1;
            continue;
        }
        let mut segments = Vec::new();
        let mut j = i;
        loop {
            let start = j;
            while j < bytes.len() && ident(bytes[j]) {
                j += 1;
            }
            segments.push(code[start..j].to_string());
            if code[j..].starts_with("::{") {
                // A use group: each item's first segments after this prefix.
                let end = code[j..].find('}').map_or(code.len(), |e| j + e);
                for item in code[j + 3..end].split(',') {
                    let first: Vec<String> = item
                        .split("::")
                        .map(|s| s.trim().split(' ').next().unwrap_or("").to_string())
                        .filter(|s| !s.is_empty() && s.bytes().all(ident))
                        .collect();
                    out.push(segments.iter().cloned().chain(first).collect());
                }
                j = end;
                break;
            }
            if code[j..].starts_with("::") && j + 2 < bytes.len() && ident(bytes[j + 2]) {
                j += 2;
            } else {
                break;
            }
        }
        if segments.len() > 1 || code[j..].starts_with("::{") {
            out.push(segments);
        }
        i = j.max(i + 1);
    }
    out
}

/// The deepest module of `modules` that `path`, named in `from`, reaches; `None` for paths
/// outside the crate (`std::`, other crates, local items).
fn resolve(from: &str, path: &[String], modules: &BTreeMap<String, String>) -> Option<String> {
    let mut base: Vec<&str> = if from.is_empty() {
        vec![]
    } else {
        from.split("::").collect()
    };
    let mut rest = path;
    match path.first().map(String::as_str) {
        Some("crate") => {
            base.clear();
            rest = &path[1..];
        }
        Some("super") => {
            while rest.first().is_some_and(|s| s == "super") {
                base.pop()?;
                rest = &rest[1..];
            }
        }
        Some("self") => rest = &path[1..],
        Some(first) => {
            // A child module's name, or nothing of ours.
            let child = join(&base, first);
            if !modules.contains_key(&child) {
                return None;
            }
        }
        None => return None,
    }
    let mut found = base.join("::");
    let mut current = base.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    for segment in rest {
        current.push(segment.clone());
        let candidate = current.join("::");
        if modules.contains_key(&candidate) {
            found = candidate;
        } else {
            break;
        }
    }
    Some(found)
}

fn join(base: &[&str], last: &str) -> String {
    base.iter()
        .copied()
        .chain([last])
        .collect::<Vec<_>>()
        .join("::")
}

/// The groups of two or more modules that reach each other (strongly connected components),
/// each sorted; empty when the references form no cycle.
pub fn cycles(refs: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    let reach = |from: &String| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(m) = todo.pop() {
            for next in refs.get(&m).into_iter().flatten() {
                if seen.insert(next.clone()) {
                    todo.push(next.clone());
                }
            }
        }
        seen
    };
    let reached: BTreeMap<&String, BTreeSet<String>> = refs.keys().map(|m| (m, reach(m))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for m in refs.keys() {
        if done.contains(m) {
            continue;
        }
        let group: Vec<String> = refs
            .keys()
            .filter(|o| *o == m || reached[m].contains(*o) && reached[*o].contains(m))
            .cloned()
            .collect();
        done.extend(group.iter().cloned());
        if group.len() > 1 {
            out.push(group);
        }
    }
    out
}
