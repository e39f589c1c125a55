//! The rfc2136 provider: one TSIG-signed (RFC 8945) dynamic update (RFC 2136) per record,
//! sent over TCP to the zone's primary.
//!
//! The exchange is ours, not hickory's client: a server refusing the key answers unsigned, and
//! hickory's signing client reports that as a verification failure, losing the NOTAUTH/BADKEY
//! an operator needs to see.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hickory_proto::op::{Message, MessageType, ResponseCode, update_message};
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::rdata::tsig::TsigAlgorithm as Mac;
use hickory_proto::rr::{Name, RData, Record, RecordSet, RecordType, TSigner};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::{DnsError, TxtRecord, name, propagation, rcode};
use crate::config::{Tsig, TsigAlgorithm};

/// How long one exchange with the primary may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Allowed clock skew between us and the primary, RFC 8945's recommendation.
const FUDGE: u16 = 300;
/// The TTL of a challenge record: short, it lives for one validation.
const TTL: u32 = 60;

/// Adds (`add`) or removes exactly `record` in its zone at `server`.
pub(super) async fn update(
    server: SocketAddr,
    zone: Option<&str>,
    key: &Tsig,
    record: &TxtRecord,
    add: bool,
) -> Result<(), DnsError> {
    let failed = |reason: String| DnsError::Update {
        fqdn: record.fqdn.clone(),
        server,
        reason,
    };
    let fqdn = name(&record.fqdn).map_err(failed)?;
    let zone = match zone {
        Some(zone) => name(zone).map_err(failed)?,
        None => find_zone(server, &fqdn).await?,
    };
    // hickory's update builders assert this.
    if !zone.zone_of(&fqdn) {
        return Err(failed(format!("the name is not in the zone {zone}")));
    }
    let txt = Record::from_rdata(fqdn, TTL, RData::TXT(TXT::new(vec![record.value.clone()])));
    let rrset = RecordSet::from(txt);
    let mut message = if add {
        // No prerequisite: a wildcard and its parent put two values on one name.
        update_message::append(rrset, zone, false, false)
    } else {
        update_message::delete_by_rdata(rrset, zone, false)
    };

    let mac = match key.algorithm {
        TsigAlgorithm::HmacSha256 => Mac::HmacSha256,
        TsigAlgorithm::HmacSha384 => Mac::HmacSha384,
        TsigAlgorithm::HmacSha512 => Mac::HmacSha512,
    };
    let key_name = name(&key.name).map_err(failed)?;
    let signer = TSigner::new(key.secret.clone(), mac, key_name, FUDGE)
        .map_err(|error| failed(format!("the TSIG key is unusable: {error}")))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|error| failed(error.to_string()))?
        .as_secs();
    let mut verifier = message
        .finalize(&signer, now)
        .map_err(|error| failed(format!("cannot sign: {error}")))?
        .ok_or_else(|| failed("signing gave no verifier".to_owned()))?;
    let wire = message
        .to_vec()
        .map_err(|error| failed(format!("cannot encode: {error}")))?;

    let answer = exchange(server, &wire).await.map_err(failed)?;
    let reply =
        Message::from_vec(&answer).map_err(|error| failed(format!("bad reply: {error}")))?;
    if reply.metadata.message_type != MessageType::Response
        || reply.metadata.id != message.metadata.id
    {
        return Err(failed("the reply does not answer the update".to_owned()));
    }
    let code = reply.metadata.response_code;
    if code != ResponseCode::NoError {
        // A refused key is answered unsigned: report the code and TSIG error as they are.
        let tsig = reply
            .signature()
            .and_then(|signature| signature.data.error)
            .map(|error| format!(", TSIG error {error:?}"))
            .unwrap_or_default();
        return Err(failed(format!("{}{tsig}", rcode(code))));
    }
    // A success must prove it came from the key's holder (RFC 8945 §5.3).
    verifier
        .verify(&answer)
        .map_err(|error| failed(format!("the reply's TSIG does not verify: {error}")))?;
    Ok(())
}

/// One DNS-over-TCP exchange (RFC 7766: each message behind its 2-byte length).
async fn exchange(server: SocketAddr, wire: &[u8]) -> Result<Vec<u8>, String> {
    let length = u16::try_from(wire.len()).map_err(|_| "the update is too large".to_owned())?;
    let io = async {
        let mut stream = TcpStream::connect(server).await?;
        let mut framed = Vec::with_capacity(wire.len() + 2);
        framed.extend_from_slice(&length.to_be_bytes());
        framed.extend_from_slice(wire);
        stream.write_all(&framed).await?;
        let mut answer = vec![0; usize::from(stream.read_u16().await?)];
        stream.read_exact(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    tokio::time::timeout(TIMEOUT, io)
        .await
        .map_err(|_| format!("no reply in {} s", TIMEOUT.as_secs()))?
        .map_err(|error| error.to_string())
}

/// The zone holding `fqdn` at `server`: the closest enclosing name with an SOA, read from the
/// answer, or from the authority section of a negative answer.
async fn find_zone(server: SocketAddr, fqdn: &Name) -> Result<Name, DnsError> {
    let failed = |reason: String| DnsError::Zone {
        fqdn: fqdn.to_string(),
        server,
        reason,
    };
    let mut candidate = fqdn.clone();
    let mut last = String::from("no SOA");
    while !candidate.is_root() {
        let reply = propagation::query(server, candidate.clone(), RecordType::SOA)
            .await
            .map_err(failed)?;
        let code = reply.metadata.response_code;
        if matches!(code, ResponseCode::NoError | ResponseCode::NXDomain) {
            let answer = reply
                .answers
                .iter()
                .find(|r| r.record_type() == RecordType::SOA && r.name == candidate);
            let authority = reply
                .authorities
                .iter()
                .find(|r| r.record_type() == RecordType::SOA && r.name.zone_of(&candidate));
            if let Some(soa) = answer.or(authority) {
                return Ok(soa.name.clone());
            }
        } else {
            last = rcode(code);
        }
        // Refused, a referral, or nothing: the zone starts higher up.
        candidate = candidate.base_name();
    }
    Err(failed(last))
}
