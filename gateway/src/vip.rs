//! Portal VIP allocation. Static VIPs from the config are pinned; `auto` VIPs come from the pool:
//! first the address the service had before (persisted), then a deterministic starting point
//! derived from the service's name, probing forward to the first free address. So a service keeps
//! its VIP across restarts, and gets the same one again if the state file is lost but the address
//! is still free. Pool exhaustion leaves the service without a VIP of that family and is reported;
//! it never stops the gateway.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::catalog::ServiceName;

/// What a service asks for in one address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Request {
    /// Any free address of the pool.
    Auto,
    /// This address.
    Static(IpAddr),
}

/// The outcome of one allocation round.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allocation {
    /// (service, is_ipv6) -> VIP.
    pub vips: BTreeMap<(ServiceName, bool), IpAddr>,
    /// Services that asked for a VIP and got none, with the reason.
    pub failures: Vec<(ServiceName, bool, String)>,
    /// VIPs held for services that asked for none this round (see [`allocate`]); they
    /// stay in the persisted state.
    pub reserved: BTreeMap<String, Vec<IpAddr>>,
}

/// The persisted assignments: `<state_dir>/vips.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct VipState {
    /// "namespace/name" -> VIPs it held.
    pub assigned: BTreeMap<String, Vec<IpAddr>>,
}

impl VipState {
    /// Reads the state file; a missing or unreadable file is an empty state (with a warning for
    /// the latter: allocation stays deterministic without it).
    pub fn load(path: &Path) -> VipState {
        crate::statefile::load_or_default(path, "VIP state")
    }

    /// Writes the state file atomically.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        crate::statefile::save(path, self)
    }

    /// The state file's path under a state directory.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("vips.json")
    }
}

fn name_hash(s: &ServiceName) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in s.to_string().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Usable host addresses of a pool range, as offsets from the network address: IPv4 ranges of /30
/// and wider skip the network and broadcast addresses, IPv6 ranges skip the subnet-router anycast.
fn usable(net: &IpNet) -> (u128, u128) {
    let bits = match net {
        IpNet::V4(_) => 32 - u32::from(net.prefix_len()),
        IpNet::V6(_) => 128 - u32::from(net.prefix_len()),
    };
    let size: u128 = if bits >= 128 {
        u128::MAX
    } else {
        1u128 << bits
    };
    match net {
        IpNet::V4(_) if bits >= 2 => (1, size - 2),
        IpNet::V6(_) if bits >= 1 => (1, size - 1),
        _ => (0, size),
    }
}

fn offset_addr(net: &IpNet, off: u128) -> IpAddr {
    match net {
        IpNet::V4(n) => IpAddr::from(std::net::Ipv4Addr::from(
            u32::from(n.network()).wrapping_add(off as u32),
        )),
        IpNet::V6(n) => IpAddr::from(std::net::Ipv6Addr::from(
            u128::from(n.network()).wrapping_add(off),
        )),
    }
}

pub fn allocate(
    pool: &[IpNet],
    requests: &BTreeMap<(ServiceName, bool), Request>,
    prev: &VipState,
    reserve_absent: bool,
    reserved: &BTreeSet<IpAddr>,
) -> Allocation {
    let mut out = Allocation::default();
    // Addresses of the pool with another use (egress addresses) are never handed out.
    let mut taken: BTreeSet<IpAddr> = reserved.clone();
    if reserve_absent {
        let requested: BTreeSet<String> = requests.keys().map(|(s, _)| s.to_string()).collect();
        for (svc, ips) in &prev.assigned {
            if !requested.contains(svc) {
                taken.extend(ips.iter().copied());
                out.reserved.insert(svc.clone(), ips.clone());
            }
        }
    }
    // Static pins first: they win over anything automatic.
    for (key, req) in requests {
        if let Request::Static(ip) = req {
            if taken.insert(*ip) {
                out.vips.insert(key.clone(), *ip);
            } else {
                out.failures.push((
                    key.0.clone(),
                    key.1,
                    if reserved.contains(ip) {
                        format!("{ip} is an egress address")
                    } else {
                        format!("{ip} is pinned by another service")
                    },
                ));
            }
        }
    }
    let autos: Vec<&(ServiceName, bool)> = requests
        .iter()
        .filter(|(_, r)| **r == Request::Auto)
        .map(|(k, _)| k)
        .collect();
    let in_pool = |ip: &IpAddr| pool.iter().any(|n| n.contains(ip));
    // Then what each service held before, if still in the pool and free.
    let mut pending = Vec::new();
    for key in autos {
        let held = prev.assigned.get(&key.0.to_string()).and_then(|v| {
            v.iter()
                .copied()
                .find(|ip| ip.is_ipv6() == key.1 && in_pool(ip) && !taken.contains(ip))
        });
        match held {
            Some(ip) => {
                taken.insert(ip);
                out.vips.insert(key.clone(), ip);
            }
            None => pending.push(key),
        }
    }
    // Then a deterministic probe from a name-derived start.
    for key in pending {
        let ranges: Vec<&IpNet> = pool
            .iter()
            .filter(|n| matches!(n, IpNet::V6(_)) == key.1)
            .collect();
        let mut found = None;
        'ranges: for net in &ranges {
            let (first, count) = usable(net);
            if count == 0 {
                continue;
            }
            let start = u128::from(name_hash(&key.0)) % count;
            // Probe at most 65,536 addresses of a range: a huge IPv6 range is never scanned whole.
            for i in 0..count.min(65_536) {
                let ip = offset_addr(net, first + (start + i) % count);
                if !taken.contains(&ip) {
                    found = Some(ip);
                    break 'ranges;
                }
            }
        }
        match found {
            Some(ip) => {
                taken.insert(ip);
                out.vips.insert(key.clone(), ip);
            }
            None => out.failures.push((
                key.0.clone(),
                key.1,
                format!(
                    "the VIP pool has no free {} address",
                    if key.1 { "IPv6" } else { "IPv4" }
                ),
            )),
        }
    }
    out
}

impl Allocation {
    /// Whether [`Allocation::state`] would equal `held`, without building it: a pass that
    /// changes no assignment (nearly every one) then allocates nothing for the comparison.
    pub fn state_is(&self, held: &VipState) -> bool {
        use std::fmt::Write;
        let mut groups = 0;
        let mut name = String::new();
        let mut it = self.vips.iter().peekable();
        while let Some(((svc, _), ip)) = it.next() {
            // The v4 entry sorts before the v6 one of the same service.
            let mut ips = [Some(*ip), None];
            if let Some(((next, _), ip6)) = it.peek() {
                if next == svc {
                    ips[1] = Some(**ip6);
                    it.next();
                }
            }
            name.clear();
            let _ = write!(name, "{svc}");
            if self.reserved.contains_key(&name) {
                // Both a request and a reservation: `state` merges them; compare the long way.
                return self.state() == *held;
            }
            let Some(h) = held.assigned.get(&name) else {
                return false;
            };
            if !h
                .iter()
                .copied()
                .map(Some)
                .eq(ips.into_iter().flatten().map(Some))
            {
                return false;
            }
            groups += 1;
        }
        held.assigned.len() == groups + self.reserved.len()
            && self
                .reserved
                .iter()
                .all(|(k, v)| held.assigned.get(k) == Some(v))
    }

    /// The state to persist: the assignments, and the VIPs still reserved.
    pub fn state(&self) -> VipState {
        let mut s = VipState {
            assigned: self.reserved.clone(),
        };
        for ((svc, _), ip) in &self.vips {
            s.assigned.entry(svc.to_string()).or_default().push(*ip);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_services_keep_their_vips_reserved_while_warming_up() {
        let pool: Vec<IpNet> = vec!["10.0.0.0/30".parse().unwrap()];
        let mut prev = VipState::default();
        // The only two usable addresses of the /30, held by `a` and `b` before a restart.
        prev.assigned
            .insert("default/a".into(), vec!["10.0.0.1".parse().unwrap()]);
        prev.assigned
            .insert("default/b".into(), vec!["10.0.0.2".parse().unwrap()]);
        let mut req = BTreeMap::new();
        req.insert((svc("c"), false), Request::Auto);
        let warm = allocate(&pool, &req, &prev, true, &BTreeSet::new());
        assert!(warm.vips.is_empty(), "{warm:?}");
        assert_eq!(warm.failures.len(), 1);
        assert_eq!(
            warm.state(),
            prev,
            "the reserved VIPs stay in the persisted state"
        );
        let cold = allocate(&pool, &req, &prev, false, &BTreeSet::new());
        assert_eq!(cold.vips.len(), 1);
        // A service that is present keeps its own VIP either way.
        req.insert((svc("a"), false), Request::Auto);
        let warm = allocate(&pool, &req, &prev, true, &BTreeSet::new());
        assert_eq!(
            warm.vips.get(&(svc("a"), false)),
            Some(&"10.0.0.1".parse().unwrap())
        );
    }

    fn svc(n: &str) -> ServiceName {
        ServiceName {
            namespace: "default".into(),
            name: n.into(),
        }
    }

    fn pool() -> Vec<IpNet> {
        vec![
            "10.200.0.0/29".parse().unwrap(),
            "fd00:200::/126".parse().unwrap(),
        ]
    }

    #[test]
    fn static_pins_win_and_duplicates_fail() {
        let mut r = BTreeMap::new();
        r.insert(
            (svc("a"), false),
            Request::Static("10.200.0.5".parse().unwrap()),
        );
        r.insert(
            (svc("b"), false),
            Request::Static("10.200.0.5".parse().unwrap()),
        );
        let a = allocate(&pool(), &r, &VipState::default(), false, &BTreeSet::new());
        assert_eq!(
            a.vips.get(&(svc("a"), false)),
            Some(&"10.200.0.5".parse().unwrap())
        );
        assert_eq!(a.failures.len(), 1);
    }

    #[test]
    fn auto_is_deterministic_and_skips_network_and_broadcast() {
        let mut r = BTreeMap::new();
        for n in ["a", "b", "c", "d", "e", "f"] {
            r.insert((svc(n), false), Request::Auto);
        }
        let a1 = allocate(&pool(), &r, &VipState::default(), false, &BTreeSet::new());
        let a2 = allocate(&pool(), &r, &VipState::default(), false, &BTreeSet::new());
        assert_eq!(a1, a2);
        // A /29 has six usable addresses: all six services fit, none got .0 or .7.
        assert!(a1.failures.is_empty(), "{:?}", a1.failures);
        for ip in a1.vips.values() {
            assert!(
                !["10.200.0.0", "10.200.0.7"].contains(&ip.to_string().as_str()),
                "{ip}"
            );
        }
    }

    #[test]
    fn exhaustion_is_a_failure_not_a_panic() {
        let mut r = BTreeMap::new();
        for i in 0..8 {
            r.insert((svc(&format!("s{i}")), false), Request::Auto);
        }
        let a = allocate(&pool(), &r, &VipState::default(), false, &BTreeSet::new());
        assert_eq!(a.vips.len(), 6);
        assert_eq!(a.failures.len(), 2);
    }

    #[test]
    fn previous_assignment_is_kept_even_when_new_services_arrive_first() {
        let mut r = BTreeMap::new();
        r.insert((svc("web"), false), Request::Auto);
        let first = allocate(&pool(), &r, &VipState::default(), false, &BTreeSet::new());
        let web_ip = first.vips[&(svc("web"), false)];
        // New services sort before "web" and would probe into its address without the state.
        let mut r2 = r.clone();
        for n in ["a", "b", "c", "d"] {
            r2.insert((svc(n), false), Request::Auto);
        }
        let second = allocate(&pool(), &r2, &first.state(), false, &BTreeSet::new());
        assert_eq!(second.vips[&(svc("web"), false)], web_ip);
    }

    #[test]
    fn ipv6_from_ipv6_ranges_only() {
        let mut r = BTreeMap::new();
        r.insert((svc("a"), true), Request::Auto);
        let a = allocate(&pool(), &r, &VipState::default(), false, &BTreeSet::new());
        assert!(a.vips[&(svc("a"), true)].is_ipv6());
    }

    #[test]
    fn state_round_trips_through_a_file() {
        let dir = std::env::temp_dir().join(format!("mgw-vip-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = VipState::default();
        s.assigned
            .insert("default/a".into(), vec!["10.200.0.3".parse().unwrap()]);
        let p = VipState::path(&dir);
        s.save(&p).unwrap();
        assert_eq!(VipState::load(&p), s);
        std::fs::write(&p, b"{not json").unwrap();
        assert_eq!(VipState::load(&p), VipState::default());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reserved_addresses_are_never_handed_out() {
        let r: BTreeMap<(ServiceName, bool), Request> = (0..20)
            .map(|i| ((svc(&format!("s{i}")), false), Request::Auto))
            .collect();
        let pool: Vec<IpNet> = vec!["10.9.0.0/27".parse().unwrap()];
        let free = allocate(&pool, &r, &VipState::default(), false, &BTreeSet::new());
        // Reserve exactly the addresses the unreserved run handed out to the first 5 services.
        let reserved: BTreeSet<IpAddr> = free.vips.values().take(5).copied().collect();
        let a = allocate(&pool, &r, &VipState::default(), false, &reserved);
        assert_eq!(a.vips.len(), 20);
        assert!(a.vips.values().all(|ip| !reserved.contains(ip)));
    }

    #[test]
    fn state_is_agrees_with_the_built_state() {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let mut a = Allocation::default();
        a.vips.insert((svc("a"), false), ip("10.0.0.1"));
        a.vips.insert((svc("a"), true), ip("fd00::1"));
        a.vips.insert((svc("b"), true), ip("fd00::2"));
        a.reserved.insert("default/c".into(), vec![ip("10.0.0.3")]);
        let same = a.state();
        assert!(a.state_is(&same));
        let mut variants = Vec::new();
        let mut v = same.clone();
        v.assigned.insert("default/d".into(), vec![ip("10.0.0.4")]);
        variants.push(v);
        let mut v = same.clone();
        v.assigned.remove("default/b");
        variants.push(v);
        let mut v = same.clone();
        v.assigned
            .insert("default/a".into(), vec![ip("fd00::1"), ip("10.0.0.1")]);
        variants.push(v);
        let mut v = same.clone();
        v.assigned.insert("default/a".into(), vec![ip("10.0.0.1")]);
        variants.push(v);
        let mut v = same.clone();
        v.assigned.insert("default/c".into(), vec![ip("10.0.0.9")]);
        variants.push(v);
        variants.push(VipState::default());
        for v in &variants {
            assert_eq!(a.state_is(v), a.state() == *v, "{v:?}");
            assert!(!a.state_is(v), "{v:?}");
        }
        // A service both requested and reserved is compared the long way.
        a.reserved.insert("default/b".into(), vec![ip("10.0.0.2")]);
        let both = a.state();
        assert!(a.state_is(&both));
        assert!(!a.state_is(&same));
    }
}
