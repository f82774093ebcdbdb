//! From policies, legacy prefixes and the catalog to what the datapath enforces: a security
//! identity per source prefix and per backend, and the allow entries. Pure.
//!
//! Source identities are hierarchical, as Cilium's CIDR identities are: an address takes the
//! identity of its longest matching prefix, and that identity carries the labels of every
//! configured prefix containing it (a `fromCIDR: 10.0.0.0/8` rule matches a host of a labelled
//! `10.20.0.0/24` too).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use meshgw_common::maps::{PolicyKey, ID_ANY, ID_WORLD, POLICY_EGRESS, POLICY_INGRESS, PROTO_ANY};

use super::cnp::{Peers, Policy, PortSpec, Proto, Selector};
use super::identity::LocalIdentities;
use crate::catalog::Catalog;
use crate::config::LegacyPrefix;

/// A label set, normalized: Kubernetes label sources (`k8s:`, `any:`, ...) stripped.
pub type Labels = BTreeMap<String, String>;

/// The namespace label Cilium gives every pod.
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// The label of the `world` identity.
pub const WORLD_LABEL: &str = "reserved:world";

fn norm_key(k: &str) -> &str {
    for src in ["k8s:", "any:", "unspec:", "container:"] {
        if let Some(rest) = k.strip_prefix(src) {
            return rest;
        }
    }
    k
}

/// Labels with their sources stripped.
pub fn normalize(l: &BTreeMap<String, String>) -> Labels {
    l.iter()
        .map(|(k, v)| (norm_key(k).to_string(), v.clone()))
        .collect()
}

fn selects(sel: &Selector, labels: &Labels) -> bool {
    sel.match_labels
        .iter()
        .all(|(k, v)| labels.get(norm_key(k)) == Some(v))
}

/// What the datapath enforces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    /// Prefix -> identity (the LPM trie): legacy prefixes and policy CIDRs, and every known
    /// endpoint's own address (the source of egress flows).
    pub prefixes: BTreeMap<IpNet, u32>,
    /// Allow entries.
    pub entries: BTreeSet<PolicyKey>,
    /// Backend address -> identity (the policy destination).
    pub backend_identity: BTreeMap<IpAddr, u32>,
    /// Identity -> labels, for the status and flow log.
    pub labels: BTreeMap<u32, Labels>,
    /// Whether any policy is loaded (the datapath checks new flows only then).
    pub enforced: bool,
}

const ANY_PORT: PortSpec = PortSpec {
    port: 0,
    proto: Proto::Any,
};

fn key(dir: u8, src: u32, dst: u32, p: PortSpec) -> Vec<PolicyKey> {
    let k = |proto: u8| PolicyKey {
        src,
        dst,
        dport: p.port.to_be(),
        proto,
        dir,
    };
    match (p.port, p.proto) {
        (0, _) => vec![PolicyKey {
            dport: 0,
            ..k(PROTO_ANY)
        }],
        (_, Proto::Tcp) => vec![k(6)],
        (_, Proto::Udp) => vec![k(17)],
        (_, Proto::Any) => vec![k(6), k(17)],
    }
}

/// Compiles `policies` for the sources in `legacy` and the backends of `cat`.
pub fn compile(
    policies: &[Policy],
    legacy: &[LegacyPrefix],
    cat: &Catalog,
    ids: &mut LocalIdentities,
) -> Compiled {
    let mut out = Compiled {
        enforced: !policies.is_empty(),
        ..Compiled::default()
    };
    out.labels.insert(
        ID_WORLD,
        Labels::from([(WORLD_LABEL.into(), String::new())]),
    );

    // Sources: every labelled prefix and every policy CIDR, each with the labels of all the
    // configured prefixes containing it.
    let mut cidrs: BTreeSet<IpNet> = BTreeSet::new();
    for p in policies {
        for r in p.ingress.iter().flatten().chain(p.egress.iter().flatten()) {
            if let Peers::Some { cidrs: c, .. } = &r.peers {
                cidrs.extend(c.iter().copied());
            }
        }
    }
    let mut all: BTreeSet<IpNet> = legacy.iter().map(|l| l.prefix).collect();
    all.extend(cidrs.iter().copied());
    for p in &all {
        let mut labels = Labels::new();
        let mut containing: Vec<&LegacyPrefix> =
            legacy.iter().filter(|l| l.prefix.contains(p)).collect();
        // Longer prefixes override the values of shorter ones.
        containing.sort_by_key(|l| l.prefix.prefix_len());
        for l in containing {
            labels.extend(normalize(&l.labels));
        }
        for c in cidrs.iter().filter(|c| c.contains(p)) {
            labels.insert(format!("cidr:{c}"), String::new());
        }
        let id = ids.get("src", &labels);
        out.prefixes.insert(*p, id);
        out.labels.insert(id, labels);
    }

    // Destinations: every backend's identity and labels.
    let mut dst_labels: BTreeMap<u32, (String, Labels)> = BTreeMap::new();
    for svc in cat.services.values() {
        for b in &svc.backends {
            let (id, labels) = backend_identity(&svc.name.namespace, b, ids);
            out.backend_identity.insert(b.addr, id);
            let ns = labels[NAMESPACE_LABEL].clone();
            out.labels.insert(id, labels.clone());
            dst_labels.insert(id, (ns, labels));
        }
    }

    let sources: Vec<(u32, &Labels)> = out
        .prefixes
        .values()
        .map(|id| (*id, &out.labels[id]))
        .collect();
    let world = &out.labels[&ID_WORLD];
    let selected = |p: &Policy| -> Vec<u32> {
        dst_labels
            .iter()
            .filter(|(_, (ns, l))| {
                p.namespace.as_ref().is_none_or(|n| n == ns) && selects(&p.selector, l)
            })
            .map(|(id, _)| *id)
            .collect()
    };
    let mut entries = BTreeSet::new();
    let mut enforced = [BTreeSet::new(), BTreeSet::new()];
    for p in policies {
        for (dir, rules) in [(POLICY_INGRESS, &p.ingress), (POLICY_EGRESS, &p.egress)] {
            let Some(rules) = rules else { continue };
            let eps = selected(p);
            enforced[usize::from(dir)].extend(eps.iter().copied());
            for r in rules {
                let peers = peer_ids(&r.peers, &sources, world);
                let ports = if r.ports.is_empty() {
                    vec![ANY_PORT]
                } else {
                    r.ports.clone()
                };
                for e in &eps {
                    for peer in &peers {
                        for port in &ports {
                            // The key names the flow's source first: the peer for ingress, the
                            // endpoint for egress.
                            let (src, dst) = if dir == POLICY_INGRESS {
                                (*peer, *e)
                            } else {
                                (*e, *peer)
                            };
                            entries.extend(key(dir, src, dst, *port));
                        }
                    }
                }
            }
        }
    }
    // Endpoints no policy selects in a direction stay open in it.
    for e in dst_labels.keys() {
        if !enforced[0].contains(e) {
            entries.extend(key(POLICY_INGRESS, ID_ANY, *e, ANY_PORT));
        }
        if !enforced[1].contains(e) {
            entries.extend(key(POLICY_EGRESS, *e, ID_ANY, ANY_PORT));
        }
    }
    // An endpoint the gateway does not know (its source identity is world) cannot be selected by
    // any policy, so its egress is open too.
    entries.extend(key(POLICY_EGRESS, ID_WORLD, ID_ANY, ANY_PORT));
    out.entries = entries;
    // Endpoints' own addresses, for the source identity of egress flows; looked up only while
    // policy is enforced, so written only then (a large mesh has many more endpoints than
    // legacy prefixes).
    if out.enforced {
        for (addr, id) in &out.backend_identity {
            out.prefixes.entry(IpNet::from(*addr)).or_insert(*id);
        }
    }
    out
}

/// A backend's identity (the policy destination) and its labels as policies see them: the
/// cluster's identity when the ipcache gives one, else a gateway-local one from its labels.
pub fn backend_identity(
    namespace: &str,
    b: &crate::catalog::Backend,
    ids: &mut LocalIdentities,
) -> (u32, Labels) {
    let mut labels = normalize(&b.labels);
    labels
        .entry(NAMESPACE_LABEL.into())
        .or_insert_with(|| namespace.to_string());
    let id = match b.identity {
        Some(id) => id,
        None => ids.get("dst", &labels),
    };
    (id, labels)
}

/// The identities a rule's peers stand for among the legacy `sources` (and `world`).
fn peer_ids(peers: &Peers, sources: &[(u32, &Labels)], world: &Labels) -> Vec<u32> {
    match peers {
        Peers::Any => vec![ID_ANY],
        Peers::Some { endpoints, cidrs } => {
            let mut s = BTreeSet::new();
            for sel in endpoints {
                // `{}` selects every labelled source; world only by its label.
                for (id, l) in sources {
                    if selects(sel, l) {
                        s.insert(*id);
                    }
                }
                if !sel.match_labels.is_empty() && selects(sel, world) {
                    s.insert(ID_WORLD);
                }
            }
            for c in cidrs {
                let label = format!("cidr:{c}");
                for (id, l) in sources {
                    if l.contains_key(&label) {
                        s.insert(*id);
                    }
                }
            }
            s.into_iter().collect()
        }
    }
}
