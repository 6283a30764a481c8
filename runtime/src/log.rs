//! The process log: one line per event on stderr.

/// Writes one log line to stderr, prefixed with `weft:`.
macro_rules! log {
    ($($arg:tt)*) => {
        eprintln!("weft: {}", format_args!($($arg)*))
    };
}
pub(crate) use log;
