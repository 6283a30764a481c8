//! Trace context across a hop: W3C `traceparent` passed on with a new
//! parent id (weft is a hop of the trace, not a span exporter), B3's single
//! `b3` field read for its trace id, and `x-request-id` made up for a
//! request that has none. Randomness comes in as arguments.

/// Length of a version-00 `traceparent` value.
pub const TRACEPARENT_LEN: usize = 55;

/// Length of a request id (a UUID in its text form).
pub const REQUEST_ID_LEN: usize = 36;

const HEX: &[u8; 16] = b"0123456789abcdef";

fn is_hex(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

fn nonzero(s: &[u8]) -> bool {
    s.iter().any(|b| *b != b'0')
}

/// The trace id and flags of a valid `traceparent`
/// (`<version>-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`; the
/// trace and parent ids not all zeros, version not `ff`; a version above
/// `00` may carry more fields after the flags).
fn parse(tp: &[u8]) -> Option<(&[u8], &[u8])> {
    if tp.len() < TRACEPARENT_LEN {
        return None;
    }
    let (version, id, parent, flags) = (&tp[..2], &tp[3..35], &tp[36..52], &tp[53..55]);
    let dashes = tp[2] == b'-' && tp[35] == b'-' && tp[52] == b'-';
    let ok = dashes
        && is_hex(version)
        && version != b"ff"
        && is_hex(id)
        && nonzero(id)
        && is_hex(parent)
        && nonzero(parent)
        && is_hex(flags)
        && (tp.len() == TRACEPARENT_LEN || (version != b"00" && tp[55] == b'-'));
    ok.then_some((id, flags))
}

/// The `traceparent` of the next hop: the same trace id and flags, with
/// `span` as the parent id (weft's own place in the trace), as version
/// `00`. `None` when the request's value is not a valid one (it then goes
/// on as it came: weft does not start traces).
pub fn next_hop(traceparent: &[u8], span: u64) -> Option<[u8; TRACEPARENT_LEN]> {
    let (id, flags) = parse(traceparent)?;
    let mut out = [0u8; TRACEPARENT_LEN];
    out[..3].copy_from_slice(b"00-");
    out[3..35].copy_from_slice(id);
    out[35] = b'-';
    // A parent id of zeros is invalid: one bit set keeps it valid.
    let span = if span == 0 { 1 } else { span };
    for (i, slot) in out[36..52].iter_mut().enumerate() {
        *slot = HEX[((span >> (60 - 4 * i)) & 0xf) as usize];
    }
    out[52] = b'-';
    out[53..55].copy_from_slice(flags);
    Some(out)
}

/// A request id made of 122 random bits: a version-4 UUID's text form.
pub fn request_id(a: u64, b: u64) -> [u8; REQUEST_ID_LEN] {
    // The 32 hex digits of the 128 bits, two per byte.
    let mut hex = [0u8; 32];
    for (i, byte) in a.to_be_bytes().into_iter().chain(b.to_be_bytes()).enumerate() {
        hex[2 * i] = HEX[usize::from(byte >> 4)];
        hex[2 * i + 1] = HEX[usize::from(byte & 0xf)];
    }
    // Version 4; variant 10 (the digit is 8, 9, a or b).
    hex[12] = b'4';
    hex[16] = HEX[8 | (usize::from(b.to_be_bytes()[0] >> 4) & 0x3)];
    let mut out = [b'-'; REQUEST_ID_LEN];
    out[..8].copy_from_slice(&hex[..8]);
    out[9..13].copy_from_slice(&hex[8..12]);
    out[14..18].copy_from_slice(&hex[12..16]);
    out[19..23].copy_from_slice(&hex[16..20]);
    out[24..].copy_from_slice(&hex[20..]);
    out
}

/// The trace id a request carries: from W3C `traceparent`, else from B3's
/// single `b3` field (`<16 or 32 hex>-<16 hex>[-...]`).
pub fn trace_id<'a>(traceparent: Option<&'a [u8]>, b3: Option<&'a [u8]>) -> Option<&'a str> {
    if let Some((id, _)) = traceparent.and_then(parse) {
        return std::str::from_utf8(id).ok();
    }
    let b3 = b3?;
    let mut parts = b3.split(|b| *b == b'-');
    let id = parts.next()?;
    let span = parts.next()?;
    let ok =
        (id.len() == 16 || id.len() == 32) && is_hex(id) && nonzero(id) && span.len() == 16 && is_hex(span);
    ok.then(|| std::str::from_utf8(id).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_next_hop_keeps_the_trace_and_flags_with_a_new_parent() {
        let next = next_hop(TP, 0x0123_4567_89ab_cdef).expect("valid");
        assert_eq!(
            &next[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0123456789abcdef-01"
        );
        assert_eq!(
            trace_id(Some(&next), None),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        let zero = next_hop(TP, 0).expect("valid");
        assert_eq!(&zero[36..52], b"0000000000000001", "never an all-zero parent");
        // A later version with more fields: the known four go on as 00.
        let v1 = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
        assert_eq!(&next_hop(v1, 1).expect("valid")[..3], b"00-");
    }

    #[test]
    fn invalid_traceparents_are_not_continued() {
        for bad in [
            &b""[..],
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(next_hop(bad, 7), None, "{}", String::from_utf8_lossy(bad));
            assert_eq!(trace_id(Some(bad), None), None);
        }
    }

    #[test]
    fn request_ids_are_version_4_uuids() {
        let id = request_id(u64::MAX, u64::MAX);
        assert_eq!(&id[..], b"ffffffff-ffff-4fff-bfff-ffffffffffff");
        let id = request_id(0, 0);
        assert_eq!(&id[..], b"00000000-0000-4000-8000-000000000000");
        let id = request_id(0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210);
        assert_eq!(&id[..], b"01234567-89ab-4def-bedc-ba9876543210");
    }

    #[test]
    fn trace_ids_from_traceparent_or_b3() {
        assert_eq!(trace_id(Some(TP), None), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        let b3 = b"80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1";
        assert_eq!(trace_id(None, Some(b3)), Some("80f198ee56343ba864fe8b2a57d3eff7"));
        assert_eq!(
            trace_id(Some(b"junk"), Some(b"a3ce929d0e0e4736-00f067aa0ba902b7")),
            Some("a3ce929d0e0e4736")
        );
        assert_eq!(trace_id(None, Some(b"0")), None);
    }
}
