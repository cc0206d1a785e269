//! Tidy checks that keep the house style mechanical: every source file opens with a `//!` doc
//! saying what it owns; no test is ignored or marked should-panic (assert the behaviour instead).

use std::path::Path;

use crate::support::files_under;

fn rust_files(dir: &str) -> Vec<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<_> = files_under(&root)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_module_has_a_doc_saying_what_it_owns() {
    for file in rust_files("src") {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.starts_with("//!"),
            "{} does not start with a `//!` module doc",
            file.display()
        );
    }
}

#[test]
fn no_test_is_ignored_or_expected_to_panic() {
    let ignore = ["#[", "ignore]"].concat();
    let should_panic = ["#[", "should_panic"].concat();
    for file in rust_files("src").into_iter().chain(rust_files("tests")) {
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            !text.contains(&ignore),
            "{} has an ignored test",
            file.display()
        );
        assert!(
            !text.contains(&should_panic),
            "{} has a should_panic test",
            file.display()
        );
    }
}
