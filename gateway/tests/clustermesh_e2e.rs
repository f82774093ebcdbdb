//! The Cluster Mesh import end to end: a real etcd (the Cluster Mesh API stand-in, with mutual
//! TLS, inside node 1's namespace) holds two clusters' keys in Cilium's own format; the gateway
//! imports them; the legacy host resolves the portal's name and reaches the pods through its VIP.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod lab;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use lab::etcd::Etcd;
use lab::{poll, tally, Lab};

fn node(cluster: &str, name: &str, ip: &str, n: u8) -> (String, String) {
    (
        format!("cilium/state/nodes/v1/{cluster}/{name}"),
        format!(
            r#"{{"Name":"{name}","Cluster":"{cluster}","IPAddresses":[{{"Type":"InternalIP","IP":"{ip}"}},{{"Type":"CiliumInternalIP","IP":"10.244.{n}.1"}}],"IPv4AllocCIDR":{{"IP":"10.244.{n}.0","Mask":"////AA=="}},"IPv4SecondaryAllocCIDRs":null,"IPv4HealthIP":"","IPv4IngressIP":"","ClusterID":{n},"Source":"custom-resource","EncryptionKey":0,"Labels":{{}},"Annotations":null,"WireguardPubKey":"","BootID":"b"}}"#
        ),
    )
}

fn web(cluster: &str, id: u8, backend: &str) -> (String, String) {
    (
        format!("cilium/state/services/v1/{cluster}/default/web"),
        format!(
            r#"{{"cluster":"{cluster}","namespace":"default","name":"web","frontends":{{"10.96.0.10":{{"http":{{"Protocol":"TCP","Port":80}}}}}},"backends":{{"{backend}":{{"http":{{"Protocol":"TCP","Port":8080}}}}}},"labels":{{}},"selector":{{"app":"web"}},"includeExternal":true,"shared":true,"clusterID":{id}}}"#
        ),
    )
}

fn seed(etcd: &Etcd, cluster: &str, id: u8, node_name: &str, node_ip: &str, backend: &str) {
    etcd.put(
        &format!("cilium/cluster-config/{cluster}"),
        &format!(r#"{{"id":{id},"capabilities":{{"syncedCanaries":true,"cached":false,"maxConnectedClusters":255}}}}"#),
    );
    let (k, v) = node(cluster, node_name, node_ip, id);
    etcd.put(&k, &v);
    let (k, v) = web(cluster, id, backend);
    etcd.put(&k, &v);
    for prefix in [
        "cilium/state/nodes/v1",
        "cilium/state/services/v1",
        "cilium/state/ip/v1",
        "cilium/state/identities/v1",
    ] {
        etcd.put(
            &format!("cilium/synced/{cluster}/{prefix}"),
            "2026-11-25T00:00:00Z",
        );
    }
}

/// `web.default.mesh.local` as the legacy host's resolver query to the gateway answers it.
fn resolve(lab: &Lab) -> Option<IpAddr> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.legacy(),
            "dig",
            "@10.100.0.1",
            "+short",
            "+tries=1",
            "+time=1",
            "web.default.mesh.local",
            "A",
        ])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().parse().ok())
}

fn cluster_portal(st: &serde_json::Value) -> serde_json::Value {
    st["portals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["service"] == "default/web")
        .cloned()
        .unwrap_or_else(|| panic!("no default/web portal in {st}"))
}

/// Whether the gateway's kernel takes `vip` as its own (the IPv4 pool's AnyIP local route).
fn vip_local(lab: &Lab, vip: IpAddr) -> bool {
    let r = lab::ip_json(&lab.gw(), &["route", "get", &vip.to_string()]);
    r[0]["type"] == "local"
}

/// Whether the gateway still serves `vip`: a connection to its port 80 reaches a pod. (An IPv4
/// VIP is no address of its own: the pool's AnyIP route keeps every address of the pool the
/// gateway's, so a released VIP is seen by its traffic no longer being forwarded.)
fn vip_served(lab: &Lab, vip: IpAddr) -> bool {
    lab::in_netns(&lab.legacy(), || lab::tcp_once(SocketAddr::new(vip, 80))).is_ok()
}

fn who_answers(lab: &Lab, vip: IpAddr, n: usize) -> BTreeMap<String, usize> {
    tally(
        "web",
        lab::tcp_many(&lab.legacy(), SocketAddr::new(vip, 80), n),
        |(_, who)| who,
    )
}

#[test]
fn cluster_mesh_services_become_live_portals() {
    let mut lab = Lab::up("cmesh");
    let mut etcd = Etcd::start(&lab.ns("node1"), "172.18.0.11", &lab.name);
    seed(&etcd, "cluster1", 1, "node-1", "172.18.0.11", "10.244.1.10");
    seed(&etcd, "cluster2", 2, "node-2", "172.18.0.12", "10.244.2.10");
    let (ca, cert, key) = (
        etcd.file("ca.crt"),
        etcd.file("remote.crt"),
        etcd.file("remote.key"),
    );
    let endpoint = etcd.endpoint.clone();
    lab.write_config(|doc| {
        doc.remove("service");
        let mut clusters = toml_edit::ArrayOfTables::new();
        for name in ["cluster1", "cluster2"] {
            let mut t = toml_edit::Table::new();
            t["name"] = toml_edit::value(name);
            t["endpoints"] = toml_edit::value(toml_edit::Array::from_iter([endpoint.as_str()]));
            t["trusted_ca_file"] = toml_edit::value(ca.as_str());
            t["cert_file"] = toml_edit::value(cert.as_str());
            t["key_file"] = toml_edit::value(key.as_str());
            clusters.push(t);
        }
        doc["cluster"] = toml_edit::Item::ArrayOfTables(clusters);
        let mut portal = toml_edit::Table::new();
        portal["namespace"] = toml_edit::value("default");
        portal["name"] = toml_edit::value("web");
        let mut portals = toml_edit::ArrayOfTables::new();
        portals.push(portal);
        doc["portal"] = toml_edit::Item::ArrayOfTables(portals);
        let mut dns = toml_edit::Table::new();
        dns["listen"] = toml_edit::value(toml_edit::Array::from_iter(["10.100.0.1:53"]));
        doc["dns"] = toml_edit::Item::Table(dns);
        doc["vips"]["withdraw_grace_seconds"] = toml_edit::value(2);
    });
    lab.start_gateway();

    // The name resolves to the portal VIP, and the VIP reaches both clusters' backends.
    let vip = poll(Duration::from_secs(15), || resolve(&lab)).unwrap_or_else(|| {
        panic!(
            "web.default.mesh.local never resolved; log:\n{}",
            lab.log_tail(40)
        )
    });
    let both = poll(Duration::from_secs(10), || {
        let c = who_answers(&lab, vip, 16);
        (c.contains_key("pod-1") && c.contains_key("pod-2")).then_some(c)
    });
    assert!(
        both.is_some(),
        "backends of both clusters through {vip}; log:\n{}",
        lab.log_tail(40)
    );
    // The status is written at the end of the pass that programmed the datapath: wait for it.
    let st = poll(Duration::from_secs(5), || {
        let st = lab.status();
        let n = st["clusters"].as_array().map_or(0, Vec::len);
        let has = st["portals"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["service"] == "default/web"));
        (n == 2 && has).then_some(st)
    })
    .unwrap_or_else(|| {
        panic!(
            "status lists both clusters and the portal: {}",
            lab.status()
        )
    });
    for c in st["clusters"].as_array().unwrap() {
        assert_eq!(c["connected"], true, "{c}");
        assert_eq!(c["synced"], true, "{c}");
        assert_eq!(c["services"], 1, "{c}");
        assert_eq!(c["nodes"], 1, "{c}");
    }
    let portal = cluster_portal(&st);
    assert_eq!(portal["source"], "cluster1,cluster2", "{portal}");
    assert_eq!(portal["backends"].as_array().unwrap().len(), 2, "{portal}");
    assert!(
        vip_local(&lab, vip) && vip_served(&lab, vip),
        "the VIP is a local address of the gateway, and served"
    );

    // The Cluster Mesh API restarts: the portal keeps serving from what was learned, and the
    // gateway reconnects and relists.
    etcd.restart();
    let back = poll(Duration::from_secs(20), || {
        let st = lab.status();
        st["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["connected"] == true && c["synced"] == true)
            .then_some(())
    });
    assert!(
        back.is_some(),
        "reconnected after an etcd restart; log:\n{}",
        lab.log_tail(40)
    );
    let c = who_answers(&lab, vip, 8);
    assert_eq!(c.values().sum::<usize>(), 8, "{c:?}");

    // A malformed value is skipped; the service keeps working.
    etcd.put(
        "cilium/state/services/v1/cluster1/default/broken",
        "{not json",
    );
    let skipped = poll(Duration::from_secs(5), || {
        let st = lab.status();
        let c1 = st["clusters"].as_array().unwrap()[0].clone();
        (c1["skipped"].as_u64() >= Some(1)).then_some(c1)
    })
    .expect("the malformed value is counted as skipped");
    assert!(
        skipped["last_skipped"]
            .as_str()
            .unwrap()
            .contains("cilium/state/services/v1/cluster1/default/broken"),
        "{skipped}"
    );

    // Deleting cluster2's entry removes only its backend, live. The time from the delete (as
    // etcdctl returns) to the backend map no longer holding pod-2 is measured through the map's
    // effect: new connections all go to pod-1.
    let t = std::time::Instant::now();
    etcd.del("cilium/state/services/v1/cluster2/default/web");
    let only1 = poll(Duration::from_secs(5), || {
        let st = lab.status();
        (cluster_portal(&st)["backends"].as_array().unwrap().len() == 1).then_some(())
    });
    eprintln!(
        "backend withdrawal visible in the status after {:?}",
        t.elapsed()
    );
    assert!(
        only1.is_some(),
        "status shows one backend; log:\n{}",
        lab.log_tail(40)
    );
    let c = who_answers(&lab, vip, 10);
    assert_eq!(
        c.keys().collect::<Vec<_>>(),
        ["pod-1"],
        "after cluster2 withdrew its backend, only pod-1 answers"
    );

    // A restart keeps the VIP.
    assert!(lab.stop_gateway().success());
    lab.start_gateway();
    let again = poll(Duration::from_secs(15), || resolve(&lab));
    assert_eq!(
        again,
        Some(vip),
        "the portal keeps its VIP across a restart"
    );
    let c = who_answers(&lab, vip, 4);
    assert_eq!(c.keys().collect::<Vec<_>>(), ["pod-1"], "{c:?}");

    // Withdrawn everywhere: the VIP stays for the grace period, then goes.
    etcd.del("cilium/state/services/v1/cluster1/default/web");
    let t = std::time::Instant::now();
    let draining = poll(Duration::from_secs(5), || {
        let st = lab.status();
        (cluster_portal(&st)["draining"] == true).then_some(())
    });
    assert!(draining.is_some(), "withdrawn portal shown as draining");
    assert_eq!(
        resolve(&lab),
        Some(vip),
        "the name stays during the grace period"
    );
    let gone = poll(Duration::from_secs(20), || {
        (resolve(&lab).is_none() && !vip_served(&lab, vip)).then_some(())
    });
    assert!(
        gone.is_some(),
        "the VIP should be released after the grace period; log:\n{}",
        lab.log_tail(40)
    );
    assert!(
        t.elapsed() >= Duration::from_secs(2),
        "released after {:?}, before the 2 s grace period",
        t.elapsed()
    );
    lab.assert_gateway_running();
}
