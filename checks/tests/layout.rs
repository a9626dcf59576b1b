//! Issue #11's layout rules hold for the whole repository: no source file over
//! [`MAX_LINES`] lines, and no import cycle among the server's or the persister's modules
//! (`chat_checks::layout` says what counts as a reference).

use chat_checks::layout::{cycles, modules, references, source_files, MAX_LINES};
use chat_checks::root;

#[test]
fn no_source_file_is_over_the_line_limit() {
    let root = root();
    let files = source_files(&root);
    assert!(files.len() > 200, "found only {} source files", files.len());
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let lines = std::fs::read_to_string(root.join(f)).ok()?.lines().count();
            (lines > MAX_LINES).then(|| format!("{} ({lines} lines)", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "over {MAX_LINES} lines: {long:?}");
}

#[test]
fn the_server_and_the_persister_have_no_import_cycle() {
    for krate in ["server", "persister"] {
        let modules = modules(&root().join(krate).join("src"));
        let refs = references(&modules);
        let linked = refs.values().map(|r| r.len()).sum::<usize>();
        assert!(linked > 20, "{krate}: only {linked} references found");
        let found = cycles(&refs);
        assert!(
            found.is_empty(),
            "{krate}: modules that use each other: {found:?}"
        );
    }
}

#[test]
fn a_cycle_is_found() {
    let dir = chat_testkit::TempDir::new("layout");
    let src = dir.path();
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::write(
        src.join("main.rs"),
        "mod a;\nmod b;\nfn main() { a::f(); }\n",
    )
    .unwrap();
    // `a` dispatches to its child `c`, which names its parent's item: one concept, no cycle.
    std::fs::write(src.join("a/mod.rs"), "mod c;\npub fn f() { c::g(); }\n").unwrap();
    std::fs::write(
        src.join("a/c.rs"),
        "use super::f;\npub fn g() { crate::b::h(); }\n",
    )
    .unwrap();
    // `b` and `a::c` name each other: a cycle (crate::b in a comment does not count).
    std::fs::write(
        src.join("b.rs"),
        "use crate::a::c::g; // crate::a\npub fn h() {}\n",
    )
    .unwrap();
    let refs = references(&modules(src));
    assert_eq!(
        cycles(&refs),
        vec![vec!["a::c".to_string(), "b".to_string()]]
    );
    assert!(!refs["a::c"].contains("a"), "{refs:?}");
    assert!(refs["a"].contains("a::c"), "{refs:?}");
}
