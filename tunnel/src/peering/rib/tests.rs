//! Path-vector behaviour on small topologies, with time passed in.
#![allow(clippy::unwrap_used)]

use super::*;
use crate::peering::proto::ServicePort;

const HOLD: Duration = Duration::from_secs(10);

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
            port: 80,
            protocol: "tcp".into(),
        }],
    }
}

/// Sends everything `from` exports to `to` (a full update, as on a new session).
fn send(from: &Rib, to: &mut Rib, now: Instant, serve: &dyn Fn(&RouteKey) -> Option<ServiceAttrs>) {
    let routes: Vec<Route> = from.export(to.id(), serve).into_values().collect();
    if !to.is_connected(from.id()) {
        to.peer_up(from.id(), 1, HOLD, now);
    }
    to.update(from.id(), 1, routes, &[], now).unwrap();
}

fn no_serve(_: &RouteKey) -> Option<ServiceAttrs> {
    None
}

/// A - B - C in a line; C originates 10.3/16 and the service; B serves it as 10.250.0.2.
fn line(now: Instant) -> (Rib, Rib, Rib) {
    let (mut a, mut b, mut c) = (Rib::new("a"), Rib::new("b"), Rib::new("c"));
    a.set_local(BTreeMap::from([(prefix("10.1.0.0/16"), None)]));
    c.set_local(BTreeMap::from([
        (prefix("10.3.0.0/16"), None),
        (svc(), Some(attrs("10.250.0.3"))),
    ]));
    let b_serves = |k: &RouteKey| (*k == svc()).then(|| attrs("10.250.0.2"));
    send(&c, &mut b, now, &no_serve);
    send(&a, &mut b, now, &no_serve);
    send(&b, &mut a, now, &b_serves);
    send(&b, &mut c, now, &b_serves);
    (a, b, c)
}

#[test]
fn routes_propagate_along_a_line_with_paths_and_rewritten_service_vips() {
    let now = Instant::now();
    let (a, b, c) = line(now);
    let best = a.best();
    let far = &best[&prefix("10.3.0.0/16")];
    assert_eq!(far.via.as_deref(), Some("b"));
    assert_eq!(far.path, vec!["b".to_owned(), "c".to_owned()]);
    // A reaches the service at B's VIP, B at C's.
    assert_eq!(best[&svc()].service, Some(attrs("10.250.0.2")));
    assert_eq!(b.best()[&svc()].service, Some(attrs("10.250.0.3")));
    // C learned A's prefix through B.
    assert_eq!(
        c.best()[&prefix("10.1.0.0/16")].path,
        vec!["b".to_owned(), "a".to_owned()]
    );
    assert_eq!(best.len(), 3);
}

#[test]
fn split_horizon_never_sends_a_route_back_the_way_it_came() {
    let now = Instant::now();
    let (a, b, _) = line(now);
    // A's only learned routes came from B: nothing of them goes back to B.
    let to_b = a.export("b", |_| Some(attrs("10.250.0.1")));
    assert_eq!(
        to_b.keys().cloned().collect::<Vec<_>>(),
        vec![prefix("10.1.0.0/16")]
    );
    // B does not send C's routes back to C.
    let to_c = b.export("c", no_serve);
    assert!(!to_c.contains_key(&prefix("10.3.0.0/16")));
    assert!(to_c.contains_key(&prefix("10.1.0.0/16")));
}

#[test]
fn a_service_this_gateway_cannot_serve_is_not_passed_on() {
    let now = Instant::now();
    let (_, b, _) = line(now);
    assert!(!b.export("a", no_serve).contains_key(&svc()));
    assert!(b.export("a", no_serve).contains_key(&prefix("10.3.0.0/16")));
}

#[test]
fn a_route_with_this_gateway_on_its_path_is_refused_and_counted() {
    let now = Instant::now();
    let mut a = Rib::new("a");
    a.peer_up("b", 1, HOLD, now);
    let looped = Route {
        key: prefix("10.9.0.0/16"),
        path: vec!["b".into(), "c".into(), "a".into(), "d".into()],
        service: None,
    };
    let forged = Route {
        key: prefix("10.8.0.0/16"),
        path: vec!["c".into()],
        service: None,
    };
    a.update("b", 1, vec![looped, forged], &[], now).unwrap();
    assert!(a.best().is_empty());
    assert_eq!(
        a.counters(),
        RibCounters {
            loops: 1,
            bad_path: 1
        }
    );
}

#[test]
fn in_a_triangle_the_shortest_path_wins_and_the_detour_takes_over_when_it_goes() {
    let now = Instant::now();
    let (mut a, mut b, c) = (Rib::new("a"), Rib::new("b"), {
        let mut c = Rib::new("c");
        c.set_local(BTreeMap::from([(prefix("10.3.0.0/16"), None)]));
        c
    });
    send(&c, &mut b, now, &no_serve);
    send(&c, &mut a, now, &no_serve);
    send(&b, &mut a, now, &no_serve);
    send(&a, &mut b, now, &no_serve);
    let k = prefix("10.3.0.0/16");
    assert_eq!(a.best()[&k].path, vec!["c".to_owned()]);
    // B also holds A's [a, c] but keeps preferring its direct path.
    assert_eq!(b.best()[&k].path, vec!["c".to_owned()]);
    // A loses C (hold time runs out); the path through B takes over.
    a.peer_down("c");
    let later = now + HOLD;
    a.heard("b", later - Duration::from_secs(1));
    assert_eq!(a.expire(later), vec!["c".to_owned()]);
    assert_eq!(a.best()[&k].path, vec!["b".to_owned(), "c".to_owned()]);
    // And A does not offer that path back to B.
    assert!(!a.export("b", no_serve).contains_key(&k));
}

#[test]
fn routes_outlive_a_disconnect_by_exactly_the_hold_time() {
    let t0 = Instant::now();
    let (mut a, _, _) = line(t0);
    a.peer_down("b");
    assert!(a.expire(t0 + HOLD - Duration::from_millis(1)).is_empty());
    assert_eq!(a.best().len(), 3);
    assert_eq!(a.next_deadline(), Some(t0 + HOLD));
    assert_eq!(a.expire(t0 + HOLD), vec!["b".to_owned()]);
    assert_eq!(
        a.best().keys().cloned().collect::<Vec<_>>(),
        vec![prefix("10.1.0.0/16")]
    );
    assert_eq!(a.next_deadline(), None);
}

#[test]
fn a_silent_peer_expires_even_while_its_connection_looks_up() {
    let t0 = Instant::now();
    let (mut a, _, _) = line(t0);
    a.heard("b", t0 + Duration::from_secs(5));
    assert!(a.expire(t0 + HOLD).is_empty());
    assert_eq!(a.expire(t0 + Duration::from_secs(15)), vec!["b".to_owned()]);
}

#[test]
fn a_new_generation_replaces_the_old_one_and_the_same_generation_keeps_its_routes() {
    let t0 = Instant::now();
    let (mut a, _, _) = line(t0);
    a.peer_down("b");
    a.peer_up("b", 1, HOLD, t0);
    assert_eq!(a.best().len(), 3, "same process reconnecting");
    a.peer_up("b", 2, HOLD, t0);
    assert_eq!(
        a.best().len(),
        1,
        "restarted: its old announcements are gone"
    );
    let err = a.update("b", 1, vec![], &[], t0).unwrap_err();
    assert!(matches!(
        err,
        RibError::Generation {
            got: 1,
            want: 2,
            ..
        }
    ));
}

#[test]
fn diff_announces_changes_and_withdraws_what_is_gone() {
    let now = Instant::now();
    let (a, b, _) = line(now);
    let old = b.export("a", no_serve);
    let mut b2 = Rib::new("b");
    b2.set_local(BTreeMap::from([(prefix("10.2.0.0/16"), None)]));
    let _ = a;
    let new = b2.export("a", no_serve);
    let (ann, wd) = diff(&old, &new);
    assert_eq!(
        ann.iter().map(|r| r.key.clone()).collect::<Vec<_>>(),
        vec![prefix("10.2.0.0/16")]
    );
    assert_eq!(wd, vec![prefix("10.3.0.0/16")]);
    let (ann, wd) = diff(&new, &new);
    assert!(ann.is_empty() && wd.is_empty());
}
