//! Request path normalisation before routing, as Envoy's `normalize_path`:
//! percent-encoded unreserved characters are decoded, dot segments are
//! removed (RFC 3986 §5.2.4), and optionally runs of slashes are merged.
//! A path that would climb above the root is refused, so `/a/../../etc`
//! can never reach a route (or an upstream) as something else.

use std::borrow::Cow;

/// Why a path cannot be normalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// A `..` segment above the root.
    AboveRoot,
    /// A `%` not followed by two hex digits.
    BadPercent,
}

/// RFC 3986 §2.3 unreserved characters: these mean the same encoded or not.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// True when `path` needs no work: no `%`, no dot segment, no `//` (when
/// slashes are merged). The common case, checked in one pass.
fn already_normal(path: &[u8], merge_slashes: bool) -> bool {
    if path.contains(&b'%') {
        return false;
    }
    let mut prev = b'/';
    for (i, &b) in path.iter().enumerate() {
        if b == b'/' && prev == b'/' && i > 0 && merge_slashes {
            return false;
        }
        if b == b'.' && prev == b'/' {
            // "/." followed by "/", end, or ".": a dot segment.
            match path.get(i + 1) {
                None | Some(b'/') => return false,
                Some(b'.') if matches!(path.get(i + 2), None | Some(b'/')) => return false,
                _ => {}
            }
        }
        prev = b;
    }
    true
}

/// The normalised form of an absolute `path` (starting with `/`, without
/// query): borrowed when it is already normal.
pub fn normalize(path: &[u8], merge_slashes: bool) -> Result<Cow<'_, [u8]>, PathError> {
    if already_normal(path, merge_slashes) {
        return Ok(Cow::Borrowed(path));
    }
    // 1. Decode %XX of unreserved characters; keep (upper-cased) others.
    let mut decoded = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        if b == b'%' {
            let (Some(h), Some(l)) = (
                path.get(i + 1).copied().and_then(hex),
                path.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::BadPercent);
            };
            let c = h << 4 | l;
            if unreserved(c) {
                decoded.push(c);
            } else {
                decoded.push(b'%');
                decoded.extend_from_slice(path[i + 1..i + 3].to_ascii_uppercase().as_slice());
            }
            i += 3;
        } else {
            decoded.push(b);
            i += 1;
        }
    }
    // 2. Remove dot segments (RFC 3986 §5.2.4), refusing to climb above
    //    the root; 3. merge slashes if asked.
    let mut out: Vec<u8> = Vec::with_capacity(decoded.len());
    let segments: Vec<&[u8]> = decoded.split(|b| *b == b'/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    for (k, seg) in segments.iter().enumerate() {
        match *seg {
            b"." => {
                if k == last {
                    out.push(b'/');
                }
            }
            b".." => {
                if out.is_empty() {
                    return Err(PathError::AboveRoot);
                }
                let cut = out.iter().rposition(|b| *b == b'/').unwrap_or(0);
                out.truncate(cut);
                if k == last {
                    out.push(b'/');
                }
            }
            b"" if merge_slashes && k != last => {}
            _ => {
                out.push(b'/');
                out.extend_from_slice(seg);
            }
        }
    }
    if out.is_empty() {
        out.push(b'/');
    }
    if out == path {
        // Only escapes of reserved characters, already in normal form.
        return Ok(Cow::Borrowed(path));
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(p: &str, merge: bool) -> Result<String, PathError> {
        normalize(p.as_bytes(), merge).map(|c| String::from_utf8(c.into_owned()).unwrap())
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for p in ["/", "/a/b", "/a.b/c..d/.e", "/a/b/", "/~x/-_", "/a%2Fb%C3%A9"] {
            assert!(
                matches!(normalize(p.as_bytes(), true), Ok(Cow::Borrowed(_))),
                "{p}"
            );
        }
    }

    #[test]
    fn dot_segments() {
        assert_eq!(n("/down/../x", false).unwrap(), "/x");
        assert_eq!(n("/a/./b", false).unwrap(), "/a/b");
        assert_eq!(n("/a/b/..", false).unwrap(), "/a/");
        assert_eq!(n("/a/b/.", false).unwrap(), "/a/b/");
        assert_eq!(n("/a/..", false).unwrap(), "/");
        assert_eq!(n("/..", false), Err(PathError::AboveRoot));
        assert_eq!(n("/a/../../etc", false), Err(PathError::AboveRoot));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(n("/%64own/x", false).unwrap(), "/down/x");
        assert_eq!(
            n("/a%2fb", false).unwrap(),
            "/a%2Fb",
            "an encoded slash stays encoded"
        );
        assert_eq!(n("/%2e%2E/x", false), Err(PathError::AboveRoot));
        assert_eq!(n("/a/%2e%2e/x", false).unwrap(), "/x");
        assert_eq!(n("/%zz", false), Err(PathError::BadPercent));
        assert_eq!(n("/%4", false), Err(PathError::BadPercent));
        assert_eq!(n("/caf%C3%A9", false).unwrap(), "/caf%C3%A9");
    }

    #[test]
    fn merging_slashes() {
        assert_eq!(n("//a///b//", true).unwrap(), "/a/b/");
        assert_eq!(n("//a///b//", false).unwrap(), "//a///b//");
        assert!(matches!(normalize(b"//a", false), Ok(Cow::Borrowed(_))));
    }
}
