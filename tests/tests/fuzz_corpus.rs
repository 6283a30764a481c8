//! Replays every committed fuzz corpus file (`fuzz/corpus/<target>/`) through
//! the same property checks the fuzz targets run (`fuzz/checks.rs`), so that
//! past findings and seeds stay covered by a plain `cargo test`.
//!
//! A hand-written seed also states in its file name what weft must make of
//! it, and that verdict is asserted:
//!
//! | name | verdict |
//! |---|---|
//! | `ok_*` | accepted: a complete head or chunked body (more may follow), a valid configuration |
//! | `err_*` | refused |
//! | `smuggle_*` | refused: an attempt at request smuggling or response splitting |
//! | `partial_*` | incomplete: nothing wrong yet, but the head or chunked body is not complete |
//!
//! Heads are parsed with the default limits. A `response_head` seed is the
//! answer to a GET request, or to a HEAD request when its name goes on with
//! `head_` after the verdict (`ok_head_cl_te`). Files named by a 40-digit hex
//! SHA-1 (fuzzer finds merged into the corpus) state no verdict; any other
//! name without a verdict prefix fails the test. [`REFUSALS`] names the reason
//! some refused seeds must be refused for. The test fails naming every file
//! whose properties fail or whose verdict disagrees with its name.
//!
//! A name states the verdict weft should give by RFC 9112 and RFC 9110 (or by
//! weft's stricter choice where they leave one), not merely the one it gives:
//! when they differ, fix the parser, not the name. See `fuzz/README.md`.

#[path = "../../fuzz/checks.rs"]
mod checks;

use checks::Verdict;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// The verdict a seed's file name states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stated {
    Accepted,
    Refused,
    Incomplete,
}

/// File name prefixes and the verdicts they state.
const PREFIXES: &[(&str, Stated)] = &[
    ("ok_", Stated::Accepted),
    ("err_", Stated::Refused),
    ("smuggle_", Stated::Refused),
    ("partial_", Stated::Incomplete),
];

/// Why some refused seeds must be refused: (target, file, reason). The reason
/// is the `HeadError::code` for heads and the `ChunkedError` variant for
/// chunked bodies, compared whole; for a configuration, a part of the error
/// message (which names the field at fault as ``field `…` ``).
#[rustfmt::skip]
const REFUSALS: &[(&str, &str, &str)] = &[
    ("request_head", "err_double_space_request_line", "malformed-head"),
    ("request_head", "err_fragment", "bad-request-target"),
    ("request_head", "err_path_above_root", "bad-request-target"),
    ("request_head", "err_path_bad_percent", "bad-request-target"),
    ("request_head", "err_path_encoded_dots_above_root", "bad-request-target"),
    ("request_head", "err_header_control_byte", "control-byte-in-header"),
    ("request_head", "err_header_no_colon", "malformed-head"),
    ("request_head", "err_header_obs_fold", "malformed-head"),
    ("request_head", "err_method_bad_token", "malformed-head"),
    ("request_head", "err_method_connect", "unsupported-method"),
    ("request_head", "err_missing_host_http11", "bad-host"),
    ("request_head", "err_target_invalid_utf8", "malformed-head"),
    ("request_head", "err_target_relative", "bad-request-target"),
    ("request_head", "err_target_star_not_options", "bad-request-target"),
    ("request_head", "err_version_http09", "malformed-head"),
    ("request_head", "err_version_http12", "unsupported-version"),
    ("request_head", "err_version_http2", "unsupported-version"),
    ("request_head", "smuggle_absolute_userinfo", "bad-request-target"),
    ("request_head", "smuggle_bare_cr", "control-byte-in-header"),
    ("request_head", "smuggle_cl_duplicate_differ", "bad-content-length"),
    ("request_head", "smuggle_cl_empty", "bad-content-length"),
    ("request_head", "smuggle_cl_hex", "bad-content-length"),
    ("request_head", "smuggle_cl_huge", "bad-content-length"),
    ("request_head", "smuggle_cl_inner_space", "bad-content-length"),
    ("request_head", "smuggle_cl_list_differ", "bad-content-length"),
    ("request_head", "smuggle_cl_negative", "bad-content-length"),
    ("request_head", "smuggle_cl_plus", "bad-content-length"),
    ("request_head", "smuggle_cl_space_before_colon", "malformed-head"),
    ("request_head", "smuggle_cl_te", "content-length-with-transfer-encoding"),
    ("request_head", "smuggle_host_bad_chars", "bad-host"),
    ("request_head", "smuggle_te_chunked_identity", "bad-transfer-encoding"),
    ("request_head", "smuggle_te_chunked_param", "bad-transfer-encoding"),
    ("request_head", "smuggle_te_chunked_twice", "bad-transfer-encoding"),
    ("request_head", "smuggle_te_cl", "content-length-with-transfer-encoding"),
    ("request_head", "smuggle_te_gzip_chunked", "unsupported-transfer-coding"),
    ("request_head", "smuggle_te_http10", "bad-transfer-encoding"),
    ("request_head", "smuggle_te_nul", "control-byte-in-header"),
    ("request_head", "smuggle_te_obs_fold", "malformed-head"),
    ("request_head", "smuggle_te_obs_fold_tab", "malformed-head"),
    ("request_head", "smuggle_te_quoted", "bad-transfer-encoding"),
    ("request_head", "smuggle_te_space_before_colon", "malformed-head"),
    ("request_head", "smuggle_te_two_fields", "bad-transfer-encoding"),
    ("request_head", "smuggle_te_vertical_tab", "control-byte-in-header"),
    ("request_head", "smuggle_te_xchunked", "bad-transfer-encoding"),
    ("request_head", "smuggle_two_hosts", "bad-host"),
    ("response_head", "err_status_below_100", "malformed-head"),
    ("response_head", "err_status_four_digits", "malformed-head"),
    ("response_head", "err_te_gzip_chunked_unsupported", "unsupported-transfer-coding"),
    ("response_head", "err_version_http12", "unsupported-version"),
    ("response_head", "err_version_http2", "unsupported-version"),
    ("response_head", "smuggle_cl_differ", "bad-content-length"),
    ("response_head", "smuggle_cl_te", "content-length-with-transfer-encoding"),
    ("response_head", "smuggle_header_nul", "control-byte-in-header"),
    ("response_head", "smuggle_obs_fold", "malformed-head"),
    ("response_head", "smuggle_te_chunked_twice", "bad-transfer-encoding"),
    ("chunked", "err_bare_cr_size", "BadLineEnding"),
    ("chunked", "err_bare_lf_after_data", "BadLineEnding"),
    ("chunked", "err_bare_lf_everywhere", "BadSize"),
    ("chunked", "err_data_too_long", "BadLineEnding"),
    ("chunked", "err_data_too_short", "BadLineEnding"),
    ("chunked", "err_ext_bare_lf", "BadByte"),
    ("chunked", "err_ext_control_byte", "BadByte"),
    ("chunked", "err_long_extension", "TooLong"),
    ("chunked", "err_sixteen_digit_size", "BadSize"),
    ("chunked", "err_size_0x", "BadSize"),
    ("chunked", "err_size_empty", "BadSize"),
    ("chunked", "err_size_negative", "BadSize"),
    ("chunked", "err_size_overflow", "BadSize"),
    ("chunked", "err_size_plus", "BadSize"),
    ("chunked", "err_size_space_digit", "BadSize"),
    ("chunked", "err_trailer_bare_lf", "BadByte"),
    ("chunked", "err_trailer_obs_fold", "BadByte"),
    ("config", "err_blank_name", "field `listener[0].name`"),
    ("config", "err_cluster_and_split", "field `route[0].cluster`"),
    ("config", "err_dangling_cluster", "field `route[0].cluster`"),
    ("config", "err_driver_unknown", "unknown variant `kqueue`"),
    ("config", "err_duplicate_cluster", "field `cluster[1].name`"),
    ("config", "err_duplicate_listen_addr", "field `listener[1].listen`"),
    ("config", "err_duplicate_listener", "field `listener[1].name`"),
    ("config", "err_duration_bad_unit", "unknown unit `parsecs`"),
    ("config", "err_duration_huge", "`99999999999999999999h` is too long"),
    ("config", "err_duration_no_unit", "`5` has no unit"),
    ("config", "err_empty", "field `listener`"),
    ("config", "err_empty_split", "field `route[0].split`"),
    ("config", "err_http2_health_check", "field `cluster[0].health_check`"),
    ("config", "err_limits_small", "field `listener[0].max_request_line`"),
    ("config", "err_listen_not_address", "field `listener[0].listen`"),
    ("config", "err_listener_without_route", "has no route"),
    ("config", "err_max_headers_too_many", "field `listener[0].max_headers`"),
    ("config", "err_max_headers_zero", "field `listener[0].max_headers`"),
    ("config", "err_negative_workers", "invalid value: integer `-1`"),
    ("config", "err_path_and_prefix", "field `route[0].match`"),
    ("config", "err_path_without_slash", "field `route[0].match.path`"),
    ("config", "err_pool_idle_zero", "field `cluster[0].pool.idle_timeout`"),
    ("config", "err_route_timeout_zero", "line 6, field `route[0].timeout`"),
    ("config", "err_route_needs_listener", "field `route[0].listener`"),
    ("config", "err_route_unknown_listener", "field `route[0].listener`"),
    ("config", "err_route_without_target", "field `route[0].cluster`"),
    ("config", "err_unknown_field", "unknown field `lisen`"),
    ("config", "err_unresolvable_endpoint", "field `cluster[0].endpoints`"),
    ("config", "err_zero_weight", "field `route[0].split`"),
];

/// The verdict a file name states, and the rest of the name after the
/// prefix; `None` for a SHA-1 name.
fn stated(name: &str) -> Result<Option<(Stated, &str)>, String> {
    if name.len() == 40 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Ok(None);
    }
    PREFIXES
        .iter()
        .find_map(|(prefix, verdict)| name.strip_prefix(prefix).map(|rest| Some((*verdict, rest))))
        .ok_or_else(|| {
            "a hand-written seed's name must start with its verdict: ok_, err_, smuggle_ or partial_".into()
        })
}

/// Whether `got` is the verdict `want`, refused for the `reason` given.
fn agrees(target: &str, want: Stated, reason: Option<&str>, got: &Verdict) -> bool {
    match (want, got) {
        (Stated::Accepted, Verdict::Accepted) | (Stated::Incomplete, Verdict::Incomplete) => true,
        (Stated::Refused, Verdict::Refused(why)) => match reason {
            None => true,
            Some(r) if target == "config" => why.contains(r),
            Some(r) => why == r,
        },
        _ => false,
    }
}

/// The message of a caught panic.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Runs `check` on every file of the corpus of `target` and, for hand-written
/// seeds, compares `verdict(name, data)` with the verdict the name states.
/// Fails when the corpus is missing or empty, so the test cannot pass
/// vacuously, and names every failing file with the reason.
fn replay(target: &str, check: fn(&[u8]), verdict: fn(&str, &[u8]) -> Verdict) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus directory {} is missing: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| {
            e.unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
                .path()
        })
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus directory {} is empty", dir.display());
    let name_of = |p: &Path| p.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
    let mut failed = Vec::new();
    let mut hand_written = 0;
    for file in &files {
        let name = name_of(file);
        let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| check(&data))) {
            failed.push(format!("{name}: property failed: {}", panic_message(&*p)));
        }
        let want = match stated(&name) {
            Ok(Some((want, _))) => want,
            Ok(None) => continue,
            Err(e) => {
                failed.push(format!("{name}: {e}"));
                continue;
            }
        };
        hand_written += 1;
        let reason = REFUSALS
            .iter()
            .find(|(t, f, _)| *t == target && *f == name)
            .map(|(_, _, r)| *r);
        match catch_unwind(AssertUnwindSafe(|| verdict(&name, &data))) {
            Ok(got) if agrees(target, want, reason, &got) => {}
            Ok(got) => failed.push(format!(
                "{name}: the name says {want:?}{}, the parser says {got:?}",
                reason.map(|r| format!(" ({r})")).unwrap_or_default()
            )),
            Err(p) => failed.push(format!("{name}: the parser panics: {}", panic_message(&*p))),
        }
    }
    // Every reason refers to a seed of this corpus whose name says refused.
    for (_, file, reason) in REFUSALS.iter().filter(|(t, _, _)| *t == target) {
        let named = files.iter().any(|p| name_of(p) == *file);
        if !named || !matches!(stated(file), Ok(Some((Stated::Refused, _)))) {
            failed.push(format!(
                "{file}: REFUSALS gives reason {reason:?}, but no refused seed has that name"
            ));
        }
    }
    assert!(hand_written > 0, "no hand-written seed in {}", dir.display());
    assert!(
        failed.is_empty(),
        "{} of {} {target} corpus files fail:\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
}

#[test]
fn request_head_corpus() {
    replay("request_head", checks::check_request, |_, data| {
        checks::request_verdict(data)
    });
}

#[test]
fn response_head_corpus() {
    replay("response_head", checks::check_response, |name, data| {
        let head_request = stated(name).is_ok_and(|s| s.is_some_and(|(_, rest)| rest.starts_with("head_")));
        checks::response_verdict(data, head_request)
    });
}

#[test]
fn chunked_corpus() {
    replay("chunked", checks::check_chunked, |_, data| {
        checks::chunked_verdict(data)
    });
}

#[test]
fn config_corpus() {
    replay("config", checks::check_config, |_, data| {
        checks::config_verdict(data)
    });
}

#[test]
fn deadline_corpus() {
    replay("deadline", checks::check_deadline, |_, data| {
        checks::deadline_verdict(data)
    });
}

#[test]
fn translate_corpus() {
    replay("translate", checks::check_translate, |_, data| {
        checks::translate_verdict(data)
    });
}

/// The verdict convention itself: prefixes, SHA-1 names, names without a verdict.
#[test]
fn names_state_verdicts() {
    assert_eq!(
        stated("ok_get_simple"),
        Ok(Some((Stated::Accepted, "get_simple")))
    );
    assert_eq!(stated("err_x"), Ok(Some((Stated::Refused, "x"))));
    assert_eq!(stated("smuggle_cl_te"), Ok(Some((Stated::Refused, "cl_te"))));
    assert_eq!(stated("partial_head"), Ok(Some((Stated::Incomplete, "head"))));
    assert_eq!(stated("05b962c7b0aec3044967bbefe2803f94a9ad200f"), Ok(None));
    assert!(stated("get_simple").is_err());
    assert!(stated("smuggled_request").is_err());
    assert!(stated("05B962C7B0AEC3044967BBEFE2803F94A9AD200F").is_err());
    let refused = Verdict::Refused("bad-host".into());
    assert!(agrees(
        "request_head",
        Stated::Refused,
        Some("bad-host"),
        &refused
    ));
    assert!(!agrees("request_head", Stated::Refused, Some("bad"), &refused));
    assert!(!agrees("request_head", Stated::Accepted, None, &refused));
    assert!(!agrees(
        "request_head",
        Stated::Incomplete,
        None,
        &Verdict::Accepted
    ));
    let config =
        Verdict::Refused("line 4, field `listener[0].max_headers`: must be between 1 and 256".into());
    assert!(agrees(
        "config",
        Stated::Refused,
        Some("field `listener[0].max_headers`"),
        &config
    ));
    assert!(!agrees(
        "config",
        Stated::Refused,
        Some("field `listener[0].max`"),
        &config
    ));
}
