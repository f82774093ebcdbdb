use super::*;
use crate::clustermesh::state::KvEvent;
use std::collections::BTreeMap;

fn node(cluster: &str, name: &str, ip: &str, cidr: &str) -> (String, String) {
    (
        format!("cilium/state/nodes/v1/{cluster}/{name}"),
        format!(
            r#"{{"Name":"{name}","Cluster":"{cluster}","IPAddresses":[{{"Type":"InternalIP","IP":"{ip}"}},{{"Type":"CiliumInternalIP","IP":"{}"}}],"IPv4AllocCIDR":"{cidr}","ClusterID":3}}"#,
            cidr.replace(".0/24", ".1")
        ),
    )
}

fn service(
    cluster: &str,
    ns: &str,
    name: &str,
    backend: &str,
    labels: &str,
    shared: bool,
) -> (String, String) {
    (
        format!("cilium/state/services/v1/{cluster}/{ns}/{name}"),
        format!(
            r#"{{"cluster":"{cluster}","namespace":"{ns}","name":"{name}","frontends":{{"10.96.0.10":{{"http":{{"Protocol":"TCP","Port":80}}}}}},"backends":{{"{backend}":{{"http":{{"Protocol":"TCP","Port":8080}}}}}},"labels":{labels},"selector":{{}},"includeExternal":true,"shared":{shared},"clusterID":3}}"#
        ),
    )
}

fn state(cluster: &str, kvs: &[(String, String)]) -> ClusterState {
    let mut s = ClusterState::new(cluster);
    for (k, v) in kvs {
        s.apply(KvEvent::Put {
            key: k.clone(),
            value: v.as_bytes().to_vec(),
        });
    }
    s
}

fn sel(cluster: &str, namespace: &str, name: &str) -> PortalSelector {
    PortalSelector {
        cluster: cluster.into(),
        namespace: namespace.into(),
        name: name.into(),
        labels: BTreeMap::new(),
        vip4: None,
        vip6: None,
    }
}

/// The first backend of service `default/<name>`.
fn first_backend<'a>(imp: &'a Imported, name: &str) -> &'a Backend {
    let n = ServiceName {
        namespace: "default".into(),
        name: name.into(),
    };
    &imp.services[&n].backends[0]
}

fn echo() -> ServiceName {
    ServiceName {
        namespace: "default".into(),
        name: "echo".into(),
    }
}

fn two_clusters() -> BTreeMap<String, ClusterState> {
    let mut m = BTreeMap::new();
    m.insert(
        "c1".to_string(),
        state(
            "c1",
            &[
                node("c1", "n1", "172.18.0.11", "10.244.1.0/24"),
                service("c1", "default", "echo", "10.244.1.10", "{}", true),
            ],
        ),
    );
    m.insert(
        "c2".to_string(),
        state(
            "c2",
            &[
                node("c2", "n2", "172.18.0.12", "10.245.1.0/24"),
                service("c2", "default", "echo", "10.245.1.10", "{}", true),
            ],
        ),
    );
    m
}

#[test]
fn same_service_in_two_clusters_merges_backends() {
    let imp = import(&two_clusters(), &[sel("*", "default", "ech*")], true, false);
    let svc = &imp.services[&echo()];
    assert_eq!(svc.backends.len(), 2);
    assert_eq!(
        *svc.backends[0].node,
        NodeId {
            cluster: "c1".into(),
            name: "n1".into()
        }
    );
    assert_eq!(
        *svc.backends[1].node,
        NodeId {
            cluster: "c2".into(),
            name: "n2".into()
        }
    );
    assert_eq!(
        svc.ports,
        vec![Port {
            name: "http".into(),
            port: 80,
            proto: 6
        }]
    );
    assert_eq!(svc.backends[0].port_named("http"), Some(8080));
    assert_eq!(svc.vip4, Some(Request::Auto));
    assert_eq!(svc.vip6, None, "no IPv6 backends, no IPv6 VIP");
    assert_eq!(imp.nodes.len(), 2);
    assert!(imp.problems.is_empty(), "{:?}", imp.problems);
}

#[test]
fn only_selected_shared_services_become_portals() {
    let mut m = BTreeMap::new();
    m.insert(
        "c1".to_string(),
        state(
            "c1",
            &[
                node("c1", "n1", "172.18.0.11", "10.244.1.0/24"),
                service("c1", "default", "echo", "10.244.1.10", "{}", true),
                service(
                    "c1",
                    "shop",
                    "cart",
                    "10.244.1.11",
                    r#"{"io.cilium/portal":"true"}"#,
                    true,
                ),
                service(
                    "c1",
                    "shop",
                    "private",
                    "10.244.1.12",
                    r#"{"io.cilium/portal":"true"}"#,
                    false,
                ),
            ],
        ),
    );
    let imp = import(&m, &[], true, true);
    let names: Vec<String> = imp.services.keys().map(|n| n.to_string()).collect();
    assert_eq!(
        names,
        ["shop/cart"],
        "the label selects; unshared and unselected are not portals"
    );
    let imp = import(&m, &[sel("c9", "*", "*")], true, true);
    assert_eq!(
        imp.services.len(),
        1,
        "a selector for another cluster selects nothing more"
    );
    let imp = import(&m, &[sel("c*", "default", "*")], true, true);
    assert_eq!(imp.services.len(), 2);
}

#[test]
fn a_pin_gives_the_static_vip() {
    let mut p = sel("*", "default", "echo");
    p.vip4 = Some(VipSpec::Static("10.200.0.50".parse().unwrap()));
    let imp = import(&two_clusters(), &[p], true, false);
    assert_eq!(
        imp.services[&echo()].vip4,
        Some(Request::Static("10.200.0.50".parse().unwrap()))
    );
}

#[test]
fn a_backend_without_a_node_is_a_problem() {
    let mut m = BTreeMap::new();
    m.insert(
        "c1".to_string(),
        state(
            "c1",
            &[service("c1", "default", "echo", "10.9.9.9", "{}", true)],
        ),
    );
    let imp = import(&m, &[sel("*", "*", "*")], true, false);
    assert!(imp.services[&echo()].backends.is_empty());
    assert!(
        imp.problems.iter().any(|p| p.contains("10.9.9.9")),
        "{:?}",
        imp.problems
    );
}

/// [`Grace::apply`] for a full pass that succeeds.
fn served_by(
    g: &mut Grace,
    current: BTreeMap<ServiceName, Service>,
    served: &BTreeMap<ServiceName, Service>,
    now: Instant,
    grace: Duration,
) -> BTreeMap<ServiceName, Service> {
    let out = g.apply(current, served, now, grace);
    g.pass_succeeded();
    out
}

#[test]
fn a_service_only_a_failed_pass_served_is_not_kept_for_the_grace_period() {
    let grace = Duration::from_secs(30);
    let t0 = Instant::now();
    let mut g = Grace::default();
    let full = import(&two_clusters(), &[sel("*", "*", "*")], true, false).services;
    // The service appears in a pass that fails: it was never served.
    let failed = g.apply(full, &BTreeMap::new(), t0, grace);
    assert!(failed.contains_key(&echo()));
    // The retry no longer sees it: nothing to drain, although the failed pass's catalog has it.
    let retry = served_by(&mut g, BTreeMap::new(), &failed, t0, grace);
    assert!(retry.is_empty(), "{retry:?}");
    assert_eq!(g.draining().count(), 0);
}

#[test]
fn withdrawn_services_stay_for_the_grace_period() {
    let grace = Duration::from_secs(30);
    let t0 = Instant::now();
    let mut g = Grace::default();
    let full = import(&two_clusters(), &[sel("*", "*", "*")], true, false).services;
    let none = BTreeMap::new();
    let first = served_by(&mut g, full.clone(), &none, t0, grace);
    assert_eq!(first.len(), 1);
    // The withdrawn service's last version is what was served.
    let served = served_by(
        &mut g,
        BTreeMap::new(),
        &first,
        t0 + Duration::from_secs(1),
        grace,
    );
    assert!(served.contains_key(&echo()), "kept while draining");
    assert_eq!(served.get(&echo()), first.get(&echo()));
    assert_eq!(g.draining().count(), 1);
    assert!(g.next_deadline().is_some());
    assert!(
        served_by(
            &mut g,
            BTreeMap::new(),
            &served,
            t0 + Duration::from_secs(32),
            grace
        )
        .is_empty(),
        "released after the grace"
    );
    assert_eq!(g.next_deadline(), None);
    // Coming back during the grace cancels it.
    let s1 = served_by(&mut g, full.clone(), &none, t0, grace);
    let s2 = served_by(
        &mut g,
        BTreeMap::new(),
        &s1,
        t0 + Duration::from_secs(1),
        grace,
    );
    served_by(&mut g, full, &s2, t0 + Duration::from_secs(2), grace);
    assert_eq!(g.draining().count(), 0);
}

#[test]
fn importing_some_services_gives_what_the_full_import_gives_for_them() {
    let mut clusters = two_clusters();
    clusters.get_mut("c1").unwrap().apply(KvEvent::Put {
        key: service("c1", "default", "web", "10.244.1.20", "{}", true).0,
        value: service("c1", "default", "web", "10.244.1.20", "{}", true)
            .1
            .into_bytes(),
    });
    let portals = [sel("*", "default", "*")];
    let full = import(&clusters, &portals, true, false);
    assert_eq!(full.services.len(), 2);
    let names: std::collections::BTreeSet<ServiceName> = [echo()].into();
    let some = import_services(&clusters, &portals, true, false, &names);
    assert_eq!(some.services.len(), 1, "only the services asked for");
    assert_eq!(some.services[&echo()], full.services[&echo()]);
    // A name no cluster shares is simply absent.
    let gone: std::collections::BTreeSet<ServiceName> = [ServiceName {
        namespace: "default".into(),
        name: "nope".into(),
    }]
    .into();
    assert!(import_services(&clusters, &portals, true, false, &gone)
        .services
        .is_empty());
}

#[test]
fn grace_for_some_services_keeps_a_withdrawn_one_and_drops_nothing_else() {
    let imp = import(&two_clusters(), &[sel("*", "default", "*")], true, false);
    let mut g = Grace::default();
    let t0 = Instant::now();
    let grace = Duration::from_secs(30);
    let all = served_by(&mut g, imp.services.clone(), &BTreeMap::new(), t0, grace);
    assert!(all.contains_key(&echo()));
    let names: std::collections::BTreeSet<ServiceName> = [echo()].into();
    // Withdrawn by an event: still served, now draining.
    let served = g.apply_some(&names, BTreeMap::new(), &all, t0, grace);
    assert_eq!(served.get(&echo()), imp.services.get(&echo()));
    assert_eq!(g.draining().collect::<Vec<_>>(), [&echo()]);
    // Back again: served as it is now and no longer draining.
    let served = g.apply_some(&names, imp.services.clone(), &all, t0, grace);
    assert!(served.contains_key(&echo()));
    assert_eq!(g.draining().count(), 0);
    // The full pass after the grace period agrees: a withdrawn service goes at its deadline.
    g.apply_some(&names, BTreeMap::new(), &all, t0, grace);
    let later = served_by(
        &mut g,
        BTreeMap::new(),
        &all,
        t0 + grace + Duration::from_secs(1),
        grace,
    );
    assert!(later.is_empty(), "{later:?}");
}

#[test]
fn the_ipcache_places_a_backend_outside_every_pod_cidr_and_gives_its_identity() {
    // 10.9.9.9 is in no node's pod CIDR: the ipcache names its host (n2's address) and its
    // identity, whose labels the backend carries. 10.244.1.10 is found by CIDR, and has no entry.
    let clusters: BTreeMap<String, ClusterState> = [(
        "c1".to_string(),
        state(
            "c1",
            &[
                node("c1", "n1", "172.18.0.11", "10.244.1.0/24"),
                node("c1", "n2", "172.18.0.12", "10.244.2.0/24"),
                service("c1", "default", "echo", "10.9.9.9", "{}", true),
                (
                    "cilium/state/ip/v1/default/10.9.9.9".into(),
                    r#"{"IP":"10.9.9.9","HostIP":"172.18.0.12","ID":4242,"Key":0,"Metadata":""}"#
                        .into(),
                ),
                // A CIDR entry covering the backend is not the backend's own identity.
                (
                    "cilium/state/ip/v1/default/10.9.0.0/16".into(),
                    r#"{"IP":"10.9.0.0","Mask":"//8AAA==","HostIP":"172.18.0.11","ID":7,"Key":0,"Metadata":""}"#
                        .into(),
                ),
                (
                    "cilium/state/identities/v1/id/4242".into(),
                    "k8s:app=echo;k8s:tier=web;".into(),
                ),
            ],
        ),
    )]
    .into();
    let imp = import(&clusters, &[sel("*", "default", "echo")], true, false);
    assert!(imp.problems.is_empty(), "{:?}", imp.problems);
    let b = &imp.services[&echo()].backends[0];
    assert_eq!(b.addr, "10.9.9.9".parse::<IpAddr>().unwrap());
    assert_eq!(&*b.node.name, "n2");
    assert_eq!(b.identity, Some(4242));
    assert_eq!(b.labels.get("k8s:tier").map(String::as_str), Some("web"));

    // Without its ipcache entry the backend has no node: a problem, not a guess.
    let mut c = clusters;
    c.get_mut("c1").unwrap().apply(KvEvent::Delete {
        key: "cilium/state/ip/v1/default/10.9.9.9".into(),
    });
    let imp = import(&c, &[sel("*", "default", "echo")], true, false);
    assert!(imp.services[&echo()].backends.is_empty());
    assert_eq!(imp.problems.len(), 1, "{:?}", imp.problems);
}

#[test]
fn a_backend_is_placed_by_the_most_specific_pod_cidr_of_any_length() {
    let wide = (
        "cilium/state/nodes/v1/c1/a-wide".to_string(),
        r#"{"Name":"a-wide","Cluster":"c1","IPAddresses":[{"Type":"InternalIP","IP":"172.18.0.20"}],"IPv4AllocCIDR":"10.244.0.0/16","ClusterID":3}"#.to_string(),
    );
    let clusters: BTreeMap<String, ClusterState> = [(
        "c1".to_string(),
        state(
            "c1",
            &[
                wide,
                node("c1", "n1", "172.18.0.11", "10.244.1.0/24"),
                service("c1", "default", "echo", "10.244.1.10", "{}", true),
                service("c1", "default", "other", "10.244.7.10", "{}", true),
            ],
        ),
    )]
    .into();
    let imp = import(&clusters, &[sel("*", "default", "*")], true, false);
    assert!(imp.problems.is_empty(), "{:?}", imp.problems);
    let node_of = |svc: &str| first_backend(&imp, svc).node.name.to_string();
    assert_eq!(node_of("echo"), "n1", "the /24 inside the /16");
    assert_eq!(node_of("other"), "a-wide");
}

#[test]
fn backends_share_their_nodes_id_their_port_map_and_their_identitys_labels() {
    let ipcache = |ip: &str| {
        (
            format!("cilium/state/ip/v1/default/{ip}"),
            format!(r#"{{"IP":"{ip}","HostIP":"172.18.0.11","ID":4242,"Key":0,"Metadata":""}}"#),
        )
    };
    let clusters: BTreeMap<String, ClusterState> = [(
        "c1".to_string(),
        state(
            "c1",
            &[
                node("c1", "n1", "172.18.0.11", "10.244.1.0/24"),
                service("c1", "default", "echo", "10.244.1.10", "{}", true),
                service("c1", "default", "web", "10.244.1.11", "{}", true),
                service("c1", "default", "plain", "10.244.1.12", "{}", true),
                ipcache("10.244.1.10"),
                ipcache("10.244.1.11"),
                (
                    "cilium/state/identities/v1/id/4242".into(),
                    "k8s:app=echo;".into(),
                ),
            ],
        ),
    )]
    .into();
    let imp = import(&clusters, &[sel("*", "default", "*")], true, false);
    assert!(imp.problems.is_empty(), "{:?}", imp.problems);
    let backend = |name: &str| first_backend(&imp, name);
    let (a, b, plain) = (backend("echo"), backend("web"), backend("plain"));
    assert!(Arc::ptr_eq(&a.node, &b.node), "one node id");
    assert!(
        Arc::ptr_eq(&a.ports, &b.ports) && Arc::ptr_eq(&a.ports, &plain.ports),
        "one list of http -> 8080 for the three services"
    );
    assert_eq!(a.port_named("http"), Some(8080));
    assert_eq!(a.labels.get("k8s:app").map(String::as_str), Some("echo"));
    assert!(
        std::ptr::eq(&*a.labels, &*b.labels),
        "one copy of the labels"
    );
    assert_eq!(plain.identity, None);
    assert!(plain.labels.is_empty());
    assert_eq!(plain.labels, crate::catalog::PodLabels::default());
}
