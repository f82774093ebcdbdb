#![allow(clippy::unwrap_used)]
//! The model driven by keys and snapshots, and frames rendered at 80x24 into ratatui's
//! TestBackend.

use ratatui::backend::TestBackend;
use ratatui::Terminal;

use super::*;
use crate::api::{BackendTelemetry, NodeTelemetry, ServiceTelemetry};
use crate::daemon::status::{ClusterStatus, Status};
use crate::flows::health::Health;
use crate::flows::record::Endpoint;
use crate::flows::Verdict;

fn snap(at_ms: u64, packets: u64, drops: u64) -> Snapshot {
    Snapshot {
        taken_at_ms: at_ms,
        status: Status {
            gateway: "gw1".into(),
            clusters: vec![ClusterStatus {
                name: "east".into(),
                connected: true,
                synced: true,
                services: 2,
                nodes: 3,
                last_event_age_s: Some(5),
                ..ClusterStatus::default()
            }],
            ..Status::default()
        },
        counters: [
            ("legacy_rx".to_string(), packets),
            ("drop_policy".to_string(), drops),
        ]
        .into(),
        services: [std::sync::Arc::new(ServiceTelemetry {
            service: "default/web".into(),
            vip: "10.200.0.1".parse().unwrap(),
            port: 80,
            proto: "tcp".into(),
            packets,
            bytes: packets * 100,
            connections: 3,
            backends: vec![BackendTelemetry {
                backend: "10.244.1.10:8080".into(),
                node: "172.18.0.11".into(),
                active: true,
                packets,
                bytes: packets * 100,
                health: Health::Failing,
                answered: 1,
                unanswered: 2,
            }],
        })]
        .into(),
        nodes: vec![NodeTelemetry {
            node: "east/n1".into(),
            address: "172.18.0.11".into(),
            packets,
            bytes: packets * 100,
            kind: "wireguard".into(),
            handshake_age_s: Some(7),
        }],
        ..Snapshot::default()
    }
}

fn flow(port: u16, verdict: Verdict) -> FlowRecord {
    let ep = |a: &str, p| Endpoint {
        addr: a.parse().unwrap(),
        port: p,
        identity: 2,
        labels: vec!["reserved:world".into()],
    };
    FlowRecord {
        first_seen_ms: 1,
        last_seen_ms: 1,
        src: ep("10.100.0.2", port),
        dst: ep("10.200.0.1", 80),
        service: Some("default/web".into()),
        backend: Some("10.244.1.10:8080".into()),
        proto: "TCP".into(),
        proto_num: 6,
        verdict,
        reason: (verdict == Verdict::Dropped).then(|| "drop_policy".into()),
        packets: 1,
        bytes: 60,
        reply_packets: 1,
        reply_bytes: 60,
        snat: None,
        active: true,
    }
}

fn screen(m: &Model, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| super::super::view::draw(f, m)).unwrap();
    let buf = t.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..h {
        for x in 0..w {
            out.push_str(buf[(x, y)].symbol());
        }
        out.push('\n');
    }
    out
}

#[test]
fn rates_come_from_two_snapshots() {
    let mut m = Model::default();
    m.apply_snapshot(snap(1_000, 100, 0));
    assert_eq!(m.service_rate(0), Rate::default());
    m.apply_snapshot(snap(3_000, 300, 10));
    let r = m.service_rate(0);
    assert_eq!((r.pps, r.bps), (100.0, 100.0 * 100.0 * 8.0));
    assert_eq!(m.history.back(), Some(&(100.0, 5.0)));
    // The same snapshot twice adds nothing.
    m.apply_snapshot(snap(3_000, 300, 10));
    assert_eq!(m.history.len(), 1);
}

#[test]
fn keys_move_focus_filter_help_and_quit() {
    let mut m = Model::default();
    m.apply_flows(vec![
        flow(40_000, Verdict::Forwarded),
        flow(40_001, Verdict::Dropped),
    ]);
    assert_eq!(m.focus, Pane::Services);
    m.on_key(Key::Tab);
    assert_eq!(m.focus, Pane::Tunnels);
    m.on_key(Key::BackTab);
    m.on_key(Key::BackTab);
    assert_eq!(m.focus, Pane::Clusters);
    m.on_key(Key::Char('/'));
    assert!(m.editing);
    assert_eq!(m.focus, Pane::Flows);
    for c in "dropped".chars() {
        m.on_key(Key::Char(c));
    }
    // 'q' while typing is text, not quit.
    assert_eq!(m.on_key(Key::Char('q')), Action::Redraw);
    m.on_key(Key::Backspace);
    m.on_key(Key::Enter);
    assert_eq!(m.visible_flows().len(), 1);
    assert_eq!(m.visible_flows()[0].src.port, 40_001);
    m.on_key(Key::Esc);
    assert_eq!(m.visible_flows().len(), 2);
    m.on_key(Key::Char('?'));
    assert!(m.help);
    m.on_key(Key::Char('x'));
    assert!(!m.help);
    assert_eq!(m.on_key(Key::Char('q')), Action::Quit);
    assert_eq!(Model::default().on_key(Key::Interrupt), Action::Quit);
}

#[test]
fn the_screen_at_80x24_shows_services_vip_rate_and_flows() {
    let mut m = Model::default();
    m.apply_snapshot(snap(1_000, 100, 0));
    m.apply_snapshot(snap(2_000, 150, 2));
    m.apply_flows(vec![
        flow(40_000, Verdict::Forwarded),
        flow(40_001, Verdict::Dropped),
    ]);
    let s = screen(&m, 80, 24);
    for want in [
        "default/web",
        "10.200.0.1:80/tcp",
        "50/s",
        "east",
        "synced",
        "east/n1",
        "Flows 2",
        "DROPPED",
        "q quit",
    ] {
        assert!(s.contains(want), "missing {want:?}:\n{s}");
    }
    let peer = s.lines().find(|l| l.contains("east/n1")).unwrap();
    assert!(peer.contains(" wg ") && peer.contains(" 7s "), "{peer}");
    m.on_key(Key::Char('/'));
    for c in "40001".chars() {
        m.on_key(Key::Char(c));
    }
    m.on_key(Key::Enter);
    let s = screen(&m, 80, 24);
    assert!(s.contains("Flows 1 matching \"40001\""), "{s}");
    m.on_key(Key::Char('?'));
    assert!(screen(&m, 80, 24).contains("Help"));
    m.on_key(Key::Esc);
    // The failing backend: 0 of 1 counted as ok, and its detail on Enter in the services pane.
    let row = screen(&m, 80, 24)
        .lines()
        .find(|l| l.contains("10.200.0.1:80/tcp"))
        .map(String::from)
        .unwrap();
    assert!(row.contains(" 0/1 "), "{row}");
    m.focus = Pane::Services;
    m.on_key(Key::Enter);
    assert!(m.detail);
    let s = screen(&m, 80, 24);
    let be = s
        .lines()
        .find(|l| l.contains("10.244.1.10:8080"))
        .unwrap_or_else(|| panic!("{s}"));
    assert!(
        s.contains("Backends of default/web")
            && be.contains("172.18.0.11")
            && be.contains("failing")
            && be.contains("1/3"),
        "{s}"
    );
    assert_eq!(m.on_key(Key::Char('x')), Action::Redraw);
    assert!(!m.detail);
    // Smaller and larger terminals draw without panicking.
    screen(&m, 40, 10);
    screen(&m, 200, 60);
}

#[test]
fn a_missing_daemon_is_said_not_crashed_on() {
    let mut m = Model::default();
    m.apply_error("the meshgw daemon is not running (no control socket at /x.sock)".into());
    let s = screen(&m, 80, 24);
    assert!(s.contains("meshgw daemon not running"), "{s}");
    assert!(s.contains("/x.sock"), "{s}");
}
