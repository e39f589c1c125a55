//! The PROXY protocol (v1 text, v2 binary) on the https listener, read before the TLS handshake.
//!
//! Run on each connection's task by the `:443` accept loop when `listen.proxy_protocol` is set.
//! Reads exactly the header's bytes from the socket, never more, so the ClientHello behind it is
//! left for the TLS acceptor; writes nothing shared.
//!
//! HAProxy semantics: from a configured source the header is mandatory, and its source address
//! becomes the connection's peer (`LOCAL` and `UNKNOWN` keep the real peer: health checks of the
//! load balancer itself). Any other peer that starts with a PROXY signature is refused, since it
//! could otherwise name any address it likes; its bytes are not a ClientHello anyway.

use std::io;
use std::net::{IpAddr, SocketAddr};

use ppp::v2;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::config::{ProxyProtocol, contains_ip};

/// A v1 header is at most 107 bytes, CRLF included (spec §2.1).
const V1_MAX: usize = 107;
/// The v1 signature.
const V1_PREFIX: &[u8] = b"PROXY ";
/// The 12-byte v2 signature (spec §2.2).
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// A v2 header's fixed part: signature, version/command, family, length.
const V2_FIXED: usize = 16;

/// Why a connection was refused before its handshake.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyHeaderError {
    /// A peer outside `proxy_protocol.from` sent a PROXY header.
    #[error("PROXY header from an untrusted peer")]
    Untrusted,
    /// A configured source sent no PROXY header.
    #[error("no PROXY header from a proxy_protocol source")]
    Missing,
    /// The header is not valid v1 or v2.
    #[error("malformed PROXY header")]
    Malformed,
    /// The connection broke or closed while the header was read.
    #[error("cannot read the PROXY header")]
    Io(#[source] io::Error),
}

/// Reads the PROXY header a peer in `settings.from` must send and returns the address the
/// connection is from; refuses a PROXY header from anyone else. The caller bounds it in time.
///
/// # Errors
/// See [`ProxyHeaderError`]; the connection is then to be dropped.
///
/// # Cancel safety
/// Not cancel safe: a cancelled read leaves part of the header consumed; drop the connection.
pub(crate) async fn read_peer(
    tcp: &mut TcpStream,
    peer: SocketAddr,
    settings: &ProxyProtocol,
) -> Result<SocketAddr, ProxyHeaderError> {
    if !contains_ip(&settings.from, peer.ip()) {
        // One peek tells a TLS record (0x16) from either signature's first byte.
        let mut first = [0u8; 1];
        let seen = tcp.peek(&mut first).await.map_err(ProxyHeaderError::Io)?;
        if seen == 1 && (first[0] == V1_PREFIX[0] || first[0] == V2_SIGNATURE[0]) {
            return Err(ProxyHeaderError::Untrusted);
        }
        return Ok(peer);
    }
    let mut start = [0u8; V1_PREFIX.len()];
    tcp.read_exact(&mut start)
        .await
        .map_err(ProxyHeaderError::Io)?;
    let source = if start == V1_PREFIX {
        read_v1(tcp, start).await?
    } else if start == V2_SIGNATURE[..V1_PREFIX.len()] {
        read_v2(tcp, start).await?
    } else {
        return Err(ProxyHeaderError::Missing);
    };
    Ok(source.unwrap_or(peer))
}

/// The rest of a v1 line, byte by byte so nothing past CRLF is consumed (≤ 101 small reads,
/// from a load balancer only).
async fn read_v1(
    tcp: &mut TcpStream,
    start: [u8; V1_PREFIX.len()],
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut line = start.to_vec();
    while !line.ends_with(b"\r\n") {
        if line.len() == V1_MAX {
            return Err(ProxyHeaderError::Malformed);
        }
        line.push(tcp.read_u8().await.map_err(ProxyHeaderError::Io)?);
    }
    parse_v1(&line)
}

/// The rest of a v2 header: the fixed part, then exactly the length it announces.
async fn read_v2(
    tcp: &mut TcpStream,
    start: [u8; V1_PREFIX.len()],
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut header = vec![0u8; V2_FIXED];
    header[..start.len()].copy_from_slice(&start);
    tcp.read_exact(&mut header[start.len()..])
        .await
        .map_err(ProxyHeaderError::Io)?;
    if header[..V2_SIGNATURE.len()] != V2_SIGNATURE[..] {
        return Err(ProxyHeaderError::Malformed);
    }
    let length = usize::from(u16::from_be_bytes([header[14], header[15]]));
    header.resize(V2_FIXED + length, 0);
    tcp.read_exact(&mut header[V2_FIXED..])
        .await
        .map_err(ProxyHeaderError::Io)?;
    parse_v2(&header)
}

/// The source address of a complete v1 line; `None` for `UNKNOWN`.
fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let header = ppp::v1::Header::try_from(line).map_err(|_| ProxyHeaderError::Malformed)?;
    Ok(match header.addresses {
        ppp::v1::Addresses::Tcp4(a) => {
            Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
        }
        ppp::v1::Addresses::Tcp6(a) => Some(SocketAddr::new(
            IpAddr::V6(a.source_address).to_canonical(),
            a.source_port,
        )),
        ppp::v1::Addresses::Unknown => None,
    })
}

/// The source address of a complete v2 header; `None` for `LOCAL` or a non-IP family.
fn parse_v2(bytes: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let header = v2::Header::try_from(bytes).map_err(|_| ProxyHeaderError::Malformed)?;
    if header.command == v2::Command::Local {
        return Ok(None);
    }
    Ok(match header.addresses {
        v2::Addresses::IPv4(a) => {
            Some(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
        }
        // IPv4-mapped sources read as IPv4, as the accept loop does for TCP peers.
        v2::Addresses::IPv6(a) => Some(SocketAddr::new(
            IpAddr::V6(a.source_address).to_canonical(),
            a.source_port,
        )),
        v2::Addresses::Unspecified | v2::Addresses::Unix(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_tcp4_and_tcp6_give_the_source_and_unknown_gives_none() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n";
        assert_eq!(
            parse_v1(line).unwrap(),
            Some("203.0.113.7:51000".parse().unwrap())
        );
        let line = b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n";
        assert_eq!(
            parse_v1(line).unwrap(),
            Some("[2001:db8::7]:51000".parse().unwrap())
        );
        assert_eq!(parse_v1(b"PROXY UNKNOWN\r\n").unwrap(), None);
        assert!(parse_v1(b"PROXY TCP4 nonsense\r\n").is_err());
    }

    #[test]
    fn v2_proxy_gives_the_source_and_local_gives_none() {
        let addresses: v2::Addresses = (
            "203.0.113.7:51000".parse::<SocketAddr>().unwrap(),
            "10.0.0.1:443".parse::<SocketAddr>().unwrap(),
        )
            .into();
        let proxy = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            addresses,
        )
        .build()
        .unwrap();
        assert_eq!(
            parse_v2(&proxy).unwrap(),
            Some("203.0.113.7:51000".parse().unwrap())
        );
        let local = v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Local,
            v2::Protocol::Stream,
            addresses,
        )
        .build()
        .unwrap();
        assert_eq!(parse_v2(&local).unwrap(), None);
    }
}
