//! The peering protocol over real QUIC on loopback: three gateways in a line, a gateway that
//! goes away and comes back, a certificate from another CA, pinned certificates.
// A panic is how a test reports failure, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshgw_tunnel::peering::proto::{RouteKey, ServiceAttrs, ServicePort};
use meshgw_tunnel::peering::session::{
    PeerSpec, Peering, PeeringConfig, PeeringStatus, SessionState,
};
use meshgw_tunnel::peering::tls::{fingerprint, Identity, Trust};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::RootCertStore;

const HOLD: Duration = Duration::from_secs(2);

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    let cert = p.self_signed(&key).unwrap();
    Ca {
        der: cert.der().clone(),
        issuer: Issuer::new(p, key),
    }
}

fn identity(ca: &Ca, name: &str) -> Identity {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .signed_by(&key, &ca.issuer)
        .unwrap();
    Identity {
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    }
}

fn trust(ca: &Ca) -> Trust {
    let mut roots = RootCertStore::empty();
    roots.add(ca.der.clone()).unwrap();
    Trust::Ca(Arc::new(roots))
}

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn cfg(id: &str, port: u16, generation: u64, peers: &[(&str, u16)]) -> PeeringConfig {
    PeeringConfig {
        gateway_id: id.into(),
        listen: SocketAddr::from(([127, 0, 0, 1], port)),
        hold_time: HOLD,
        generation,
        peers: peers
            .iter()
            .map(|(p, port)| PeerSpec {
                id: (*p).into(),
                endpoint: Some(SocketAddr::from(([127, 0, 0, 1], *port))),
            })
            .collect(),
    }
}

fn prefix(s: &str) -> RouteKey {
    RouteKey::Prefix {
        prefix: s.parse().unwrap(),
    }
}

fn svc() -> RouteKey {
    RouteKey::Service {
        namespace: "shop".into(),
        name: "cart".into(),
    }
}

fn attrs(vip: &str) -> ServiceAttrs {
    ServiceAttrs {
        vip: vip.parse().unwrap(),
        ports: vec![ServicePort {
            port: 8080,
            protocol: "tcp".into(),
        }],
    }
}

/// Waits until `pred` holds for the gateway's best routes; returns how long it took. The
/// deadline only keeps a broken build from hanging: it is far beyond any expected time.
async fn until(p: &Peering, what: &str, pred: impl Fn(&Peering) -> bool) -> Duration {
    let start = Instant::now();
    let mut rx = p.subscribe();
    loop {
        if pred(p) {
            return start.elapsed();
        }
        let left = Duration::from_secs(60).saturating_sub(start.elapsed());
        assert!(
            !left.is_zero(),
            "timed out waiting for {what}: {:?}",
            p.status()
        );
        let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), rx.changed()).await;
    }
}

fn keys(p: &Peering) -> Vec<RouteKey> {
    p.best().into_keys().collect()
}

fn peer<'a>(
    s: &'a PeeringStatus,
    id: &str,
) -> &'a meshgw_tunnel::peering::session::PeeringPeerStatus {
    s.peers.iter().find(|p| p.id == id).unwrap()
}

fn start_b(ca: &Ca, ports: (u16, u16, u16), generation: u64) -> Peering {
    let (pa, pb, pc) = ports;
    let b = Peering::start(
        cfg("gw-b", pb, generation, &[("gw-a", pa), ("gw-c", pc)]),
        &identity(ca, "gw-b"),
        trust(ca),
    )
    .unwrap();
    b.set_local(BTreeMap::from([(prefix("10.2.0.0/16"), None)]));
    b.set_served(BTreeMap::from([(svc(), attrs("10.250.0.2"))]));
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn line_of_three_learns_withdraws_on_loss_and_restores() {
    let mesh = ca("mesh-ca");
    let ports = (free_port(), free_port(), free_port());
    let (pa, pb, pc) = ports;
    let a = Peering::start(
        cfg("gw-a", pa, 1, &[("gw-b", pb)]),
        &identity(&mesh, "gw-a"),
        trust(&mesh),
    )
    .unwrap();
    a.set_local(BTreeMap::from([(prefix("10.1.0.0/16"), None)]));
    let c = Peering::start(
        cfg("gw-c", pc, 1, &[("gw-b", pb)]),
        &identity(&mesh, "gw-c"),
        trust(&mesh),
    )
    .unwrap();
    c.set_local(BTreeMap::from([
        (prefix("10.3.0.0/16"), None),
        (svc(), Some(attrs("10.250.0.3"))),
    ]));
    let b = start_b(&mesh, ports, 1);

    until(&a, "A learns C's prefix and service through B", |p| {
        keys(p).len() == 4
    })
    .await;
    let best = a.best();
    let far = &best[&prefix("10.3.0.0/16")];
    assert_eq!(far.via.as_deref(), Some("gw-b"));
    assert_eq!(far.path, vec!["gw-b".to_owned(), "gw-c".to_owned()]);
    assert_eq!(
        best[&svc()].service,
        Some(attrs("10.250.0.2")),
        "B's VIP, not C's"
    );
    until(&c, "C learns A's prefix", |p| {
        keys(p).contains(&prefix("10.1.0.0/16"))
    })
    .await;
    let s = a.status();
    let pb_status = peer(&s, "gw-b");
    assert_eq!(pb_status.state, SessionState::Established);
    assert_eq!(
        pb_status.prefixes,
        vec![
            "10.2.0.0/16".parse().unwrap(),
            "10.3.0.0/16".parse().unwrap()
        ]
    );
    assert_eq!(pb_status.services, vec!["shop/cart".to_owned()]);
    assert_eq!(s.loops_refused, 0);

    // B goes away: A and C withdraw everything learned through it, and do not bounce each
    // other's prefixes (they have no session; nothing else may carry them).
    drop(b);
    let took = until(&a, "A withdraws B's routes", |p| {
        keys(p) == vec![prefix("10.1.0.0/16")]
    })
    .await;
    eprintln!("A withdrew B's routes {took:?} after B stopped (hold time {HOLD:?})");
    until(&c, "C withdraws B's routes", |p| keys(p).len() == 2).await;
    assert!(!keys(&c).contains(&prefix("10.1.0.0/16")));
    assert_eq!(
        peer(&a.status(), "gw-b").prefixes,
        Vec::<ipnet::IpNet>::new()
    );

    // B comes back (a new generation) on the same port: everything is restored.
    let b = start_b(&mesh, ports, 2);
    let took = until(&a, "A relearns through the restarted B", |p| {
        keys(p).len() == 4
    })
    .await;
    eprintln!("A relearned the routes {took:?} after B restarted");
    until(&c, "C relearns A's prefix", |p| {
        keys(p).contains(&prefix("10.1.0.0/16"))
    })
    .await;
    assert_eq!(peer(&a.status(), "gw-b").generation, Some(2));
    assert_eq!(a.status().loops_refused + c.status().loops_refused, 0);
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused_with_the_reason() {
    let mesh = ca("mesh-ca");
    let other = ca("other-ca");
    let (pa, pd) = (free_port(), free_port());
    let a = Peering::start(
        cfg("gw-z", pa, 1, &[("gw-d", pd)]),
        &identity(&mesh, "gw-z"),
        trust(&mesh),
    )
    .unwrap();
    // gw-d trusts the mesh CA (so it would accept gw-z) but presents a certificate of another
    // CA; gw-d < gw-z, so gw-d dials.
    let d = Peering::start(
        cfg("gw-d", pd, 1, &[("gw-z", pa)]),
        &identity(&other, "gw-d"),
        trust(&mesh),
    )
    .unwrap();
    d.set_local(BTreeMap::from([(prefix("10.4.0.0/16"), None)]));
    until(&a, "a logged refusal", |p| !p.status().refusals.is_empty()).await;
    let s = a.status();
    let why = s.refusals.join("\n");
    assert!(why.contains("UnknownIssuer"), "the refusal says why: {why}");
    assert!(keys(&a).is_empty());
    assert_eq!(peer(&s, "gw-d").state, SessionState::Idle);
    assert_eq!(peer(&s, "gw-d").sessions, 0);
    assert!(peer(&d.status(), "gw-z").last_error.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_certificate_for_another_gateway_id_is_refused() {
    let mesh = ca("mesh-ca");
    let (pa, pd) = (free_port(), free_port());
    let a = Peering::start(
        cfg("gw-z", pa, 1, &[("gw-d", pd), ("gw-e", 1)]),
        &identity(&mesh, "gw-z"),
        trust(&mesh),
    )
    .unwrap();
    // A mesh certificate for gw-e, claiming to be gw-d.
    let _d = Peering::start(
        cfg("gw-d", pd, 1, &[("gw-z", pa)]),
        &identity(&mesh, "gw-e"),
        trust(&mesh),
    )
    .unwrap();
    until(&a, "a refusal", |p| !p.status().refusals.is_empty()).await;
    let why = a.status().refusals.join("\n");
    assert!(why.contains("not for gw-d"), "{why}");
    assert!(keys(&a).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_certificates_peer_and_an_unpinned_one_is_refused() {
    let mesh = ca("mesh-ca");
    let (pa, pb, px) = (free_port(), free_port(), free_port());
    let ia = identity(&mesh, "gw-a");
    let ib = identity(&mesh, "gw-b");
    let pins = BTreeMap::from([
        ("gw-a".to_owned(), fingerprint(&ia.chain[0])),
        ("gw-b".to_owned(), fingerprint(&ib.chain[0])),
    ]);
    let b = Peering::start(
        cfg("gw-b", pb, 1, &[("gw-a", pa), ("gw-0", px)]),
        &ib,
        Trust::Pinned(pins.clone()),
    )
    .unwrap();
    b.set_local(BTreeMap::from([(prefix("10.2.0.0/16"), None)]));
    let a = Peering::start(
        cfg("gw-a", pa, 1, &[("gw-b", pb)]),
        &ia,
        Trust::Pinned(pins.clone()),
    )
    .unwrap();
    until(&a, "A learns B's prefix", |p| {
        keys(p).contains(&prefix("10.2.0.0/16"))
    })
    .await;
    // gw-0 has a certificate from the same CA, but it is not pinned.
    let _x = Peering::start(
        cfg("gw-0", px, 1, &[("gw-b", pb)]),
        &identity(&mesh, "gw-0"),
        Trust::Pinned(pins),
    )
    .unwrap();
    until(&b, "B refuses gw-0", |p| !p.status().refusals.is_empty()).await;
    let why = b.status().refusals.join("\n");
    assert!(why.contains("not pinned"), "{why}");
}
