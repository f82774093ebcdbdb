//! Egress rules (`[[egress]]`) against the endpoints the gateway knows: which (endpoint,
//! destination prefix) pairs leave with which egress address. Pure; the BPF reconciler writes the
//! result into the datapath's egress trie.
//!
//! The endpoints are the mesh endpoints in the catalog, with their labels: imported service
//! backends (labels from the cluster's identities) and static backends (labels from the TOML).
//! An endpoint no service exports is unknown here, so no rule can select it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

use crate::catalog::Catalog;
use crate::config::EgressRule;
use crate::policy::compile::{normalize, NAMESPACE_LABEL};

/// What a matching flow gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EgressEntry {
    /// Source address after translation.
    pub egress_ip: Ipv4Addr,
    /// An excluded destination: routed, not translated.
    pub excluded: bool,
    /// The rule's index in the configuration.
    pub rule: u32,
}

/// The compiled rules.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    /// (endpoint, destination prefix) -> what matching flows get.
    pub entries: BTreeMap<(IpAddr, IpNet), EgressEntry>,
    /// Every egress address (owned and announced by the gateway, never given to a service).
    pub addresses: BTreeSet<IpAddr>,
    /// Per rule, in configuration order: how many endpoints it selects.
    pub selected: Vec<usize>,
}

/// Expands `rules` over the endpoints of `cat`. When two rules cover the same endpoint and
/// destination, the first in the file wins.
pub fn compile(rules: &[EgressRule], cat: &Catalog) -> Compiled {
    let mut out = Compiled::default();
    if rules.is_empty() {
        // The common case costs nothing: no pass over every backend of a large mesh.
        return out;
    }
    // Endpoint -> its labels, with the namespace label Cilium gives every pod.
    let mut endpoints: BTreeMap<IpAddr, BTreeMap<String, String>> = BTreeMap::new();
    for svc in cat.services.values() {
        for b in svc.backends.iter().filter(|b| b.addr.is_ipv4()) {
            let mut labels = normalize(&b.labels);
            labels
                .entry(NAMESPACE_LABEL.into())
                .or_insert_with(|| svc.name.namespace.to_string());
            endpoints.entry(b.addr).or_default().extend(labels);
        }
    }
    for (i, r) in rules.iter().enumerate() {
        out.addresses.insert(IpAddr::V4(r.egress_ip));
        let want = normalize(&r.pod_labels);
        let chosen: Vec<IpAddr> = endpoints
            .iter()
            .filter(|(_, l)| {
                r.namespace
                    .as_ref()
                    .is_none_or(|ns| l.get(NAMESPACE_LABEL) == Some(ns))
                    && want.iter().all(|(k, v)| l.get(k) == Some(v))
            })
            .map(|(a, _)| *a)
            .collect();
        out.selected.push(chosen.len());
        let rule = u32::try_from(i).unwrap_or(u32::MAX);
        for ep in chosen {
            for (nets, excluded) in [(&r.destination_cidrs, false), (&r.excluded_cidrs, true)] {
                for net in nets {
                    out.entries.entry((ep, *net)).or_insert(EgressEntry {
                        egress_ip: r.egress_ip,
                        excluded,
                        rule,
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_str;

    const CFG: &str = r#"
[gateway]
name = "gw"
[interfaces]
legacy = "legacy"
mesh = "mesh"
[vips]
pool = ["10.200.0.0/24"]
[[node]]
name = "n1"
address = "172.18.0.11"
[[service]]
name = "web"
namespace = "shop"
ports = [{ name = "http", port = 80, protocol = "tcp" }]
  [[service.backend]]
  address = "10.244.1.10"
  node = "n1"
  labels = { "k8s:app" = "backup" }
  [[service.backend]]
  address = "10.244.1.11"
  node = "n1"
  labels = { app = "web" }
[[egress]]
name = "backup"
pod_labels = { app = "backup" }
destination_cidrs = ["10.100.0.0/24"]
excluded_cidrs = ["10.100.0.128/25"]
egress_ip = "10.200.0.250"
[[egress]]
name = "shop"
namespace = "shop"
destination_cidrs = ["10.100.0.0/24", "192.168.0.0/16"]
egress_ip = "10.200.0.251"
"#;

    #[test]
    fn rules_select_endpoints_by_labels_and_namespace_and_the_first_rule_wins() {
        let cfg = parse_str(CFG, "t.toml").expect("config");
        let cat = Catalog::from_config(&cfg);
        let c = compile(&cfg.egress, &cat);
        assert_eq!(c.selected, [1, 2]);
        let get = |ep: &str, net: &str| c.entries.get(&(ep.parse().unwrap(), net.parse().unwrap()));
        // The backup pod (label with a k8s: source) is the first rule's, exclusion included.
        let e = get("10.244.1.10", "10.100.0.0/24").expect("entry");
        assert_eq!(
            (e.egress_ip.to_string().as_str(), e.excluded, e.rule),
            ("10.200.0.250", false, 0)
        );
        assert!(
            get("10.244.1.10", "10.100.0.128/25")
                .expect("excluded")
                .excluded
        );
        // ...and the second rule's for what the first does not cover.
        assert_eq!(get("10.244.1.10", "192.168.0.0/16").expect("entry").rule, 1);
        // The web pod only matches the namespace rule.
        assert_eq!(get("10.244.1.11", "10.100.0.0/24").expect("entry").rule, 1);
        assert!(get("10.244.1.11", "10.100.0.128/25").is_none());
        assert_eq!(c.addresses.len(), 2);
    }

    #[test]
    fn bad_rules_are_rejected_naming_line_and_key() {
        let cases = [
            (
                "egress_ip = \"10.200.0.250\"",
                "egress_ip = \"10.9.9.9\"",
                "[vips].pool",
            ),
            (
                "egress_ip = \"10.200.0.250\"",
                "egress_ip = \"fd00::1\"",
                "not an IPv4",
            ),
            (
                "[\"10.100.0.0/24\"]\nexcluded",
                "[\"fd00::/64\"]\nexcluded",
                "IPv6 egress",
            ),
            (
                "excluded_cidrs = [\"10.100.0.128/25\"]",
                "excluded_cidrs = [\"10.99.0.0/25\"]",
                "not inside",
            ),
            (
                "name = \"shop\"",
                "name = \"backup\"",
                "used by another rule",
            ),
            ("pod_labels = {", "pod_selector = {", "pod_selector"),
        ];
        for (from, to, want) in cases {
            let text = CFG.replacen(from, to, 1);
            assert_ne!(text, CFG, "{from}");
            let e = parse_str(&text, "t.toml").expect_err(want).to_string();
            assert!(e.contains(want), "{want}: {e}");
            assert!(e.contains("t.toml:"), "{e}");
            assert!(e.contains("egress"), "{e}");
        }
    }
}
