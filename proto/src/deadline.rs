//! Deadlines a request carries: gRPC's `grpc-timeout` and weft's own
//! `weft-timeout-ms`. Both say how long the caller will wait, counted from
//! when the request was sent; a proxy shortens its own timeout to it and
//! passes it on minus the time already spent.
//!
//! `grpc-timeout` (gRPC over HTTP/2): at most 8 ASCII digits, then a unit:
//! `H` hours, `M` minutes, `S` seconds, `m` milliseconds, `u` microseconds,
//! `n` nanoseconds. `weft-timeout-ms`: at most 10 ASCII digits of
//! milliseconds. Anything else is not a deadline (and is ignored).

use bytes::{BufMut, BytesMut};
use std::io::Write;
use std::time::Duration;

/// Which deadline field a header is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadlineField {
    /// `grpc-timeout`.
    Grpc,
    /// `weft-timeout-ms`.
    WeftMs,
}

impl DeadlineField {
    /// The field named `name` (any case), if it is one.
    pub fn of(name: &[u8]) -> Option<Self> {
        if name.eq_ignore_ascii_case(b"grpc-timeout") {
            Some(DeadlineField::Grpc)
        } else if name.eq_ignore_ascii_case(b"weft-timeout-ms") {
            Some(DeadlineField::WeftMs)
        } else {
            None
        }
    }

    /// The field's value as a duration, when it is well-formed.
    pub fn parse(self, value: &[u8]) -> Option<Duration> {
        match self {
            DeadlineField::Grpc => parse_grpc_timeout(value),
            DeadlineField::WeftMs => parse_timeout_ms(value),
        }
    }

    /// Appends `d` as this field's value (rounded down, and at least the
    /// smallest unit: a deadline passed on is never longer, nor zero).
    pub fn put(self, d: Duration, out: &mut BytesMut) {
        match self {
            DeadlineField::Grpc => put_grpc_timeout(d, out),
            DeadlineField::WeftMs => {
                let ms = d.as_millis().clamp(1, MAX_MS as u128);
                let _ = write!(out.writer(), "{ms}");
            }
        }
    }
}

/// The longest `weft-timeout-ms` (10 digits).
const MAX_MS: u64 = 9_999_999_999;

/// The longest value of a `grpc-timeout` (8 digits).
const MAX_GRPC: u64 = 99_999_999;

/// Parses a `grpc-timeout` value.
pub fn parse_grpc_timeout(v: &[u8]) -> Option<Duration> {
    let (&unit, digits) = v.split_last()?;
    let n = digits_value(digits, 8)?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Parses a `weft-timeout-ms` value.
pub fn parse_timeout_ms(v: &[u8]) -> Option<Duration> {
    digits_value(v, 10).map(Duration::from_millis)
}

/// 1 to `most` ASCII digits as a number.
fn digits_value(digits: &[u8], most: usize) -> Option<u64> {
    if digits.is_empty() || digits.len() > most || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Appends `d` as a `grpc-timeout` value: in the finest unit whose count
/// fits 8 digits, rounded down, at least `1n`.
pub fn put_grpc_timeout(d: Duration, out: &mut BytesMut) {
    let nanos = d.as_nanos().max(1);
    let units: [(u128, u8); 6] = [
        (1, b'n'),
        (1_000, b'u'),
        (1_000_000, b'm'),
        (1_000_000_000, b'S'),
        (60_000_000_000, b'M'),
        (3_600_000_000_000, b'H'),
    ];
    let (n, unit) = units
        .iter()
        .map(|&(per, unit)| (nanos / per, unit))
        .find(|&(n, _)| n <= u128::from(MAX_GRPC))
        .unwrap_or((u128::from(MAX_GRPC), b'H'));
    let _ = write!(out.writer(), "{n}");
    out.put_u8(unit);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grpc(d: Duration) -> String {
        let mut out = BytesMut::new();
        put_grpc_timeout(d, &mut out);
        String::from_utf8(out.to_vec()).expect("ASCII")
    }

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout(b"3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(
            parse_grpc_timeout(b"99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(parse_grpc_timeout(b"7n"), Some(Duration::from_nanos(7)));
        for bad in [
            &b""[..],
            b"m",
            b"100",
            b"100x",
            b"-1S",
            b" 1S",
            b"1 S",
            b"123456789m",
            b"1.5S",
        ] {
            assert_eq!(
                parse_grpc_timeout(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn grpc_timeouts_are_written_in_the_finest_unit_that_fits() {
        assert_eq!(grpc(Duration::from_millis(250)), "250000u");
        assert_eq!(grpc(Duration::from_micros(99_999)), "99999000n");
        assert_eq!(grpc(Duration::from_secs(1)), "1000000u");
        assert_eq!(grpc(Duration::from_secs(3600)), "3600000m");
        assert_eq!(grpc(Duration::ZERO), "1n");
        assert_eq!(grpc(Duration::from_secs(u64::MAX)), "99999999H");
        // Rounded down: never longer than what is left.
        assert_eq!(grpc(Duration::new(99_999, 999_999_999)), "99999999m");
        assert_eq!(grpc(Duration::new(100_000, 999_999_999)), "100000S");
    }

    #[test]
    fn weft_timeouts() {
        assert_eq!(parse_timeout_ms(b"1500"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_timeout_ms(b"12345678901"), None);
        assert_eq!(parse_timeout_ms(b"15s"), None);
        let mut out = BytesMut::new();
        DeadlineField::WeftMs.put(Duration::from_micros(1500), &mut out);
        assert_eq!(&out[..], b"1");
        assert_eq!(DeadlineField::of(b"GRPC-Timeout"), Some(DeadlineField::Grpc));
        assert_eq!(DeadlineField::of(b"weft-timeout-ms"), Some(DeadlineField::WeftMs));
        assert_eq!(DeadlineField::of(b"timeout"), None);
    }
}
