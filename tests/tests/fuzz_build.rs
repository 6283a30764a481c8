//! The fuzz targets (`fuzz/fuzz_targets/*.rs`) must keep building: this test
//! runs `cargo check` on the `fuzz/` workspace, so that a change to
//! `weft-proto`, `weft-core` or `fuzz/checks.rs` that breaks them fails the
//! ordinary `cargo test --workspace`, not only the next `cargo fuzz` run.
//!
//! Stable Rust suffices: `libfuzzer-sys` compiles libFuzzer's C++ sources with
//! the system C++ compiler in its build script (about a minute on a cold
//! cache), and the targets are plain binaries. `fuzz/` is its own workspace:
//! it builds into `fuzz/target` (git-ignored) and uses its committed
//! `fuzz/Cargo.lock` as it is (`--locked`: never rewritten by this test).

use std::path::{Path, PathBuf};
use std::process::Command;

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// `cargo check --bins` of the fuzz workspace succeeds.
#[test]
fn fuzz_targets_build() {
    let fuzz = fuzz_dir();
    // Cargo tells tests which cargo runs them; the same one checks the fuzz targets.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .arg("check")
        .arg("--locked")
        .arg("--bins")
        .arg("--manifest-path")
        .arg(fuzz.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(fuzz.join("target"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", Path::new(&cargo).display()));
    assert!(
        out.status.success(),
        "`cargo check` of the fuzz targets failed ({}). If only fuzz/Cargo.lock is out of date, \
         run `cargo check --manifest-path fuzz/Cargo.toml --bins` once and commit it; \
         libfuzzer-sys needs a C++ compiler (`c++`, e.g. g++).\n\
         --- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every file in `fuzz/fuzz_targets/` is a `[[bin]]` of `fuzz/Cargo.toml`, so
/// `cargo check --bins` (and `cargo fuzz list`) covers it.
#[test]
fn every_fuzz_target_is_a_bin() {
    let fuzz = fuzz_dir();
    let manifest = std::fs::read_to_string(fuzz.join("Cargo.toml"))
        .unwrap_or_else(|e| panic!("reading {}: {e}", fuzz.join("Cargo.toml").display()));
    let dir = fuzz.join("fuzz_targets");
    let mut targets: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| {
            e.unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
                .file_name()
        })
        .filter_map(|n| n.to_str().filter(|n| n.ends_with(".rs")).map(str::to_string))
        .collect();
    targets.sort();
    assert!(!targets.is_empty(), "no fuzz target in {}", dir.display());
    let missing: Vec<&String> = targets
        .iter()
        .filter(|t| !manifest.contains(&format!("path = \"fuzz_targets/{t}\"")))
        .collect();
    assert!(
        missing.is_empty(),
        "fuzz targets without a [[bin]] in fuzz/Cargo.toml: {missing:?}"
    );
}
