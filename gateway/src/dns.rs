//! The portal name responder: answers `A`/`AAAA` for `<service>.<namespace>.<domain>` with the
//! portal's VIPs, authoritatively, on the legacy side. The answering logic ([`answer`]) is a pure
//! function over bytes; the sockets around it only move datagrams and TCP frames.
//!
//! It is authoritative for the domain and nothing else: a name outside it is REFUSED (this is not
//! a resolver), a name inside it without a portal is NXDOMAIN, and a portal without an address of
//! the asked family is NODATA, each with the zone's SOA so resolvers cache the negative answer
//! briefly.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// TTL of answers: short, because a portal's backends and VIP follow the mesh live.
pub const TTL: u32 = 5;

/// Errors of the responder.
#[derive(Debug, Error)]
pub enum DnsError {
    /// The configured domain is not a DNS name.
    #[error("dns.domain {domain:?} is not a valid DNS name: {reason}")]
    Domain {
        /// The domain.
        domain: String,
        /// Why.
        reason: String,
    },
    /// A listen address could not be bound.
    #[error("dns: cannot listen on {addr} ({proto}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// udp or tcp.
        proto: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

/// The names served: lower-cased fully qualified names to their addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsTable {
    domain: Name,
    names: BTreeMap<Name, Vec<IpAddr>>,
}

fn fqdn(s: &str) -> Result<Name, String> {
    let mut n = Name::from_ascii(s).map_err(|e| e.to_string())?;
    n.set_fqdn(true);
    Ok(n.to_lowercase())
}

impl DnsTable {
    /// An empty table for `domain` (`mesh.local`).
    pub fn new(domain: &str) -> Result<DnsTable, DnsError> {
        let domain = fqdn(domain).map_err(|reason| DnsError::Domain {
            domain: domain.into(),
            reason,
        })?;
        Ok(DnsTable {
            domain,
            names: BTreeMap::new(),
        })
    }

    /// Serves `vips` under `<name>.<namespace>.<domain>`. Kubernetes names are DNS labels, so a
    /// name that is not one is skipped and reported.
    pub fn insert(&mut self, namespace: &str, name: &str, vips: &[IpAddr]) -> Result<(), String> {
        let n = fqdn(&format!("{name}.{namespace}.{}", self.domain))?;
        self.names.entry(n).or_default().extend_from_slice(vips);
        Ok(())
    }

    /// How many names are served.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether no name is served.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    fn soa(&self) -> Record {
        let host = |l: &str| {
            Name::from_ascii(l)
                .and_then(|n| n.append_domain(&self.domain))
                .unwrap_or_else(|_| self.domain.clone())
        };
        Record::from_rdata(
            self.domain.clone(),
            TTL,
            RData::SOA(SOA::new(
                host("gateway"),
                host("hostmaster"),
                1,
                60,
                10,
                3600,
                TTL,
            )),
        )
    }
}

/// How a query arrived: a UDP answer must fit the client's buffer, a TCP one need not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// UDP: at most 512 bytes without EDNS, else what the client advertised (capped at 1232).
    Udp,
    /// TCP: no limit but the 64 KiB frame.
    Tcp,
}

/// The response to one query message, or `None` for what deserves no answer (a response, or
/// bytes that are not a DNS message at all). A UDP response too large for the client is sent
/// truncated (TC set), so the client asks again over TCP.
pub fn answer(table: &DnsTable, request: &[u8], transport: Transport) -> Option<Vec<u8>> {
    let req = match Message::from_vec(request) {
        Ok(m) => m,
        Err(e) => {
            debug!(error = %e, "undecodable DNS message ignored");
            return None;
        }
    };
    if req.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut resp = Message::response(req.metadata.id, req.metadata.op_code);
    resp.metadata.recursion_desired = req.metadata.recursion_desired;
    if req.edns.is_some() {
        let mut e = Edns::new();
        e.set_max_payload(1232);
        resp.edns = Some(e);
    }
    resp.queries = req.queries.clone();
    let code = match (req.metadata.op_code, req.queries.as_slice()) {
        (OpCode::Query, [q]) if q.query_class == DNSClass::IN => {
            let name = q.name.to_lowercase();
            if !table.domain.zone_of(&name) {
                ResponseCode::Refused
            } else {
                resp.metadata.authoritative = true;
                match table.names.get(&name) {
                    None => {
                        resp.authorities.push(table.soa());
                        ResponseCode::NXDomain
                    }
                    Some(ips) => {
                        for ip in ips {
                            let rdata = match (ip, q.query_type) {
                                (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => {
                                    RData::A(A(*v4))
                                }
                                (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => {
                                    RData::AAAA(AAAA(*v6))
                                }
                                _ => continue,
                            };
                            resp.answers
                                .push(Record::from_rdata(q.name.clone(), TTL, rdata));
                        }
                        if resp.answers.is_empty() {
                            resp.authorities.push(table.soa());
                        }
                        ResponseCode::NoError
                    }
                }
            }
        }
        (OpCode::Query, _) => ResponseCode::FormErr,
        _ => ResponseCode::NotImp,
    };
    resp.metadata.response_code = code;
    let limit = match (transport, &req.edns) {
        (Transport::Tcp, _) => usize::from(u16::MAX),
        (Transport::Udp, None) => 512,
        (Transport::Udp, Some(e)) => usize::from(e.max_payload().clamp(512, 1232)),
    };
    let encoded = resp.to_vec().and_then(|b| {
        if b.len() > limit {
            resp.truncate().to_vec()
        } else {
            Ok(b)
        }
    });
    match encoded {
        Ok(b) => Some(b),
        Err(e) => {
            warn!(error = %e, "cannot encode a DNS response");
            None
        }
    }
}

/// The running responder; the table is swapped whole on every catalog change.
#[derive(Debug)]
pub struct DnsHandle {
    /// The bound addresses (UDP and TCP share each; a port 0 in the request is resolved here).
    pub addrs: Vec<SocketAddr>,
    table: Arc<RwLock<DnsTable>>,
    stop: watch::Sender<bool>,
}

impl DnsHandle {
    /// Serves `table` from now on.
    pub fn set(&self, table: DnsTable) {
        if let Ok(mut t) = self.table.write() {
            *t = table;
        }
    }
}

impl Drop for DnsHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn current(table: &RwLock<DnsTable>, req: &[u8], transport: Transport) -> Option<Vec<u8>> {
    let t = table.read().ok()?;
    answer(&t, req, transport)
}

/// Binds UDP and TCP on every address and answers until the handle is dropped.
pub async fn serve(listen: &[SocketAddr], table: DnsTable) -> Result<DnsHandle, DnsError> {
    let table = Arc::new(RwLock::new(table));
    let (stop, stop_rx) = watch::channel(false);
    let mut addrs = Vec::new();
    for asked in listen {
        let bind = |proto: &'static str| {
            move |source| DnsError::Bind {
                addr: *asked,
                proto,
                source,
            }
        };
        let udp = UdpSocket::bind(asked).await.map_err(bind("udp"))?;
        // Port 0 asked: TCP takes the port UDP got.
        let addr = &udp.local_addr().map_err(bind("udp"))?;
        let tcp = TcpListener::bind(addr).await.map_err(bind("tcp"))?;
        info!(listen = %addr, "DNS responder listening (udp, tcp)");
        tokio::spawn(serve_udp(udp, table.clone(), stop_rx.clone()));
        tokio::spawn(serve_tcp(tcp, table.clone(), stop_rx.clone()));
        addrs.push(*addr);
    }
    Ok(DnsHandle { addrs, table, stop })
}

async fn serve_udp(sock: UdpSocket, table: Arc<RwLock<DnsTable>>, mut stop: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => { warn!(error = %e, "DNS receive failed"); continue; }
            },
            _ = stop.changed() => return,
        };
        let Some(out) = current(&table, &buf[..n], Transport::Udp) else {
            continue;
        };
        if let Err(e) = sock.send_to(&out, peer).await {
            debug!(peer = %peer, error = %e, "DNS reply not sent");
        }
    }
}

async fn serve_tcp(
    listener: TcpListener,
    table: Arc<RwLock<DnsTable>>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let (mut conn, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => { warn!(error = %e, "DNS accept failed"); continue; }
            },
            _ = stop.changed() => return,
        };
        let table = table.clone();
        tokio::spawn(async move {
            // RFC 7766 framing: a two-byte length before each message; several per connection.
            let idle = std::time::Duration::from_secs(10);
            loop {
                let mut len = [0u8; 2];
                match tokio::time::timeout(idle, conn.read_exact(&mut len)).await {
                    Ok(Ok(_)) => {}
                    _ => return,
                }
                let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
                if conn.read_exact(&mut msg).await.is_err() {
                    return;
                }
                let Some(out) = current(&table, &msg, Transport::Tcp) else {
                    return;
                };
                let Ok(l) = u16::try_from(out.len()) else {
                    return;
                };
                if conn.write_all(&l.to_be_bytes()).await.is_err()
                    || conn.write_all(&out).await.is_err()
                {
                    debug!(peer = %peer, "DNS TCP client went away");
                    return;
                }
            }
        });
    }
}

#[cfg(test)]
mod tests;
