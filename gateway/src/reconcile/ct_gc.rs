//! Connection-tracking expiry. The map is an LRU, so it never overflows, but idle flows should
//! still end: a client port reused hours later deserves a fresh backend choice, and the flow
//! tables the operator sees should be real. Timeouts follow Cilium's defaults.
//!
//! A forward entry (client -> VIP) expires on its own idleness; its reverse entry (backend ->
//! client) lives as long as the forward one exists, because replies can be rarer than requests
//! (a one-way UDP stream) and a reply that misses its reverse entry would leave without the VIP.
//! Egress source-NAT entries (`MGW_SNAT`) follow the same rule: the endpoint's entry expires on
//! its idleness, the reply entry (which holds the port claim) with it.

use std::collections::HashSet;

use meshgw_common::maps::{
    CtEntry, CtKey, SnatEntry, CT_DIR_EGRESS, CT_DIR_EGRESS_REPLY, CT_DIR_FORWARD, CT_DIR_REVERSE,
    CT_F_CLOSING,
};
use meshgw_common::parse::IPPROTO_TCP;
use meshgw_datapath::{Datapath, DatapathError};

/// Idle time after which a TCP flow ends (Cilium: 6 h).
pub const TCP_IDLE_NS: u64 = 6 * 3600 * 1_000_000_000;
/// Idle time after which a TCP flow that saw FIN or RST ends (Cilium: 10 s).
pub const TCP_CLOSING_NS: u64 = 10 * 1_000_000_000;
/// Idle time after which a TCP flow its backend never answered ends (Cilium's SYN timeout:
/// 60 s): a client gives up on an unanswered connection without telling anyone, so without this
/// the flow would count as a connection for the full idle time.
pub const TCP_SYN_NS: u64 = 60 * 1_000_000_000;
/// Idle time after which a UDP flow ends (Cilium: 60 s).
pub const UDP_IDLE_NS: u64 = 60 * 1_000_000_000;

fn timeout(proto: u8, flags: u32, answered: bool) -> u64 {
    if proto != IPPROTO_TCP {
        UDP_IDLE_NS
    } else if flags & CT_F_CLOSING != 0 {
        TCP_CLOSING_NS
    } else if !answered {
        TCP_SYN_NS
    } else {
        TCP_IDLE_NS
    }
}

/// The forward key a reverse entry belongs to.
pub fn forward_of(k: &CtKey, e: &CtEntry) -> CtKey {
    CtKey {
        src: k.dst,
        dst: e.nat_addr,
        sport: k.dport,
        dport: e.nat_port,
        dir: CT_DIR_FORWARD,
        ..*k
    }
}

/// Which entries to delete at monotonic time `now_ns`.
pub fn expired(entries: &[(CtKey, CtEntry)], now_ns: u64) -> Vec<CtKey> {
    let mut out = Vec::new();
    let answered: HashSet<CtKey> = entries
        .iter()
        .filter(|(k, e)| k.dir == CT_DIR_REVERSE && e.packets > 0)
        .map(|(k, e)| forward_of(k, e))
        .collect();
    let mut live_forward: HashSet<CtKey> = HashSet::new();
    for (k, e) in entries.iter().filter(|(k, _)| k.dir == CT_DIR_FORWARD) {
        let limit = timeout(k.proto, e.flags, answered.contains(k));
        if now_ns.saturating_sub(e.last_seen_ns) > limit {
            out.push(*k);
        } else {
            live_forward.insert(*k);
        }
    }
    for (k, e) in entries.iter().filter(|(k, _)| k.dir == CT_DIR_REVERSE) {
        if !live_forward.contains(&forward_of(k, e)) {
            out.push(*k);
        }
    }
    out
}

/// The endpoint-side key a source-NAT reply entry belongs to.
pub fn egress_of(k: &CtKey, e: &SnatEntry) -> CtKey {
    CtKey {
        src: e.addr,
        dst: k.src,
        sport: e.port,
        dport: k.sport,
        dir: CT_DIR_EGRESS,
        ..*k
    }
}

/// Which source-NAT entries to delete at monotonic time `now_ns`.
pub fn snat_expired(entries: &[(CtKey, SnatEntry)], now_ns: u64) -> Vec<CtKey> {
    let mut out = Vec::new();
    let mut live: HashSet<CtKey> = HashSet::new();
    for (k, e) in entries.iter().filter(|(k, _)| k.dir == CT_DIR_EGRESS) {
        // Egress flows have no answered bit; the SYN timeout is for frontend flows.
        if now_ns.saturating_sub(e.last_seen_ns) > timeout(k.proto, e.flags, true) {
            out.push(*k);
        } else {
            live.insert(*k);
        }
    }
    for (k, e) in entries.iter().filter(|(k, _)| k.dir == CT_DIR_EGRESS_REPLY) {
        if !live.contains(&egress_of(k, e)) {
            out.push(*k);
        }
    }
    out
}

/// `CLOCK_MONOTONIC`, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sweeps both tables; returns (entries seen, entries removed).
pub fn sweep(dp: &mut Datapath) -> Result<(usize, usize), DatapathError> {
    let now = monotonic_ns();
    let mut ct = dp.ct()?;
    let entries: Vec<(CtKey, CtEntry)> = ct.iter().filter_map(Result::ok).collect();
    let mut removed = 0;
    for k in &expired(&entries, now) {
        if ct.remove(k).is_ok() {
            removed += 1;
        }
    }
    let mut seen = entries.len();
    let mut snat = dp.snat()?;
    let entries: Vec<(CtKey, SnatEntry)> = snat.iter().filter_map(Result::ok).collect();
    for k in &snat_expired(&entries, now) {
        if snat.remove(k).is_ok() {
            removed += 1;
        }
    }
    seen += entries.len();
    Ok((seen, removed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgw_common::parse::IPPROTO_UDP;

    const S: u64 = 1_000_000_000;

    fn pair(proto: u8, fwd_seen: u64, rev_seen: u64, flags: u32) -> [(CtKey, CtEntry); 2] {
        let client = [1u8; 16];
        let vip = [2u8; 16];
        let pod = [3u8; 16];
        let fk = CtKey {
            src: client,
            dst: vip,
            sport: 1000,
            dport: 80,
            proto,
            family: 6,
            dir: CT_DIR_FORWARD,
            _pad: 0,
        };
        let rk = CtKey {
            src: pod,
            dst: client,
            sport: 8080,
            dport: 1000,
            proto,
            family: 6,
            dir: CT_DIR_REVERSE,
            _pad: 0,
        };
        let fe = CtEntry {
            last_seen_ns: fwd_seen,
            flags,
            ..Default::default()
        };
        let re = CtEntry {
            last_seen_ns: rev_seen,
            nat_addr: vip,
            nat_port: 80,
            packets: 1,
            ..Default::default()
        };
        [(fk, fe), (rk, re)]
    }

    #[test]
    fn an_unanswered_tcp_flow_ends_after_the_syn_timeout() {
        let now = 100_000 * S;
        let mut e = pair(IPPROTO_TCP, now - 61 * S, now - 61 * S, 0);
        assert!(expired(&e, now).is_empty(), "answered: established");
        e[1].1.packets = 0;
        assert_eq!(expired(&e, now).len(), 2, "never answered: gone after 60 s");
        let e2 = [e[0], e[1]].map(|(k, mut v)| {
            v.last_seen_ns = now - 59 * S;
            (k, v)
        });
        assert!(expired(&e2, now).is_empty(), "still within the SYN timeout");
    }

    #[test]
    fn reverse_key_maps_back_to_its_forward_key() {
        let [(fk, _), (rk, re)] = pair(IPPROTO_TCP, 0, 0, 0);
        assert_eq!(forward_of(&rk, &re), fk);
    }

    #[test]
    fn live_flows_stay_even_when_replies_are_rare() {
        let now = 10_000 * S;
        let e = pair(IPPROTO_UDP, now - 5 * S, now - 5_000 * S, 0);
        assert!(expired(&e, now).is_empty());
    }

    #[test]
    fn idle_udp_goes_with_its_reverse_entry() {
        let now = 10_000 * S;
        let e = pair(IPPROTO_UDP, now - 61 * S, now - 61 * S, 0);
        assert_eq!(expired(&e, now).len(), 2);
    }

    #[test]
    fn closing_tcp_ends_quickly_established_tcp_does_not() {
        let now = 100_000 * S;
        assert_eq!(
            expired(&pair(IPPROTO_TCP, now - 11 * S, now, CT_F_CLOSING), now).len(),
            2
        );
        assert!(expired(&pair(IPPROTO_TCP, now - 3_600 * S, now, 0), now).is_empty());
        assert_eq!(
            expired(&pair(IPPROTO_TCP, now - 7 * 3_600 * S, now, 0), now).len(),
            2
        );
    }

    #[test]
    fn orphaned_reverse_entries_go() {
        let now = 100 * S;
        let [_, rev] = pair(IPPROTO_TCP, 0, now, 0);
        assert_eq!(expired(&[rev], now), vec![rev.0]);
    }

    #[test]
    fn snat_reply_entries_live_and_die_with_their_endpoint_entry() {
        let now = 10_000 * S;
        let (pod, host, egress) = ([3u8; 16], [1u8; 16], [9u8; 16]);
        let ek = CtKey {
            src: pod,
            dst: host,
            sport: 4000,
            dport: 22,
            proto: IPPROTO_TCP,
            family: 4,
            dir: CT_DIR_EGRESS,
            _pad: 0,
        };
        let rk = CtKey {
            src: host,
            dst: egress,
            sport: 22,
            dport: 61_234,
            dir: CT_DIR_EGRESS_REPLY,
            ..ek
        };
        let re = SnatEntry {
            addr: pod,
            port: 4000,
            last_seen_ns: now,
            ..Default::default()
        };
        assert_eq!(egress_of(&rk, &re), ek);
        let live = SnatEntry {
            last_seen_ns: now - 3_600 * S,
            ..Default::default()
        };
        assert!(snat_expired(&[(ek, live), (rk, re)], now).is_empty());
        let closing = SnatEntry {
            last_seen_ns: now - 11 * S,
            flags: CT_F_CLOSING,
            ..Default::default()
        };
        assert_eq!(snat_expired(&[(ek, closing), (rk, re)], now), vec![ek, rk]);
        assert_eq!(snat_expired(&[(rk, re)], now), vec![rk]);
    }
}
