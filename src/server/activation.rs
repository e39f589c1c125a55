//! Socket activation (sd_listen_fds(3)): serve on the sockets systemd passed instead of binding.
//!
//! systemd (`rampart.socket`) binds the ports and keeps them across restarts, so connections
//! queue in the kernel while Rampart restarts instead of being refused. Reads `LISTEN_PID`,
//! `LISTEN_FDS` and `LISTEN_FDNAMES`; [`PassedSockets::take`] clears the first two, so it runs
//! on the main thread before any other thread starts. Each passed socket gets its role from its
//! name (`FileDescriptorName=https` / `http`) or else from its address, which must then be the
//! configured `listen.https` or `listen.http`.

use std::io;
use std::net::{SocketAddr, TcpListener};

use listenfd::ListenFd;

use crate::config::Listen;
use crate::server::Listeners;

/// The two listening sockets systemd passed, by role, not yet registered with the runtime.
#[derive(Debug)]
pub struct PassedSockets {
    https: TcpListener,
    /// `None` when `listen.http` is off.
    http: Option<TcpListener>,
}

/// Why the passed sockets cannot be used. Rampart does not fall back to binding: the ports
/// belong to the socket unit, so binding them would fail or serve the wrong address.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// A passed descriptor is not a listening TCP socket (or its address cannot be read).
    #[error("socket {index} passed by systemd is not a TCP listener")]
    NotTcp {
        /// Position among the passed sockets, from 0 (file descriptor 3 + index).
        index: usize,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// A passed socket is neither named `https`/`http` nor bound to a configured address.
    #[error(
        "socket {addr} passed by systemd matches neither listen.https ({https}) nor listen.http \
         ({}); name it with FileDescriptorName=https or =http, or fix `listen:`",
        http.map_or_else(|| "off".to_owned(), |http| http.to_string())
    )]
    Unmatched {
        /// The socket's address.
        addr: SocketAddr,
        /// The configured TLS address.
        https: SocketAddr,
        /// The configured plain HTTP address, unless it is off.
        http: Option<SocketAddr>,
    },
    /// Two passed sockets claim the same role.
    #[error("systemd passed two sockets for listen.{role}: {first} and {second}")]
    Duplicate {
        /// `https` or `http`.
        role: &'static str,
        /// The socket taken first.
        first: SocketAddr,
        /// The other one.
        second: SocketAddr,
    },
    /// No passed socket serves a role.
    #[error(
        "systemd passed no socket for listen.{role} ({addr}); add a ListenStream= for it to the socket unit"
    )]
    Missing {
        /// `https` or `http`.
        role: &'static str,
        /// The configured address.
        addr: SocketAddr,
    },
    /// A passed socket cannot be switched to non-blocking or registered with the runtime.
    #[error("cannot serve on socket {addr} passed by systemd")]
    Register {
        /// The socket's address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// Which listener a passed socket becomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Https,
    Http,
}

impl PassedSockets {
    /// The sockets systemd passed to this process, matched to `listen`; `None` when there are
    /// none (`LISTEN_FDS` unset, or `LISTEN_PID` naming another process).
    ///
    /// Call it before any other thread starts: it removes `LISTEN_FDS` and `LISTEN_PID` from the
    /// environment, which is only sound while no other thread can read the environment.
    ///
    /// # Errors
    /// `NotTcp`, `Unmatched`, `Duplicate` or `Missing` when the passed sockets do not make
    /// exactly one `https` and one `http` listener.
    pub fn take(listen: &Listen) -> Result<Option<Self>, ActivationError> {
        let mut fds = ListenFd::from_env();
        if fds.len() == 0 {
            return Ok(None);
        }
        // sd_listen_fds_with_names(3): colon-separated, one name per descriptor, in order.
        let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
        let mut names = names.split(':');
        let mut sockets = Vec::with_capacity(fds.len());
        for index in 0..fds.len() {
            let not_tcp = |source| ActivationError::NotTcp { index, source };
            let socket = fds
                .take_tcp_listener(index)
                .map_err(not_tcp)?
                .expect("each passed descriptor is taken once");
            let addr = socket.local_addr().map_err(not_tcp)?;
            sockets.push((names.next().map(str::to_owned), addr, socket));
        }
        assign(listen, sockets).map(Some)
    }

    /// The TLS socket's address.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https.local_addr().ok()
    }

    /// The plain HTTP socket's address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref()?.local_addr().ok()
    }
}

impl Listeners {
    /// Serves on sockets systemd passed instead of binding. Call inside the runtime.
    ///
    /// # Errors
    /// `Register` when a socket cannot be made non-blocking or added to the runtime.
    pub fn from_systemd(passed: PassedSockets) -> Result<Self, ActivationError> {
        Ok(Self {
            https: register(passed.https)?,
            http: passed.http.map(register).transpose()?,
            // The admin port is not passed by systemd: bind it with `Listeners::with_admin`.
            admin: None,
        })
    }
}

/// Gives each socket its role: by name first, then by address; exactly one per role.
fn assign(
    listen: &Listen,
    sockets: Vec<(Option<String>, SocketAddr, TcpListener)>,
) -> Result<PassedSockets, ActivationError> {
    let (mut https, mut http): (Option<(SocketAddr, TcpListener)>, _) = (None, None);
    for (name, addr, socket) in sockets {
        let role = role(listen, name.as_deref(), addr).ok_or(ActivationError::Unmatched {
            addr,
            https: listen.https,
            http: listen.http,
        })?;
        let (slot, role_name) = match role {
            Role::Https => (&mut https, "https"),
            Role::Http => (&mut http, "http"),
        };
        if let Some((first, _)) = slot {
            return Err(ActivationError::Duplicate {
                role: role_name,
                first: *first,
                second: addr,
            });
        }
        *slot = Some((addr, socket));
    }
    let https = https.ok_or(ActivationError::Missing {
        role: "https",
        addr: listen.https,
    })?;
    let http = match (listen.http, http) {
        (Some(addr), None) => return Err(ActivationError::Missing { role: "http", addr }),
        (_, http) => http.map(|(_, socket)| socket),
    };
    Ok(PassedSockets {
        https: https.1,
        http,
    })
}

/// The role of a socket named `name` (systemd's default name, the unit's, means unnamed)
/// listening on `addr`.
fn role(listen: &Listen, name: Option<&str>, addr: SocketAddr) -> Option<Role> {
    match name {
        Some("https") => return Some(Role::Https),
        // With `http: off` a socket for port 80 is a mistake in the socket unit.
        Some("http") => return listen.http.map(|_| Role::Http),
        _ => {}
    }
    if same_listener(addr, listen.https) {
        Some(Role::Https)
    } else if listen.http.is_some_and(|http| same_listener(addr, http)) {
        Some(Role::Http)
    } else {
        None
    }
}

/// Equal addresses, or both the wildcard on the same port: systemd's `ListenStream=443` is
/// `[::]:443` accepting IPv4 too, which a config may spell `0.0.0.0:443`.
fn same_listener(passed: SocketAddr, configured: SocketAddr) -> bool {
    passed == configured
        || (passed.port() == configured.port()
            && passed.ip().is_unspecified()
            && configured.ip().is_unspecified())
}

fn register(socket: TcpListener) -> Result<tokio::net::TcpListener, ActivationError> {
    let addr = socket
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let err = |source| ActivationError::Register { addr, source };
    // systemd passes sockets in blocking mode; tokio needs them non-blocking.
    socket.set_nonblocking(true).map_err(err)?;
    tokio::net::TcpListener::from_std(socket).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(https: &str, http: &str) -> Listen {
        Listen {
            https: https.parse().expect("test address"),
            http: Some(http.parse().expect("test address")),
            admin: None,
            admin_token: None,
            proxy_protocol: None,
        }
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("test address")
    }

    fn loopback() -> (SocketAddr, TcpListener) {
        let socket = TcpListener::bind("127.0.0.1:0").expect("loopback binds");
        (socket.local_addr().expect("bound"), socket)
    }

    #[test]
    fn names_win_over_addresses() {
        let listen = listen("127.0.0.1:443", "127.0.0.1:80");
        assert_eq!(
            role(&listen, Some("http"), addr("127.0.0.1:443")),
            Some(Role::Http)
        );
        assert_eq!(
            role(&listen, Some("https"), addr("10.0.0.1:1")),
            Some(Role::Https)
        );
    }

    #[test]
    fn unnamed_sockets_match_by_address_and_wildcards_match_across_families() {
        let listen = listen("0.0.0.0:443", "127.0.0.1:80");
        assert_eq!(
            role(&listen, Some("rampart.socket"), addr("[::]:443")),
            Some(Role::Https)
        );
        assert_eq!(role(&listen, None, addr("127.0.0.1:80")), Some(Role::Http));
        assert_eq!(role(&listen, None, addr("127.0.0.1:443")), None);
        assert_eq!(role(&listen, None, addr("[::]:8080")), None);
    }

    #[test]
    fn assigns_one_socket_per_role() {
        let ((a, sa), (b, sb)) = (loopback(), loopback());
        let passed = assign(
            &listen("127.0.0.1:1", "127.0.0.1:2"),
            vec![(Some("http".into()), b, sb), (Some("https".into()), a, sa)],
        )
        .expect("both roles present");
        assert_eq!(passed.https_addr(), Some(a));
        assert_eq!(passed.http_addr(), Some(b));
    }

    #[test]
    fn an_unknown_socket_is_an_error_naming_its_address() {
        let ((a, sa), (b, sb)) = (loopback(), loopback());
        let err = assign(
            &listen(&a.to_string(), "127.0.0.1:2"),
            vec![(None, a, sa), (None, b, sb)],
        )
        .expect_err("the second socket matches nothing");
        assert!(matches!(err, ActivationError::Unmatched { addr, .. } if addr == b));
        assert!(err.to_string().contains(&b.to_string()), "{err}");
    }

    #[test]
    fn a_missing_or_doubled_role_is_an_error() {
        let ((a, sa), (b, sb)) = (loopback(), loopback());
        let err = assign(
            &listen("127.0.0.1:1", "127.0.0.1:2"),
            vec![(Some("https".into()), a, sa)],
        )
        .expect_err("no http socket");
        assert!(matches!(err, ActivationError::Missing { role: "http", .. }));
        let (c, sc) = loopback();
        let err = assign(
            &listen("127.0.0.1:1", "127.0.0.1:2"),
            vec![(Some("https".into()), b, sb), (Some("https".into()), c, sc)],
        )
        .expect_err("two https sockets");
        assert!(matches!(
            err,
            ActivationError::Duplicate { role: "https", .. }
        ));
    }
}
