#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use meshgw_common::maps::{ServiceKey, FAMILY_V4, FAMILY_V6};
use meshgw_common::telemetry::Traffic;

use super::{BackendTraffic, FrontendInfo, ServiceCounters};
use crate::api::{BackendTelemetry, ServiceTelemetry};
use crate::desired::{addr16, BackendSpec};
use crate::flows::health::{BackendHealth, Health};

fn spec(addr: &str, port: u16, node: &str) -> BackendSpec {
    BackendSpec {
        addr: addr.parse().unwrap(),
        port,
        node_ip: node.parse().unwrap(),
        node_mac: [2, 0, 0, 0, 0, 1],
        identity: 0,
    }
}

fn key(vip: &str, port: u16, proto: u8) -> ServiceKey {
    let (addr, family) = addr16(vip.parse().unwrap());
    ServiceKey {
        addr,
        port: port.to_be(),
        proto,
        family,
    }
}

fn backend(addr: &str, node: &str, packets: u64, health: Health) -> BackendTelemetry {
    BackendTelemetry {
        backend: addr.to_string(),
        node: node.into(),
        active: true,
        packets,
        bytes: packets * 100,
        health,
        answered: u64::from(health == Health::Up),
        unanswered: 0,
    }
}

#[test]
fn renders_each_frontend_from_its_counters_connections_and_health() {
    let web = key("10.200.0.1", 80, 6);
    let dns = key("fd00::1", 53, 17);
    assert_eq!((web.family, dns.family), (FAMILY_V4, FAMILY_V6));
    let c = ServiceCounters {
        frontends: vec![
            FrontendInfo::with_ids(
                web,
                1,
                "default/web",
                &[
                    (5, spec("10.244.1.10", 8080, "172.18.0.11")),
                    (6, spec("10.244.1.11", 8080, "172.18.0.11")),
                ],
            ),
            FrontendInfo::with_ids(
                dns,
                2,
                "kube-system/dns",
                &[(7, spec("fd00:244::5", 53, "172.18.0.12"))],
            ),
        ],
        services: [(
            1,
            Traffic {
                packets: 9,
                bytes: 900,
            },
        )]
        .into(),
        backends: [
            (
                5,
                BackendTraffic {
                    traffic: Traffic {
                        packets: 4,
                        bytes: 400,
                    },
                    node: "172.18.0.11".parse().unwrap(),
                },
            ),
            (
                6,
                BackendTraffic {
                    traffic: Traffic {
                        packets: 5,
                        bytes: 500,
                    },
                    node: "172.18.0.11".parse().unwrap(),
                },
            ),
        ]
        .into(),
        connections: [(("10.200.0.1".parse().unwrap(), 80, 6), 3)].into(),
        health: [(
            "10.244.1.10:8080".to_string(),
            BackendHealth {
                health: Health::Up,
                answered: 1,
                unanswered: 0,
            },
        )]
        .into(),
    };
    let r = c.render();
    let want = [
        ServiceTelemetry {
            service: "default/web".into(),
            vip: "10.200.0.1".parse().unwrap(),
            port: 80,
            proto: "tcp".into(),
            packets: 9,
            bytes: 900,
            connections: 3,
            backends: vec![
                backend("10.244.1.10:8080", "172.18.0.11", 4, Health::Up),
                backend("10.244.1.11:8080", "172.18.0.11", 5, Health::Unknown),
            ],
        },
        // Counters not read yet: zeros, not missing.
        ServiceTelemetry {
            service: "kube-system/dns".into(),
            vip: "fd00::1".parse().unwrap(),
            port: 53,
            proto: "udp".into(),
            packets: 0,
            bytes: 0,
            connections: 0,
            backends: vec![backend(
                "[fd00:244::5]:53",
                "172.18.0.12",
                0,
                Health::Unknown,
            )],
        },
    ];
    assert_eq!(r.len(), 2);
    assert_eq!(*r[0], want[0]);
    assert_eq!(*r[1], want[1]);
    assert!(
        Arc::ptr_eq(&r[0].backends[0].node, &r[0].backends[1].node),
        "a node's backends share its text"
    );
    assert!(Arc::ptr_eq(&r[0].service, &c.frontends[0].service));
}

#[test]
fn a_frontend_shows_the_backends_the_datapath_has_and_knows_when_they_are_the_same() {
    let a = spec("10.244.1.10", 8080, "172.18.0.11");
    let b = spec("10.244.1.11", 8080, "172.18.0.11");
    let specs: Arc<[(BackendSpec, u32)]> = vec![(a, 1), (b, 1)].into();
    let id_of = |s: &BackendSpec| (*s == a).then_some(5);
    let mut f = FrontendInfo::new(
        key("10.200.0.1", 80, 6),
        1,
        "default/web".into(),
        specs.clone(),
        id_of,
    );
    assert_eq!(
        f.backends().collect::<Vec<_>>(),
        vec![(5, &a)],
        "b has no id: not shown"
    );
    assert!(f.same_backends(&specs, id_of));
    assert!(
        !f.same_backends(&specs, |s| (*s == a).then_some(6)),
        "another id"
    );
    assert!(!f.same_backends(&specs, |_| Some(5)), "b got an id");
    assert!(!f.same_backends(&specs[..1], id_of), "fewer backends");
    assert!(!f.same_backends(&[(b, 1), (a, 1)], id_of), "other backends");
    // An equal list from a newer pass is held instead of the first.
    let newer: Arc<[(BackendSpec, u32)]> = specs.to_vec().into();
    f.share(&newer);
    assert_eq!(
        Arc::strong_count(&specs),
        1,
        "the first list is no longer held"
    );
    assert_eq!(Arc::strong_count(&newer), 2);
}
