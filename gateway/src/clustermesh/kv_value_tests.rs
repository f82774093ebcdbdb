//! Decoder edge cases: every CIDR form, Go's defaults, new fields, malformed values.

use super::*;

const NODE_HEAD: &str = r#""Name":"n1","Cluster":"c1","IPAddresses":[{"Type":"ExternalIP","IP":"192.0.2.1"},{"Type":"InternalIP","IP":"fc00::3"},{"Type":"InternalIP","IP":"172.18.0.3"},{"Type":"CiliumInternalIP","IP":"10.244.1.1"},{"Type":"CiliumInternalIP","IP":"fd00::1"},{"Type":"InternalIP","IP":""}]"#;

fn node_with(extra: &str) -> Result<KvNode, KvError> {
    decode_node(format!("{{{NODE_HEAD}{extra}}}").as_bytes())
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

#[test]
fn cidrs_in_every_form() {
    let n = node_with(
        r#","IPv4AllocCIDR":"10.244.1.0/24","IPv4SecondaryAllocCIDRs":[{"IP":"10.245.0.0","Mask":"//8AAA=="},null,"10.246.0.0/16"],
            "IPv6AllocCIDR":{"IP":"fd00:10:244:1::","Mask":"//////////8AAAAAAAAAAA=="},"IPv6SecondaryAllocCIDRs":null"#,
    )
    .unwrap();
    assert_eq!(
        n.pod_cidrs(),
        [
            net("10.244.1.0/24"),
            net("10.245.0.0/16"),
            net("10.246.0.0/16"),
            net("fd00:10:244:1::/64")
        ]
    );
    assert_eq!(
        n.internal_ipv4(),
        Some(Ipv4Addr::new(172, 18, 0, 3)),
        "the first IPv4 InternalIP, not the IPv6 one"
    );
    assert_eq!(n.cilium_internal_ips(), [ip("10.244.1.1"), ip("fd00::1")]);
    assert_eq!(
        n.ip_addresses.len(),
        5,
        "the address without an IP is dropped"
    );

    let n = node_with(r#","IPv4AllocCIDR":null,"IPv6AllocCIDR":"""#).unwrap();
    assert!(n.pod_cidrs().is_empty());
    let n = node_with("").unwrap();
    assert!(n.pod_cidrs().is_empty() && n.ipv4_health_ip.is_none());
    // Go may store an IPv4 mask in 16 bytes; host bits in the address are masked off.
    let n = node_with(r#","IPv4AllocCIDR":{"IP":"10.244.1.7","Mask":"////////////////////AA=="}"#)
        .unwrap();
    assert_eq!(n.pod_cidrs(), [net("10.244.1.0/24")]);
    let n = node_with(r#","IPv4AllocCIDR":{"IP":"10.0.0.0","Mask":"AAAAAA=="}"#).unwrap();
    assert_eq!(n.pod_cidrs(), [net("0.0.0.0/0")]);

    for bad in [
        r#","IPv4AllocCIDR":{"IP":"10.244.1.0","Mask":"/wD/AA=="}"#, // not contiguous
        r#","IPv4AllocCIDR":{"IP":"10.244.1.0","Mask":"!!"}"#,       // not base64
        r#","IPv4AllocCIDR":{"IP":"10.244.1.0","Mask":"//8="}"#,     // 2 bytes
        r#","IPv6AllocCIDR":{"IP":"fd00::","Mask":"////AA=="}"#,     // v4 mask on v6
        r#","IPv4AllocCIDR":{"IP":"ten","Mask":"////AA=="}"#,
        r#","IPv4AllocCIDR":"10.244.1.0""#,
        r#","IPv4AllocCIDR":"10.244.1.0/33""#,
        r#","IPv4AllocCIDR":24"#,
        r#","IPv4HealthIP":"10.244.1""#,
        r#","ClusterID":"3""#,
    ] {
        assert!(node_with(bad).is_err(), "{bad}");
    }
}

const SVC: &str = r#"{"cluster":"c1","namespace":"ns","name":"web""#;
const REST: &str = r#","frontends":{"10.96.0.10":{"http":{"Protocol":"TCP","Port":80}}},"backends":{"10.244.1.10":{"http":{"Protocol":"TCP","Port":8080}}},"labels":{},"selector":{},"includeExternal":true,"shared":true,"clusterID":1"#;

fn svc_with(extra: &str) -> Result<ClusterService, KvError> {
    decode_service(format!("{SVC}{extra}}}").as_bytes())
}

#[test]
fn unknown_and_new_fields_are_ignored() {
    let base = svc_with(REST).unwrap();
    let new = r#","zones":{"10.244.1.10":{"zone":"a","forZones":[{"name":"a"}]}},"endpointSlicesExportMode":"x","future":{"deep":[1,{"x":null}]}"#;
    let svc = svc_with(&format!("{REST}{new}")).unwrap();
    assert_eq!(svc, base);
    assert_eq!((svc.cluster_id, svc.backends.len()), (1, 1));
    let cfg = decode_cluster_config(br#"{"id":3,"capabilities":{"syncedCanaries":true,"endpointSlicesExportMode":"only","newCap":7},"more":1}"#).unwrap();
    assert_eq!(
        (
            cfg.id,
            cfg.capabilities.synced_canaries,
            cfg.capabilities.service_exports_enabled
        ),
        (3, true, None)
    );
    let pair =
        decode_ip_pair(br#"{"IP":"10.0.0.1","ID":70000,"K8sPodUID":"u","Future":[1]}"#).unwrap();
    assert_eq!((pair.id, pair.host_ip, pair.mask), (70000, None, None));
    assert!(node_with(r#","NodeIdentity":5,"Something":{"a":1}"#).is_ok());
}

#[test]
fn missing_fields_take_gos_defaults() {
    let cfg = decode_cluster_config(b"{}").unwrap();
    assert_eq!(cfg, ClusterConfig::default());
    assert!(!cfg.capabilities.synced_canaries && !cfg.capabilities.cached);
    let cfg = decode_cluster_config(br#"{"id":2,"capabilities":null}"#).unwrap();
    assert_eq!(cfg.capabilities, Capabilities::default());

    let svc = decode_service(br#"{"cluster":"c1","namespace":"ns","name":"web","labels":null,"selector":null,"hostnames":null,"frontends":null}"#).unwrap();
    assert!(svc.labels.is_empty() && svc.frontends.is_empty() && svc.backends.is_empty());
    assert!(!svc.is_shared() && !svc.include_external);
    // Hostnames are a backend IP -> name map in Cilium.
    // Nothing reads them, so they are checked but not held: the value equals one without them.
    let svc = svc_with(r#","hostnames":{"10.244.1.10":"web-0"},"selector":{"app":"web"}"#);
    assert_eq!(svc.unwrap(), svc_with("").unwrap());
    // Go's pointers: a null port or port map is no port.
    let svc = svc_with(r#","backends":{"10.244.1.11":null,"10.244.1.10":{"http":null,"dns":{"Protocol":"UDP","Port":53}}}"#).unwrap();
    assert!(svc.backends.get(&ip("10.244.1.11")).unwrap().is_empty());
    let ports = svc.backends.get(&ip("10.244.1.10")).unwrap();
    assert_eq!(ports.keys().collect::<Vec<_>>(), ["dns"]);
}

#[test]
fn malformed_values_are_errors() {
    let e = decode_service(b"{not json").unwrap_err();
    assert!(
        matches!(
            e,
            KvError::Json {
                what: "service",
                ..
            }
        ),
        "{e}"
    );
    let e = decode_service(br#"{"cluster":"c1","namespace":"ns"}"#).unwrap_err();
    assert!(e.to_string().contains("missing field `name`"), "{e}");
    let e = decode_service(br#"{"cluster":"c1","namespace":"ns","name":""}"#).unwrap_err();
    assert!(
        matches!(&e, KvError::Invalid { reason, .. } if reason.contains("`name`")),
        "{e}"
    );
    for bad in [
        r#","frontends":{"10.96.0.10":{"http":{"Protocol":"TCP","Port":"eighty"}}}"#,
        r#","frontends":{"10.96.0.10":{"http":{"Protocol":"TCP","Port":70000}}}"#,
        r#","frontends":{"10.96.0.10":{"http":{"Protocol":6,"Port":80}}}"#,
        r#","frontends":{"10.96.0.10":{"http":{"Protocol":"TCP"}}}"#,
        r#","frontends":{"not-an-ip":{"http":{"Protocol":"TCP","Port":80}}}"#,
        r#","frontends":{"fe80::1%eth0":{"http":{"Protocol":"TCP","Port":80}}}"#,
        r#","labels":["a"]"#,
        r#","shared":"yes""#,
        r#","hostnames":["web-0"]"#,
        r#","selector":{"app":1}"#,
    ] {
        let e = svc_with(bad).unwrap_err();
        assert!(matches!(e, KvError::Json { .. }), "{bad}: {e}");
    }
    let e = svc_with(r#","frontends":{"10.96.0.10":{"http":{"Protocol":"TCP","Port":"eighty"}}}"#)
        .unwrap_err();
    assert!(
        e.to_string().contains("eighty"),
        "serde's message is carried: {e}"
    );
    assert!(decode_node(br#"{"Cluster":"c1"}"#).is_err());
    assert!(decode_node(br#"{"Name":""}"#).is_err());
    assert!(decode_node(b"[]").is_err());
    assert!(decode_ip_pair(br#"{"IP":"","ID":1}"#).is_err());
    assert!(decode_ip_pair(br#"{"IP":"10.0.0.1"}"#).is_err(), "no ID");
    assert!(decode_ip_pair(br#"{"IP":"10.0.0.1","ID":1,"HostIP":"x"}"#).is_err());
    assert!(decode_ip_pair(br#"{"IP":"10.0.0.0","ID":1,"Mask":"/wD/AA=="}"#).is_err());
    assert!(decode_cluster_config(br#"{"id":"3"}"#).is_err());
    assert!(decode_cluster_config(br#"{"capabilities":{"cached":"true"}}"#).is_err());
    assert!(matches!(
        decode_identity(&[0xff, 0xfe]),
        Err(KvError::NotUtf8 { .. })
    ));
}

#[test]
fn protocols() {
    let port = |p: &str| {
        svc_with(&format!(
            r#","frontends":{{"10.96.0.10":{{"x":{{"Protocol":"{p}","Port":1}}}}}}"#
        ))
        .unwrap()
        .frontends
        .get(&ip("10.96.0.10"))
        .and_then(|p| p.get("x").copied())
        .unwrap()
        .protocol
    };
    assert_eq!(port("TCP"), L4Protocol::Tcp);
    assert_eq!(port("udp"), L4Protocol::Udp);
    assert_eq!(port("SCTP"), L4Protocol::Sctp);
    assert_eq!(port("ANY"), L4Protocol::Any);
    assert_eq!(port("NONE"), L4Protocol::None);
    assert_eq!(port(""), L4Protocol::None);
    assert_eq!(
        port("ICMP"),
        L4Protocol::Unknown,
        "a newer protocol keeps the service"
    );
}

#[test]
fn ip_pairs_masks_and_cluster_ids() {
    let p = decode_ip_pair(
        br#"{"IP":"10.0.0.0","Mask":"/wAAAA==","HostIP":"","ID":16777217,"NamedPorts":null}"#,
    )
    .unwrap();
    assert_eq!((p.mask, p.host_ip), (Some(8), None));
    assert_eq!(p.prefix(), net("10.0.0.0/8"));
    assert!(p.named_ports.is_empty());
    let p = decode_ip_pair(
        br#"{"IP":"fd00::","Mask":"//////////8AAAAAAAAAAA==","ID":199475,"Mask2":1}"#,
    )
    .unwrap();
    assert_eq!(p.prefix(), net("fd00::/64"));
    assert_eq!(p.cluster_id(), 3);
    assert_eq!(p.cluster_id_for(255), 3);
    // With 511 clusters the cluster id takes bit 15 too: cluster 300, local id 5.
    let p = decode_ip_pair(format!(r#"{{"IP":"10.0.0.1","ID":{}}}"#, (300 << 15) | 5).as_bytes())
        .unwrap();
    assert_eq!(p.cluster_id_for(511), 300);
}

#[test]
fn identity_labels_edge_cases() {
    let l = parse_identity_labels("k8s:app=baz;k8s:io.cilium.k8s.policy.cluster=cluster3;k8s:io.kubernetes.pod.namespace=bar;");
    assert_eq!(l.len(), 3);
    assert_eq!(l["k8s:io.kubernetes.pod.namespace"], "bar");
    let l =
        parse_identity_labels("k8s:app=baz;k8s:empty=;k8s:expr=a=b=c;reserved:host;;k8s:last=1");
    assert_eq!(l["k8s:app"], "baz");
    assert_eq!(l["k8s:empty"], "", "empty value");
    assert_eq!(l["k8s:expr"], "a=b=c", "'=' inside the value");
    assert_eq!(l["reserved:host"], "", "a label without value");
    assert_eq!(l["k8s:last"], "1", "no trailing ';'");
    assert_eq!(l.len(), 5, "the empty segment is no label: {l:?}");
    assert!(parse_identity_labels("").is_empty());
    assert!(parse_identity_labels(";").is_empty());
}

#[test]
fn portal_marker() {
    let with = |labels: &str| {
        svc_with(&format!(r#","labels":{labels}"#))
            .unwrap()
            .portal_marker()
    };
    assert!(with(r#"{"io.cilium/portal":"true"}"#));
    assert!(with(r#"{"io.cilium/portal":""}"#), "any value but false");
    assert!(with(r#"{"io.cilium/portal":"web"}"#));
    assert!(!with(r#"{"io.cilium/portal":"false"}"#));
    assert!(!with(r#"{"io.cilium/portal":"FALSE"}"#));
    assert!(!with(r#"{"io.cilium/portals":"true","portal":"true"}"#));
    assert!(!with("{}"));
}
