#![allow(clippy::unwrap_used)]
//! The exporter's output read back by a decoder written here from RFC 7011 (sections 3.1, 3.3,
//! 3.4), sharing nothing with the encoder: it learns the templates from the wire.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshgw_common::maps::{v4_mapped, FAMILY_V4, FAMILY_V6};
use meshgw_common::stats::Counter;
use meshgw_common::telemetry::{FlowEvent, EVENT_DROP, EVENT_NEW_FLOW};

use super::Exporter;
use crate::flows::table::Tracked;
use crate::flows::{FlowTable, Names};

/// A decoded data record: information element id -> raw value.
type Rec = HashMap<u16, Vec<u8>>;

struct Msg {
    seq: u32,
    domain: u32,
    records: Vec<Rec>,
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn num(b: &[u8]) -> u64 {
    b.iter().fold(0u64, |a, x| (a << 8) | u64::from(*x))
}

fn decode(m: &[u8], templates: &mut HashMap<u16, Vec<(u16, u16)>>) -> Msg {
    assert_eq!(be16(&m[0..]), 10, "version");
    assert_eq!(usize::from(be16(&m[2..])), m.len(), "message length");
    let out_seq = be32(&m[8..]);
    let domain = be32(&m[12..]);
    let mut records = Vec::new();
    let mut off = 16;
    while off < m.len() {
        let id = be16(&m[off..]);
        let len = usize::from(be16(&m[off + 2..]));
        assert!(len >= 4 && off + len <= m.len(), "set length");
        let body = &m[off + 4..off + len];
        if id == 2 {
            let mut p = 0;
            while p + 4 <= body.len() {
                let tid = be16(&body[p..]);
                let n = usize::from(be16(&body[p + 2..]));
                p += 4;
                let mut f = Vec::new();
                for _ in 0..n {
                    let ie = be16(&body[p..]);
                    assert_eq!(ie & 0x8000, 0, "no enterprise elements");
                    f.push((ie, be16(&body[p + 2..])));
                    p += 4;
                }
                templates.insert(tid, f);
            }
        } else if id >= 256 {
            let t = templates.get(&id).expect("template before data");
            let rl: usize = t.iter().map(|(_, l)| usize::from(*l)).sum();
            let mut p = 0;
            while p + rl <= body.len() {
                let mut r = Rec::new();
                for (ie, l) in t {
                    r.insert(*ie, body[p..p + usize::from(*l)].to_vec());
                    p += usize::from(*l);
                }
                records.push(r);
            }
        }
        off += len;
    }
    Msg {
        seq: out_seq,
        domain,
        records,
    }
}

fn event(src: [u8; 16], family: u8, sport: u16, kind: u8) -> FlowEvent {
    FlowEvent {
        src,
        dst: if family == FAMILY_V4 {
            v4_mapped([10, 200, 0, 1])
        } else {
            "fd00::80".parse::<Ipv6Addr>().unwrap().octets()
        },
        sport: sport.to_be(),
        dport: 80u16.to_be(),
        proto: 6,
        family,
        kind,
        reason: Counter::DropPolicy as u8,
        l3_len: 60,
        ..FlowEvent::default()
    }
}

#[tokio::test]
async fn exported_records_decode_with_an_independent_rfc7011_decoder() {
    let collector = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut table = FlowTable::new(1000);
    let n = Names::default();
    let client = v4_mapped([10, 100, 0, 2]);
    table.ingest(&event(client, FAMILY_V4, 40_000, EVENT_NEW_FLOW), 1_000, &n);
    let (key, _) = table.tracked_keys()[0];
    table.update(
        &key,
        Some(Tracked {
            packets: 5,
            bytes: 400,
            last_seen_ms: 3_000,
        }),
        None,
    );
    table.ingest(&event(client, FAMILY_V4, 40_001, EVENT_DROP), 2_000, &n);
    let c6: Ipv6Addr = "fd00:100::2".parse().unwrap();
    table.ingest(
        &event(c6.octets(), FAMILY_V6, 40_002, EVENT_NEW_FLOW),
        2_500,
        &n,
    );
    // Enough flows to need several datagrams.
    for i in 0..150u16 {
        table.ingest(
            &event(client, FAMILY_V4, 50_000 + i, EVENT_NEW_FLOW),
            4_000,
            &n,
        );
    }
    let table = Arc::new(Mutex::new(table));
    let exporter = Exporter {
        collector: collector.local_addr().unwrap(),
        interval: Duration::from_millis(50),
        domain: 77,
    };
    let task = tokio::spawn(exporter.run(table.clone()));

    let mut templates = HashMap::new();
    let mut all: Vec<Rec> = Vec::new();
    let mut want_seq = 0u32;
    let mut buf = vec![0u8; 65_536];
    while all.len() < 153 {
        let (len, _) = collector.recv_from(&mut buf).await.unwrap();
        assert!(len <= 1400, "datagram of {len} bytes");
        let m = decode(&buf[..len], &mut templates);
        assert_eq!(m.domain, 77);
        assert_eq!(m.seq, want_seq, "sequence counts data records sent before");
        want_seq += m.records.len() as u32;
        all.extend(m.records);
    }
    task.abort();
    assert_eq!(all.len(), 153);
    let port = |r: &Rec| num(&r[&7]) as u16;
    let fwd = all.iter().find(|r| port(r) == 40_000).unwrap();
    assert_eq!(fwd[&8], [10, 100, 0, 2]);
    assert_eq!(fwd[&12], [10, 200, 0, 1]);
    assert_eq!(num(&fwd[&11]), 80);
    assert_eq!(num(&fwd[&4]), 6);
    assert_eq!((num(&fwd[&1]), num(&fwd[&2])), (400, 5), "octets, packets");
    assert_eq!(
        (num(&fwd[&152]), num(&fwd[&153])),
        (1_000, 3_000),
        "start, end"
    );
    assert_eq!(num(&fwd[&89]), 64, "forwarded");
    let drop = all.iter().find(|r| port(r) == 40_001).unwrap();
    assert_eq!((num(&drop[&1]), num(&drop[&2])), (60, 1));
    assert_eq!(num(&drop[&89]), 129, "dropped: ACL deny");
    let v6 = all.iter().find(|r| port(r) == 40_002).unwrap();
    assert_eq!(
        IpAddr::from(<[u8; 16]>::try_from(v6[&27].as_slice()).unwrap()),
        IpAddr::V6(c6)
    );
    assert!(!v6.contains_key(&8));
    assert_eq!(
        all.iter()
            .filter(|r| r
                .get(&8)
                .is_some_and(|a| a[..] == Ipv4Addr::new(10, 100, 0, 2).octets()))
            .count(),
        152
    );
    // Exported once: the table has nothing new.
    assert!(table.lock().unwrap().take_deltas().is_empty());
}
