//! Whether a record is served yet: asked of each authoritative server directly, without
//! recursion, so no cache stands between the write and what the CA will see.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt as _;
use hickory_proto::op::{DnsRequest, DnsRequestOptions, Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use hickory_resolver::TokioResolver;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::udp::UdpClientStream;
use hickory_resolver::net::xfer::DnsHandle as _;
use tokio::time::Instant;

use super::{DnsError, TxtRecord, name, rcode};

/// How long one query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the servers are asked again.
const POLL: Duration = Duration::from_secs(1);

/// One non-recursive query to `server` over UDP.
pub(super) async fn query(
    server: SocketAddr,
    name: Name,
    kind: RecordType,
) -> Result<Message, String> {
    let stream = UdpClientStream::builder(server, TokioRuntimeProvider::new())
        .with_timeout(Some(QUERY_TIMEOUT))
        .exchange();
    let mut options = DnsRequestOptions::default();
    options.recursion_desired = false;
    let request = DnsRequest::from_query(Query::query(name.clone(), kind), options);
    let response = stream
        .send(request)
        .next()
        .await
        .ok_or_else(|| format!("{server} did not answer {name} {kind}"))?
        .map_err(|error| format!("{name} {kind} at {server}: {error}"))?;
    Ok(response.into_message())
}

/// The TXT values `server` holds for `fqdn`.
async fn txt_values(server: SocketAddr, fqdn: &Name) -> Result<Vec<String>, String> {
    let reply = query(server, fqdn.clone(), RecordType::TXT).await?;
    match reply.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        code => return Err(format!("{server} answered {}", rcode(code))),
    }
    Ok(reply
        .answers
        .iter()
        .filter(|record| record.name == *fqdn)
        .filter_map(|record| match &record.data {
            // A long value may come split into several strings: they are one value.
            RData::TXT(txt) => Some(
                txt.txt_data
                    .iter()
                    .map(|part| String::from_utf8_lossy(part))
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

/// Polls `servers` until each serves `record`, for at most `timeout`.
pub(super) async fn wait(
    record: &TxtRecord,
    servers: &[SocketAddr],
    timeout: Duration,
) -> Result<(), DnsError> {
    let fqdn = name(&record.fqdn).map_err(|reason| DnsError::Nameservers {
        fqdn: record.fqdn.clone(),
        reason,
    })?;
    let deadline = Instant::now() + timeout;
    let mut missing = servers.to_vec();
    loop {
        let mut still = Vec::with_capacity(missing.len());
        for server in missing {
            let seen = txt_values(server, &fqdn)
                .await
                .is_ok_and(|values| values.contains(&record.value));
            if !seen {
                still.push(server);
            }
        }
        missing = still;
        if missing.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            let servers = missing.iter().map(ToString::to_string).collect::<Vec<_>>();
            return Err(DnsError::NotVisible {
                fqdn: record.fqdn.clone(),
                servers: servers.join(", "),
                seconds: timeout.as_secs(),
            });
        }
        // The last look is at the deadline itself.
        tokio::time::sleep(POLL.min(deadline - now)).await;
    }
}

/// The servers the CA will ask about `fqdn`: the NS of its zone, found through the system
/// resolver, on port 53; the rfc2136 `primary` when that finds none.
pub(super) async fn authoritative(
    fqdn: &str,
    primary: Option<SocketAddr>,
) -> Result<Vec<SocketAddr>, DnsError> {
    let failed = |reason: String| DnsError::Nameservers {
        fqdn: fqdn.to_owned(),
        reason,
    };
    match nameservers(fqdn).await {
        Ok(servers) => Ok(servers),
        Err(reason) => primary
            .map(|primary| vec![primary])
            .ok_or_else(|| failed(reason)),
    }
}

async fn nameservers(fqdn: &str) -> Result<Vec<SocketAddr>, String> {
    let resolver = TokioResolver::builder_tokio()
        .map_err(|error| format!("cannot read the system resolver's configuration: {error}"))?
        .build()
        .map_err(|error| format!("cannot build a resolver: {error}"))?;
    let mut zone = name(fqdn)?;
    let mut last = String::from("no NS records");
    // The zone is the closest enclosing name with NS records.
    while !zone.is_root() {
        let hosts = match resolver.ns_lookup(zone.clone()).await {
            Ok(lookup) => lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::NS(host) => Some(host.0.clone()),
                    _ => None,
                })
                .collect::<Vec<_>>(),
            Err(error) => {
                last = error.to_string();
                Vec::new()
            }
        };
        if !hosts.is_empty() {
            let mut servers = Vec::new();
            for host in hosts {
                let addresses = resolver
                    .lookup_ip(host.clone())
                    .await
                    .map_err(|error| format!("the address of {host}: {error}"))?;
                for ip in addresses.iter() {
                    let server = SocketAddr::new(ip, 53);
                    if !servers.contains(&server) {
                        servers.push(server);
                    }
                }
            }
            return Ok(servers);
        }
        zone = zone.base_name();
    }
    Err(last)
}
