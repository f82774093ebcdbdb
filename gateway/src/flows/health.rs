//! Passive backend health, judged from the flows the gateway carries (the way Envoy's outlier
//! detection judges an upstream, without probes of its own): a TCP connection that a backend
//! answered proves it reachable; one it left unanswered past a connect timeout counts against
//! it. The gateway sees both directions of every flow (replies come back through it), so this
//! needs no traffic of its own and reflects exactly the path clients use: node, tunnel, pod.
//!
//! UDP is not judged: a one-way stream (syslog, metrics) is legitimate and has no replies.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::record::{FlowRecord, Verdict};

/// A TCP flow without a reply this long after its first packet was not answered (the client's
/// first SYN retransmission is at 1 s; by 3 s a live backend has answered one of them).
pub const CONNECT_TIMEOUT_MS: u64 = 3_000;
/// Flows older than this do not speak for a backend's health any more.
pub const WINDOW_MS: u64 = 60_000;
/// Consecutive unanswered connections (the most recent ones) that make a backend failing.
pub const FAILING_AFTER: u32 = 2;

/// What the gateway knows of a backend's health.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// No TCP connection to judge by in the window (idle, UDP only, or too recent).
    #[default]
    Unknown,
    /// Its most recent connections were answered.
    Up,
    /// Its most recent [`FAILING_AFTER`] or more connections went unanswered.
    Failing,
}

impl Health {
    /// The lower-case name used in status, metrics and the dashboard.
    pub fn name(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Failing => "failing",
        }
    }
}

/// A backend's health and the connections it was judged by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendHealth {
    /// The verdict.
    pub health: Health,
    /// Connections in the window the backend answered.
    pub answered: u64,
    /// Connections in the window left unanswered past [`CONNECT_TIMEOUT_MS`].
    pub unanswered: u64,
}

/// Judges every backend that `flows` name, at Unix milliseconds `now_ms`; the key is the flow's
/// `backend` (`addr:port`).
pub fn assess<'a>(
    flows: impl Iterator<Item = &'a FlowRecord>,
    now_ms: u64,
) -> HashMap<&'a str, BackendHealth> {
    // (first seen, answered) of each decided connection, per backend.
    let mut decided: HashMap<&str, Vec<(u64, bool)>> = HashMap::new();
    for f in flows {
        let Some(backend) = f.backend.as_deref() else {
            continue;
        };
        if f.proto_num != 6
            || f.verdict != Verdict::Forwarded
            || now_ms.saturating_sub(f.first_seen_ms) > WINDOW_MS
        {
            continue;
        }
        let answered = f.reply_packets > 0;
        if !answered && now_ms.saturating_sub(f.first_seen_ms) < CONNECT_TIMEOUT_MS {
            continue; // still connecting
        }
        decided
            .entry(backend)
            .or_default()
            .push((f.first_seen_ms, answered));
    }
    decided
        .into_iter()
        .map(|(backend, mut conns)| {
            conns.sort_unstable();
            let answered = conns.iter().filter(|(_, a)| *a).count() as u64;
            let unanswered = conns.len() as u64 - answered;
            let trailing = conns.iter().rev().take_while(|(_, a)| !*a).count() as u32;
            let health = if trailing >= FAILING_AFTER {
                Health::Failing
            } else if answered > 0 {
                Health::Up
            } else {
                Health::Unknown
            };
            (
                backend,
                BackendHealth {
                    health,
                    answered,
                    unanswered,
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::record::Endpoint;

    fn flow(backend: &str, proto: u8, first_seen_ms: u64, replies: u64) -> FlowRecord {
        let ep = Endpoint {
            addr: "10.0.0.2".parse().unwrap(),
            port: 1000,
            identity: 0,
            labels: Vec::new(),
        };
        FlowRecord {
            first_seen_ms,
            last_seen_ms: first_seen_ms,
            src: ep.clone(),
            dst: ep,
            service: None,
            backend: Some(backend.to_string()),
            proto: String::new(),
            proto_num: proto,
            verdict: Verdict::Forwarded,
            reason: None,
            packets: 1,
            bytes: 60,
            reply_packets: replies,
            reply_bytes: replies * 60,
            snat: None,
            active: true,
        }
    }

    #[test]
    fn answered_connections_make_a_backend_up() {
        let f = [flow("a", 6, 1_000, 3), flow("a", 6, 2_000, 2)];
        let h = assess(f.iter(), 10_000);
        assert_eq!(
            h["a"],
            BackendHealth {
                health: Health::Up,
                answered: 2,
                unanswered: 0
            }
        );
    }

    #[test]
    fn consecutive_unanswered_connections_make_it_failing_and_an_answer_restores_it() {
        let mut f = vec![
            flow("a", 6, 1_000, 3),
            flow("a", 6, 2_000, 0),
            flow("a", 6, 3_000, 0),
        ];
        let h = assess(f.iter(), 10_000);
        assert_eq!(h["a"].health, Health::Failing);
        assert_eq!((h["a"].answered, h["a"].unanswered), (1, 2));
        // One failure after an answer is not yet failing (a client may have given up).
        assert_eq!(assess(f[..2].iter(), 10_000)["a"].health, Health::Up);
        f.push(flow("a", 6, 4_000, 1));
        assert_eq!(assess(f.iter(), 10_000)["a"].health, Health::Up);
    }

    #[test]
    fn connecting_udp_old_and_dropped_flows_do_not_count() {
        let mut dropped = flow("a", 6, 9_000, 0);
        dropped.verdict = Verdict::Dropped;
        let f = [
            flow("a", 6, 9_500, 0),  // still connecting at 10 s
            flow("a", 17, 1_000, 0), // UDP
            flow("a", 6, 100, 0),    // unanswered; out of the window at 70 s
            flow("b", 6, 1_000, 0),  // one unanswered: not enough to judge
            dropped,
        ];
        let h = assess(f.iter(), 10_000);
        assert_eq!(
            (h["a"].health, h["a"].answered, h["a"].unanswered),
            (Health::Unknown, 0, 1),
            "only the TCP flow of 0.1 s counts: {h:?}"
        );
        assert_eq!((h["b"].health, h["b"].unanswered), (Health::Unknown, 1));
        let h = assess(f.iter(), 70_050);
        assert!(!h.contains_key("a"), "{h:?}");
    }
}
