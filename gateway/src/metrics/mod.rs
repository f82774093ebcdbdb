//! Prometheus metrics: the daemon's snapshot rendered with prometheus-client (OpenMetrics), and
//! the `/metrics` endpoint. Counters come from the datapath's own monotonic counters, so a fresh
//! registry per scrape carries their values as they are.

mod http;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::api::Snapshot;
use crate::flows::health::Health;

pub use http::serve;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FrontendLabels {
    service: String,
    vip: String,
    port: String,
    protocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    service: String,
    vip: String,
    port: String,
    protocol: String,
    backend: String,
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HealthLabels {
    service: String,
    backend: String,
    node: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PeerLabels {
    node: String,
    address: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClusterLabels {
    cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VipLabels {
    vip: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OneLabel {
    name: String,
}

fn counters<L>(reg: &mut Registry, name: &str, help: &str) -> Family<L, Counter>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let f = Family::<L, Counter>::default();
    reg.register(name, help, f.clone());
    f
}

fn gauges<L>(reg: &mut Registry, name: &str, help: &str) -> Family<L, Gauge>
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    let f = Family::<L, Gauge>::default();
    reg.register(name, help, f.clone());
    f
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A registry holding the snapshot's values.
fn registry(s: &Snapshot) -> Registry {
    let mut reg = Registry::with_prefix("meshgw");
    let drops = counters::<OneLabel>(
        &mut reg,
        "datapath_drops",
        "Packets the XDP datapath dropped, by reason",
    );
    let dp = counters::<OneLabel>(
        &mut reg,
        "datapath_packets",
        "Packets the XDP datapath handled, by what happened to them (drops excluded)",
    );
    for (name, v) in &s.counters {
        let (fam, label) = match name.strip_prefix("drop_") {
            Some(reason) => (&drops, reason),
            None => (&dp, name.as_str()),
        };
        fam.get_or_create(&OneLabel {
            name: label.to_string(),
        })
        .inc_by(*v);
    }
    let svc_p = counters::<FrontendLabels>(
        &mut reg,
        "service_packets",
        "Packets from clients to a service frontend (VIP, port, protocol)",
    );
    let svc_b = counters::<FrontendLabels>(
        &mut reg,
        "service_bytes",
        "Bytes (IP) from clients to a service frontend",
    );
    let svc_c = gauges::<FrontendLabels>(
        &mut reg,
        "service_connections",
        "Flows to a service frontend that connection tracking holds",
    );
    let be_p = counters::<BackendLabels>(
        &mut reg,
        "backend_packets",
        "Packets load-balanced to a backend",
    );
    let be_b = counters::<BackendLabels>(
        &mut reg,
        "backend_bytes",
        "Bytes (IP) load-balanced to a backend",
    );
    let be_h = gauges::<HealthLabels>(
        &mut reg,
        "backend_health",
        "A backend's passive health (1 for its current state: up, failing, unknown), judged from the TCP connections of the last minute it answered or not",
    );
    for f in s.services.iter() {
        let l = FrontendLabels {
            service: f.service.to_string(),
            vip: f.vip.to_string(),
            port: f.port.to_string(),
            protocol: f.proto.to_string(),
        };
        svc_p.get_or_create(&l).inc_by(f.packets);
        svc_b.get_or_create(&l).inc_by(f.bytes);
        svc_c.get_or_create(&l).set(i(f.connections));
        for b in &f.backends {
            let bl = BackendLabels {
                service: l.service.clone(),
                vip: l.vip.clone(),
                port: l.port.clone(),
                protocol: l.protocol.clone(),
                backend: b.backend.clone(),
                node: b.node.to_string(),
            };
            be_p.get_or_create(&bl).inc_by(b.packets);
            be_b.get_or_create(&bl).inc_by(b.bytes);
            for h in [Health::Up, Health::Failing, Health::Unknown] {
                be_h.get_or_create(&HealthLabels {
                    service: l.service.clone(),
                    backend: b.backend.clone(),
                    node: b.node.to_string(),
                    state: h.name().to_string(),
                })
                .set(i64::from(b.health == h));
            }
        }
    }
    let peer_p = counters::<PeerLabels>(
        &mut reg,
        "tunnel_peer_packets",
        "Packets sent into the tunnel to a node",
    );
    let peer_b = counters::<PeerLabels>(
        &mut reg,
        "tunnel_peer_bytes",
        "Bytes (inner IP) sent into the tunnel to a node",
    );
    let handshake = gauges::<PeerLabels>(
        &mut reg,
        "tunnel_peer_last_handshake_age_seconds",
        "Seconds since a tunnel peer's last completed handshake (WireGuard peers that had one)",
    );
    for n in &s.nodes {
        let l = PeerLabels {
            node: n.node.clone(),
            address: n.address.clone(),
            kind: n.kind.clone(),
        };
        peer_p.get_or_create(&l).inc_by(n.packets);
        peer_b.get_or_create(&l).inc_by(n.bytes);
        if let Some(a) = n.handshake_age_s {
            handshake.get_or_create(&l).set(i(a));
        }
    }
    let ping_p = counters::<VipLabels>(
        &mut reg,
        "vip_icmp_echo_packets",
        "ICMP/ICMPv6 echo packets (pings) received for a VIP; the kernel answers them",
    );
    let ping_b = counters::<VipLabels>(
        &mut reg,
        "vip_icmp_echo_bytes",
        "Bytes (IP packets) of the pings received for a VIP",
    );
    for v in &s.vips {
        let l = VipLabels {
            vip: v.vip.to_string(),
        };
        ping_p.get_or_create(&l).inc_by(v.icmp_packets);
        ping_b.get_or_create(&l).inc_by(v.icmp_bytes);
    }
    let up = gauges::<ClusterLabels>(
        &mut reg,
        "cluster_connected",
        "Whether the etcd connection to a cluster is up (1) or not (0)",
    );
    let synced = gauges::<ClusterLabels>(
        &mut reg,
        "cluster_synced",
        "Whether a cluster's services and nodes are completely synchronised",
    );
    let age = gauges::<ClusterLabels>(
        &mut reg,
        "cluster_last_event_age_seconds",
        "Seconds since the last event from a cluster",
    );
    let exported = gauges::<ClusterLabels>(
        &mut reg,
        "cluster_services",
        "Global services a cluster exports",
    );
    for c in &s.status.clusters {
        let l = ClusterLabels {
            cluster: c.name.clone(),
        };
        up.get_or_create(&l).set(i64::from(c.connected));
        synced.get_or_create(&l).set(i64::from(c.synced));
        exported.get_or_create(&l).set(i(c.services as u64));
        if let Some(a) = c.last_event_age_s {
            age.get_or_create(&l).set(i(a));
        }
    }
    let portals = Gauge::<i64>::default();
    portals.set(i(s.status.portals.len() as u64));
    reg.register("portals", "Services the gateway exposes on a VIP", portals);
    let held = Gauge::<i64>::default();
    held.set(i(s.flows.held));
    reg.register("flows_held", "Flows kept in memory for the flow log", held);
    let events = counters::<OneLabel>(
        &mut reg,
        "flow_events",
        "Flow events read from the datapath, by kind",
    );
    for (k, v) in [
        ("new_flow", s.flows.new_flows),
        ("sample", s.flows.samples),
        ("drop", s.flows.drops),
    ] {
        events.get_or_create(&OneLabel { name: k.into() }).inc_by(v);
    }
    reg
}

/// The snapshot in the OpenMetrics text format.
pub fn openmetrics(s: &Snapshot) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry(s));
    out
}

/// The snapshot in the Prometheus text format 0.0.4 (what `promtool check metrics` and older
/// scrapers read): the OpenMetrics output with counter families named by their `_total`
/// samples, and without the `# EOF` terminator.
pub fn prometheus_text(s: &Snapshot) -> String {
    let om = openmetrics(s);
    let counters: std::collections::BTreeSet<&str> = om
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests;
