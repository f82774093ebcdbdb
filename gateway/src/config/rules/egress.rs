//! `[[egress]]`: egress rules, checked like Cilium's CiliumEgressGatewayPolicy (IPv4 only, as
//! Cilium's egress gateway is).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

use super::{root, Ctx};
use crate::config::{raw, EgressRule};

/// Parses one prefix list; IPv6 prefixes and host bits are errors.
fn prefixes(c: &mut Ctx<'_>, q: &super::KeyPath, key: &str, list: &[String]) -> Vec<IpNet> {
    let mut out = Vec::new();
    for (k, s) in list.iter().enumerate() {
        let p = q.key(key).idx(k);
        match s.parse::<IpNet>() {
            Ok(IpNet::V6(_)) => c.err(
                &p,
                format!("{s}: IPv6 egress is not supported (as in Cilium's egress gateway); give IPv4 prefixes"),
            ),
            Ok(net) if net.trunc() != net => c.err(
                &p,
                format!("{net} has host bits set (did you mean {}?)", net.trunc()),
            ),
            Ok(net) => out.push(net),
            Err(_) => c.err(&p, format!("{s:?} is not a prefix (e.g. \"10.20.0.0/24\")")),
        }
    }
    out
}

/// Checks every `[[egress]]` table. `pool` is `[vips].pool` (an egress address must be inside it:
/// the gateway owns, announces and removes only addresses of its pool); `static_vips` are the
/// pinned VIPs, which an egress address must not be.
pub(super) fn validate(
    c: &mut Ctx<'_>,
    raw: &[raw::Egress],
    pool: &[IpNet],
    static_vips: &BTreeMap<IpAddr, String>,
) -> Vec<EgressRule> {
    let mut out = Vec::new();
    let mut names = BTreeSet::new();
    for (n, r) in raw.iter().enumerate() {
        let q = root("egress").idx(n);
        if r.name.is_empty() {
            c.err(&q.key("name"), "give the rule a name");
        } else if !names.insert(r.name.clone()) {
            c.err(
                &q.key("name"),
                format!("{:?} is used by another rule", r.name),
            );
        }
        if r.destination_cidrs.is_empty() {
            c.err(
                &q.key("destination_cidrs"),
                "give at least one destination prefix",
            );
        }
        let dst = prefixes(c, &q, "destination_cidrs", &r.destination_cidrs);
        let excluded = prefixes(c, &q, "excluded_cidrs", &r.excluded_cidrs);
        for (k, x) in excluded.iter().enumerate() {
            if !dst.iter().any(|d| d.contains(x)) {
                c.err(
                    &q.key("excluded_cidrs").idx(k),
                    format!("{x} is not inside any of destination_cidrs"),
                );
            }
        }
        let ip = match r.egress_ip.parse::<Ipv4Addr>() {
            Ok(ip) => {
                let a = IpAddr::V4(ip);
                if !pool.iter().any(|p| p.contains(&a)) {
                    c.err(
                        &q.key("egress_ip"),
                        format!("{ip} is not inside [vips].pool: the gateway owns (adds, announces, removes) only addresses of its pool"),
                    );
                } else if let Some(owner) = static_vips.get(&a) {
                    c.err(
                        &q.key("egress_ip"),
                        format!("{ip} is already the VIP of {owner}"),
                    );
                }
                Some(ip)
            }
            Err(_) => {
                c.err(
                    &q.key("egress_ip"),
                    format!("{:?} is not an IPv4 address", r.egress_ip),
                );
                None
            }
        };
        if let Some(egress_ip) = ip {
            out.push(EgressRule {
                name: r.name.clone(),
                namespace: r.namespace.clone(),
                pod_labels: r.pod_labels.clone(),
                destination_cidrs: dst,
                excluded_cidrs: excluded,
                egress_ip,
            });
        }
    }
    out
}
