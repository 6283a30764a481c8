//! Replays every committed fuzz corpus file (`fuzz/corpus/<target>/`) through
//! the same property checks the fuzz targets run (`fuzz/checks.rs`), so that
//! past findings and seeds stay covered by a plain `cargo test`.

#[path = "../../fuzz/checks.rs"]
mod checks;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

/// Runs `check` on every file of the corpus of `target`; fails when the corpus
/// is missing or empty, so the test cannot pass vacuously.
fn replay(target: &str, check: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus directory {} is missing: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable corpus directory").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus directory {} is empty", dir.display());
    let mut failed = Vec::new();
    for file in &files {
        let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
            failed.push(file.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} {target} corpus files fail their properties:\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
}

#[test]
fn request_head_corpus() {
    replay("request_head", checks::check_request);
}

#[test]
fn response_head_corpus() {
    replay("response_head", checks::check_response);
}

#[test]
fn chunked_corpus() {
    replay("chunked", checks::check_chunked);
}

#[test]
fn config_corpus() {
    replay("config", checks::check_config);
}
