use super::*;
use std::net::IpAddr;

const C: &str = "cluster3";

fn svc_key(ns: &str, name: &str) -> String {
    format!("cilium/state/services/v1/{C}/{ns}/{name}")
}

fn svc(ns: &str, name: &str, backend: &str) -> Vec<u8> {
    format!(
        r#"{{"cluster":"{C}","namespace":"{ns}","name":"{name}","frontends":{{"10.96.0.10":{{"http":{{"Protocol":"TCP","Port":80}}}}}},"backends":{{"{backend}":{{"http":{{"Protocol":"TCP","Port":8080}}}}}},"labels":{{}},"selector":{{}},"includeExternal":true,"shared":true,"clusterID":3}}"#
    )
    .into_bytes()
}

fn node_key(name: &str) -> String {
    format!("cilium/state/nodes/v1/{C}/{name}")
}

fn node(name: &str, ip: &str) -> Vec<u8> {
    format!(r#"{{"Name":"{name}","Cluster":"{C}","IPAddresses":[{{"Type":"InternalIP","IP":"{ip}"}}],"IPv4AllocCIDR":"10.244.1.0/24","ClusterID":3}}"#).into_bytes()
}

fn ip_key(ip: &str) -> String {
    format!("cilium/state/ip/v1/default/{ip}")
}

fn pair(ip: &str, id: u32) -> Vec<u8> {
    format!(r#"{{"IP":"{ip}","HostIP":"172.18.0.2","ID":{id},"Key":0,"Metadata":""}}"#).into_bytes()
}

fn config(synced_canaries: bool) -> Vec<u8> {
    format!(r#"{{"id":3,"capabilities":{{"syncedCanaries":{synced_canaries},"maxConnectedClusters":255}}}}"#).into_bytes()
}

fn put(s: &mut ClusterState, key: &str, value: &[u8]) -> Applied {
    s.apply(KvEvent::Put {
        key: key.to_string(),
        value: value.to_vec(),
    })
}

fn del(s: &mut ClusterState, key: &str) -> Applied {
    s.apply(KvEvent::Delete {
        key: key.to_string(),
    })
}

fn canary(s: &mut ClusterState, kind: Kind) -> Applied {
    put(
        s,
        &kvstore::synced_key(C, &kind.root(false)),
        b"2026-11-25T00:00:00Z",
    )
}

fn names(s: &ClusterState) -> Vec<String> {
    s.services()
        .map(|v| format!("{}/{}", v.namespace, v.name))
        .collect()
}

fn backend(s: &ClusterState, ns: &str, name: &str) -> Option<IpAddr> {
    s.service(ns, name)?.backends.keys().next().copied()
}

fn prefix(kind: Kind) -> String {
    kind.list_prefix(C, false)
}

#[test]
fn puts_and_deletes() {
    let mut s = ClusterState::new(C);
    assert_eq!(
        put(
            &mut s,
            &svc_key("b", "web"),
            &svc("b", "web", "10.244.1.10")
        ),
        Applied::Changed
    );
    assert_eq!(
        put(
            &mut s,
            &svc_key("a", "web"),
            &svc("a", "web", "10.244.1.11")
        ),
        Applied::Changed
    );
    assert_eq!(
        put(
            &mut s,
            &svc_key("b", "web"),
            &svc("b", "web", "10.244.1.10")
        ),
        Applied::Unchanged
    );
    assert_eq!(
        put(
            &mut s,
            &svc_key("b", "web"),
            &svc("b", "web", "10.244.1.12")
        ),
        Applied::Changed
    );
    assert_eq!(
        backend(&s, "b", "web"),
        Some("10.244.1.12".parse().unwrap())
    );
    assert_eq!(
        names(&s),
        ["a/web", "b/web"],
        "ordered by namespace and name, not by arrival"
    );
    assert_eq!(del(&mut s, &svc_key("a", "web")), Applied::Changed);
    assert_eq!(del(&mut s, &svc_key("a", "web")), Applied::Unchanged);
    assert_eq!(names(&s), ["b/web"]);

    assert_eq!(
        put(&mut s, &node_key("n1"), &node("n1", "172.18.0.3")),
        Applied::Changed
    );
    assert_eq!(
        s.nodes().next().and_then(|n| n.internal_ipv4()),
        Some("172.18.0.3".parse().unwrap())
    );
    assert_eq!(
        put(
            &mut s,
            "cilium/state/identities/v1/id/199475",
            b"k8s:app=web;"
        ),
        Applied::Changed
    );
    assert_eq!(
        s.identity_labels(199475).map(|l| l["k8s:app"].as_str()),
        Some("web")
    );
    assert_eq!(
        del(&mut s, "cilium/state/identities/v1/id/199475"),
        Applied::Changed
    );
    assert_eq!(s.identity_labels(199475), None);
    let st = s.stats();
    assert_eq!(
        (st.services, st.nodes, st.ips, st.identities, st.skipped),
        (1, 1, 0, 0, 0)
    );
    assert!(st.last_event.is_some());
}

#[test]
fn keys_of_other_clusters_and_of_no_interest_are_ignored() {
    let mut s = ClusterState::new(C);
    let other = "cilium/state/services/v1/cluster4/b/web";
    assert_eq!(
        put(&mut s, other, &svc("b", "web", "10.244.1.10")),
        Applied::Ignored
    );
    assert_eq!(del(&mut s, other), Applied::Ignored);
    assert_eq!(
        put(
            &mut s,
            "cilium/state/nodes/v1/cluster4/n1",
            &node("n1", "172.18.0.3")
        ),
        Applied::Ignored
    );
    assert_eq!(
        put(
            &mut s,
            "cilium/cache/ip/v1/cluster4/10.0.0.1",
            &pair("10.0.0.1", 1)
        ),
        Applied::Ignored
    );
    assert_eq!(
        put(
            &mut s,
            "cilium/cache/identities/v1/cluster4/id/5",
            b"k8s:a=b;"
        ),
        Applied::Ignored
    );
    assert_eq!(
        put(&mut s, "cilium/cluster-config/cluster4", &config(false)),
        Applied::Ignored
    );
    assert_eq!(
        put(
            &mut s,
            "cilium/synced/cluster4/cilium/state/services/v1",
            b"t"
        ),
        Applied::Ignored
    );
    assert_eq!(
        put(
            &mut s,
            "cilium/state/endpointslices/v1/cluster3/b/web-1",
            b"\x28\xb5"
        ),
        Applied::Ignored
    );
    assert_eq!(put(&mut s, "cilium/.heartbeat", b"2026"), Applied::Ignored);
    assert!(s.stats().last_heartbeat.is_some());
    let st = s.stats();
    assert_eq!(
        (st.services, st.nodes, st.ips, st.identities, st.skipped),
        (0, 0, 0, 0, 0)
    );
    assert!(s.config().is_none());
}

#[test]
fn malformed_values_are_skipped_and_the_last_good_one_kept() {
    let mut s = ClusterState::new(C);
    put(
        &mut s,
        &svc_key("b", "web"),
        &svc("b", "web", "10.244.1.10"),
    );
    put(
        &mut s,
        &svc_key("b", "api"),
        &svc("b", "api", "10.244.1.20"),
    );
    let good = s.service("b", "web").cloned();
    let bad_port = String::from_utf8(svc("b", "web", "10.244.1.11"))
        .unwrap()
        .replace(r#""Port":8080"#, r#""Port":"eighty""#);
    let missing_name = br#"{"cluster":"cluster3","namespace":"b"}"#.to_vec();
    for bad in [
        b"{not json".to_vec(),
        missing_name,
        bad_port.into_bytes(),
        svc("b", "other", "10.244.1.11"),
    ] {
        match put(&mut s, &svc_key("b", "web"), &bad) {
            Applied::Skipped(reason) => assert!(
                reason.contains(&svc_key("b", "web")),
                "the reason names the key: {reason}"
            ),
            other => panic!("{other:?} for {}", String::from_utf8_lossy(&bad)),
        }
        assert_eq!(
            s.service("b", "web").cloned(),
            good,
            "the previous value is kept"
        );
        assert_eq!(
            backend(&s, "b", "api"),
            Some("10.244.1.20".parse().unwrap()),
            "other services are unaffected"
        );
    }
    let st = s.stats();
    assert_eq!((st.services, st.skipped), (2, 4));
    let (key, reason) = s.last_skipped().unwrap();
    assert_eq!(key, &svc_key("b", "web"));
    assert!(reason.contains("other"), "{reason}");
    // A malformed value for a new key adds nothing.
    assert!(matches!(
        put(&mut s, &svc_key("b", "new"), b"[]"),
        Applied::Skipped(_)
    ));
    assert_eq!(names(&s), ["b/api", "b/web"]);
    assert!(
        matches!(
            put(
                &mut s,
                &node_key("n1"),
                br#"{"Name":"n2","Cluster":"cluster3"}"#
            ),
            Applied::Skipped(_)
        ),
        "key and value disagree"
    );
    assert!(matches!(
        put(
            &mut s,
            &node_key("n1"),
            br#"{"Name":"n1","Cluster":"cluster4"}"#
        ),
        Applied::Skipped(_)
    ));
    assert!(matches!(
        put(&mut s, &ip_key("10.0.0.1"), &pair("10.0.0.2", 1)),
        Applied::Skipped(_)
    ));
    assert!(matches!(
        put(&mut s, &ip_key("nonsense"), &pair("10.0.0.2", 1)),
        Applied::Skipped(_)
    ));
    assert!(matches!(
        put(&mut s, "cilium/state/identities/v1/id/7", b"\xff"),
        Applied::Skipped(_)
    ));
    assert!(matches!(
        put(&mut s, &kvstore::cluster_config_key(C), b"{"),
        Applied::Skipped(_)
    ));
    assert_eq!(s.stats().skipped, 11);
}

#[test]
fn the_config_id_must_match() {
    let mut s = ClusterState::new(C);
    assert_eq!(
        put(&mut s, &kvstore::cluster_config_key(C), &config(true)),
        Applied::Changed
    );
    assert_eq!(
        put(&mut s, &kvstore::cluster_config_key(C), &config(true)),
        Applied::Unchanged
    );
    let other_id = String::from_utf8(svc("b", "web", "10.244.1.10"))
        .unwrap()
        .replace(r#""clusterID":3"#, r#""clusterID":4"#);
    assert!(
        matches!(put(&mut s, &svc_key("b", "web"), other_id.as_bytes()), Applied::Skipped(r) if r.contains("clusterID 4"))
    );
    assert_eq!(
        put(
            &mut s,
            &svc_key("b", "web"),
            &svc("b", "web", "10.244.1.10")
        ),
        Applied::Changed
    );
}

#[test]
fn an_ip_moving_between_endpoints_ends_with_the_new_identity() {
    let mut s = ClusterState::new(C);
    put(&mut s, &ip_key("10.244.2.91"), &pair("10.244.2.91", 199472));
    put(&mut s, &ip_key("10.244.2.74"), &pair("10.244.2.74", 199475));
    assert_eq!(del(&mut s, &ip_key("10.244.2.91")), Applied::Changed);
    assert_eq!(
        put(&mut s, &ip_key("10.244.2.91"), &pair("10.244.2.91", 199479)),
        Applied::Changed
    );
    let ids: Vec<(String, u32)> = s.ip_pairs().map(|p| (p.ip.to_string(), p.id)).collect();
    assert_eq!(
        ids,
        [
            ("10.244.2.74".to_string(), 199475),
            ("10.244.2.91".to_string(), 199479)
        ]
    );
    // Overwritten in place, without a delete, too.
    put(&mut s, &ip_key("10.244.2.91"), &pair("10.244.2.91", 199472));
    assert_eq!(
        s.ip_pairs()
            .find(|p| p.id == 199472)
            .map(|p| p.ip.to_string())
            .as_deref(),
        Some("10.244.2.91")
    );
    assert_eq!(s.stats().ips, 2);
    // A CIDR entry under its CIDR key.
    let cidr = br#"{"IP":"10.0.0.0","Mask":"/wAAAA==","ID":16777217}"#;
    assert_eq!(put(&mut s, &ip_key("10.0.0.0/8"), cidr), Applied::Changed);
    assert!(
        matches!(put(&mut s, &ip_key("10.0.0.0"), cidr), Applied::Skipped(_)),
        "the key must name the CIDR"
    );
}

#[test]
fn the_config_can_go() {
    let mut s = ClusterState::new(C);
    put(&mut s, &kvstore::cluster_config_key(C), &config(true));
    assert!(!s.replace_prefix(
        &kvstore::cluster_config_key(C),
        vec![(kvstore::cluster_config_key(C), config(true))]
    ));
    assert!(s.replace_prefix(&kvstore::cluster_config_key(C), vec![]));
    assert!(s.config().is_none());
    put(&mut s, &kvstore::cluster_config_key(C), &config(true));
    assert_eq!(
        del(&mut s, &kvstore::cluster_config_key(C)),
        Applied::Changed
    );
    assert_eq!(
        del(&mut s, &kvstore::cluster_config_key(C)),
        Applied::Unchanged
    );
}

#[path = "kv_sync_tests.rs"]
mod sync;
