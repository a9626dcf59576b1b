//! The README's "path of one message" stays true: every file it names exists, and every
//! function it names after a file is defined there (`fn NAME`). Renaming or moving one of them
//! without updating the list fails here.

use chat_checks::root;

#[test]
fn every_file_and_function_of_the_message_path_exists() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = readme
        .split("### The path of one message")
        .nth(1)
        .expect("README has a section \"The path of one message\"");
    let section = section.split("\n### ").next().unwrap();
    let mut checked = 0;
    let mut problems = Vec::new();
    for line in section.lines().filter(|l| starts_with_number(l)) {
        // "[`a/b.rs`](a/b.rs) `f`, `g` and [`c.rs`](c.rs) `h`: text": each link, then the
        // backticked names that follow it (up to the next link), before the ':'.
        let head = line.split("`: ").next().unwrap_or(line);
        for part in head.split("[`").skip(1) {
            let Some((file, rest)) = part.split_once("`](") else {
                continue;
            };
            let rest = rest.split_once(')').map_or("", |r| r.1);
            let source = match std::fs::read_to_string(root().join(file)) {
                Ok(s) => s,
                Err(e) => {
                    problems.push(format!("{file}: {e}"));
                    continue;
                }
            };
            for name in backticked(rest) {
                checked += 1;
                if !defines(&source, name) {
                    problems.push(format!("{file} has no `fn {name}`"));
                }
            }
        }
    }
    assert!(checked >= 25, "only {checked} functions found in the list");
    assert!(
        problems.is_empty(),
        "the message path in README.md is stale:\n{}",
        problems.join("\n")
    );
}

fn starts_with_number(line: &str) -> bool {
    let digits = line.chars().take_while(char::is_ascii_digit).count();
    digits > 0 && line[digits..].starts_with(". ")
}

/// The `name`s in backticks of `text` that look like identifiers.
fn backticked(text: &str) -> impl Iterator<Item = &str> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

fn defines(source: &str, name: &str) -> bool {
    source.match_indices(&format!("fn {name}")).any(|(i, _)| {
        let after = source[i + 3 + name.len()..].chars().next();
        matches!(after, Some('(') | Some('<'))
    })
}
