#![allow(clippy::unwrap_used)]
//! The rendered metrics as Prometheus's own checker sees them, fetched over HTTP.

use std::io::Write;
use std::process::{Command, Stdio};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::api::server::Shared;
use crate::api::services::{BackendTraffic, FrontendInfo, ServiceCounters};
use crate::api::{
    BackendTelemetry, FlowStats, NodeTelemetry, ServiceTelemetry, Snapshot, VipTelemetry,
};
use crate::daemon::status::{ClusterStatus, Status};
use crate::desired::BackendSpec;
use crate::flows::health::{BackendHealth, Health};
use meshgw_common::maps::ServiceKey;
use meshgw_common::telemetry::Traffic;

fn snapshot() -> Snapshot {
    Snapshot {
        taken_at_ms: 1,
        status: Status {
            clusters: vec![ClusterStatus {
                name: "east".into(),
                connected: true,
                synced: true,
                services: 3,
                last_event_age_s: Some(4),
                ..ClusterStatus::default()
            }],
            ..Status::default()
        },
        counters: [
            ("legacy_rx", 10u64),
            ("vip_forwarded", 7),
            ("drop_policy", 2),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), *v))
        .collect(),
        services: [std::sync::Arc::new(ServiceTelemetry {
            service: "default/web".into(),
            vip: "10.200.0.1".parse().unwrap(),
            port: 80,
            proto: "tcp".into(),
            packets: 7,
            bytes: 700,
            connections: 2,
            backends: vec![BackendTelemetry {
                backend: "10.244.1.10:8080".into(),
                node: "172.18.0.11".into(),
                active: true,
                packets: 7,
                bytes: 700,
                health: Health::Failing,
                answered: 1,
                unanswered: 2,
            }],
        })]
        .into(),
        nodes: vec![
            NodeTelemetry {
                node: "east/n1".into(),
                address: "172.18.0.11".into(),
                packets: 7,
                bytes: 700,
                kind: "vxlan".into(),
                handshake_age_s: None,
            },
            NodeTelemetry {
                node: "gw-b".into(),
                address: "192.0.2.2:51820".into(),
                packets: 1,
                bytes: 100,
                kind: "wireguard".into(),
                handshake_age_s: Some(12),
            },
        ],
        vips: vec![VipTelemetry {
            vip: "10.200.0.1".parse().unwrap(),
            icmp_packets: 5,
            icmp_bytes: 420,
        }],
        flows: FlowStats {
            held: 3,
            new_flows: 2,
            samples: 0,
            drops: 2,
        },
    }
}

/// Runs `promtool check metrics` on `text`; a missing promtool fails the test (scripts/deps.sh
/// installs Debian's prometheus package, which ships it).
fn promtool(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus, see scripts/deps.sh)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let msg = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), msg)
}

/// What renders the service of [`snapshot`].
fn web_counters() -> ServiceCounters {
    let (addr, family) = crate::desired::addr16("10.200.0.1".parse().unwrap());
    let seven = Traffic {
        packets: 7,
        bytes: 700,
    };
    let node = "172.18.0.11".parse().unwrap();
    ServiceCounters {
        frontends: vec![FrontendInfo::with_ids(
            ServiceKey {
                addr,
                port: 80u16.to_be(),
                proto: 6,
                family,
            },
            1,
            "default/web",
            &[(
                4,
                BackendSpec {
                    addr: "10.244.1.10".parse().unwrap(),
                    port: 8080,
                    node_ip: node,
                    node_mac: [0; 6],
                    identity: 0,
                },
            )],
        )],
        services: [(1, seven)].into(),
        backends: [(
            4,
            BackendTraffic {
                traffic: seven,
                node,
            },
        )]
        .into(),
        connections: [(("10.200.0.1".parse().unwrap(), 80, 6), 2)].into(),
        health: [(
            "10.244.1.10:8080".to_string(),
            BackendHealth {
                health: Health::Failing,
                answered: 1,
                unanswered: 2,
            },
        )]
        .into(),
    }
}

#[test]
fn the_shared_snapshot_renders_its_services_from_the_counters() {
    let shared = Shared::new(16);
    *shared.services.write().unwrap() = web_counters();
    assert_eq!(shared.snapshot().services, snapshot().services);
}

#[tokio::test]
async fn metrics_endpoint_passes_promtool_and_carries_the_values() {
    let shared = Shared::new(16);
    *shared.snapshot.write().unwrap() = Snapshot {
        services: Default::default(),
        ..snapshot()
    };
    *shared.services.write().unwrap() = web_counters();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(super::serve(l, shared));
    let get = |path: &'static str, accept: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nAccept: {accept}\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    let reply = get("/metrics", "text/plain").await;
    let (head, body) = reply.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("version=0.0.4"), "{head}");
    let (ok, msg) = promtool(body);
    assert!(ok, "promtool check metrics failed:\n{msg}\n---\n{body}");
    for want in [
        "meshgw_service_packets_total{service=\"default/web\",vip=\"10.200.0.1\",port=\"80\",protocol=\"tcp\"} 7",
        "meshgw_backend_bytes_total{service=\"default/web\",vip=\"10.200.0.1\",port=\"80\",protocol=\"tcp\",backend=\"10.244.1.10:8080\",node=\"172.18.0.11\"} 700",
        "meshgw_datapath_drops_total{name=\"policy\"} 2",
        "meshgw_datapath_packets_total{name=\"vip_forwarded\"} 7",
        "meshgw_tunnel_peer_packets_total{node=\"east/n1\",address=\"172.18.0.11\",kind=\"vxlan\"} 7",
        "meshgw_tunnel_peer_last_handshake_age_seconds{node=\"gw-b\",address=\"192.0.2.2:51820\",kind=\"wireguard\"} 12",
        "meshgw_cluster_connected{cluster=\"east\"} 1",
        "meshgw_service_connections{service=\"default/web\",vip=\"10.200.0.1\",port=\"80\",protocol=\"tcp\"} 2",
        "# TYPE meshgw_service_packets_total counter",
        "meshgw_backend_health{service=\"default/web\",backend=\"10.244.1.10:8080\",node=\"172.18.0.11\",state=\"failing\"} 1",
        "meshgw_backend_health{service=\"default/web\",backend=\"10.244.1.10:8080\",node=\"172.18.0.11\",state=\"up\"} 0",
        "meshgw_vip_icmp_echo_packets_total{vip=\"10.200.0.1\"} 5",
        "meshgw_vip_icmp_echo_bytes_total{vip=\"10.200.0.1\"} 420",
    ] {
        assert!(body.contains(want), "missing {want:?} in\n{body}");
    }
    // A scraper asking for OpenMetrics gets it, terminated as the format requires.
    let reply = get("/metrics", "application/openmetrics-text;version=1.0.0").await;
    assert!(reply.contains("application/openmetrics-text"), "{reply}");
    assert!(reply.trim_end().ends_with("# EOF"), "{reply}");
    assert!(get("/other", "*/*").await.starts_with("HTTP/1.1 404"));
    task.abort();

    // The checker is not a rubber stamp: a counter without its suffix fails.
    let (ok, _) = promtool("# HELP meshgw_bad Bad.\n# TYPE meshgw_bad counter\nmeshgw_bad 1\n");
    assert!(!ok, "promtool accepted a counter without _total");
}

#[test]
fn every_metric_the_grafana_dashboard_queries_is_exported() {
    let dash: serde_json::Value =
        serde_json::from_str(include_str!("../../../config/grafana/meshgw.json")).unwrap();
    let text = super::prometheus_text(&snapshot());
    let exported: std::collections::BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    let mut queried = 0;
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("meshgw_") {
                    queried += 1;
                    assert!(
                        exported.contains(word),
                        "{word} (panel {}) is not exported",
                        p["title"]
                    );
                }
            }
        }
    }
    assert!(
        queried >= 10,
        "the dashboard queries meshgw metrics ({queried})"
    );
}
