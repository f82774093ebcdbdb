//! The in-memory flow table: flow events from the datapath aggregated per 5-tuple and verdict,
//! bounded (the least recently seen flows go first), refreshed from connection tracking, and
//! drained by the IPFIX exporter as deltas.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use meshgw_common::maps::{CtKey, CT_DIR_FORWARD, CT_DIR_REVERSE, FAMILY_V4};
use meshgw_common::stats::Counter;
use meshgw_common::telemetry::{FlowEvent, EVENT_DROP};

use super::health::{self, BackendHealth};
use super::record::{Endpoint, FlowRecord, Verdict};

/// What the datapath's ids mean, as the daemon last reconciled them.
#[derive(Clone, Debug, Default)]
pub struct Names {
    /// Service id -> `namespace/name` (shared with the telemetry's frontend list).
    pub services: HashMap<u32, std::sync::Arc<str>>,
    /// Backend id -> its address (IPv4-mapped for IPv4) and port in network order: the source
    /// of the flow's reply tracking entry.
    pub backend_keys: HashMap<u32, ([u8; 16], u16)>,
    /// Identity -> labels (`key=value`).
    pub identities: HashMap<u32, Vec<String>>,
}

/// A flow's key: its forward connection-tracking key (the 5-tuple client -> VIP as the datapath
/// sees it), and whether it was dropped (kept apart from a forwarded flow of the same tuple).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// The forward connection-tracking key.
    pub ct: CtKey,
    /// Dropped, not forwarded.
    pub dropped: bool,
}

/// A flow's counters as connection tracking reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracked {
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
    /// Unix milliseconds of the last packet.
    pub last_seen_ms: u64,
}

struct Entry {
    rec: FlowRecord,
    exported: (u64, u64),
    track: Track,
}

/// Where the datapath keeps a forwarded flow's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Track {
    /// A VIP flow in connection tracking, with its reply direction's key (backend -> client)
    /// when the backend is known.
    Ct(Option<CtKey>),
    /// An egress flow (endpoint -> legacy host) in the source-NAT table: the entry holds the
    /// translated address and port, from which the reply's key follows.
    Snat,
}

/// The table.
pub struct FlowTable {
    max: usize,
    flows: HashMap<FlowKey, Entry>,
    /// Events seen, by kind (1: new flow, 2: sample, 3: drop).
    pub events: [u64; 4],
}

fn addr(a: &[u8; 16], family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(a[12], a[13], a[14], a[15]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*a))
    }
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "TCP".into(),
        17 => "UDP".into(),
        1 => "ICMP".into(),
        58 => "ICMPv6".into(),
        n => n.to_string(),
    }
}

/// The counter name of a drop reason slot.
pub fn reason_name(slot: u8) -> String {
    Counter::ALL
        .iter()
        .find(|c| **c as u8 == slot)
        .map_or_else(|| format!("reason_{slot}"), |c| c.name().to_string())
}

impl FlowTable {
    /// A table holding at most `max` flows.
    pub fn new(max: usize) -> Self {
        FlowTable {
            max: max.max(1),
            flows: HashMap::new(),
            events: [0; 4],
        }
    }

    /// Holds at most `max` flows from now on (the oldest go at once if there are more).
    pub fn set_max(&mut self, max: usize) {
        self.max = max.max(1);
        while self.flows.len() > self.max {
            self.evict();
        }
    }

    /// Flows held.
    pub fn held(&self) -> usize {
        self.flows.len()
    }

    /// Adds an event seen at Unix milliseconds `at_ms`; returns the flow as it now is.
    pub fn ingest(&mut self, e: &FlowEvent, at_ms: u64, names: &Names) -> FlowRecord {
        self.events[usize::from(e.kind.min(3))] += 1;
        let dropped = e.kind == EVENT_DROP;
        let key = FlowKey {
            ct: CtKey {
                src: e.src,
                dst: e.dst,
                sport: e.sport,
                dport: e.dport,
                proto: e.proto,
                family: e.family,
                dir: CT_DIR_FORWARD,
                _pad: 0,
            },
            dropped,
        };
        if !self.flows.contains_key(&key) && self.flows.len() >= self.max {
            self.evict();
        }
        let endpoint = |a: &[u8; 16], port: u16, identity: u32| Endpoint {
            addr: addr(a, e.family),
            port: u16::from_be(port),
            identity,
            labels: names.identities.get(&identity).cloned().unwrap_or_default(),
        };
        let entry = self.flows.entry(key).or_insert_with(|| Entry {
            rec: FlowRecord {
                first_seen_ms: at_ms,
                last_seen_ms: at_ms,
                src: endpoint(&e.src, e.sport, e.src_identity),
                dst: endpoint(&e.dst, e.dport, e.dst_identity),
                service: names.services.get(&e.service_id).map(|s| s.to_string()),
                // The backend is of the flow's family (the datapath never translates across).
                backend: names.backend_keys.get(&e.backend_id).map(|(a, port)| {
                    std::net::SocketAddr::new(addr(a, e.family), u16::from_be(*port)).to_string()
                }),
                proto: proto_name(e.proto),
                proto_num: e.proto,
                verdict: if dropped {
                    Verdict::Dropped
                } else {
                    Verdict::Forwarded
                },
                reason: dropped.then(|| reason_name(e.reason)),
                packets: 0,
                bytes: 0,
                reply_packets: 0,
                reply_bytes: 0,
                snat: None,
                active: !dropped,
            },
            exported: (0, 0),
            // The only new flows without a service are the egress ones.
            track: if e.service_id == 0 && !dropped {
                Track::Snat
            } else {
                Track::Ct(
                    names
                        .backend_keys
                        .get(&e.backend_id)
                        .map(|(addr, port)| CtKey {
                            src: *addr,
                            dst: e.src,
                            sport: *port,
                            dport: e.sport,
                            proto: e.proto,
                            family: e.family,
                            dir: CT_DIR_REVERSE,
                            _pad: 0,
                        }),
                )
            },
        });
        let r = &mut entry.rec;
        r.last_seen_ms = r.last_seen_ms.max(at_ms);
        // Dropped flows are counted by their events (every drop is one); forwarded ones by
        // connection tracking, with the events as a floor until the next refresh.
        if dropped || r.packets == 0 {
            r.packets += 1;
            r.bytes += u64::from(e.l3_len);
        }
        r.clone()
    }

    fn evict(&mut self) {
        // Batches of an eighth keep eviction off the per-event path.
        let mut by_age: Vec<(u64, FlowKey)> = self
            .flows
            .iter()
            .map(|(k, v)| (v.rec.last_seen_ms, *k))
            .collect();
        by_age.sort_unstable_by_key(|(t, _)| *t);
        for (_, k) in by_age.iter().take(self.max.div_ceil(8)) {
            self.flows.remove(k);
        }
    }

    /// Keys of the forwarded flows the datapath may still hold, with where it holds them.
    pub fn tracked_keys(&self) -> Vec<(FlowKey, Track)> {
        self.flows
            .iter()
            .filter(|(k, v)| !k.dropped && v.rec.active)
            .map(|(k, v)| (*k, v.track))
            .collect()
    }

    /// Records the address and port an egress flow leaves with.
    pub fn set_snat(&mut self, key: &FlowKey, to: std::net::SocketAddr) {
        if let Some(e) = self.flows.get_mut(key) {
            e.rec.snat = Some(to.to_string());
        }
    }

    /// Applies what connection tracking says of `key` (`None`: the flow ended) and of its reply
    /// direction.
    pub fn update(&mut self, key: &FlowKey, t: Option<Tracked>, reply: Option<Tracked>) {
        let Some(e) = self.flows.get_mut(key) else {
            return;
        };
        match t {
            Some(t) => {
                e.rec.packets = e.rec.packets.max(t.packets);
                e.rec.bytes = e.rec.bytes.max(t.bytes);
                e.rec.last_seen_ms = e.rec.last_seen_ms.max(t.last_seen_ms);
            }
            None => e.rec.active = false,
        }
        if let Some(r) = reply {
            e.rec.reply_packets = e.rec.reply_packets.max(r.packets);
            e.rec.reply_bytes = e.rec.reply_bytes.max(r.bytes);
            e.rec.last_seen_ms = e.rec.last_seen_ms.max(r.last_seen_ms);
        }
    }

    /// Every backend's passive health at Unix milliseconds `now_ms` (see [`health`]), by
    /// `addr:port`.
    pub fn backend_health(&self, now_ms: u64) -> HashMap<String, BackendHealth> {
        health::assess(self.flows.values().map(|e| &e.rec), now_ms)
            .into_iter()
            .map(|(b, h)| (b.to_string(), h))
            .collect()
    }

    /// Every flow, the most recently seen last.
    pub fn records(&self) -> Vec<FlowRecord> {
        let mut v: Vec<FlowRecord> = self.flows.values().map(|e| e.rec.clone()).collect();
        v.sort_by_key(|r| (r.last_seen_ms, r.first_seen_ms));
        v
    }

    /// Forwarded flows connection tracking still holds, per frontend (VIP, port, protocol).
    pub fn connections(&self) -> BTreeMap<(IpAddr, u16, u8), u64> {
        let mut out = BTreeMap::new();
        for e in self.flows.values() {
            let r = &e.rec;
            if r.active && r.verdict == Verdict::Forwarded {
                *out.entry((r.dst.addr, r.dst.port, r.proto_num))
                    .or_insert(0) += 1;
            }
        }
        out
    }

    /// Flows with packets not exported yet, with only those packets and bytes (IPFIX delta
    /// counts); marks them exported.
    pub fn take_deltas(&mut self) -> Vec<FlowRecord> {
        let mut out = Vec::new();
        for e in self.flows.values_mut() {
            let (p, b) = e.exported;
            if e.rec.packets > p {
                let mut r = e.rec.clone();
                r.packets -= p;
                r.bytes = r.bytes.saturating_sub(b);
                e.exported = (e.rec.packets, e.rec.bytes);
                out.push(r);
            }
        }
        out.sort_by_key(|r| r.first_seen_ms);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgw_common::maps::v4_mapped;
    use meshgw_common::telemetry::{EVENT_NEW_FLOW, EVENT_SAMPLE};

    fn ev(kind: u8, sport: u16) -> FlowEvent {
        FlowEvent {
            src: v4_mapped([10, 0, 0, 2]),
            dst: v4_mapped([10, 200, 0, 1]),
            sport: sport.to_be(),
            dport: 80u16.to_be(),
            proto: 6,
            family: FAMILY_V4,
            kind,
            reason: if kind == EVENT_DROP {
                Counter::DropPolicy as u8
            } else {
                0
            },
            service_id: 1,
            backend_id: 7,
            src_identity: 2,
            l3_len: 60,
            ..FlowEvent::default()
        }
    }

    fn names() -> Names {
        Names {
            services: [(1, std::sync::Arc::from("default/web"))].into(),
            backend_keys: [(7, (v4_mapped([10, 244, 1, 10]), 8080u16.to_be()))].into(),
            identities: [(2, vec!["reserved:world".to_string()])].into(),
        }
    }

    #[test]
    fn events_aggregate_per_flow_and_verdict_and_ct_refreshes_counts() {
        let mut t = FlowTable::new(100);
        let n = names();
        let r = t.ingest(&ev(EVENT_NEW_FLOW, 1000), 5_000, &n);
        assert_eq!(r.service.as_deref(), Some("default/web"));
        assert_eq!(r.backend.as_deref(), Some("10.244.1.10:8080"));
        assert_eq!(
            (r.src.addr.to_string(), r.src.port),
            ("10.0.0.2".to_string(), 1000)
        );
        assert_eq!(r.src.labels, ["reserved:world"]);
        assert_eq!((r.packets, r.verdict), (1, Verdict::Forwarded));
        t.ingest(&ev(EVENT_SAMPLE, 1000), 6_000, &n);
        t.ingest(&ev(EVENT_DROP, 1000), 6_500, &n);
        t.ingest(&ev(EVENT_DROP, 1000), 7_000, &n);
        assert_eq!(t.held(), 2);
        let recs = t.records();
        let drop = recs.iter().find(|r| r.verdict == Verdict::Dropped).unwrap();
        assert_eq!((drop.packets, drop.bytes), (2, 120));
        assert_eq!(drop.reason.as_deref(), Some("drop_policy"));
        assert!(
            drop.line().contains("DROPPED (drop_policy)"),
            "{}",
            drop.line()
        );

        let keys = t.tracked_keys();
        assert_eq!(keys.len(), 1);
        let (key, track) = keys[0];
        let Track::Ct(Some(reverse)) = track else {
            panic!("the backend is known: so is the reply's key: {track:?}")
        };
        assert_eq!(
            (reverse.src, reverse.dst, u16::from_be(reverse.sport)),
            (v4_mapped([10, 244, 1, 10]), key.ct.src, 8080)
        );
        assert_eq!((reverse.dport, reverse.dir), (key.ct.sport, CT_DIR_REVERSE));
        t.update(
            &key,
            Some(Tracked {
                packets: 10,
                bytes: 900,
                last_seen_ms: 8_000,
            }),
            Some(Tracked {
                packets: 8,
                bytes: 4000,
                last_seen_ms: 8_100,
            }),
        );
        let vip = "10.200.0.1".parse().unwrap();
        assert_eq!(t.connections().get(&(vip, 80, 6)), Some(&1));
        let d = t.take_deltas();
        assert_eq!(d.len(), 2);
        let fwd = d.iter().find(|r| r.verdict == Verdict::Forwarded).unwrap();
        assert_eq!((fwd.packets, fwd.bytes, fwd.last_seen_ms), (10, 900, 8_100));
        assert_eq!((fwd.reply_packets, fwd.reply_bytes), (8, 4000));
        assert!(
            fwd.line().ends_with("10 pkts 900 B, 8 pkts 4000 B back"),
            "{}",
            fwd.line()
        );
        assert_eq!(
            t.backend_health(9_000)["10.244.1.10:8080"].health,
            health::Health::Up
        );
        // Nothing new: nothing to export; then only the new packets.
        assert!(t.take_deltas().is_empty());
        t.update(
            &key,
            Some(Tracked {
                packets: 13,
                bytes: 1000,
                last_seen_ms: 9_000,
            }),
            None,
        );
        let d = t.take_deltas();
        assert_eq!((d[0].packets, d[0].bytes), (3, 100));
        t.update(&key, None, None);
        assert!(t.tracked_keys().is_empty());
        assert!(t.connections().is_empty());
    }

    #[test]
    fn the_table_is_bounded_and_forgets_the_oldest() {
        let mut t = FlowTable::new(16);
        for i in 0..40u16 {
            t.ingest(
                &ev(EVENT_NEW_FLOW, 2000 + i),
                u64::from(i),
                &Names::default(),
            );
        }
        assert!(t.held() <= 16);
        let recs = t.records();
        assert_eq!(recs.last().map(|r| r.src.port), Some(2039));
        assert!(recs.iter().all(|r| r.src.port >= 2040 - 16));
    }
}
