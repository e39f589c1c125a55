//! The request's authority (`host[:port]`), checked and made canonical.
//!
//! Called by [`canonical`](super::canonical) on the Host field, `:authority` or an
//! absolute-form target. Stricter than RFC 3986's `authority`, on purpose: no user info, no
//! percent-encoding or sub-delimiters in the host (no DNS name has them), a port of 1 to 5
//! digits. The host is lower-cased and loses a trailing dot (`A.Test.` and `a.test` are one
//! name), so the router, the 421 check and the origin all see the same name.

use std::net::Ipv6Addr;
use std::sync::Arc;

use http::HeaderValue;

/// A valid authority, canonical.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authority {
    /// The host, lower-case, no trailing dot; an IPv6 address keeps its brackets.
    pub host: Arc<str>,
    /// The port, when one was written.
    pub port: Option<u16>,
    /// `host[:port]` as the origin's Host field and `X-Forwarded-Host` carry it.
    pub value: HeaderValue,
}

/// Why an authority was refused (a 400).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    /// Empty, or longer than a DNS name and a port can be.
    #[error("the host is empty or too long")]
    Length,
    /// `user@host`: credentials have no place in a request's host.
    #[error("the host carries user info")]
    UserInfo,
    /// Not a DNS name, an IPv4 address or a bracketed IPv6 address.
    #[error("the host is not a DNS name or an IP address")]
    Host,
    /// A port that is empty, not a number, zero or above 65535.
    #[error("the port is not a number from 1 to 65535")]
    Port,
}

/// Longest authority accepted: a 253-byte name, its trailing dot, `:` and 5 digits.
const MAX_LEN: usize = 253 + 1 + 6;

impl Authority {
    /// Parses and makes canonical the authority `text` (a Host value, `:authority`, or the
    /// authority of an absolute-form target). `raw` is that same value when it came as a
    /// field, reused when it is canonical already, as it usually is.
    ///
    /// # Errors
    /// An [`AuthorityError`] saying what is wrong with it.
    pub fn parse(text: &str, raw: Option<&HeaderValue>) -> Result<Self, AuthorityError> {
        if text.is_empty() || text.len() > MAX_LEN {
            return Err(AuthorityError::Length);
        }
        // `@` is no host or port byte: the error is worth telling apart only once it happened.
        let user_info = |error| {
            if text.contains('@') {
                AuthorityError::UserInfo
            } else {
                error
            }
        };
        let (host, port) = split_port(text).map_err(user_info)?;
        let shape = host_shape(host).map_err(user_info)?;
        let name = &host[..host.len() - usize::from(shape.trailing_dot)];
        let value = if shape.is_canonical() {
            // One copy at most: none when the field came canonical, as it usually does.
            match raw {
                Some(raw) => raw.clone(),
                None => HeaderValue::from_str(text).map_err(|_| AuthorityError::Host)?,
            }
        } else {
            let mut value = String::with_capacity(text.len());
            value.push_str(name);
            value.make_ascii_lowercase();
            if let Some((digits, _)) = port {
                value.push(':');
                value.push_str(digits);
            }
            HeaderValue::try_from(value).map_err(|_| AuthorityError::Host)?
        };
        let host: Arc<str> = if shape.upper_case {
            name.to_ascii_lowercase().into()
        } else {
            name.into()
        };
        Ok(Self {
            host,
            port: port.map(|(_, number)| number),
            value,
        })
    }
}

/// A host and, when one was written, its port as written and as a number.
type HostPort<'a> = (&'a str, Option<(&'a str, u16)>);

/// Splits `host[:port]`.
fn split_port(text: &str) -> Result<HostPort<'_>, AuthorityError> {
    let colon = if text.starts_with('[') {
        // `[v6]` or `[v6]:port`: the port's colon, if any, follows the bracket.
        let close = text.find(']').ok_or(AuthorityError::Host)?;
        match text.as_bytes().get(close + 1) {
            None => None,
            Some(b':') => Some(close + 1),
            Some(_) => return Err(AuthorityError::Host),
        }
    } else {
        text.rfind(':')
    };
    let Some(colon) = colon else {
        return Ok((text, None));
    };
    let digits = &text[colon + 1..];
    let number = Some(digits)
        .filter(|d| (1..=5).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse::<u16>().ok())
        .filter(|n| *n != 0)
        .ok_or(AuthorityError::Port)?;
    Ok((&text[..colon], Some((digits, number))))
}

/// What a valid host looks like against its canonical form.
#[derive(Clone, Copy)]
struct Shape {
    /// It has upper-case letters.
    upper_case: bool,
    /// It ends in a dot (a fully-qualified name).
    trailing_dot: bool,
}

impl Shape {
    fn is_canonical(self) -> bool {
        !self.upper_case && !self.trailing_dot
    }
}

/// Checks `host` in one pass: a bracketed IPv6 address, or dot-separated labels of 1 to 63
/// letters, digits, `-` and `_` (which covers IPv4 addresses), 253 bytes at most, with one
/// trailing dot allowed.
fn host_shape(host: &str) -> Result<Shape, AuthorityError> {
    if let Some(inner) = host.strip_prefix('[') {
        let address = inner.strip_suffix(']').ok_or(AuthorityError::Host)?;
        // No zone identifiers (`%25eth0`): they name an interface of the client, not a host.
        address
            .parse::<Ipv6Addr>()
            .map_err(|_| AuthorityError::Host)?;
        return Ok(Shape {
            upper_case: address.bytes().any(|b| b.is_ascii_uppercase()),
            trailing_dot: false,
        });
    }
    let bytes = host.as_bytes();
    let trailing_dot = bytes.last() == Some(&b'.');
    if bytes.is_empty() || bytes.len() - usize::from(trailing_dot) > 253 {
        return Err(AuthorityError::Host);
    }
    // Where the current label started; a dot must end a label of 1 to 63 bytes.
    let (mut start, mut upper_case) = (0, false);
    for (index, &byte) in bytes.iter().enumerate() {
        match byte {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => {}
            b'A'..=b'Z' => upper_case = true,
            b'.' if (1..=63).contains(&(index - start)) => start = index + 1,
            _ => return Err(AuthorityError::Host),
        }
    }
    // The last label, unless the name ended with its trailing dot.
    if !trailing_dot && !(1..=63).contains(&(bytes.len() - start)) {
        return Err(AuthorityError::Host);
    }
    Ok(Shape {
        upper_case,
        trailing_dot,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<(String, Option<u16>, String), AuthorityError> {
        Authority::parse(text, None).map(|a| {
            (
                a.host.to_string(),
                a.port,
                a.value.to_str().unwrap().to_owned(),
            )
        })
    }

    #[test]
    fn names_and_addresses_are_made_canonical() {
        let ok = |host: &str, port, value: &str| Ok((host.to_owned(), port, value.to_owned()));
        assert_eq!(parse("a.test"), ok("a.test", None, "a.test"));
        assert_eq!(
            parse("A.Test:8443"),
            ok("a.test", Some(8443), "a.test:8443")
        );
        assert_eq!(parse("a.test."), ok("a.test", None, "a.test"));
        assert_eq!(parse("a.test.:443"), ok("a.test", Some(443), "a.test:443"));
        assert_eq!(
            parse("127.0.0.1:80"),
            ok("127.0.0.1", Some(80), "127.0.0.1:80")
        );
        assert_eq!(parse("[::1]:8443"), ok("[::1]", Some(8443), "[::1]:8443"));
        assert_eq!(
            parse("[2001:DB8::1]"),
            ok("[2001:db8::1]", None, "[2001:db8::1]")
        );
        assert_eq!(parse("localhost"), ok("localhost", None, "localhost"));
        assert_eq!(
            parse("my_host.test"),
            ok("my_host.test", None, "my_host.test")
        );
    }

    #[test]
    fn a_canonical_field_value_is_reused() {
        let raw = HeaderValue::from_static("a.test:8443");
        let parsed = Authority::parse(raw.to_str().unwrap(), Some(&raw)).unwrap();
        assert_eq!(parsed.value, raw);
        let raw = HeaderValue::from_static("A.test:8443");
        let parsed = Authority::parse(raw.to_str().unwrap(), Some(&raw)).unwrap();
        assert_eq!(parsed.value, "a.test:8443");
    }

    #[test]
    fn anything_else_is_refused() {
        for (text, error) in [
            ("", AuthorityError::Length),
            ("user@a.test", AuthorityError::UserInfo),
            ("a.test:", AuthorityError::Port),
            ("a.test:0", AuthorityError::Port),
            ("a.test:65536", AuthorityError::Port),
            ("a.test:+80", AuthorityError::Port),
            ("a.test:080080", AuthorityError::Port),
            ("a.test:80:80", AuthorityError::Host),
            ("a..test", AuthorityError::Host),
            ("a test", AuthorityError::Host),
            ("a%2etest", AuthorityError::Host),
            ("a.test/x", AuthorityError::Host),
            ("a,b.test", AuthorityError::Host),
            ("café.test", AuthorityError::Host),
            ("a.test..", AuthorityError::Host),
            ("..", AuthorityError::Host),
            (".", AuthorityError::Host),
            ("[::1", AuthorityError::Host),
            ("[::1]x", AuthorityError::Host),
            ("[fe80::1%25eth0]", AuthorityError::Host),
            ("[a.test]", AuthorityError::Host),
            (":80", AuthorityError::Host),
        ] {
            assert_eq!(parse(text), Err(error), "{text:?}");
        }
        assert_eq!(parse(&"a".repeat(300)), Err(AuthorityError::Length));
        let label = |n: usize| format!("{}.test", "a".repeat(n));
        assert!(parse(&label(63)).is_ok());
        assert_eq!(parse(&label(64)), Err(AuthorityError::Host));
        assert_eq!(
            parse(&"a".repeat(64)),
            Err(AuthorityError::Host),
            "the last label too"
        );
        let name = |n: usize| ["a"; 127].join(".")[..n].to_owned();
        assert!(parse(&name(253)).is_ok());
        assert!(
            parse(&format!("{}.", name(253))).is_ok(),
            "with its trailing dot"
        );
        assert_eq!(parse(&format!("{}a", name(253))), Err(AuthorityError::Host));
    }
}
