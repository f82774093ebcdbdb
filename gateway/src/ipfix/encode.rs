//! IPFIX (RFC 7011) message encoding, free of I/O: two templates (IPv4 and IPv6 flows) with the
//! standard information elements, and data records from [`FlowRecord`]s, split into messages
//! that fit one UDP datagram.

use std::net::IpAddr;

use crate::flows::{FlowRecord, Verdict};

/// IPFIX version number in the message header.
pub const VERSION: u16 = 10;
/// Set id of a template set.
pub const TEMPLATE_SET: u16 = 2;
/// Template id of IPv4 flow records.
pub const TEMPLATE_V4: u16 = 256;
/// Template id of IPv6 flow records.
pub const TEMPLATE_V6: u16 = 257;
/// Largest message: fits a 1500-byte path with IPv6 and UDP headers.
pub const MAX_MESSAGE: usize = 1400;

const SET_HEADER: usize = 4;

/// Information element ids (IANA "IPFIX Information Elements").
pub mod ie {
    /// octetDeltaCount, unsigned64.
    pub const OCTET_DELTA_COUNT: u16 = 1;
    /// packetDeltaCount, unsigned64.
    pub const PACKET_DELTA_COUNT: u16 = 2;
    /// protocolIdentifier, unsigned8.
    pub const PROTOCOL_IDENTIFIER: u16 = 4;
    /// sourceTransportPort, unsigned16.
    pub const SOURCE_TRANSPORT_PORT: u16 = 7;
    /// sourceIPv4Address.
    pub const SOURCE_IPV4_ADDRESS: u16 = 8;
    /// destinationTransportPort, unsigned16.
    pub const DESTINATION_TRANSPORT_PORT: u16 = 11;
    /// destinationIPv4Address.
    pub const DESTINATION_IPV4_ADDRESS: u16 = 12;
    /// sourceIPv6Address.
    pub const SOURCE_IPV6_ADDRESS: u16 = 27;
    /// destinationIPv6Address.
    pub const DESTINATION_IPV6_ADDRESS: u16 = 28;
    /// forwardingStatus, unsigned8 (RFC 7270).
    pub const FORWARDING_STATUS: u16 = 89;
    /// flowStartMilliseconds, dateTimeMilliseconds.
    pub const FLOW_START_MILLISECONDS: u16 = 152;
    /// flowEndMilliseconds, dateTimeMilliseconds.
    pub const FLOW_END_MILLISECONDS: u16 = 153;
}

/// forwardingStatus "Forwarded: Unknown".
pub const FWD_FORWARDED: u8 = 64;
/// forwardingStatus "Dropped: ACL deny" (a policy drop).
pub const FWD_DROPPED_ACL: u8 = 129;
/// forwardingStatus "Dropped: Unknown".
pub const FWD_DROPPED: u8 = 128;

fn fields(v6: bool) -> [(u16, u16); 10] {
    let (src, dst, alen) = if v6 {
        (ie::SOURCE_IPV6_ADDRESS, ie::DESTINATION_IPV6_ADDRESS, 16)
    } else {
        (ie::SOURCE_IPV4_ADDRESS, ie::DESTINATION_IPV4_ADDRESS, 4)
    };
    [
        (src, alen),
        (dst, alen),
        (ie::SOURCE_TRANSPORT_PORT, 2),
        (ie::DESTINATION_TRANSPORT_PORT, 2),
        (ie::PROTOCOL_IDENTIFIER, 1),
        (ie::OCTET_DELTA_COUNT, 8),
        (ie::PACKET_DELTA_COUNT, 8),
        (ie::FLOW_START_MILLISECONDS, 8),
        (ie::FLOW_END_MILLISECONDS, 8),
        (ie::FORWARDING_STATUS, 1),
    ]
}

fn record_len(v6: bool) -> usize {
    fields(v6).iter().map(|(_, l)| usize::from(*l)).sum()
}

fn template_set() -> Vec<u8> {
    let mut s = vec![0u8; SET_HEADER];
    for (id, v6) in [(TEMPLATE_V4, false), (TEMPLATE_V6, true)] {
        let f = fields(v6);
        s.extend_from_slice(&id.to_be_bytes());
        s.extend_from_slice(&(f.len() as u16).to_be_bytes());
        for (ie, len) in f {
            s.extend_from_slice(&ie.to_be_bytes());
            s.extend_from_slice(&len.to_be_bytes());
        }
    }
    finish_set(&mut s, TEMPLATE_SET);
    s
}

fn finish_set(s: &mut [u8], id: u16) {
    let len = s.len() as u16;
    s[0..2].copy_from_slice(&id.to_be_bytes());
    s[2..4].copy_from_slice(&len.to_be_bytes());
}

fn status(r: &FlowRecord) -> u8 {
    match (r.verdict, r.reason.as_deref()) {
        (Verdict::Forwarded, _) => FWD_FORWARDED,
        (Verdict::Dropped, Some(reason)) if reason.starts_with("drop_policy") => FWD_DROPPED_ACL,
        (Verdict::Dropped, _) => FWD_DROPPED,
    }
}

fn push_addr(out: &mut Vec<u8>, a: IpAddr) {
    match a {
        IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
    }
}

fn record(r: &FlowRecord, out: &mut Vec<u8>) {
    push_addr(out, r.src.addr);
    push_addr(out, r.dst.addr);
    out.extend_from_slice(&r.src.port.to_be_bytes());
    out.extend_from_slice(&r.dst.port.to_be_bytes());
    out.push(r.proto_num);
    out.extend_from_slice(&r.bytes.to_be_bytes());
    out.extend_from_slice(&r.packets.to_be_bytes());
    out.extend_from_slice(&r.first_seen_ms.to_be_bytes());
    out.extend_from_slice(&r.last_seen_ms.to_be_bytes());
    out.push(status(r));
}

/// The exporter's per-stream state: the observation domain and the data record sequence.
#[derive(Clone, Debug)]
pub struct Encoder {
    domain: u32,
    sequence: u32,
}

impl Encoder {
    /// A new stream for `domain`.
    pub fn new(domain: u32) -> Self {
        Encoder {
            domain,
            sequence: 0,
        }
    }

    fn header(&self, out: &mut Vec<u8>, export_time: u32) {
        out.extend_from_slice(&VERSION.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&export_time.to_be_bytes());
        out.extend_from_slice(&self.sequence.to_be_bytes());
        out.extend_from_slice(&self.domain.to_be_bytes());
    }

    /// Messages carrying `records`, the first one led by the templates (sent with every export
    /// so that a collector that restarted, or lost a datagram, learns them again). A record
    /// whose address families differ (never, from the datapath) is skipped.
    pub fn encode(&mut self, records: &[FlowRecord], export_time: u32) -> Vec<Vec<u8>> {
        let mut msgs = Vec::new();
        let mut msg = Vec::with_capacity(MAX_MESSAGE);
        self.header(&mut msg, export_time);
        msg.extend_from_slice(&template_set());
        let mut set: Option<(u16, Vec<u8>)> = None;
        let mut in_msg = 0u32;
        for r in records {
            let v6 = match (r.src.addr, r.dst.addr) {
                (IpAddr::V4(_), IpAddr::V4(_)) => false,
                (IpAddr::V6(_), IpAddr::V6(_)) => true,
                _ => continue,
            };
            let tid = if v6 { TEMPLATE_V6 } else { TEMPLATE_V4 };
            let rlen = record_len(v6);
            let set_len = set.as_ref().map_or(0, |(_, s)| s.len());
            let switching = set.as_ref().is_some_and(|(id, _)| *id != tid);
            let needed = if set.is_none() || switching {
                SET_HEADER + rlen
            } else {
                rlen
            };
            if msg.len() + set_len + needed > MAX_MESSAGE {
                self.close(&mut msg, set.take(), &mut msgs, export_time, &mut in_msg);
            } else if switching {
                if let Some((id, mut s)) = set.take() {
                    finish_set(&mut s, id);
                    msg.extend_from_slice(&s);
                }
            }
            let (_, s) = set.get_or_insert_with(|| (tid, vec![0u8; SET_HEADER]));
            record(r, s);
            in_msg += 1;
        }
        self.close(&mut msg, set, &mut msgs, export_time, &mut in_msg);
        msgs
    }

    fn close(
        &mut self,
        msg: &mut Vec<u8>,
        set: Option<(u16, Vec<u8>)>,
        msgs: &mut Vec<Vec<u8>>,
        export_time: u32,
        in_msg: &mut u32,
    ) {
        if let Some((id, mut s)) = set {
            finish_set(&mut s, id);
            msg.extend_from_slice(&s);
        }
        let len = msg.len() as u16;
        msg[2..4].copy_from_slice(&len.to_be_bytes());
        msgs.push(std::mem::take(msg));
        self.sequence = self.sequence.wrapping_add(*in_msg);
        *in_msg = 0;
        self.header(msg, export_time);
    }
}
