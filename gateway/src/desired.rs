//! The desired state of the datapath and of the kernel objects around it, computed from the
//! catalog and the VIP allocation. Pure: the reconcilers make the system match it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use ipnet::IpNet;
use meshgw_common::maps::{v4_mapped, BackendValue, ServiceKey, FAMILY_V4, FAMILY_V6};

use crate::catalog::{Catalog, ServiceName};
use crate::vip::Allocation;

/// 16-byte map form of an address, and its family tag.
pub fn addr16(ip: IpAddr) -> ([u8; 16], u8) {
    match ip {
        IpAddr::V4(v4) => (v4_mapped(v4.octets()), FAMILY_V4),
        IpAddr::V6(v6) => (v6.octets(), FAMILY_V6),
    }
}

/// The address a 16-byte map form stands for.
pub fn addr_from16(a: [u8; 16], family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::from([a[12], a[13], a[14], a[15]])
    } else {
        IpAddr::from(a)
    }
}

/// One backend as the datapath sees it: pod address and port, and how to reach its node. Two
/// services with the same pod and port share the entry (and its id).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendSpec {
    /// Pod address.
    pub addr: IpAddr,
    /// Pod port.
    pub port: u16,
    /// The node's underlay address.
    pub node_ip: Ipv4Addr,
    /// Inner destination MAC towards the node.
    pub node_mac: [u8; 6],
    /// The pod's security identity (policy destination), 0 when unknown.
    pub identity: u32,
}

impl BackendSpec {
    /// The Maglev name: stable, independent of ids.
    pub fn maglev_name(&self) -> String {
        format!("{}:{}@{}", self.addr, self.port, self.node_ip)
    }

    /// The map value.
    pub fn value(&self) -> BackendValue {
        let (addr, family) = addr16(self.addr);
        BackendValue {
            addr,
            port: self.port.to_be(),
            family,
            node_ip: self.node_ip.octets(),
            node_mac: self.node_mac,
            identity: self.identity,
            ..BackendValue::default()
        }
    }

    /// Reads a map value back (after a restart).
    pub fn from_value(v: &BackendValue) -> BackendSpec {
        BackendSpec {
            addr: addr_from16(v.addr, v.family),
            port: u16::from_be(v.port),
            node_ip: Ipv4Addr::from(v.node_ip),
            node_mac: v.node_mac,
            identity: v.identity,
        }
    }
}

/// A frontend: what (VIP, port, protocol) leads to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    /// The service.
    pub service: ServiceName,
    /// The frontend port's name.
    pub port_name: String,
    /// Its backends with their Maglev weights, sorted and without duplicates. Shared with the
    /// BPF reconciler's record of what it applied.
    pub backends: Arc<[(BackendSpec, u32)]>,
}

/// A route towards a node's pod CIDR through the kernel VXLAN device (the slow path).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodRoute {
    /// The pod CIDR.
    pub dst: IpNet,
    /// The node's underlay address (VXLAN destination).
    pub node_ip: Ipv4Addr,
    /// The node's router address of the CIDR's family, used as next hop.
    pub via: Option<IpAddr>,
    /// Inner MAC towards the node (the next hop's permanent neighbour entry).
    pub mac: [u8; 6],
}

/// Everything the reconcilers enforce.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// Frontends by map key.
    pub frontends: BTreeMap<ServiceKey, Frontend>,
    /// Known nodes (VXLAN sources accepted on the mesh side).
    pub nodes: BTreeSet<Ipv4Addr>,
    /// VIP addresses to own.
    pub vips: BTreeSet<IpAddr>,
    /// Pod-CIDR routes.
    pub routes: Vec<PodRoute>,
    /// Problems that leave part of the catalog unserved (reported, never fatal).
    pub problems: Vec<String>,
    /// Source identities of legacy prefixes (and policy CIDRs).
    pub identities: BTreeMap<IpNet, u32>,
    /// Policy allow entries.
    pub policy: BTreeSet<meshgw_common::maps::PolicyKey>,
    /// Whether policy is enforced at all (some policy is loaded).
    pub policy_enforced: bool,
    /// Egress rules by (endpoint, destination prefix).
    pub egress: BTreeMap<(IpAddr, IpNet), crate::egress::EgressEntry>,
}

/// The problems of services that got no VIP (what only a full pass, which allocates, can change).
pub fn allocation_problems(alloc: &Allocation) -> Vec<String> {
    alloc
        .failures
        .iter()
        .map(|(svc, v6, why)| format!("{svc}: no {} VIP: {why}", if *v6 { "IPv6" } else { "IPv4" }))
        .collect()
}

/// Computes the desired state. `default_mac` is the inner MAC for nodes without one (Cilium's
/// overlay ignores the inner destination MAC, so the gateway's own VTEP MAC serves).
pub fn compute(cat: &Catalog, alloc: &Allocation, default_mac: [u8; 6]) -> Desired {
    let mut d = Desired {
        problems: allocation_problems(alloc),
        ..Desired::default()
    };
    for n in cat.nodes.values() {
        d.nodes.insert(n.address);
        for cidr in &n.pod_cidrs {
            let via = n
                .router_ips
                .iter()
                .copied()
                .find(|r| r.is_ipv4() == matches!(cidr, IpNet::V4(_)));
            d.routes.push(PodRoute {
                dst: *cidr,
                node_ip: n.address,
                via,
                mac: n.mac.unwrap_or(default_mac),
            });
        }
    }
    d.routes.sort();
    // The same node may be known twice (a `[[node]]` of the TOML and its imported self); one route
    // per CIDR, and a CIDR two different nodes claim is reported rather than flapped.
    let mut conflicts = Vec::new();
    d.routes.dedup_by(|later, first| {
        if later.dst != first.dst {
            return false;
        }
        if later.node_ip != first.node_ip {
            conflicts.push(format!(
                "pod CIDR {} is claimed by nodes {} and {}; routing it to {}",
                first.dst, first.node_ip, later.node_ip, first.node_ip
            ));
        }
        true
    });
    d.problems.extend(conflicts);
    for svc in cat.services.values() {
        if let Some(vip) = alloc.vips.get(&(svc.name.clone(), false)) {
            d.vips.insert(*vip);
        }
        if let Some(vip) = alloc.vips.get(&(svc.name.clone(), true)) {
            d.vips.insert(*vip);
        }
        for (key, fe) in service_frontends(cat, svc, alloc, default_mac, &mut d.problems) {
            d.frontends.insert(key, fe);
        }
    }
    d
}

/// The frontend slots of one service under `alloc`: (IPv6?, port, map key), one per VIP family
/// and port.
fn slots<'a>(
    svc: &'a crate::catalog::Service,
    alloc: &Allocation,
) -> Vec<(bool, &'a crate::catalog::Port, ServiceKey)> {
    let mut out = Vec::new();
    for v6 in [false, true] {
        let Some(vip) = alloc.vips.get(&(svc.name.clone(), v6)).copied() else {
            continue;
        };
        let (addr, family) = addr16(vip);
        for port in &svc.ports {
            let key = ServiceKey {
                addr,
                port: port.port.to_be(),
                proto: port.proto,
                family,
            };
            out.push((v6, port, key));
        }
    }
    out
}

/// The frontends of one service (one per VIP family and port), as [`compute`] makes them: the
/// incremental path recomputes only the services an event changed. Problems (backends on unknown
/// nodes) are appended to `problems`.
pub fn service_frontends(
    cat: &Catalog,
    svc: &crate::catalog::Service,
    alloc: &Allocation,
    default_mac: [u8; 6],
    problems: &mut Vec<String>,
) -> Vec<(ServiceKey, Frontend)> {
    let mut out = Vec::new();
    for (v6, port, key) in slots(svc, alloc) {
        let mut backends = Vec::new();
        for b in svc.backends.iter().filter(|b| b.addr.is_ipv6() == v6) {
            let Some(node) = cat.nodes.get(&*b.node) else {
                problems.push(format!(
                    "{}: backend {} names unknown node {}/{}",
                    svc.name, b.addr, b.node.cluster, b.node.name
                ));
                continue;
            };
            let spec = BackendSpec {
                addr: b.addr,
                port: b.target_port(port),
                node_ip: node.address,
                node_mac: node.mac.unwrap_or(default_mac),
                identity: b.identity.unwrap_or(0),
            };
            backends.push((spec, b.weight.max(1)));
        }
        backends.sort();
        backends.dedup_by(|a, b| a.0 == b.0);
        out.push((
            key,
            Frontend {
                service: svc.name.clone(),
                port_name: port.name.clone(),
                backends: backends.into(),
            },
        ));
    }
    out
}

/// The map keys a service's frontends have (or had) under `alloc`: what an incremental pass
/// removes before it writes the service's new frontends.
pub fn service_keys(svc: &crate::catalog::Service, alloc: &Allocation) -> Vec<ServiceKey> {
    slots(svc, alloc).into_iter().map(|(_, _, k)| k).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vip::{allocate, VipState};

    #[test]
    fn a_node_known_twice_gets_one_route_and_a_conflict_is_reported() {
        let cfg = crate::config::parse_str(include_str!("../../config/demo.toml"), "demo.toml")
            .expect("demo config");
        let mut cat = Catalog::from_config(&cfg);
        let mut twin = cat.nodes.values().next().unwrap().clone();
        twin.id.cluster = "cluster1".into();
        let mut rival = twin.clone();
        rival.id.name = "rival".into();
        rival.address = Ipv4Addr::new(172, 18, 0, 99);
        rival.pod_cidrs.truncate(1);
        cat.nodes.insert(twin.id.clone(), twin.clone());
        let alloc = allocate(
            &cfg.vips.pool,
            &cat.vip_requests(),
            &VipState::default(),
            false,
            &BTreeSet::new(),
        );
        let d = compute(&cat, &alloc, [2, 0, 0, 0, 0, 1]);
        let dsts: Vec<_> = d.routes.iter().map(|r| r.dst).collect();
        let mut unique = dsts.clone();
        unique.dedup();
        assert_eq!(dsts, unique, "one route per CIDR");
        assert!(d.problems.is_empty(), "{:?}", d.problems);

        cat.nodes.insert(rival.id.clone(), rival.clone());
        let d = compute(&cat, &alloc, [2, 0, 0, 0, 0, 1]);
        assert_eq!(
            d.routes
                .iter()
                .filter(|r| r.dst == rival.pod_cidrs[0])
                .count(),
            1
        );
        assert!(
            d.problems
                .iter()
                .any(|p| p.contains(&rival.pod_cidrs[0].to_string())),
            "{:?}",
            d.problems
        );
    }

    /// The demo catalog and its VIP allocation.
    fn demo_catalog() -> (Catalog, Allocation) {
        let cfg = crate::config::parse_str(include_str!("../../config/demo.toml"), "demo.toml")
            .expect("demo config");
        let cat = Catalog::from_config(&cfg);
        let alloc = allocate(
            &cfg.vips.pool,
            &cat.vip_requests(),
            &VipState::default(),
            false,
            &BTreeSet::new(),
        );
        (cat, alloc)
    }

    fn demo() -> Desired {
        let (cat, alloc) = demo_catalog();
        compute(&cat, &alloc, [2, 0, 0, 0, 0, 1])
    }

    #[test]
    fn one_service_at_a_time_gives_the_same_frontends_and_keys() {
        let (cat, alloc) = demo_catalog();
        let full = compute(&cat, &alloc, [2, 0, 0, 0, 0, 1]);
        let mut problems = Vec::new();
        let mut some = BTreeMap::new();
        for svc in cat.services.values() {
            let fes = service_frontends(&cat, svc, &alloc, [2, 0, 0, 0, 0, 1], &mut problems);
            let keys: Vec<ServiceKey> = fes.iter().map(|(k, _)| *k).collect();
            assert_eq!(keys, service_keys(svc, &alloc), "{}", svc.name);
            some.extend(fes);
        }
        assert_eq!(some, full.frontends);
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn demo_has_a_frontend_per_family_and_port() {
        let d = demo();
        assert_eq!(d.frontends.len(), 4, "{:?}", d.frontends.keys());
        for (k, fe) in &d.frontends {
            assert_eq!(fe.backends.len(), 2, "{k:?}");
            for (b, _) in fe.backends.iter() {
                assert_eq!(b.addr.is_ipv4(), k.family == FAMILY_V4, "no NAT46/64");
                let want = if k.proto == 6 { 8080 } else { 5353 };
                assert_eq!(b.port, want, "target port mapped by port name");
            }
        }
        assert_eq!(
            d.vips,
            [
                "10.200.0.10".parse().unwrap(),
                "fd00:200::10".parse().unwrap()
            ]
            .into()
        );
        assert!(d.problems.is_empty(), "{:?}", d.problems);
    }

    #[test]
    fn demo_routes_use_the_router_of_the_cidr_family() {
        let d = demo();
        assert_eq!(d.routes.len(), 4);
        for r in &d.routes {
            let via = r.via.expect("router ip");
            assert_eq!(via.is_ipv4(), matches!(r.dst, IpNet::V4(_)));
            assert!(r.dst.contains(&via), "{via} inside {}", r.dst);
        }
        assert_eq!(d.nodes.len(), 2);
    }

    #[test]
    fn backend_values_round_trip() {
        for addr in ["10.244.1.10", "fd00:244:1::10"] {
            let b = BackendSpec {
                addr: addr.parse().unwrap(),
                port: 8080,
                node_ip: Ipv4Addr::new(172, 18, 0, 11),
                node_mac: [2, 0xaa, 0, 0, 0, 1],
                identity: 0,
            };
            assert_eq!(BackendSpec::from_value(&b.value()), b);
        }
    }

    #[test]
    fn unknown_node_is_a_problem_not_a_crash() {
        let cfg = crate::config::parse_str(include_str!("../../config/demo.toml"), "demo.toml")
            .expect("demo");
        let mut cat = Catalog::from_config(&cfg);
        cat.nodes.clear();
        let alloc = allocate(
            &cfg.vips.pool,
            &cat.vip_requests(),
            &VipState::default(),
            false,
            &BTreeSet::new(),
        );
        let d = compute(&cat, &alloc, [0; 6]);
        assert!(!d.problems.is_empty());
        assert!(d.frontends.values().all(|f| f.backends.is_empty()));
    }
}
