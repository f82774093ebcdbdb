//! The client against a real etcd (Debian's etcd-server) on loopback with mutual TLS and
//! certificates generated here: list then watch, the TLS failures an operator meets, and a
//! server restart.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::etcd_lab::Etcd;
use super::*;

type Rx = mpsc::Receiver<(String, ClientEvent)>;

fn endpoint(e: &Etcd) -> ClusterEndpoint {
    ClusterEndpoint {
        cluster: "cluster1".into(),
        endpoints: vec![e.endpoint.clone()],
        ca_file: e.file("ca.crt").into(),
        cert_file: e.file("remote.crt").into(),
        key_file: e.file("remote.key").into(),
        server_name: None,
    }
}

fn start(ep: ClusterEndpoint, prefixes: &[&str]) -> (Rx, watch::Sender<bool>) {
    let (tx, rx) = mpsc::channel(64);
    let (stop, stop_rx) = watch::channel(false);
    let prefixes = prefixes.iter().map(|p| p.to_string()).collect();
    tokio::spawn(run_cluster(ep, prefixes, tx, stop_rx));
    (rx, stop)
}

async fn next(rx: &mut Rx) -> ClientEvent {
    let (cluster, ev) = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("an event within 20 s")
        .expect("the client is running");
    assert_eq!(cluster, "cluster1");
    ev
}

async fn disconnected(rx: &mut Rx) -> String {
    match next(rx).await {
        ClientEvent::Disconnected { error } => error,
        other => panic!("expected a connection failure, got {other:?}"),
    }
}

#[test]
fn prefix_end_is_the_next_key_range() {
    assert_eq!(prefix_end(b"cilium/"), b"cilium0".to_vec());
    assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
    assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_at_one_revision_then_watches_with_mutual_tls() {
    let etcd = Etcd::start_local("client-list");
    etcd.put("cilium/state/services/v1/cluster1/default/web", "{\"a\":1}");
    // Five services: the list takes three pages of two (PAGE in tests).
    for n in ["a1", "a2", "a3", "a4"] {
        etcd.put(&format!("cilium/state/services/v1/cluster1/zz/{n}"), "{}");
    }
    etcd.put("cilium/state/nodes/v1/cluster1/node-1", "{\"n\":1}");
    etcd.put("cilium/synced/cluster1/cilium/state/services/v1", "t");
    etcd.put("unrelated/key", "x");
    let (mut rx, stop) = start(
        endpoint(&etcd),
        &[
            "cilium/synced/cluster1/",
            "cilium/state/services/v1/cluster1/",
            "cilium/state/nodes/v1/cluster1/",
        ],
    );
    assert_eq!(next(&mut rx).await, ClientEvent::Connected);
    let mut revisions = Vec::new();
    for (prefix, key) in [
        (
            "cilium/synced/cluster1/",
            "cilium/synced/cluster1/cilium/state/services/v1",
        ),
        (
            "cilium/state/services/v1/cluster1/",
            "cilium/state/services/v1/cluster1/default/web",
        ),
        (
            "cilium/state/nodes/v1/cluster1/",
            "cilium/state/nodes/v1/cluster1/node-1",
        ),
    ] {
        match next(&mut rx).await {
            ClientEvent::Listed {
                prefix: p,
                entries,
                revision,
            } => {
                assert_eq!(p, prefix);
                let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
                if p.starts_with("cilium/state/services/") {
                    let mut want = vec![key.to_string()];
                    want.extend(
                        ["a1", "a2", "a3", "a4"]
                            .iter()
                            .map(|n| format!("cilium/state/services/v1/cluster1/zz/{n}")),
                    );
                    assert_eq!(keys, want, "every page, in order");
                } else {
                    assert_eq!(keys, [key]);
                }
                revisions.push(revision);
            }
            other => panic!("expected a list of {prefix}, got {other:?}"),
        }
    }
    assert!(
        revisions.iter().all(|r| *r == revisions[0] && *r > 0),
        "{revisions:?}"
    );

    // Changes after the list arrive by the watch, in order; other prefixes are not watched.
    etcd.put("unrelated/key", "y");
    let t = Instant::now();
    etcd.put("cilium/state/services/v1/cluster1/default/web", "{\"a\":2}");
    assert_eq!(
        next(&mut rx).await,
        ClientEvent::Put {
            key: "cilium/state/services/v1/cluster1/default/web".into(),
            value: b"{\"a\":2}".to_vec()
        }
    );
    eprintln!("put -> event (etcdctl run included): {:?}", t.elapsed());
    etcd.del("cilium/state/nodes/v1/cluster1/node-1");
    assert_eq!(
        next(&mut rx).await,
        ClientEvent::Delete {
            key: "cilium/state/nodes/v1/cluster1/node-1".into()
        }
    );
    stop.send(true).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_failures_name_their_reason() {
    let etcd = Etcd::start_local("client-tls");
    let prefixes = ["cilium/state/services/v1/cluster1/"];

    // The server's certificate is checked against the configured CA.
    let mut ep = endpoint(&etcd);
    ep.ca_file = etcd.file("other-ca.crt").into();
    let (mut rx, _stop) = start(ep, &prefixes);
    let e = disconnected(&mut rx).await;
    eprintln!("wrong CA: {e}");
    assert!(
        e.contains("cluster1") && e.to_lowercase().contains("certificate"),
        "{e}"
    );

    // The server refuses a client certificate from another CA.
    let mut ep = endpoint(&etcd);
    ep.cert_file = etcd.file("foreign.crt").into();
    ep.key_file = etcd.file("foreign.key").into();
    let (mut rx, _stop) = start(ep, &prefixes);
    let e = disconnected(&mut rx).await;
    eprintln!("foreign client certificate: {e}");
    assert!(e.contains("cluster1") && e.contains("foreign.crt"), "{e}");

    // The name the server's certificate must carry.
    let mut ep = endpoint(&etcd);
    ep.server_name = Some("cluster9.example.org".into());
    let (mut rx, _stop) = start(ep, &prefixes);
    let e = disconnected(&mut rx).await;
    eprintln!("wrong server name: {e}");
    assert!(
        e.to_lowercase().contains("certificate") || e.contains("Name"),
        "{e}"
    );
    // ... and a name it does carry (Cilium's wildcard) works while dialling the IP.
    let mut ep = endpoint(&etcd);
    ep.server_name = Some("cluster1.mesh.cilium.io".into());
    let (mut rx, _stop) = start(ep, &prefixes);
    assert_eq!(next(&mut rx).await, ClientEvent::Connected);

    // A missing file is named.
    let mut ep = endpoint(&etcd);
    ep.key_file = "/nonexistent/remote.key".into();
    let (mut rx, _stop) = start(ep, &prefixes);
    let e = disconnected(&mut rx).await;
    assert!(
        e.contains("/nonexistent/remote.key") && e.contains("key"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_and_lists_again_after_a_server_restart() {
    let mut etcd = Etcd::start_local("client-restart");
    etcd.put("cilium/state/services/v1/cluster1/default/web", "1");
    let (mut rx, stop) = start(endpoint(&etcd), &["cilium/state/services/v1/cluster1/"]);
    assert_eq!(next(&mut rx).await, ClientEvent::Connected);
    assert!(matches!(next(&mut rx).await, ClientEvent::Listed { .. }));

    etcd.stop();
    let e = disconnected(&mut rx).await;
    eprintln!("server gone: {e}");
    // Written while the client is away: the relist must carry it.
    etcd.restart();
    etcd.put("cilium/state/services/v1/cluster1/default/db", "2");
    loop {
        match next(&mut rx).await {
            ClientEvent::Disconnected { .. } => continue,
            ClientEvent::Connected => break,
            other => panic!("expected a reconnect, got {other:?}"),
        }
    }
    let mut seen = Vec::new();
    // The new key arrives in the relist or, if it was written after the list, by the watch.
    while !seen.iter().any(|k: &String| k.ends_with("/db")) {
        match next(&mut rx).await {
            ClientEvent::Listed { entries, .. } => {
                seen.extend(entries.into_iter().map(|(k, _)| k));
            }
            ClientEvent::Put { key, .. } => seen.push(key),
            other => panic!("unexpected {other:?}"),
        }
    }
    stop.send(true).unwrap();
}
