//! End-to-end tests: the real gateway daemon in the namespace lab (scripts/lab.sh), with traffic
//! from the legacy host through the portal VIPs of config/demo.toml to the two pods.
//!
//! These need root (namespaces, XDP) and panic with "needs root" otherwise; they never pass
//! silently. Each test builds its own lab and tears it down, also when it fails.

mod lab;

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use lab::{
    assert_both_pods, curl, non_kernel_routes, poll, tally, tcp_many, udp_many, vip4_dns,
    vip4_http, vip6_dns, vip6_http, Lab, LineConn, VIP4, VIP6,
};

/// Connections per address family and protocol in the basic test: enough that both backends
/// are all but certain to be chosen (a 50/50 split misses one with probability 2^-31).
const FEW_DOZEN: usize = 32;

#[test]
fn tcp_and_udp_through_the_vip_reach_both_pods() {
    let mut lab = Lab::up("basic");
    lab.start_gateway();
    let legacy = lab.legacy();

    for (what, addr) in [("TCP/IPv4", vip4_http()), ("TCP/IPv6", vip6_http())] {
        let counts = tally(what, tcp_many(&legacy, addr, FEW_DOZEN), |(_, who)| who);
        eprintln!("{what} {addr}: {counts:?}");
        assert_both_pods(what, &counts);
    }
    for (what, addr) in [("UDP/IPv4", vip4_dns()), ("UDP/IPv6", vip6_dns())] {
        let counts = tally(what, udp_many(&legacy, addr, FEW_DOZEN), |who| who);
        eprintln!("{what} {addr}: {counts:?}");
        assert_both_pods(what, &counts);
    }
    // Real HTTP with curl, as the demo does.
    for url in ["http://10.200.0.10/", "http://[fd00:200::10]/"] {
        let body = curl(&legacy, url);
        assert!(
            body == "pod-1" || body == "pod-2",
            "curl {url}: unexpected body {body:?}"
        );
    }
    lab.assert_gateway_running();
}

#[test]
fn thousand_connections_are_balanced() {
    const N: usize = 1000;
    let mut lab = Lab::up("balance");
    lab.start_gateway();

    let results = tcp_many(&lab.legacy(), vip4_http(), N);
    let ports: HashSet<u16> = results
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|(port, _)| *port))
        .collect();
    let counts = tally("1000 connections", results, |(_, who)| who);
    eprintln!("{N} connections to {}: {counts:?}", vip4_http());
    assert_eq!(
        ports.len(),
        N,
        "every connection should use its own source port"
    );
    assert_both_pods("1000 connections", &counts);
    for (who, n) in &counts {
        assert!(
            (N * 40 / 100..=N * 60 / 100).contains(n),
            "{who} got {n} of {N} connections; each backend should get 40-60% ({counts:?})"
        );
    }
    lab.assert_gateway_running();
}

#[test]
fn backend_removal_keeps_established_flows() {
    let mut lab = Lab::up("removal");
    lab.start_gateway();
    let legacy = lab.legacy();

    // Hold one connection on each pod.
    let mut held: BTreeMap<String, LineConn> = BTreeMap::new();
    for _ in 0..64 {
        let mut c = LineConn::connect_in(&legacy, vip4_http()).expect("connect to the VIP");
        let who = c.ping().expect("first ping");
        held.entry(who).or_insert(c);
        if held.contains_key("pod-1") && held.contains_key("pod-2") {
            break;
        }
    }
    let found: Vec<&String> = held.keys().collect();
    assert!(
        held.contains_key("pod-1") && held.contains_key("pod-2"),
        "64 new connections should reach both pods, reached {found:?}"
    );
    let mut on_pod1 = held.remove("pod-1").expect("held above");
    let mut on_pod2 = held.remove("pod-2").expect("held above");
    assert_eq!(on_pod1.ping().expect("ping before reload"), "pod-1");

    // Drop node-2's backends from the config and reload.
    lab.write_config(|doc| {
        let services = doc["service"]
            .as_array_of_tables_mut()
            .expect("[[service]] tables");
        for svc in services.iter_mut() {
            if let Some(backends) = svc
                .get_mut("backend")
                .and_then(|b| b.as_array_of_tables_mut())
            {
                backends.retain(|b| b.get("node").and_then(|n| n.as_str()) != Some("node-2"));
            }
        }
    });
    lab.reload_gateway();

    // Bounded wait for the reload to take effect: ten new connections in a row on pod-1
    // (by chance alone that happens 1 time in 1024 with two backends).
    let mut streak = 0;
    let settled = poll(Duration::from_secs(10), || {
        let (_, who) = lab::in_netns(&legacy, || lab::tcp_once(vip4_http())).ok()?;
        streak = if who == "pod-1" { streak + 1 } else { 0 };
        (streak >= 10).then_some(())
    });
    assert!(
        settled.is_some(),
        "after SIGHUP, new connections still reach pod-2 10 s later; log:\n{}",
        lab.log_tail(30)
    );

    // The established connection on pod-1 stays there.
    for i in 0..5 {
        let who = on_pod1
            .ping()
            .unwrap_or_else(|e| panic!("ping {i} on the held pod-1 connection after reload: {e}"));
        assert_eq!(who, "pod-1", "the held pod-1 connection moved");
    }
    // New connections, both families, all go to pod-1.
    for (what, addr) in [("IPv4", vip4_http()), ("IPv6", vip6_http())] {
        let counts = tally(what, tcp_many(&legacy, addr, 20), |(_, who)| who);
        assert_eq!(
            counts.keys().collect::<Vec<_>>(),
            ["pod-1"],
            "{what}: after removing node-2's backends, new connections should all reach pod-1: {counts:?}"
        );
    }
    // Informational: what happened to the connection whose backend was removed.
    match on_pod2.ping() {
        Ok(who) => eprintln!("held connection on the removed backend still answers: {who}"),
        Err(e) => eprintln!("held connection on the removed backend: {e}"),
    }
    lab.assert_gateway_running();
}

#[test]
fn gateway_answers_arp_and_nd_for_vips() {
    let mut lab = Lab::up("neigh");
    lab.start_gateway();
    let legacy = lab.legacy();
    let mac = lab.gw_legacy_mac();

    for (vip, addr) in [
        (IpAddr::V4(VIP4), vip4_http()),
        (IpAddr::V6(VIP6), vip6_http()),
    ] {
        // The first request makes the host resolve the on-link VIP.
        let (_, who) = lab::in_netns(&legacy, || lab::tcp_once(addr))
            .unwrap_or_else(|e| panic!("first request to {addr}: {e}"));
        assert!(who == "pod-1" || who == "pod-2", "{addr}: answer {who:?}");
        let (lladdr, states) = lab::neighbour(&legacy, vip)
            .unwrap_or_else(|| panic!("legacy host has no neighbour entry for {vip}"));
        assert!(
            !states.iter().any(|s| s == "FAILED" || s == "INCOMPLETE"),
            "neighbour entry for {vip} is unresolved: {states:?}"
        );
        assert_eq!(
            lladdr, mac,
            "{vip} should resolve to the gateway's legacy MAC"
        );
        eprintln!("{vip} -> {lladdr} {states:?}");
    }
    lab.assert_gateway_running();
}

#[test]
fn restart_is_idempotent() {
    let mut lab = Lab::up("restart");
    lab.start_gateway();
    let legacy = lab.legacy();
    let gw = lab.gw();

    let flows = |lab: &Lab| {
        for (what, addr) in [("IPv4", vip4_http()), ("IPv6", vip6_http())] {
            let counts = tally(what, tcp_many(&lab.legacy(), addr, 8), |(_, who)| who);
            assert!(
                counts.keys().all(|w| w == "pod-1" || w == "pod-2"),
                "{what}: {counts:?}"
            );
        }
    };
    flows(&lab);
    // IPv6 VIPs are host addresses on the legacy interface, beside its own addresses; the IPv4
    // pool is one AnyIP local route (no address per VIP).
    let vips_before = lab::addresses(&gw, "legacy");
    assert_eq!(
        vips_before
            .iter()
            .filter(|a| *a == "fd00:200::10/128")
            .count(),
        1,
        "the IPv6 VIP once on legacy: {vips_before:?}"
    );
    assert!(
        !vips_before.iter().any(|a| a.starts_with("10.200.0.")),
        "no IPv4 VIP address: {vips_before:?}"
    );
    let routes_before = non_kernel_routes(&gw);
    let pool_routes: Vec<&String> = routes_before
        .iter()
        .filter(|r| r.contains("local 10.200.0.0/24") && r.contains("dev legacy"))
        .collect();
    assert_eq!(pool_routes.len(), 1, "{routes_before:#?}");
    eprintln!("legacy addresses: {vips_before:?}");
    eprintln!("routes: {routes_before:#?}");

    // A connection held across the restart: the pinned datapath forwards it while no daemon runs.
    let mut held = LineConn::connect_in(&legacy, vip4_http()).expect("connect to the VIP");
    let backend = held.ping().expect("first ping");
    let status = lab.stop_gateway();
    assert!(
        status.success(),
        "SIGTERM should stop the gateway cleanly: {status}"
    );
    assert_eq!(
        held.ping().expect("ping with the daemon stopped"),
        backend,
        "the datapath must keep forwarding while the daemon is down"
    );
    let fresh = lab::in_netns(&legacy, || lab::tcp_once(vip4_http()))
        .expect("a new connection with the daemon stopped");
    assert!(fresh.1 == "pod-1" || fresh.1 == "pod-2", "{fresh:?}");
    lab.start_gateway();
    assert_eq!(
        held.ping().expect("ping after the restart"),
        backend,
        "the held connection keeps its backend across the restart"
    );
    flows(&lab);
    let counts = tally("UDP/IPv4", udp_many(&legacy, vip4_dns(), 4), |who| who);
    assert!(
        counts.keys().all(|w| w == "pod-1" || w == "pod-2"),
        "{counts:?}"
    );

    let vips_after = lab::addresses(&gw, "legacy");
    let routes_after = non_kernel_routes(&gw);
    assert_eq!(
        vips_after, vips_before,
        "addresses on legacy changed across the restart"
    );
    assert_eq!(
        routes_after, routes_before,
        "the gateway's routes changed across the restart"
    );
    let unique: HashSet<&String> = routes_after.iter().collect();
    assert_eq!(
        unique.len(),
        routes_after.len(),
        "duplicate routes: {routes_after:#?}"
    );
    lab.assert_gateway_running();
}
