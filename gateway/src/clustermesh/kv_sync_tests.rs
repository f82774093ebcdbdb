//! Lists, sync canaries and reconnections.

use super::*;

#[test]
fn a_list_before_the_canary_keeps_missing_keys_until_it_comes() {
    let mut s = ClusterState::new(C);
    put(&mut s, &kvstore::cluster_config_key(C), &config(true));
    let a = (svc_key("b", "a"), svc("b", "a", "10.244.1.10"));
    let b = (svc_key("b", "b"), svc("b", "b", "10.244.1.11"));
    let c = (svc_key("b", "c"), svc("b", "c", "10.244.1.12"));
    assert!(s.replace_prefix(
        &prefix(Kind::Services),
        vec![a.clone(), b.clone(), c.clone()]
    ));
    assert!(s.replace_prefix(
        &prefix(Kind::Nodes),
        vec![(node_key("n1"), node("n1", "172.18.0.3"))]
    ));
    assert!(!s.is_synced(), "listed, but no canary yet");

    // A partial relist (a restarted server still filling its store): b and c are kept.
    assert!(
        !s.replace_prefix(&prefix(Kind::Services), vec![a.clone()]),
        "nothing visible changed"
    );
    assert_eq!(names(&s), ["b/a", "b/b", "b/c"]);
    assert_eq!(s.stats().stale, 2);
    // c comes back before the canary; b never does.
    assert_eq!(put(&mut s, &c.0, &c.1), Applied::Unchanged);
    assert_eq!(s.stats().stale, 1);
    assert_eq!(canary(&mut s, Kind::Services), Applied::Changed);
    assert_eq!(names(&s), ["b/a", "b/c"], "the canary confirms b is gone");
    assert_eq!(s.stats().stale, 0);
    assert!(!s.is_synced(), "nodes have no canary yet");
    assert_eq!(canary(&mut s, Kind::Nodes), Applied::Changed);
    assert!(s.is_synced());
    assert_eq!(canary(&mut s, Kind::Nodes), Applied::Unchanged);

    // After the canary a list is the truth.
    assert!(s.replace_prefix(&prefix(Kind::Services), vec![c.clone()]));
    assert_eq!(names(&s), ["b/c"]);
    // Other prefixes are untouched by a list of services.
    assert_eq!(s.stats().nodes, 1);
    assert!(!s.replace_prefix(&prefix(Kind::Services), vec![c]));
}

#[test]
fn a_listed_key_with_a_bad_value_is_not_deleted() {
    let mut s = ClusterState::new(C);
    canary(&mut s, Kind::Services);
    s.replace_prefix(
        &prefix(Kind::Services),
        vec![(svc_key("b", "a"), svc("b", "a", "10.244.1.10"))],
    );
    assert!(!s.replace_prefix(
        &prefix(Kind::Services),
        vec![(svc_key("b", "a"), b"{broken".to_vec())]
    ));
    assert_eq!(backend(&s, "b", "a"), Some("10.244.1.10".parse().unwrap()));
    assert_eq!(s.stats().skipped, 1);
}

#[test]
fn without_canaries_a_list_is_complete() {
    let mut s = ClusterState::new(C);
    put(&mut s, &svc_key("b", "a"), &svc("b", "a", "10.244.1.10"));
    put(&mut s, &svc_key("b", "b"), &svc("b", "b", "10.244.1.11"));
    // Before the config is known, canaries are expected: b is kept.
    s.replace_prefix(
        &prefix(Kind::Services),
        vec![(svc_key("b", "a"), svc("b", "a", "10.244.1.10"))],
    );
    assert_eq!(names(&s), ["b/a", "b/b"]);
    // The config says no canary will come: the stale entry goes, and lists are final.
    assert_eq!(
        put(&mut s, &kvstore::cluster_config_key(C), &config(false)),
        Applied::Changed
    );
    assert_eq!(names(&s), ["b/a"]);
    assert!(!s.is_synced(), "nodes not listed yet");
    assert!(
        s.replace_prefix(&prefix(Kind::Nodes), vec![]),
        "the first full list makes it synced"
    );
    assert!(s.is_synced());
    assert!(s.replace_prefix(&prefix(Kind::Services), vec![]));
    assert_eq!(s.stats().services, 0);
}

#[test]
fn a_reconnection_needs_the_canaries_again() {
    let mut s = ClusterState::new(C);
    canary(&mut s, Kind::Services);
    canary(&mut s, Kind::Nodes);
    s.replace_prefix(
        &prefix(Kind::Services),
        vec![(svc_key("b", "a"), svc("b", "a", "10.244.1.10"))],
    );
    s.replace_prefix(&prefix(Kind::Nodes), vec![]);
    assert!(s.is_synced());
    s.reconnected();
    assert!(!s.is_synced());
    // The restarted server lists nothing yet; the service stays.
    assert!(
        !s.replace_prefix(&prefix(Kind::Services), vec![]),
        "nothing visible changed"
    );
    assert!(!s.replace_prefix(&prefix(Kind::Nodes), vec![]));
    assert_eq!(names(&s), ["b/a"]);
    assert!(!s.is_synced());
    // The synced prefix lists the canaries again (here: only the nodes one).
    let synced_prefix = format!("cilium/synced/{C}/");
    let nodes_canary = (
        kvstore::synced_key(C, &Kind::Nodes.root(false)),
        b"t".to_vec(),
    );
    s.replace_prefix(&synced_prefix, vec![nodes_canary.clone()]);
    assert_eq!(names(&s), ["b/a"], "no services canary yet");
    let services_canary = (
        kvstore::synced_key(C, &Kind::Services.root(false)),
        b"t".to_vec(),
    );
    assert!(s.replace_prefix(&synced_prefix, vec![nodes_canary.clone(), services_canary]));
    assert!(names(&s).is_empty(), "confirmed gone");
    assert!(s.is_synced());
    // A canary missing from a later list of the synced prefix is forgotten.
    assert!(s.replace_prefix(&synced_prefix, vec![nodes_canary]));
    assert!(!s.is_synced());
    // And so is a deleted one.
    assert_eq!(
        del(&mut s, &kvstore::synced_key(C, &Kind::Nodes.root(false))),
        Applied::Changed
    );
}

#[test]
fn the_cached_layout() {
    let mut s = ClusterState::new(C);
    let cfg = br#"{"id":3,"capabilities":{"syncedCanaries":true,"cached":true}}"#;
    put(&mut s, &kvstore::cluster_config_key(C), cfg);
    assert!(s.config().is_some_and(|c| c.capabilities.cached));
    let p = kvstore::prefixes(C, true);
    let svc_cached = format!("{}b/web", p[0]);
    assert_eq!(
        put(&mut s, &svc_cached, &svc("b", "web", "10.244.1.10")),
        Applied::Changed
    );
    assert_eq!(
        put(&mut s, &format!("{}n1", p[1]), &node("n1", "172.18.0.3")),
        Applied::Changed
    );
    assert_eq!(
        put(
            &mut s,
            &format!("{}10.244.1.10", p[2]),
            &pair("10.244.1.10", 199475)
        ),
        Applied::Changed
    );
    assert_eq!(
        put(&mut s, &format!("{}199475", p[3]), b"k8s:app=web;"),
        Applied::Changed
    );
    let st = s.stats();
    assert_eq!((st.services, st.nodes, st.ips, st.identities), (1, 1, 1, 1));
    // A delete of the same service under the other layout's key is not this entry's.
    assert_eq!(del(&mut s, &svc_key("b", "web")), Applied::Unchanged);
    assert_eq!(s.stats().services, 1);

    // The cache's canaries name the cache roots.
    s.replace_prefix(&p[0], vec![]);
    s.replace_prefix(&p[1], vec![]);
    assert_eq!(s.stats().stale, 2);
    assert_eq!(s.stats().services, 1, "kept: no canary yet");
    // A canary of the state layout does not vouch for the cache.
    canary(&mut s, Kind::Services);
    assert_eq!(s.stats().services, 1);
    assert_eq!(
        put(
            &mut s,
            &kvstore::synced_key(C, &Kind::Services.root(true)),
            b"t"
        ),
        Applied::Changed
    );
    assert_eq!(s.stats().services, 0);
    assert!(!s.is_synced());
    put(
        &mut s,
        &kvstore::synced_key(C, &Kind::Nodes.root(true)),
        b"t",
    );
    assert!(s.is_synced());
    assert_eq!(s.stats().nodes, 0);
}
