//! The canonical form of a request path: what the router, every policy and the origin see.
//!
//! Pure functions, called once per request by [`canonical`](super::canonical). Origins differ
//! in how they read a path (most frameworks collapse `//`, decode `%61` to `a`, remove `.` and
//! `..` segments; some read `\` as `/` or `..;` as `..`), so a path that is not canonical could
//! match one route here and be served as another path there. The canonical form has one
//! spelling for each path the origins could understand:
//!
//! - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded (RFC 3986 §6.2.2.2),
//!   other escapes keep their encoding with upper-case hex (§6.2.2.1), and bytes that are not
//!   allowed in a path (`"`, `{`, `|`, non-ASCII, …) are percent-encoded;
//! - dot segments are removed (§5.2.4) after that decoding, so `%2e%2e` is `..` too;
//! - repeated slashes are merged; a trailing slash stays.
//!
//! What cannot be made unambiguous is an error: a `..` climbing above `/`, invalid
//! percent-encoding, an encoded control byte, a raw backslash, and a dot segment with a
//! parameter (`..;x`, which Tomcat reads as `..`). An encoded slash or backslash (`%2F`, `%5C`)
//! stays encoded and is reported, so the route can refuse it (the default) or keep it.

use std::borrow::Cow;

/// A path made canonical.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CanonicalPath<'a> {
    /// The path: borrowed when the request's path was canonical already (the common case).
    pub text: Cow<'a, str>,
    /// Whether it holds `%2F` or `%5C`, which origins may decode into a separator.
    pub escaped_slash: bool,
}

/// Why a path cannot be made canonical; each is a 400.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// It does not start with `/`.
    #[error("the path does not start with /")]
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    #[error("invalid percent-encoding")]
    BadEscape,
    /// A control byte, raw or encoded (`%00`-`%1F`, `%7F`).
    #[error("the path holds a control byte")]
    Control,
    /// A raw `\`, which some origins read as `/`.
    #[error("the path holds a backslash")]
    Backslash,
    /// More `..` segments than there are segments to remove.
    #[error("a dot segment climbs above /")]
    AboveRoot,
    /// `.` or `..` followed by `;` parameters, read as a dot segment by some servers.
    #[error("a dot segment carries parameters")]
    DotParameters,
}

/// The canonical form of `path` (the request's path, without its query).
///
/// # Errors
/// A [`PathError`] when the path cannot be made unambiguous.
pub fn canonical(path: &str) -> Result<CanonicalPath<'_>, PathError> {
    if is_canonical(path.as_bytes()) {
        return Ok(CanonicalPath {
            text: Cow::Borrowed(path),
            escaped_slash: false,
        });
    }
    let (text, escaped_slash) = rebuild(path)?;
    // A path with only upper-case escapes of reserved characters is canonical as it came.
    let text = if text == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(text)
    };
    Ok(CanonicalPath {
        text,
        escaped_slash,
    })
}

/// Bytes a canonical path holds as they are: unreserved, sub-delims, `:`, `@` and `/`
/// (RFC 3986 `pchar` without `%`, plus the separator).
const PLAIN: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = matches!(byte as u8,
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~'
            | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
            | b':' | b'@' | b'/');
        byte += 1;
    }
    table
};

/// Whether `path` is canonical as it is: one pass, no allocation. `false` sends it to
/// [`rebuild`], which decides; so this may say `false` for a canonical path (one holding `%`),
/// never `true` for one that is not.
fn is_canonical(path: &[u8]) -> bool {
    if path.first() != Some(&b'/') {
        return false;
    }
    let mut previous = b'/';
    for (index, &byte) in path.iter().enumerate().skip(1) {
        if !PLAIN[usize::from(byte)] || (byte == b'/' && previous == b'/') {
            return false;
        }
        if byte == b'.' && previous == b'/' && is_dot_segment(&path[index..]) {
            return false;
        }
        previous = byte;
    }
    true
}

/// Whether the segment starting at `rest` (which starts with `.`) is `.` or `..`, alone or
/// with `;` parameters.
fn is_dot_segment(rest: &[u8]) -> bool {
    let ends = |at: usize| matches!(rest.get(at), None | Some(b'/' | b';'));
    ends(1) || (rest.get(1) == Some(&b'.') && ends(2))
}

/// The canonical path built segment by segment, and whether it kept an encoded slash.
fn rebuild(path: &str) -> Result<(String, bool), PathError> {
    let rest = path.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    let mut out = String::with_capacity(path.len() + 8);
    // Where each segment kept so far starts in `out` (at its `/`), for `..` to remove it.
    let mut starts: Vec<usize> = Vec::new();
    let mut segment = String::new();
    // Whether the path ends in a slash: a last segment that is empty, `.` or `..`.
    let mut trailing_slash = false;
    let mut raw_segments = rest.split('/').peekable();
    while let Some(raw) = raw_segments.next() {
        let last = raw_segments.peek().is_none();
        segment.clear();
        decode_segment(raw.as_bytes(), &mut segment)?;
        match segment.as_str() {
            "" | "." => trailing_slash = last,
            ".." => {
                let start = starts.pop().ok_or(PathError::AboveRoot)?;
                out.truncate(start);
                trailing_slash = last;
            }
            dotted if dotted.starts_with(".;") || dotted.starts_with("..;") => {
                return Err(PathError::DotParameters);
            }
            kept => {
                starts.push(out.len());
                out.push('/');
                out.push_str(kept);
                trailing_slash = false;
            }
        }
    }
    if trailing_slash || out.is_empty() {
        out.push('/');
    }
    // Only what is kept counts: `/a%2Fb/..` holds no encoded slash any more.
    let escaped_slash = out.contains("%2F") || out.contains("%5C");
    Ok((out, escaped_slash))
}

/// Appends the canonical spelling of one raw segment to `out`.
fn decode_segment(raw: &[u8], out: &mut String) -> Result<(), PathError> {
    let mut index = 0;
    while index < raw.len() {
        let byte = raw[index];
        index += 1;
        let (value, was_escaped) = if byte == b'%' {
            let hex = raw.get(index..index + 2).ok_or(PathError::BadEscape)?;
            index += 2;
            (hex_value(hex[0], hex[1]).ok_or(PathError::BadEscape)?, true)
        } else {
            (byte, false)
        };
        match value {
            0x00..=0x1F | 0x7F => return Err(PathError::Control),
            b'\\' if !was_escaped => return Err(PathError::Backslash),
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(value));
            }
            // A reserved character keeps the form it came in: RFC 3986 §2.2 does not make
            // `;` and `%3B` the same.
            _ if PLAIN[usize::from(value)] && !was_escaped => out.push(char::from(value)),
            // `%2F` and `%5C` among them: kept encoded, reported by the caller.
            _ => push_escaped(out, value),
        }
    }
    Ok(())
}

fn push_escaped(out: &mut String, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(byte >> 4)]));
    out.push(char::from(HEX[usize::from(byte & 0xF)]));
}

fn hex_value(high: u8, low: u8) -> Option<u8> {
    let digit = |b: u8| {
        char::from(b)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    };
    Some(digit(high)? << 4 | digit(low)?)
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    fn canon(path: &str) -> Result<String, PathError> {
        canonical(path).map(|c| c.text.into_owned())
    }

    #[test]
    fn canonical_paths_are_borrowed_as_they_are() {
        for path in [
            "/",
            "/a",
            "/api/v1/users",
            "/a/b/",
            "/.well-known/acme-challenge/x",
            "/a.b/..c/c..",
            "/a;b=c/d:e@f!$&'()*+,=",
            "/%20x%2Cy",
            "/caf%C3%A9",
        ] {
            let made = canonical(path).unwrap();
            assert!(matches!(made.text, Cow::Borrowed(_)), "{path}");
            assert_eq!(made.text, path);
        }
    }

    #[test]
    fn the_bypass_spellings_of_a_path_become_that_path() {
        for (given, expected) in [
            ("//admin/x", "/admin/x"),
            ("/%61dmin/x", "/admin/x"),
            ("/%61%64%6D%69%6e/x", "/admin/x"),
            ("/x/../admin/x", "/admin/x"),
            ("/./admin/x", "/admin/x"),
            ("/admin/./x", "/admin/x"),
            ("/admin//x", "/admin/x"),
            ("/admin/x/.", "/admin/x/"),
            ("/admin/x/..", "/admin/"),
            ("/admin/x/y/../..", "/admin/"),
            ("/x/%2e%2e/admin", "/admin"),
            ("/x/.%2E/admin", "/admin"),
            ("/x/%2e/admin", "/x/admin"),
            ("/a//", "/a/"),
            ("//", "/"),
            ("/.", "/"),
            ("/./", "/"),
            ("/a/..", "/"),
            ("/api/../internal", "/internal"),
        ] {
            assert_eq!(canon(given).as_deref(), Ok(expected), "{given}");
        }
    }

    #[test]
    fn escapes_are_upper_case_and_bytes_outside_a_path_are_encoded() {
        assert_eq!(canon("/a%2cb%c3%a9").as_deref(), Ok("/a%2Cb%C3%A9"));
        assert_eq!(
            canon("/a%3Bb").as_deref(),
            Ok("/a%3Bb"),
            "reserved stays escaped"
        );
        assert_eq!(canon("/a;b").as_deref(), Ok("/a;b"), "reserved stays raw");
        assert_eq!(canon("/\"{}|^[]").as_deref(), Ok("/%22%7B%7D%7C%5E%5B%5D"));
        assert_eq!(canon("/café").as_deref(), Ok("/caf%C3%A9"));
        assert_eq!(canon("/a%20b").as_deref(), Ok("/a%20b"));
    }

    #[test]
    fn encoded_slashes_stay_encoded_and_are_reported() {
        let made = canonical("/admin%2fx").unwrap();
        assert_eq!(
            (made.text.as_ref(), made.escaped_slash),
            ("/admin%2Fx", true)
        );
        let made = canonical("/a%5cb").unwrap();
        assert_eq!((made.text.as_ref(), made.escaped_slash), ("/a%5Cb", true));
        assert!(!canonical("/a/b").unwrap().escaped_slash);
        // `..` next to an encoded slash is not a dot segment: it stays.
        assert_eq!(canon("/a/..%2f..").as_deref(), Ok("/a/..%2F.."));
    }

    #[test]
    fn what_cannot_be_made_safe_is_an_error() {
        for (given, error) in [
            ("/..", PathError::AboveRoot),
            ("/a/../..", PathError::AboveRoot),
            ("/../a", PathError::AboveRoot),
            ("/%2e%2e/a", PathError::AboveRoot),
            ("//../a", PathError::AboveRoot),
            ("/a%", PathError::BadEscape),
            ("/a%2", PathError::BadEscape),
            ("/a%zz", PathError::BadEscape),
            ("/a%+1", PathError::BadEscape),
            ("/a%00", PathError::Control),
            ("/a%0A", PathError::Control),
            ("/a%7f", PathError::Control),
            ("/a\\b", PathError::Backslash),
            ("/a/..;/admin", PathError::DotParameters),
            ("/a/.;x/b", PathError::DotParameters),
            ("a/b", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
        ] {
            assert_eq!(canon(given), Err(error), "{given}");
        }
    }

    /// Random paths over the bytes that matter: canonicalising is idempotent, and the fast
    /// check never calls a path canonical that the full rebuild would change.
    #[test]
    fn canonical_form_is_a_fixed_point_and_the_fast_check_agrees() {
        const ALPHABET: &[&str] = &[
            "/", "/", "/", ".", "..", "a", "B", "%2e", "%2E", "%2f", "%41", "%7e", "%3b", ";", "%",
            "%c3%a9", "é", "\"", "~", "-", "%25", ":", "@",
        ];
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        for _ in 0..20_000 {
            let mut path = String::from("/");
            for _ in 0..rng.random_range(0..12) {
                path.push_str(ALPHABET[rng.random_range(0..ALPHABET.len())]);
            }
            let Ok(made) = canonical(&path) else { continue };
            let again = canonical(&made.text).expect("a canonical path stays valid");
            assert_eq!(again.text, made.text, "idempotent for {path:?}");
            assert_eq!(again.escaped_slash, made.escaped_slash, "{path:?}");
            if is_canonical(path.as_bytes()) {
                assert_eq!(rebuild(&path).map(|r| r.0).as_deref(), Ok(path.as_str()));
            }
            assert!(
                made.text
                    .bytes()
                    .all(|b| PLAIN[usize::from(b)] || b == b'%'),
                "only path bytes in {:?}",
                made.text
            );
            assert!(!made.text.contains("//"), "{:?}", made.text);
        }
    }
}
