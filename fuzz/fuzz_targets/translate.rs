//! Fuzz target `translate`: HTTP/1 heads to HTTP/2 and back; the
//! properties live in `fuzz/checks.rs` (`check_translate`), shared with the
//! corpus replay test `tests/tests/fuzz_corpus.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../checks.rs"]
mod checks;

fuzz_target!(|data: &[u8]| checks::check_translate(data));
