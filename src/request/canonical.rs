//! One canonical request, made once before routing: the router, every policy and the origin
//! see the same path, the same single authority and only the fields this hop vouches for.
//!
//! Called by `proxy::service` for every request, before anything reads its target or host;
//! edits the request in place and returns what it settled. What cannot be made unambiguous is
//! refused (a [`Refusal`], a 400 or 405) and never reaches an origin:
//!
//! - the target must be origin-form, absolute-form (`http`/`https`; its authority then is the
//!   request's, RFC 9112 §3.2.2) or `*` for OPTIONS; CONNECT is never served; the path is made
//!   canonical by [`path`](super::path);
//! - the authority is settled once: an HTTP/1.1 request needs exactly one valid Host (RFC 9112
//!   §3.2), an absolute-form authority wins over it; over HTTP/2 a `host` field must agree
//!   with `:authority` (RFC 9113 §8.3.1). The request then carries exactly one Host, that
//!   authority made canonical;
//! - at most one `Authorization` field (only one could be verified);
//! - hop-by-hop fields and the fields `Connection` names are removed here, before any policy
//!   sets a field `Connection` could name; an `Upgrade` other than `websocket` is refused (an
//!   `h2c` upgrade would hand the origin's connection to the client);
//! - forwarding fields (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`, …) are removed unless the
//!   peer is a trusted proxy, and names with `_` are dropped (or refused, or allowed, as
//!   configured): an origin behind a CGI-style gateway reads `X_User_Id` as `X-User-Id`.

use std::borrow::Cow;

use http::header::{self, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Method, Request, Version};

use crate::request::authority::{Authority, AuthorityError};
use crate::request::fields::{self, Class, Underscores};
use crate::request::path::{self, PathError};

/// What the request came over, as far as canonicalisation cares.
#[derive(Clone, Copy, Debug)]
pub struct Client<'a> {
    /// Whether the connection speaks HTTP/2.
    pub is_h2: bool,
    /// The name the connection reached: its TLS server name, else the default site's. An
    /// HTTP/1.0 request without Host (RFC 1945 had none) is for that name, as nginx takes it.
    pub reached: Option<&'a str>,
    /// Whether the peer is in `trusted_proxies`, so its forwarding fields are kept.
    pub trusted_peer: bool,
}

/// What canonicalisation settled about a request.
#[derive(Clone, Debug)]
pub struct Canonical {
    /// The request's one authority; the request's Host field now carries it.
    pub authority: Authority,
    /// Whether it asks for a WebSocket upgrade (HTTP/1.1), whose `Upgrade` field is kept.
    pub upgrade: bool,
    /// Whether its path keeps an encoded slash or backslash (`%2F`, `%5C`): refused unless the
    /// route keeps them (`escaped_slashes: keep`).
    pub escaped_slash: bool,
}

/// Why a request was refused before routing; each has a stable log name ([`Refusal::kind`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// CONNECT: Rampart is not a forward proxy (405).
    #[error("CONNECT is not served")]
    Connect,
    /// A target that is neither origin-form, absolute-form (http/https) nor `*` for OPTIONS.
    #[error("the request target is not origin-form or absolute-form")]
    Target,
    /// A path that cannot be made canonical.
    #[error("the path is refused")]
    Path(#[source] PathError),
    /// An encoded slash or backslash on a route that does not keep them.
    #[error("the path holds an encoded slash or backslash")]
    EscapedSlash,
    /// No Host (HTTP/1.1), or no authority at all.
    #[error("the request has no Host")]
    MissingHost,
    /// More than one Host field.
    #[error("the request has more than one Host field")]
    DuplicateHost,
    /// A Host or authority that is not a valid `host[:port]`.
    #[error("the request's host is invalid")]
    Host(#[source] AuthorityError),
    /// HTTP/2 `host` and `:authority` name different authorities.
    #[error("the host field does not match :authority")]
    HostMismatch,
    /// More than one Authorization field.
    #[error("the request has more than one Authorization field")]
    DuplicateAuthorization,
    /// An upgrade to anything but `websocket`.
    #[error("the request asks to upgrade to something other than websocket")]
    Upgrade,
    /// A field name with `_` under `headers_with_underscores: reject`.
    #[error("a header field name holds an underscore")]
    Underscore,
}

impl Refusal {
    /// The access log's `error` value.
    pub fn kind(self) -> &'static str {
        match self {
            Self::Connect => "method_not_allowed",
            Self::Target => "bad_target",
            Self::Path(_) => "bad_path",
            Self::EscapedSlash => "escaped_slash",
            Self::MissingHost => "missing_host",
            Self::DuplicateHost => "duplicate_host",
            Self::Host(_) => "bad_host",
            Self::HostMismatch => "host_mismatch",
            Self::DuplicateAuthorization => "duplicate_authorization",
            Self::Upgrade => "bad_upgrade",
            Self::Underscore => "underscore_header",
        }
    }
}

/// Makes `request` canonical (see the module doc) and returns what it settled.
///
/// # Errors
/// The [`Refusal`] when it cannot be made unambiguous; the request must then not be forwarded.
pub fn canonicalize<B>(
    request: &mut Request<B>,
    client: Client<'_>,
    underscores: Underscores,
) -> Result<Canonical, Refusal> {
    if request.method() == Method::CONNECT {
        return Err(Refusal::Connect);
    }
    // The authority first: a new canonical target is origin-form.
    let authority = settle_authority(request, client)?;
    let escaped_slash = canonical_target(request)?;
    let upgrade = !client.is_h2 && fields::is_upgrade(request.headers());
    if upgrade {
        check_upgrade(request.headers())?;
    }
    if at_most_one(request.headers(), &header::AUTHORIZATION).is_err() {
        return Err(Refusal::DuplicateAuthorization);
    }
    remove_fields(
        request.headers_mut(),
        client.trusted_peer,
        upgrade,
        underscores,
    )?;
    Ok(Canonical {
        authority,
        upgrade,
        escaped_slash,
    })
}

/// Checks the target's form and makes its path canonical; returns whether the path keeps an
/// encoded slash.
fn canonical_target<B>(request: &mut Request<B>) -> Result<bool, Refusal> {
    let uri = request.uri();
    if let Some(scheme) = uri.scheme_str() {
        if !matches!(scheme, "https" | "http") {
            return Err(Refusal::Target);
        }
    } else if uri.authority().is_some() {
        // Authority-form (`a.test:443`) is CONNECT's, refused above.
        return Err(Refusal::Target);
    }
    if uri.path() == "*" {
        return match request.method() == Method::OPTIONS && uri.query().is_none() {
            true => Ok(false),
            false => Err(Refusal::Target),
        };
    }
    let canonical = path::canonical(uri.path()).map_err(Refusal::Path)?;
    let escaped_slash = canonical.escaped_slash;
    if let Cow::Owned(path) = canonical.text {
        // The origin gets the canonical path with the query as it came; the authority was read
        // into `Canonical` and the Host field, so the new target is origin-form.
        let target = match uri.query() {
            Some(query) => format!("{path}?{query}"),
            None => path,
        };
        let target = PathAndQuery::try_from(target).map_err(|_| Refusal::Target)?;
        *request.uri_mut() = Uri::from(target);
    }
    Ok(escaped_slash)
}

/// Settles the one authority and leaves exactly one Host field carrying it.
fn settle_authority<B>(request: &mut Request<B>, client: Client<'_>) -> Result<Authority, Refusal> {
    let host = at_most_one(request.headers(), &header::HOST)
        .map_err(|()| Refusal::DuplicateHost)?
        .map(|raw| {
            let text = raw.to_str().map_err(|_| AuthorityError::Host);
            text.and_then(|text| Authority::parse(text, Some(raw)))
                .map_err(Refusal::Host)
        })
        .transpose()?;
    let target = request
        .uri()
        .authority()
        .map(|a| Authority::parse(a.as_str(), None).map_err(Refusal::Host))
        .transpose()?;
    let authority = if client.is_h2 {
        match (target, host) {
            // RFC 9113 §8.3.1: a `host` that differs from `:authority` is malformed.
            (Some(target), Some(host))
                if (&target.host, target.port) != (&host.host, host.port) =>
            {
                return Err(Refusal::HostMismatch);
            }
            (Some(target), _) => target,
            (None, Some(host)) => host,
            (None, None) => return Err(Refusal::MissingHost),
        }
    } else {
        match (target, host) {
            // RFC 9112 §3.2: a server MUST answer 400 to an HTTP/1.1 request without Host,
            // whatever its target; an absolute-form authority then wins over Host (§3.2.2).
            (_, None) if request.version() != Version::HTTP_10 => {
                return Err(Refusal::MissingHost);
            }
            (Some(target), _) => target,
            (None, Some(host)) => host,
            // HTTP/1.0 had no Host: the name the connection reached is the one it asks for.
            (None, None) => {
                let reached = client.reached.ok_or(Refusal::MissingHost)?;
                Authority::parse(reached, None).map_err(Refusal::Host)?
            }
        }
    };
    let headers = request.headers_mut();
    if headers.get(header::HOST) != Some(&authority.value) {
        headers.insert(header::HOST, authority.value.clone());
    }
    Ok(authority)
}

/// The single value of `name`; `Err` when it has several.
fn at_most_one<'h>(
    headers: &'h http::HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'h HeaderValue>, ()> {
    let mut values = headers.get_all(name).iter();
    let first = values.next();
    match values.next() {
        Some(_) => Err(()),
        None => Ok(first),
    }
}

/// An upgrade request (Connection: upgrade) must ask for `websocket` and nothing else.
fn check_upgrade(headers: &http::HeaderMap) -> Result<(), Refusal> {
    let mut protocols = headers
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|v| v.to_str().map_or(Some(""), Some))
        .flat_map(|v| v.split(','))
        .map(str::trim);
    match (protocols.next(), protocols.next()) {
        (Some(only), None) if only.eq_ignore_ascii_case("websocket") => Ok(()),
        _ => Err(Refusal::Upgrade),
    }
}

/// Removes, in one pass over the names present, the hop-by-hop fields, the forwarding fields
/// of an untrusted peer and the names with underscores; an upgrade keeps `Upgrade` and gets
/// `Connection: upgrade` back.
fn remove_fields(
    headers: &mut http::HeaderMap,
    trusted_peer: bool,
    upgrade: bool,
    underscores: Underscores,
) -> Result<(), Refusal> {
    // The fields `Connection` names beyond the hop-by-hop ones (`keep-alive`, `close` and
    // `upgrade` name nothing more): most requests have none, and nothing is allocated for them.
    // An option naming Host or Content-Length is ignored (RFC 9110 §7.6.1: they are meant for
    // every recipient): this hop settled the one and frames the body by the other.
    let named: Vec<&str> = fields::connection_tokens(headers)
        .filter(|t| {
            matches!(
                fields::class_any_case(t),
                Class::EndToEnd | Class::Forwarding
            )
        })
        .filter(|t| !t.eq_ignore_ascii_case("host") && !t.eq_ignore_ascii_case("content-length"))
        .collect();
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        let text = name.as_str();
        let remove = match fields::class(text) {
            Class::HopByHop => true,
            Class::Upgrade => !upgrade,
            Class::Forwarding => !trusted_peer,
            Class::EndToEnd => named.iter().any(|t| t.eq_ignore_ascii_case(text)),
        } || match underscores {
            Underscores::Allow => false,
            _ if !fields::has_underscore(text.as_bytes()) => false,
            Underscores::Drop => true,
            Underscores::Reject => return Err(Refusal::Underscore),
        };
        if remove {
            doomed.push(name.clone());
        }
    }
    for name in &doomed {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
