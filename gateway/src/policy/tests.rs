use std::collections::BTreeMap;
use std::path::Path;

use meshgw_common::maps::{PolicyKey, ID_ANY, ID_WORLD, POLICY_EGRESS, POLICY_INGRESS, PROTO_ANY};

use super::cnp::{self, PolicyError};
use super::compile::compile;
use super::identity::{LocalIdentities, LOCAL_BASE};
use crate::catalog::Catalog;
use crate::config::LegacyPrefix;

/// The shipped example policy (Cilium's l3-rule with this gateway's labels).
const L3_RULE: &str = include_str!("../../../config/policies/l3-rule.yaml");

fn parse(text: &str) -> Result<Vec<cnp::Policy>, PolicyError> {
    cnp::parse(Path::new("p.yaml"), text)
}

fn demo_catalog() -> Catalog {
    let mut cfg = crate::config::parse_str(include_str!("../../../config/demo.toml"), "demo")
        .expect("demo config");
    for b in &mut cfg.services[0].backends {
        b.labels = BTreeMap::from([("run".into(), "nginx".into())]);
    }
    Catalog::from_config(&cfg)
}

fn legacy() -> Vec<LegacyPrefix> {
    vec![
        LegacyPrefix {
            prefix: "10.100.0.2/32".parse().unwrap(),
            labels: BTreeMap::from([("client".into(), "good".into())]),
        },
        LegacyPrefix {
            prefix: "10.100.0.0/24".parse().unwrap(),
            labels: BTreeMap::from([("site".into(), "hq".into())]),
        },
    ]
}

#[test]
fn l3_rule_admits_only_the_labelled_source_on_every_port() {
    let pols = parse(L3_RULE).unwrap();
    let mut ids = LocalIdentities::default();
    let c = compile(&pols, &legacy(), &demo_catalog(), &mut ids);
    assert!(c.enforced);
    let good = c.prefixes[&"10.100.0.2/32".parse().unwrap()];
    let hq = c.prefixes[&"10.100.0.0/24".parse().unwrap()];
    assert!(good > LOCAL_BASE && hq > LOCAL_BASE && good != hq);
    // The /32 inherits the /24's labels.
    assert_eq!(c.labels[&good].get("site").map(String::as_str), Some("hq"));
    let dsts: std::collections::BTreeSet<u32> = c.backend_identity.values().copied().collect();
    assert_eq!(
        dsts.len(),
        1,
        "all echo backends share labels, so one identity"
    );
    let dst = *dsts.iter().next().unwrap();
    let want: std::collections::BTreeSet<PolicyKey> = [PolicyKey {
        src: good,
        dst,
        dport: 0,
        proto: PROTO_ANY,
        dir: 0,
    }]
    .into();
    let ingress: std::collections::BTreeSet<PolicyKey> = c
        .entries
        .iter()
        .filter(|k| k.dir == POLICY_INGRESS)
        .copied()
        .collect();
    assert_eq!(ingress, want);
    // The policy says nothing about egress: the endpoint's egress stays open.
    assert!(c.entries.contains(&PolicyKey {
        src: dst,
        dst: ID_ANY,
        dport: 0,
        proto: PROTO_ANY,
        dir: POLICY_EGRESS
    }));
    // Stable: compiling again gives the same numbers.
    let again = compile(&pols, &legacy(), &demo_catalog(), &mut ids);
    assert_eq!(again, c);
}

#[test]
fn port_rules_cidr_rules_and_unselected_destinations() {
    let pols = parse(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-only}
spec:
  endpointSelector: {matchLabels: {"k8s:run": nginx}}
  ingress:
  - fromCIDR: ["10.100.0.0/16"]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
  - toPorts:
    - ports: [{port: 5353, protocol: ANY}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: other, namespace: shop, labels: {team: a}, annotations: {note: "x"}}
spec:
  description: "kubectl-written fields are accepted"
  endpointSelector: {}
  ingress: []
"#,
    )
    .unwrap();
    assert_eq!(pols.len(), 2);
    let mut ids = LocalIdentities::default();
    let c = compile(&pols, &legacy(), &demo_catalog(), &mut ids);
    let dst = *c.backend_identity.values().next().unwrap();
    let cidr = c.prefixes[&"10.100.0.0/16".parse().unwrap()];
    let inside: ipnet::IpNet = "10.100.0.0/16".parse().unwrap();
    let src_ids: Vec<u32> = c
        .prefixes
        .iter()
        .filter(|(p, _)| inside.contains(*p))
        .map(|(_, id)| *id)
        .collect();
    assert_eq!(src_ids.len(), 3);
    // Every prefix inside 10.100.0.0/16 (the /16, the /24, the /32) may reach TCP 8080.
    for s in &src_ids {
        assert!(c.entries.contains(&PolicyKey {
            src: *s,
            dst,
            dport: 8080u16.to_be(),
            proto: 6,
            dir: 0
        }));
        assert!(!c
            .entries
            .iter()
            .any(|k| k.src == *s && k.dport == 22u16.to_be()));
    }
    assert!(c.labels[&cidr].contains_key("cidr:10.100.0.0/16"));
    // Anyone may reach 5353 over TCP and UDP; world is not admitted to 8080.
    for proto in [6, 17] {
        assert!(c.entries.contains(&PolicyKey {
            src: ID_ANY,
            dst,
            dport: 5353u16.to_be(),
            proto,
            dir: 0
        }));
    }
    assert!(!c
        .entries
        .iter()
        .any(|k| k.src == ID_WORLD && k.dir == POLICY_INGRESS));
    // The shop policy selects nothing here (echo is in default): no default-open entry is
    // missing for echo, and nothing opens it wholesale.
    assert!(!c
        .entries
        .iter()
        .any(|k| k.src == ID_ANY && k.dst == dst && k.proto == PROTO_ANY));
}

#[test]
fn without_policies_every_backend_is_open_and_nothing_is_enforced() {
    let mut ids = LocalIdentities::default();
    let c = compile(&[], &legacy(), &demo_catalog(), &mut ids);
    assert!(!c.enforced);
    let dst = *c.backend_identity.values().next().unwrap();
    assert!(c.entries.contains(&PolicyKey {
        src: ID_ANY,
        dst,
        dport: 0,
        proto: PROTO_ANY,
        dir: 0
    }));
    // Without policy nothing looks endpoints up: their addresses stay out of the trie.
    for addr in c.backend_identity.keys() {
        assert!(!c.prefixes.contains_key(&ipnet::IpNet::from(*addr)));
    }
}

#[test]
fn unsupported_fields_are_rejected_with_their_name_and_line() {
    let cases = [
        (
            "spec:\n  endpointSelector:\n    matchExpressions: []\n",
            "matchExpressions",
        ),
        (
            "spec:\n  endpointSelector: {}\n  egress:\n  - toEntities: [world]\n",
            "toEntities",
        ),
        (
            "spec:\n  endpointSelector: {}\n  ingress:\n  - toFQDNs: []\n",
            "toFQDNs",
        ),
        (
            "spec:\n  endpointSelector: {}\n  ingress:\n  - fromEntities: [world]\n",
            "fromEntities",
        ),
    ];
    for (spec, field) in cases {
        let text = format!(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: x}}\n{spec}"
        );
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains(field), "{field}: {e}");
        assert!(
            e.starts_with("p.yaml:") && !e.starts_with("p.yaml:0:"),
            "{e}"
        );
    }
    let bad = [
        ("kind: NetworkPolicy", "kind"),
        ("apiVersion: v1", "apiVersion"),
    ];
    for (line, what) in bad {
        let text = L3_RULE
            .replace(
                "kind: CiliumNetworkPolicy",
                if what == "kind" {
                    line
                } else {
                    "kind: CiliumNetworkPolicy"
                },
            )
            .replace(
                "apiVersion: \"cilium.io/v2\"",
                if what == "apiVersion" {
                    line
                } else {
                    "apiVersion: cilium.io/v2"
                },
            );
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.contains(what), "{e}");
    }
    let e = parse(&L3_RULE.replace(
        "  - fromEndpoints:",
        "  - toPorts: [{ports: [{port: http, protocol: TCP}]}]\n    fromEndpoints:",
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("named ports"), "{e}");
    let e = parse(&L3_RULE.replace(
        "  - fromEndpoints:",
        "  - toPorts: [{ports: [{port: 0, protocol: TCP}]}]\n    fromEndpoints:",
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("every port"), "{e}");
}

#[test]
fn local_identities_survive_a_restart() {
    let dir = std::env::temp_dir().join(format!("meshgw-ids-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = LocalIdentities::path(&dir);
    let mut a = LocalIdentities::default();
    let l1 = BTreeMap::from([("client".to_string(), "good".to_string())]);
    let l2 = BTreeMap::from([("client".to_string(), "bad".to_string())]);
    let (i1, i2) = (a.get("src", &l1), a.get("src", &l2));
    a.save_if_changed(&path).unwrap();
    let mut b = LocalIdentities::load(&path);
    // Asked in the other order after the restart: same numbers.
    assert_eq!((b.get("src", &l2), b.get("src", &l1)), (i2, i1));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn egress_rules_open_only_their_destinations_and_ports_for_the_selected_endpoints() {
    let pols = parse(
        r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: to-hq}
spec:
  endpointSelector: {matchLabels: {run: nginx}}
  egress:
  - toCIDR: ["10.100.0.0/24"]
    toPorts:
    - ports: [{port: 8080, protocol: TCP}]
  - toEndpoints: [{matchLabels: {client: good}}]
"#,
    )
    .unwrap();
    let mut ids = LocalIdentities::default();
    let c = compile(&pols, &legacy(), &demo_catalog(), &mut ids);
    let ep = *c.backend_identity.values().next().unwrap();
    let hq = c.prefixes[&"10.100.0.0/24".parse().unwrap()];
    let good = c.prefixes[&"10.100.0.2/32".parse().unwrap()];
    let k = |dst: u32, port: u16, proto: u8| PolicyKey {
        src: ep,
        dst,
        dport: port.to_be(),
        proto,
        dir: POLICY_EGRESS,
    };
    // toCIDR covers the /24 and the labelled /32 inside it, on TCP 8080 only.
    assert!(c.entries.contains(&k(hq, 8080, 6)));
    assert!(c.entries.contains(&k(good, 8080, 6)));
    assert!(!c.entries.contains(&k(hq, 0, PROTO_ANY)));
    // toEndpoints by label: every port of the good client.
    assert!(c.entries.contains(&k(good, 0, PROTO_ANY)));
    // The endpoint is selected: no wildcard destination for it; ingress untouched (open).
    assert!(!c.entries.contains(&k(ID_ANY, 0, PROTO_ANY)));
    assert!(c.entries.contains(&PolicyKey {
        src: ID_ANY,
        dst: ep,
        dport: 0,
        proto: PROTO_ANY,
        dir: POLICY_INGRESS
    }));
    // Endpoint addresses carry their identity in the trie: the source of egress flows.
    for (addr, id) in &c.backend_identity {
        assert_eq!(c.prefixes.get(&ipnet::IpNet::from(*addr)), Some(id));
    }
}
