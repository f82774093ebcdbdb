use super::*;
use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr};

/// `shared/cilium-kvstore.md`: beside the repository (`../shared`), or beside the repository a
/// local clone was made from (its `origin`), or where `MESHGW_SHARED_DIR` says.
fn doc() -> String {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut dirs: Vec<std::path::PathBuf> = Vec::new();
    if let Ok(d) = std::env::var("MESHGW_SHARED_DIR") {
        dirs.push(d.into());
    }
    dirs.push(repo.join("../shared"));
    let origin = std::process::Command::new("git")
        .args([
            "-C",
            &repo.display().to_string(),
            "config",
            "remote.origin.url",
        ])
        .output();
    if let Ok(o) = origin {
        let url = String::from_utf8_lossy(&o.stdout).trim().to_string();
        let path = std::path::Path::new(url.trim_start_matches("file://"));
        if path.is_absolute() {
            dirs.push(path.join("../shared"));
        }
    }
    let file = |d: &std::path::PathBuf| d.join("cilium-kvstore.md");
    let found = dirs.iter().map(file).find(|f| f.exists());
    let path = found.unwrap_or_else(|| {
        panic!(
            "cilium-kvstore.md (the samples the decoders are held to) must exist; looked in {dirs:?}"
        )
    });
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `code spans` of a line.
fn spans(line: &str) -> Vec<&str> {
    line.split('`').skip(1).step_by(2).collect()
}

/// Every (key, value) sample of the doc: the ```json blocks with the key named in the paragraph
/// before them, and the table rows whose value cell holds an example.
fn samples(doc: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut key: Option<String> = None;
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        if line.trim() == "```json" {
            let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
            let k = key
                .take()
                .unwrap_or_else(|| panic!("a json sample without a key before it: {body:?}"));
            out.push((k, body.join("\n")));
        } else if let Some(cells) = line.strip_prefix("| `cilium/") {
            let cells: Vec<&str> = cells.split(" | ").collect();
            // The table names keys with placeholders; a sample needs a real key.
            let k = spans(line)[0]
                .replace("<cluster>", "cluster3")
                .replace("<numeric id>", "199475");
            if let Some(v) = cells.get(1).and_then(|c| spans(c).into_iter().next()) {
                if v.starts_with('{') || v.contains('=') {
                    assert!(!k.contains('<'), "fill the placeholders of {k}");
                    out.push((k, v.to_string()));
                }
            }
        } else if line.contains("key `cilium/") {
            key = spans(line.split("key ").last().unwrap_or_default())
                .first()
                .map(|s| s.to_string());
        }
    }
    out
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn every_sample_of_the_doc_decodes() {
    let doc = doc();
    let samples = samples(&doc);
    let mut seen = Vec::new();
    for (key, value) in &samples {
        match parse_key(key) {
            KvKey::Service {
                cluster,
                namespace,
                name,
            } => {
                assert_eq!(
                    (cluster.as_str(), namespace.as_str(), name.as_str()),
                    ("cluster3", "ns-alpha", "echo-service")
                );
                let svc = decode_service(value.as_bytes()).unwrap();
                let http = |m: &PortsByIp, a: &str| *m.get(&ip(a)).unwrap().get("http").unwrap();
                let f = http(&svc.frontends, "10.96.0.10");
                assert_eq!((f.protocol, f.port), (L4Protocol::Tcp, 80));
                let b = http(&svc.backends, "10.244.1.10");
                assert_eq!((b.protocol, b.port), (L4Protocol::Tcp, 8080));
                assert_eq!(svc.cluster_id, 3);
                // The selector and hostnames are checked, not held.
                assert!(svc.labels.is_empty());
                assert!(svc.is_shared() && svc.include_external && !svc.portal_marker());
                seen.push("service");
            }
            KvKey::Node { cluster, name } => {
                assert_eq!(
                    (cluster.as_str(), name.as_str()),
                    ("cluster3", "test-node-2")
                );
                let node = decode_node(value.as_bytes()).unwrap();
                assert_eq!(node.internal_ipv4(), Some(Ipv4Addr::new(172, 18, 0, 3)));
                assert_eq!(node.cilium_internal_ips(), vec![ip("10.244.1.130")]);
                assert_eq!(
                    node.pod_cidrs(),
                    vec!["10.244.1.0/24".parse::<IpNet>().unwrap()],
                    "from the base64 mask"
                );
                assert_eq!(node.ipv4_health_ip, Some(ip("10.244.1.153")));
                assert_eq!(node.ipv4_ingress_ip, None, "\"\" is unset");
                assert_eq!((node.cluster_id, node.encryption_key), (3, 7));
                assert_eq!(
                    node.labels
                        .get("kubernetes.io/hostname")
                        .map(String::as_str),
                    Some("test-node-2")
                );
                assert!(node.annotations.is_empty(), "null is empty");
                assert_eq!(node.boot_id, "c1d2cda2-aca0-4033-abca-3843298860b9");
                seen.push("node");
            }
            KvKey::Ip { scope, ip: key_ip } => {
                assert_eq!(
                    (scope.as_str(), key_ip.as_str()),
                    ("default", "10.244.2.74")
                );
                let pair = decode_ip_pair(value.as_bytes()).unwrap();
                assert_eq!(pair.cluster_id(), 3, "199475 >> 16");
                assert_eq!(pair.host_ip, Some(ip("172.18.0.2")));
                assert_eq!(pair.prefix(), "10.244.2.74/32".parse::<IpNet>().unwrap());
                assert_eq!(
                    (pair.key, &*pair.k8s_namespace, &*pair.k8s_pod_name),
                    (5, "bar", "cep-002")
                );
                let ports: Vec<_> = pair
                    .named_ports
                    .iter()
                    .map(|p| (&*p.name, p.port, p.protocol))
                    .collect();
                assert_eq!(
                    ports,
                    [
                        ("http", 8080, L4Protocol::Tcp),
                        ("dns", 53, L4Protocol::Udp)
                    ]
                );
                seen.push("ip");
            }
            KvKey::ClusterConfig { .. } => {
                let cfg = decode_cluster_config(value.as_bytes()).unwrap();
                assert_eq!(cfg.id, 3);
                let c = &cfg.capabilities;
                assert!(c.synced_canaries && !c.cached);
                assert_eq!(
                    (c.max_connected_clusters, c.service_exports_enabled),
                    (255, Some(false))
                );
                seen.push("config");
            }
            KvKey::Identity { cluster: None, .. } => {
                let labels = decode_identity(value.as_bytes()).unwrap();
                assert_eq!(labels.get("k8s:app").map(String::as_str), Some("baz"));
                assert_eq!(
                    labels
                        .get("k8s:io.cilium.k8s.policy.cluster")
                        .map(String::as_str),
                    Some("cluster3")
                );
                seen.push("identity");
            }
            other => panic!("sample {key} parsed as {other:?}"),
        }
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        ["config", "identity", "ip", "node", "service"],
        "samples found: {samples:#?}"
    );
}

#[test]
fn keys_of_the_doc_parse() {
    let doc = doc();
    assert!(doc.contains("`cilium/synced/cluster3/cilium/state/nodes/v1`"));
    assert_eq!(
        parse_key("cilium/synced/cluster3/cilium/state/nodes/v1"),
        KvKey::Synced {
            cluster: "cluster3".into(),
            prefix: "cilium/state/nodes/v1".into()
        }
    );
    assert_eq!(parse_key("cilium/.heartbeat"), KvKey::Heartbeat);
    assert_eq!(
        parse_key("cilium/cluster-config/cluster3"),
        KvKey::ClusterConfig {
            cluster: "cluster3".into()
        }
    );
    assert_eq!(
        parse_key("cilium/state/identities/v1/id/199475"),
        KvKey::Identity {
            cluster: None,
            id: 199475
        }
    );
    assert_eq!(
        parse_key("cilium/state/nodes/v1/cluster3/test-node-2"),
        KvKey::Node {
            cluster: "cluster3".into(),
            name: "test-node-2".into()
        }
    );
}

#[test]
fn cached_and_cidr_keys_parse() {
    assert_eq!(
        parse_key("cilium/cache/ip/v1/cluster3/10.0.0.1"),
        KvKey::Ip {
            scope: "cluster3".into(),
            ip: "10.0.0.1".into()
        }
    );
    assert_eq!(
        parse_key("cilium/state/ip/v1/default/10.0.0.0/8"),
        KvKey::Ip {
            scope: "default".into(),
            ip: "10.0.0.0/8".into()
        }
    );
    assert_eq!(
        parse_key("cilium/state/ip/v1/default/fd00::1"),
        KvKey::Ip {
            scope: "default".into(),
            ip: "fd00::1".into()
        }
    );
    assert_eq!(
        parse_key("cilium/cache/identities/v1/cluster3/id/5"),
        KvKey::Identity {
            cluster: Some("cluster3".into()),
            id: 5
        }
    );
    assert_eq!(
        parse_key("cilium/cache/services/v1/cluster3/ns/web"),
        KvKey::Service {
            cluster: "cluster3".into(),
            namespace: "ns".into(),
            name: "web".into()
        }
    );
    assert_eq!(
        parse_key("cilium/cache/nodes/v1/cluster3/n1"),
        KvKey::Node {
            cluster: "cluster3".into(),
            name: "n1".into()
        }
    );
    for other in [
        "cilium/state/identities/v1/value/k8s:app=x;/10.0.0.1",
        "cilium/state/identities/v1/id/12a",
        "cilium/state/identities/v1/id/+5",
        "cilium/state/identities/v1/id/99999999999",
        "cilium/state/identities/v1/cluster3/id/5", // the cluster segment only exists in the cache
        "cilium/cache/identities/v1/id/5",
        "cilium/state/endpointslices/v1/cluster3/ns/slice",
        "cilium/state/services/v1/cluster3/ns",
        "cilium/state/services/v1/cluster3/ns/web/extra",
        "cilium/state/services/v1/cluster3//web",
        "cilium/state/nodes/v2/cluster3/n1",
        "cilium/state/ip/v1/default/",
        "cilium/state/ip/v1/default/a/b/c",
        "cilium/cluster-config/",
        "cilium/cluster-config/a/b",
        "cilium/synced/cluster3",
        "cilium/synced/cluster3/",
        "cilium/other/services/v1/c/ns/n",
        "other/state/services/v1/c/ns/n",
        "",
    ] {
        assert_eq!(parse_key(other), KvKey::Other, "{other}");
    }
}

#[test]
fn prefixes_and_key_builders() {
    assert_eq!(
        prefixes("cluster3", false),
        [
            "cilium/state/services/v1/cluster3/",
            "cilium/state/nodes/v1/cluster3/",
            "cilium/state/ip/v1/default/",
            "cilium/state/identities/v1/id/"
        ]
    );
    assert_eq!(
        prefixes("cluster3", true),
        [
            "cilium/cache/services/v1/cluster3/",
            "cilium/cache/nodes/v1/cluster3/",
            "cilium/cache/ip/v1/cluster3/",
            "cilium/cache/identities/v1/cluster3/id/"
        ]
    );
    assert_eq!(
        synced_key("cluster3", "cilium/state/nodes/v1"),
        "cilium/synced/cluster3/cilium/state/nodes/v1"
    );
    assert_eq!(
        synced_key("cluster3", "cilium/state/nodes/v1/"),
        "cilium/synced/cluster3/cilium/state/nodes/v1"
    );
    assert_eq!(
        cluster_config_key("cluster3"),
        "cilium/cluster-config/cluster3"
    );
    assert_eq!(
        Kind::of_key("cilium/cache/ip/v1/cluster3/10.0.0.1"),
        Some((Kind::Ip, true, "cilium/cache/ip/v1"))
    );
    assert_eq!(
        Kind::of_key("cilium/state/identities/v1/id/"),
        Some((Kind::Identities, false, "cilium/state/identities/v1"))
    );
    assert_eq!(
        Kind::of_key("cilium/state/nodes/v1"),
        Some((Kind::Nodes, false, "cilium/state/nodes/v1"))
    );
    assert_eq!(Kind::of_key("cilium/state/nodes/v10/x"), None);
    assert_eq!(Kind::of_key("cilium/state/endpointslices/v1/c/"), None);
    // Every listed prefix is classified back to its kind, and its keys parse.
    for cached in [false, true] {
        for (kind, p) in Kind::ALL.iter().zip(prefixes("c1", cached)) {
            assert_eq!(
                Kind::of_key(&p).map(|(k, c, _)| (k, c)),
                Some((*kind, cached)),
                "{p}"
            );
        }
    }
    match parse_key(&synced_key("c1", &Kind::Ip.root(true))) {
        KvKey::Synced { cluster, prefix } => assert_eq!(
            (cluster.as_str(), prefix.as_str()),
            ("c1", "cilium/cache/ip/v1")
        ),
        other => panic!("{other:?}"),
    }
}

#[path = "kv_value_tests.rs"]
mod values;
