//! The daemon's observability: starts the flow event reader, the control API, `/metrics` and the
//! IPFIX exporter, and refreshes the shared snapshot from the maps once a second.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use aya::maps::{MapData, RingBuf};
use meshgw_common::maps::{CtKey, CT_DIR_EGRESS, CT_DIR_EGRESS_REPLY, FLOW_CACHE_SLOTS, ID_WORLD};
use meshgw_common::telemetry::{EventsConfig, FlowEvent, Traffic, EVENTS_F_DROPS, EVENTS_F_FLOWS};
use meshgw_datapath::Datapath;
use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::api::server::{self, Shared};
use crate::api::services::{BackendTraffic, FrontendInfo, ServiceCounters};
use crate::api::{FlowStats, NodeTelemetry, Snapshot, VipTelemetry};
use crate::catalog::Catalog;
use crate::config::{Config, Observability};
use crate::desired::{addr16, addr_from16, BackendSpec, Desired};
use crate::flows::table::{FlowKey, Track, Tracked};
use crate::flows::Names;
use crate::reconcile::bpf::BpfReconciler;

use super::status::Status;

/// Converts the datapath's `bpf_ktime_get_ns` (CLOCK_MONOTONIC) into Unix milliseconds.
#[derive(Clone, Copy)]
struct Clock {
    unix_ms: u64,
    mono_ns: u64,
}

impl Clock {
    fn now() -> Clock {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid out pointer for the call's duration.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        Clock {
            unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            mono_ns: ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64,
        }
    }

    fn unix_ms(&self, mono_ns: u64) -> u64 {
        let age_ms = self.mono_ns.saturating_sub(mono_ns) / 1_000_000;
        self.unix_ms.saturating_sub(age_ms)
    }
}

/// Frontends whose traffic counters are read per refresh (see [`Observer::refresh`]).
const FRONTENDS_PER_REFRESH: usize = 4096;
/// Backends whose traffic counters are read per refresh, for the same reason: 50,000 services
/// have 150,000 backends, and reading them all each second held the daemon's loop (and so every
/// cluster event behind it) for most of that second.
const BACKENDS_PER_REFRESH: usize = 8192;

/// VIPs whose ping counters are read per refresh (one syscall each, like frontends).
const VIPS_PER_REFRESH: usize = 8192;

/// The service ids whose last counter readings a `learn` must forget: those it dropped and those
/// of frontends it added (a reused id names another frontend, which starts from its own zeroed
/// counters), except the ids of frontends that changed but kept their id (`same_id`): theirs are
/// the same datapath counters, and a drop to zero would read as a counter reset to Prometheus.
fn counters_to_reset(dropped: &[u32], added: &[u32], mut same_id: Vec<u32>) -> Vec<u32> {
    same_id.sort_unstable();
    dropped
        .iter()
        .chain(added)
        .copied()
        .filter(|id| same_id.binary_search(id).is_err())
        .collect()
}

/// The ids among `left` (backends of frontends that went or changed) whose counters must go:
/// no frontend has that backend under that id any more (a freed id reused by another backend
/// starts from that backend's own, zeroed, counters).
fn backends_gone(mut left: HashMap<u32, BackendSpec>, frontends: &[FrontendInfo]) -> Vec<u32> {
    if left.is_empty() {
        return Vec::new();
    }
    for (id, spec) in frontends.iter().flat_map(|f| f.backends()) {
        if left.get(&id) == Some(spec) {
            left.remove(&id);
        }
    }
    left.into_keys().collect()
}

/// The backends (id, node) whose traffic is read next: those of the frontends from index
/// `cursor` on, until at least `max` (a frontend's backends are read together; a backend that
/// frontends share is read once), and where the read after starts. Walking the frontends, not a
/// list of every backend, keeps no second copy of 150,000 backends.
fn next_backends(
    frontends: &[FrontendInfo],
    cursor: usize,
    max: usize,
) -> (Vec<(u32, Ipv4Addr)>, usize) {
    let mut i = if cursor >= frontends.len() { 0 } else { cursor };
    let mut out: Vec<(u32, Ipv4Addr)> = Vec::new();
    while i < frontends.len() && out.len() < max {
        out.extend(frontends[i].backends().map(|(id, b)| (id, b.node_ip)));
        i += 1;
    }
    out.sort_unstable_by_key(|(id, _)| *id);
    out.dedup_by_key(|(id, _)| *id);
    (out, i)
}

/// Whether `shown` is `name` as `namespace/name`, without formatting it.
fn same_name(shown: &str, name: &crate::catalog::ServiceName) -> bool {
    shown.len() == name.namespace.len() + 1 + name.name.len()
        && shown.starts_with(&*name.namespace)
        && shown.ends_with(&*name.name)
        && shown.as_bytes()[name.namespace.len()] == b'/'
}

/// The running observability tasks and their shared state.
pub struct Observer {
    /// What the API, metrics and IPFIX read.
    pub shared: Arc<Shared>,
    /// Whether `learn` ran once (the first builds everything).
    learned: bool,
    /// Where the next read of frontend traffic starts (an index into the frontends): at most
    /// [`FRONTENDS_PER_REFRESH`] frontends are read a second (one syscall each), so that tens of
    /// thousands of services refresh over several seconds instead of stalling the daemon's loop.
    svc_cursor: usize,
    /// Where the next read of backend traffic starts: the frontend whose backends come next.
    be_cursor: usize,
    nodes: BTreeMap<Ipv4Addr, String>,
    /// The VIPs whose pings the datapath counts, as last synced into its map (`None`: not
    /// synced yet, or the last sync failed and the next reconcile retries).
    icmp_vips: Option<BTreeMap<[u8; 16], IpAddr>>,
    /// Ping counters as last read, and where the next read starts.
    icmp_traffic: HashMap<[u8; 16], Traffic>,
    icmp_cursor: usize,
    events: JoinHandle<()>,
    api: Endpoint,
    metrics: Endpoint,
    ipfix: Option<JoinHandle<()>>,
}

/// A listening task, or why it could not listen.
#[derive(Default)]
struct Endpoint {
    task: Option<JoinHandle<()>>,
    problem: Option<String>,
}

impl Endpoint {
    fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        self.problem = None;
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.events.abort();
        self.api.stop();
        self.metrics.stop();
        if let Some(t) = &self.ipfix {
            t.abort();
        }
        // The socket's existence says "daemon running" to clients.
    }
}

fn start_api(o: &Observability, shared: &Arc<Shared>) -> Endpoint {
    match server::bind(&o.api_socket) {
        Ok(listener) => {
            info!(socket = %o.api_socket.display(), "control API listening");
            Endpoint {
                task: Some(tokio::spawn(server::serve(listener, shared.clone()))),
                problem: None,
            }
        }
        Err(e) => {
            let p = format!("[api].socket {}: {e}", o.api_socket.display());
            warn!(problem = %p, "no control API");
            Endpoint {
                task: None,
                problem: Some(p),
            }
        }
    }
}

async fn start_metrics(o: &Observability, shared: &Arc<Shared>) -> Endpoint {
    let Some(addr) = o.metrics_listen else {
        return Endpoint::default();
    };
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => {
            info!(%addr, "metrics listening");
            Endpoint {
                task: Some(tokio::spawn(crate::metrics::serve(l, shared.clone()))),
                problem: None,
            }
        }
        Err(e) => {
            let p = format!("[metrics].listen {addr}: {e}");
            warn!(problem = %p, "no metrics endpoint");
            Endpoint {
                task: None,
                problem: Some(p),
            }
        }
    }
}

fn start_ipfix(o: &Observability, shared: &Arc<Shared>) -> Option<JoinHandle<()>> {
    let collector = o.ipfix_collector?;
    let ex = crate::ipfix::Exporter {
        collector,
        interval: Duration::from_secs(o.ipfix_interval_seconds),
        domain: o.ipfix_domain,
    };
    info!(%collector, "IPFIX export");
    Some(tokio::spawn(ex.run(shared.table.clone())))
}

/// Sets which events the datapath sends.
pub fn configure_events(dp: &mut Datapath, o: &Observability) -> Result<()> {
    let flags = if o.flow_events {
        EVENTS_F_FLOWS | EVENTS_F_DROPS
    } else {
        0
    };
    dp.set_events_config(&EventsConfig {
        sample_rate: o.sample_rate,
        flags,
    })
    .context("writing the event settings")
}

impl Observer {
    /// Starts everything `cfg` asks for. A socket that cannot be bound (an address in use, a
    /// directory not writable) is a problem in the status, as a DNS bind failure is: the
    /// gateway forwards without it rather than not at all.
    pub async fn start(cfg: &Config, dp: &mut Datapath) -> Result<Observer> {
        let o = &cfg.observe;
        let shared = Shared::new(o.max_flows);
        configure_events(dp, o)?;
        let ring = dp.take_events().context("the flow event ring buffer")?;
        let events = tokio::spawn(read_events(ring, shared.clone()));
        let api = start_api(o, &shared);
        let metrics = start_metrics(o, &shared).await;
        let ipfix = start_ipfix(o, &shared);
        Ok(Observer {
            shared,
            learned: false,
            icmp_traffic: HashMap::new(),
            icmp_cursor: 0,
            svc_cursor: 0,
            be_cursor: 0,
            icmp_vips: None,
            nodes: BTreeMap::new(),
            events,
            api,
            metrics,
            ipfix,
        })
    }

    /// What could not be started (published in the status; forwarding goes on without it).
    pub fn problems(&self) -> impl Iterator<Item = &String> {
        self.api.problem.iter().chain(self.metrics.problem.iter())
    }

    /// Applies a reloaded `[api]`, `[metrics]`, `[ipfix]` and `[flows].max_flows`: only what
    /// changed restarts; the flow table and the event reader carry on.
    pub async fn reconfigure(&mut self, old: &Observability, new: &Observability) {
        if old.api_socket != new.api_socket {
            self.api.stop();
            let _ = std::fs::remove_file(&old.api_socket);
            self.api = start_api(new, &self.shared);
        }
        if old.metrics_listen != new.metrics_listen || self.metrics.problem.is_some() {
            self.metrics.stop();
            // The aborted task drops its listener when next polled: let it, so that a reload
            // back to a port this process held finds it free.
            tokio::task::yield_now().await;
            self.metrics = start_metrics(new, &self.shared).await;
        }
        if (
            old.ipfix_collector,
            old.ipfix_interval_seconds,
            old.ipfix_domain,
        ) != (
            new.ipfix_collector,
            new.ipfix_interval_seconds,
            new.ipfix_domain,
        ) {
            if let Some(t) = self.ipfix.take() {
                t.abort();
            }
            self.ipfix = start_ipfix(new, &self.shared);
        }
        if old.max_flows != new.max_flows {
            if let Ok(mut t) = self.shared.table.lock() {
                t.set_max(new.max_flows);
            }
        }
    }

    /// Learns what the ids mean after a reconcile, and which VIPs' pings to count.
    ///
    /// Incremental: the frontends are walked in key order beside the previous list (both are
    /// sorted), and one whose id and backends (ids and specs) are unchanged is kept as it was,
    /// with its names; only the others are named anew. At 50,000 services a change of one costs
    /// lookups, not 200,000 formatted strings.
    pub fn learn(
        &mut self,
        dp: &mut Datapath,
        cfg: &Config,
        cat: &Catalog,
        d: &Desired,
        bpf: &BpfReconciler,
    ) {
        self.sync_icmp_vips(dp, d);
        let Ok(mut counters) = self.shared.services.write() else {
            return;
        };
        let counters = &mut *counters;
        let old_frontends = std::mem::take(&mut counters.frontends);
        counters.frontends.reserve(d.frontends.len());
        let mut old = old_frontends.into_iter().peekable();
        // Service ids no longer named by a kept frontend.
        let mut dropped_ids: Vec<u32> = Vec::new();
        // The backends of the frontends that went or changed: their counters go unless another
        // frontend still has the same backend under the same id.
        let mut left: HashMap<u32, BackendSpec> = HashMap::new();
        let mut added: Vec<usize> = Vec::new();
        // Service ids of changed frontends that kept their id.
        let mut same_id: Vec<u32> = Vec::new();
        let mut forget = |o: FrontendInfo, dropped_ids: &mut Vec<u32>| {
            dropped_ids.push(o.service_id);
            left.extend(o.backends().map(|(id, b)| (id, *b)));
        };
        for (key, f) in &d.frontends {
            while let Some(o) = old.peek() {
                if o.key >= *key {
                    break;
                }
                if let Some(o) = old.next() {
                    forget(o, &mut dropped_ids);
                }
            }
            let prev = match old.peek() {
                Some(o) if o.key == *key => old.next(),
                _ => None,
            };
            let Some(service_id) = bpf.service_id(key) else {
                if let Some(o) = prev {
                    forget(o, &mut dropped_ids);
                }
                continue;
            };
            let id_of = |b: &BackendSpec| bpf.backend_id(b);
            match prev {
                // Compared in place: an unchanged frontend allocates nothing.
                Some(mut o)
                    if o.service_id == service_id
                        && o.same_backends(&f.backends, id_of)
                        && same_name(&o.service, &f.service) =>
                {
                    o.share(&f.backends);
                    counters.frontends.push(o);
                }
                prev => {
                    if let Some(o) = prev {
                        if o.service_id == service_id {
                            same_id.push(service_id);
                        }
                        forget(o, &mut dropped_ids);
                    }
                    added.push(counters.frontends.len());
                    counters.frontends.push(FrontendInfo::new(
                        *key,
                        service_id,
                        Arc::from(f.service.to_string()),
                        f.backends.clone(),
                        id_of,
                    ));
                }
            }
        }
        for o in old {
            forget(o, &mut dropped_ids);
        }
        let added_ids: Vec<u32> = added
            .iter()
            .map(|i| counters.frontends[*i].service_id)
            .collect();
        for id in counters_to_reset(&dropped_ids, &added_ids, same_id) {
            counters.services.remove(&id);
        }
        for id in backends_gone(left, &counters.frontends) {
            counters.backends.remove(&id);
        }
        self.learn_names(cfg, cat, d, counters, &dropped_ids, &added);
        self.nodes = cat
            .nodes
            .values()
            .map(|n| (n.address, format!("{}/{}", n.id.cluster, n.id.name)))
            .collect();
        self.learned = true;
    }

    /// Updates the shared names in place: the frontends `learn` added, minus the service ids it
    /// dropped. Backend names are only added (an id's name is rewritten when the id is reused);
    /// once the map holds twice the live backends it is rebuilt, so freed ids do not pile up.
    fn learn_names(
        &self,
        cfg: &Config,
        cat: &Catalog,
        d: &Desired,
        counters: &ServiceCounters,
        dropped_ids: &[u32],
        added: &[usize],
    ) {
        let Ok(mut names) = self.shared.names.write() else {
            return;
        };
        // Backend ids in use, at most (frontends may share a backend).
        let slots: usize = counters
            .frontends
            .iter()
            .map(|f| f.backends().count())
            .sum();
        let rebuild = !self.learned || names.backend_keys.len() > 2 * slots + 1024;
        let fresh: Vec<usize>;
        let added = if rebuild {
            *names = Names::default();
            fresh = (0..counters.frontends.len()).collect();
            &fresh
        } else {
            for id in dropped_ids {
                names.services.remove(id);
            }
            added
        };
        let labels = |l: &BTreeMap<String, String>| -> Vec<String> {
            l.iter().map(|(k, v)| format!("{k}={v}")).collect()
        };
        names
            .identities
            .insert(ID_WORLD, vec!["reserved:world".to_string()]);
        for p in &cfg.legacy_prefixes {
            if let Some(id) = d.identities.get(&p.prefix) {
                names.identities.insert(*id, labels(&p.labels));
            }
        }
        // A pod for every identity still unnamed: its labels are looked up once, below, rather
        // than formatted for every backend.
        let mut label_from: HashMap<IpAddr, u32> = HashMap::new();
        let mut queued: std::collections::HashSet<u32> = std::collections::HashSet::new();
        names.services.reserve(added.len());
        for i in added {
            let f = &counters.frontends[*i];
            names.services.insert(f.service_id, f.service.clone());
            for (id, spec) in f.backends() {
                names
                    .backend_keys
                    .insert(id, (addr16(spec.addr).0, spec.port.to_be()));
                // One pod per identity names it: its labels are the identity's.
                if spec.identity != 0
                    && !names.identities.contains_key(&spec.identity)
                    && queued.insert(spec.identity)
                {
                    label_from.insert(spec.addr, spec.identity);
                }
            }
        }
        if !label_from.is_empty() {
            for b in cat.services.values().flat_map(|s| s.backends.iter()) {
                if let Some(id) = label_from.get(&b.addr) {
                    names
                        .identities
                        .entry(*id)
                        .or_insert_with(|| labels(&b.labels));
                }
            }
        }
    }

    fn sync_icmp_vips(&mut self, dp: &mut Datapath, d: &Desired) {
        // The same VIPs as synced last (the common case): nothing to build or write.
        if self.icmp_vips.as_ref().is_some_and(|v| {
            v.len() == d.vips.len() && v.values().zip(&d.vips).all(|(a, b)| a == b)
        }) {
            return;
        }
        let vips: BTreeMap<[u8; 16], IpAddr> =
            d.vips.iter().map(|ip| (addr16(*ip).0, *ip)).collect();
        let keys = vips.keys().copied().collect();
        match dp.sync_vip_icmp(&keys) {
            Ok(()) => {
                self.icmp_traffic.retain(|k, _| vips.contains_key(k));
                self.icmp_vips = Some(vips);
            }
            Err(e) => {
                warn!(error = %e, "cannot update the VIPs whose pings are counted");
                self.icmp_vips = None;
            }
        }
    }

    /// Puts a newly published status into the snapshot at once (the rest of the snapshot waits
    /// for the next refresh): `meshgw status` must never show an older status than
    /// `status.json` holds.
    pub fn set_status(&self, st: &Status) {
        if let Ok(mut s) = self.shared.snapshot.write() {
            s.status = st.clone();
        }
    }

    /// Reads the maps into a new snapshot; `status` is the last published status.
    pub fn refresh(&mut self, dp: &mut Datapath, status: Status) {
        let clock = Clock::now();
        let mut snap = Snapshot {
            taken_at_ms: clock.unix_ms,
            status,
            ..Snapshot::default()
        };
        match dp.counters() {
            Ok(c) => {
                snap.counters = c
                    .into_iter()
                    .map(|(c, v)| (c.name().to_string(), v))
                    .collect()
            }
            Err(e) => warn!(error = %e, "reading counters"),
        }
        self.refresh_flows(dp, &clock);
        let (connections, health, stats) = match self.shared.table.lock() {
            Ok(t) => (
                t.connections(),
                t.backend_health(clock.unix_ms),
                FlowStats {
                    held: t.held() as u64,
                    new_flows: t.events[1],
                    samples: t.events[2],
                    drops: t.events[3],
                },
            ),
            Err(_) => Default::default(),
        };
        snap.flows = stats;
        let mut nodes: BTreeMap<[u8; 4], Traffic> = match dp.retired_node_traffic() {
            Ok(t) => t.into_iter().collect(),
            Err(e) => {
                warn!(error = %e, "reading the traffic of removed backends");
                BTreeMap::new()
            }
        };
        // Before the service counters' lock: these reads need none, and the lock is held
        // until the snapshot is written.
        if let Some(vips) = &self.icmp_vips {
            let keys: Vec<[u8; 16]> = vips
                .keys()
                .skip(self.icmp_cursor)
                .take(VIPS_PER_REFRESH)
                .copied()
                .collect();
            self.icmp_cursor += keys.len();
            if self.icmp_cursor >= vips.len() {
                self.icmp_cursor = 0;
            }
            match dp.vip_icmp_traffic_of(&keys) {
                Ok(t) => self.icmp_traffic.extend(t),
                Err(e) => warn!(error = %e, "reading VIP ping counters"),
            }
            // Sorted by address: the map's order, IPv4 (mapped) before IPv6.
            snap.vips = vips
                .iter()
                .filter_map(|(k, vip)| {
                    let t = self.icmp_traffic.get(k)?;
                    Some(VipTelemetry {
                        vip: *vip,
                        icmp_packets: t.packets,
                        icmp_bytes: t.bytes,
                    })
                })
                .collect();
            snap.vips.sort_by_key(|v| v.vip);
        }
        let shared = self.shared.clone();
        // Held until the snapshot is written: a reader takes both (services first), and a
        // snapshot's time must be that of its service counters (rates in `meshgw top`).
        let mut services = shared.services.write().ok();
        if let Some(counters) = services.as_deref_mut() {
            self.read_traffic(dp, counters);
            counters.connections = connections;
            counters.health = health;
            for b in counters.backends.values() {
                let n = nodes.entry(b.node.octets()).or_default();
                n.packets += b.traffic.packets;
                n.bytes += b.traffic.bytes;
            }
        }
        for (ip, t) in nodes.into_iter().filter(|(_, t)| t.packets > 0) {
            let ip = Ipv4Addr::from(ip);
            snap.nodes.push(NodeTelemetry {
                node: self.nodes.get(&ip).cloned().unwrap_or_default(),
                address: ip.to_string(),
                packets: t.packets,
                bytes: t.bytes,
                kind: "vxlan".to_string(),
                handshake_age_s: None,
            });
        }
        if let Some(t) = &snap.status.transit {
            snap.nodes.extend(wireguard_peers(t));
        }
        snap.nodes
            .sort_by(|a, b| (&a.kind, &a.address).cmp(&(&b.kind, &b.address)));
        if let Ok(mut s) = self.shared.snapshot.write() {
            *s = snap;
        }
        drop(services);
    }

    /// Reads the next frontends' and backends' traffic counters into `counters`.
    fn read_traffic(&mut self, dp: &mut Datapath, counters: &mut ServiceCounters) {
        let frontends = &counters.frontends;
        if self.svc_cursor >= frontends.len() {
            self.svc_cursor = 0;
        }
        let end = frontends.len().min(self.svc_cursor + FRONTENDS_PER_REFRESH);
        let ids: Vec<u32> = frontends[self.svc_cursor..end]
            .iter()
            .map(|f| f.service_id)
            .collect();
        self.svc_cursor = end;
        let (backends, next) = next_backends(frontends, self.be_cursor, BACKENDS_PER_REFRESH);
        self.be_cursor = next;
        match dp.service_traffic(&ids) {
            Ok(t) => counters.services.extend(t),
            Err(e) => warn!(error = %e, "reading frontend traffic"),
        }
        let ids: Vec<u32> = backends.iter().map(|(id, _)| *id).collect();
        match dp.backend_traffic(&ids) {
            // In the order asked.
            Ok(t) => counters.backends.extend(t.into_iter().zip(&backends).map(
                |((id, traffic), (_, node))| {
                    (
                        id,
                        BackendTraffic {
                            traffic,
                            node: *node,
                        },
                    )
                },
            )),
            Err(e) => warn!(error = %e, "reading backend traffic"),
        }
    }

    /// Brings the counters of the flows the table follows up to date from connection tracking.
    fn refresh_flows(&self, dp: &mut Datapath, clock: &Clock) {
        let keys = match self.shared.table.lock() {
            Ok(t) => t.tracked_keys(),
            Err(_) => return,
        };
        if keys.is_empty() {
            return;
        }
        let tracked = |packets: u64, bytes: u64, last_seen_ns: u64| Tracked {
            packets,
            bytes,
            last_seen_ms: clock.unix_ms(last_seen_ns),
        };
        let mut found: Vec<(FlowKey, Option<Tracked>, Option<Tracked>)> = Vec::new();
        let mut snat_to: Vec<(FlowKey, std::net::SocketAddr)> = Vec::new();
        if let Ok(ct) = dp.ct() {
            for (k, track) in &keys {
                let Track::Ct(reverse) = track else { continue };
                let get = |key: &CtKey| {
                    ct.get(key, 0)
                        .ok()
                        .map(|e| tracked(e.packets, e.bytes, e.last_seen_ns))
                };
                let t = get(&k.ct);
                let r = reverse.filter(|_| t.is_some()).and_then(|rk| get(&rk));
                found.push((*k, t, r));
            }
        }
        // What the flow cache sent since it last fed tracking (see `flow_cache_pending`): one
        // read per flow, or one per cache slot when that is fewer.
        let all = if found.len() > FLOW_CACHE_SLOTS as usize {
            dp.flow_cache_pending_all().ok()
        } else {
            None
        };
        for (k, t, _) in &mut found {
            let Some(t) = t.as_mut() else { continue };
            let pending = match &all {
                Some(all) => all.get(&k.ct).copied(),
                None => dp.flow_cache_pending(&k.ct).ok(),
            };
            if let Some((p, b)) = pending {
                t.packets += p;
                t.bytes += b;
            }
        }
        if let Ok(snat) = dp.snat() {
            for (k, track) in &keys {
                if *track != Track::Snat {
                    continue;
                }
                let out = CtKey {
                    dir: CT_DIR_EGRESS,
                    ..k.ct
                };
                let Ok(e) = snat.get(&out, 0) else {
                    found.push((*k, None, None));
                    continue;
                };
                // The reply entry: legacy host -> egress address and port.
                let back = CtKey {
                    src: k.ct.dst,
                    dst: e.addr,
                    sport: k.ct.dport,
                    dport: e.port,
                    dir: CT_DIR_EGRESS_REPLY,
                    ..k.ct
                };
                let r = snat
                    .get(&back, 0)
                    .ok()
                    .map(|r| tracked(r.packets, r.bytes, r.last_seen_ns));
                snat_to.push((
                    *k,
                    std::net::SocketAddr::new(
                        addr_from16(e.addr, k.ct.family),
                        u16::from_be(e.port),
                    ),
                ));
                found.push((*k, Some(tracked(e.packets, e.bytes, e.last_seen_ns)), r));
            }
        }
        if let Ok(mut t) = self.shared.table.lock() {
            for (k, tr, reply) in found {
                t.update(&k, tr, reply);
            }
            for (k, to) in snat_to {
                t.set_snat(&k, to);
            }
        }
    }
}

/// The WireGuard peers of the transit status as tunnel peers: sent packets and bytes, and the
/// handshake age.
fn wireguard_peers(t: &super::transit::TransitStatus) -> Vec<NodeTelemetry> {
    let Some(peers) = t.wireguard.get("peers").and_then(|p| p.as_array()) else {
        return Vec::new();
    };
    peers
        .iter()
        .map(|p| NodeTelemetry {
            node: p["id"].as_str().unwrap_or_default().to_string(),
            address: p["endpoint"].as_str().unwrap_or_default().to_string(),
            packets: p["counters"]["tx_packets"].as_u64().unwrap_or(0),
            bytes: p["counters"]["tx_bytes"].as_u64().unwrap_or(0),
            kind: "wireguard".to_string(),
            handshake_age_s: p["last_handshake_secs"].as_u64(),
        })
        .collect()
}

/// How often the ring buffer is drained without a wakeup: the datapath wakes the reader only
/// when a quarter of the ring is pending (a wakeup per event would cost the packet path
/// microseconds), so this bounds how late a flow shows up.
const EVENT_POLL: Duration = Duration::from_millis(100);

/// Reads flow events into the table and to followers: on a wakeup (the ring filling) and every
/// [`EVENT_POLL`].
async fn read_events(ring: RingBuf<MapData>, shared: Arc<Shared>) {
    // SAFETY: the ring buffer owns its map fd, which stays open and the same for as long as the
    // AsyncFd owns the ring buffer.
    let mut fd = match unsafe { AsyncFd::register(ring) } {
        Ok(fd) => fd,
        Err(e) => {
            warn!(error = %e.into_parts().1, "cannot poll the flow event ring buffer; no flow events");
            return;
        }
    };
    loop {
        tokio::select! {
            r = fd.readable_mut() => match r {
                // Cleared before draining: data arriving meanwhile makes it ready again.
                Ok(mut g) => g.clear_ready(),
                Err(e) => {
                    warn!(error = %e, "flow event ring buffer poll failed; no more flow events");
                    return;
                }
            },
            _ = tokio::time::sleep(EVENT_POLL) => {}
        }
        if !drain(fd.get_mut(), &shared) {
            return;
        }
    }
}

/// Reads every pending event; false when the shared state is poisoned (a panic elsewhere).
fn drain(rb: &mut RingBuf<MapData>, shared: &Shared) -> bool {
    let clock = Clock::now();
    let (Ok(names), Ok(mut table)) = (shared.names.read(), shared.table.lock()) else {
        return false;
    };
    while let Some(item) = rb.next() {
        let Some(ev) = FlowEvent::from_bytes(&item) else {
            continue;
        };
        let rec = table.ingest(&ev, clock.unix_ms(ev.ts_ns), &names);
        // No follower is the usual case, not an error.
        let _ = shared.flows.send(rec);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshgw_common::maps::ServiceKey;

    #[test]
    fn a_changed_frontend_keeping_its_id_keeps_its_counters() {
        // 7 changed its backends (dropped and added under the same id), 3 went, 9 is new (a
        // reused id, or a new frontend), 5 changed and got a new id 11.
        let reset = counters_to_reset(&[7, 3, 5], &[7, 9, 11], vec![7]);
        assert_eq!(reset, vec![3, 5, 9, 11]);
        assert_eq!(counters_to_reset(&[4], &[4], vec![]), vec![4, 4]);
    }

    fn frontend(service_id: u32, backends: &[(u32, [u8; 4])]) -> FrontendInfo {
        let key = ServiceKey {
            addr: [0; 16],
            port: 80u16.to_be(),
            proto: 6,
            family: meshgw_common::maps::FAMILY_V4,
        };
        let backends: Vec<(u32, BackendSpec)> = backends
            .iter()
            .map(|(id, node)| {
                let spec = BackendSpec {
                    addr: IpAddr::from([10, 244, 0, *id as u8]),
                    port: 8080,
                    node_ip: Ipv4Addr::from(*node),
                    node_mac: [0; 6],
                    identity: 0,
                };
                (*id, spec)
            })
            .collect();
        FrontendInfo::with_ids(key, service_id, "default/web", &backends)
    }

    #[test]
    fn backends_are_read_a_few_frontends_at_a_time_each_once() {
        let n1 = [172, 18, 0, 11];
        let n2 = [172, 18, 0, 12];
        let fs = [
            frontend(1, &[(5, n1), (3, n1)]),
            frontend(2, &[(3, n1), (8, n2)]),
            frontend(3, &[]),
            frontend(4, &[(9, n2)]),
        ];
        let (b, next) = next_backends(&fs, 0, 3);
        assert_eq!(
            b,
            vec![(3, n1.into()), (5, n1.into()), (8, n2.into())],
            "whole frontends, a shared backend once, sorted by id"
        );
        assert_eq!(next, 2);
        let (b, next) = next_backends(&fs, next, 3);
        assert_eq!((b, next), (vec![(9, n2.into())], 4));
        // Past the end (the frontends shrank): from the start again.
        let (b, next) = next_backends(&fs, next, 1);
        assert_eq!((b.len(), next), (2, 1));
        assert_eq!(next_backends(&[], 7, 8), (Vec::new(), 0));
    }

    #[test]
    fn a_backends_counters_go_only_when_no_frontend_has_it_under_that_id() {
        let n1 = [172, 18, 0, 11];
        let now = [
            frontend(1, &[(5, n1)]),
            frontend(2, &[(6, [172, 18, 0, 12])]),
        ];
        let gone = |left: &[FrontendInfo]| {
            let left: HashMap<u32, BackendSpec> = left
                .iter()
                .flat_map(|f| f.backends().map(|(id, b)| (id, *b)))
                .collect();
            let mut g = backends_gone(left, &now);
            g.sort_unstable();
            g
        };
        // 5 is still there, 7 went, 6 now names a backend on another node.
        assert_eq!(
            gone(&[frontend(9, &[(5, n1), (7, n1), (6, n1)])]),
            vec![6, 7]
        );
        assert!(gone(&[]).is_empty());
    }

    #[test]
    fn wireguard_peers_become_tunnel_peers_with_their_handshake_age() {
        let t = crate::daemon::transit::TransitStatus {
            wireguard: serde_json::json!({
                "backend": "userspace",
                "peers": [
                    {"id": "gw-b", "endpoint": "192.0.2.2:51820", "last_handshake_secs": 12,
                     "counters": {"tx_packets": 5, "tx_bytes": 700}},
                    {"id": "gw-c", "endpoint": null, "last_handshake_secs": null,
                     "counters": {"tx_packets": 0, "tx_bytes": 0}}
                ]
            }),
            ..Default::default()
        };
        let p = wireguard_peers(&t);
        assert_eq!(p.len(), 2);
        assert_eq!(
            (
                p[0].node.as_str(),
                p[0].address.as_str(),
                p[0].packets,
                p[0].bytes
            ),
            ("gw-b", "192.0.2.2:51820", 5, 700)
        );
        assert_eq!(
            (p[0].handshake_age_s, p[1].handshake_age_s),
            (Some(12), None)
        );
        assert_eq!(p[1].kind, "wireguard");
        let none = crate::daemon::transit::TransitStatus::default();
        assert!(wireguard_peers(&none).is_empty());
    }
}
