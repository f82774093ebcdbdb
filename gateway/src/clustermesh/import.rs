//! From the clusters' exported services to catalog portals: which services are selected
//! (a `[[portal]]` selector or the `io.cilium/portal` label), how backends of the same
//! namespace/name in several clusters merge into one service (as Cilium's global services do),
//! which node hosts each backend, and how long a withdrawn service keeps its VIP.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::info;

use super::kvstore::{ClusterService, KvNode, L4Protocol};
use super::state::ClusterState;
use crate::catalog::{
    named_ports, Backend, NamedPorts, Node, NodeId, PodLabels, Port, Service, ServiceName,
};
use crate::config::{PortalSelector, VipSpec};
use crate::vip::Request;

/// What the clusters contribute to the catalog.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Imported {
    /// Selected services, merged across clusters.
    pub services: BTreeMap<ServiceName, Service>,
    /// Every node with an IPv4 underlay address.
    pub nodes: BTreeMap<NodeId, Node>,
    /// What could not be imported, and why.
    pub problems: Vec<String>,
    /// Each node's id, once made (cluster -> node name -> id): backends share it.
    node_ids: HashMap<String, HashMap<String, Arc<NodeId>>>,
    /// Each identity's labels, once shared (cluster -> identity -> labels): its backends share
    /// them.
    labels: HashMap<String, HashMap<u32, PodLabels>>,
    /// Each port mapping once: services map their ports alike far more often than not (every
    /// `http` to 8080), and one list a service was 4 MB at 50,000 services.
    port_maps: HashSet<NamedPorts>,
}

impl Imported {
    /// The id of node `name` of `cluster`, shared with every other user of it.
    fn node_id(&mut self, cluster: &str, name: &str) -> Arc<NodeId> {
        if let Some(id) = self.node_ids.get(cluster).and_then(|m| m.get(name)) {
            return id.clone();
        }
        let id = Arc::new(NodeId {
            cluster: cluster.into(),
            name: name.into(),
        });
        self.node_ids
            .entry(cluster.to_string())
            .or_default()
            .insert(name.to_string(), id.clone());
        id
    }

    /// `ports`, shared with every other backend that maps its ports alike.
    fn port_map(&mut self, ports: NamedPorts) -> NamedPorts {
        if let Some(p) = self.port_maps.get(&ports) {
            return p.clone();
        }
        self.port_maps.insert(ports.clone());
        ports
    }

    /// The labels of identity `id` of `cluster`, shared with every other backend of it.
    fn labels(&mut self, cluster: &str, state: &ClusterState, id: u32) -> PodLabels {
        if let Some(l) = self.labels.get(cluster).and_then(|m| m.get(&id)) {
            return l.clone();
        }
        let l = PodLabels::from(state.identity_labels(id).cloned().unwrap_or_default());
        self.labels
            .entry(cluster.to_string())
            .or_default()
            .insert(id, l.clone());
        l
    }
}

fn glob(p: &str, s: &str) -> bool {
    glob::Pattern::new(p).is_ok_and(|g| g.matches(s))
}

fn matches(sel: &PortalSelector, cluster: &str, svc: &ClusterService) -> bool {
    glob(&sel.cluster, cluster)
        && glob(&sel.namespace, &svc.namespace)
        && glob(&sel.name, &svc.name)
        && sel
            .labels
            .iter()
            .all(|(k, v)| svc.labels.get(k) == Some(v.as_str()))
}

/// Whether the service is a portal, and the selector pinning its VIPs if one does.
fn selection<'a>(
    portals: &'a [PortalSelector],
    cluster: &str,
    svc: &ClusterService,
) -> Option<Option<&'a PortalSelector>> {
    let mut hit = svc.portal_marker();
    let mut pin = None;
    for sel in portals.iter().filter(|s| matches(s, cluster, svc)) {
        hit = true;
        if pin.is_none() && (sel.vip4.is_some() || sel.vip6.is_some()) {
            pin = Some(sel);
        }
    }
    hit.then_some(pin)
}

fn proto(p: L4Protocol) -> Option<u8> {
    match p {
        L4Protocol::Tcp => Some(6),
        L4Protocol::Udp => Some(17),
        _ => None,
    }
}

/// A cluster's nodes indexed for [`NodeIndex::node_of`]: built once per import. A backend is
/// found by a hash lookup per pod CIDR length in use (one or two), not by testing every node's
/// CIDRs: an import is O(backends), not O(backends × nodes).
struct NodeIndex<'a> {
    /// Pod CIDR -> the first node that announces it.
    by_cidr: HashMap<ipnet::IpNet, &'a KvNode>,
    /// The CIDR prefix lengths in use, longest first.
    lens: Vec<u8>,
    by_address: HashMap<IpAddr, &'a KvNode>,
}

impl<'a> NodeIndex<'a> {
    fn new(state: &'a ClusterState) -> Self {
        let mut ix = NodeIndex {
            by_cidr: HashMap::new(),
            lens: Vec::new(),
            by_address: HashMap::new(),
        };
        for n in state.nodes() {
            for c in n.pod_cidrs() {
                let c = c.trunc();
                if !ix.lens.contains(&c.prefix_len()) {
                    ix.lens.push(c.prefix_len());
                }
                ix.by_cidr.entry(c).or_insert(n);
            }
            if let Some(a) = n.internal_ipv4() {
                ix.by_address.entry(IpAddr::V4(a)).or_insert(n);
            }
        }
        ix.lens.sort_unstable_by(|a, b| b.cmp(a));
        ix
    }

    /// The node hosting `ip`: the one whose pod CIDR contains it (the most specific, should
    /// CIDRs overlap), else the one the ipcache names as the endpoint's host.
    fn node_of(&self, state: &ClusterState, ip: IpAddr) -> Option<&'a KvNode> {
        self.lens
            .iter()
            .filter_map(|len| ipnet::IpNet::new(ip, *len).ok())
            .find_map(|net| self.by_cidr.get(&net.trunc()).copied())
            .or_else(|| {
                let host = state.ip_pair(ip)?.host_ip?;
                self.by_address.get(&host).copied()
            })
    }
}

fn request(pin: Option<&Option<VipSpec>>, wanted: bool) -> Option<Request> {
    match pin.and_then(|p| p.as_ref()) {
        Some(VipSpec::Static(ip)) => Some(Request::Static(*ip)),
        Some(VipSpec::Auto) => Some(Request::Auto),
        None => wanted.then_some(Request::Auto),
    }
}

/// Builds the imported part of the catalog. `has4`/`has6`: whether the VIP pool can give a VIP of
/// that family (a service gets an `auto` VIP of each family it has backends of).
pub fn import(
    clusters: &BTreeMap<String, ClusterState>,
    portals: &[PortalSelector],
    has4: bool,
    has6: bool,
) -> Imported {
    let mut out = Imported::default();
    let mut pins: BTreeMap<ServiceName, &PortalSelector> = BTreeMap::new();
    for (cluster, state) in clusters {
        for n in state.nodes() {
            let Some(address) = n.internal_ipv4() else {
                out.problems.push(format!(
                    "node {cluster}/{} has no IPv4 InternalIP: it cannot be a VXLAN peer",
                    n.name
                ));
                continue;
            };
            let id = NodeId::clone(&out.node_id(cluster, &n.name));
            let node = Node {
                id: id.clone(),
                address,
                pod_cidrs: n.pod_cidrs(),
                router_ips: n.cilium_internal_ips(),
                mac: None,
            };
            out.nodes.insert(id, node);
        }
        let nodes = NodeIndex::new(state);
        for svc in state.services() {
            add_service(&mut out, &mut pins, portals, (cluster, state, &nodes), svc);
        }
    }
    finish(&mut out, &pins, has4, has6);
    out
}

/// Adds one cluster's version of a service to `out` when it is a shared portal.
fn add_service<'a>(
    out: &mut Imported,
    pins: &mut BTreeMap<ServiceName, &'a PortalSelector>,
    portals: &'a [PortalSelector],
    (cluster, state, nodes): (&str, &ClusterState, &NodeIndex<'_>),
    svc: &ClusterService,
) {
    if !svc.is_shared() {
        return;
    }
    let Some(pin) = selection(portals, cluster, svc) else {
        return;
    };
    let name = ServiceName {
        namespace: Arc::from(&*svc.namespace),
        name: Arc::from(&*svc.name),
    };
    if let Some(p) = pin {
        pins.insert(name.clone(), p);
    }
    let entry = out.services.entry(name.clone()).or_insert_with(|| Service {
        name: name.clone(),
        vip4: None,
        vip6: None,
        ports: Vec::new(),
        backends: Vec::new(),
    });
    // Room for exactly what this cluster adds: a Vec grown by pushes keeps room for 4, and the
    // catalog keeps these Vecs for every service.
    // A port name appears once per frontend address (twice for a dual-stack service).
    let mut new_ports: Vec<_> = svc
        .frontends
        .values()
        .flat_map(|p| p.keys())
        .filter(|n| !entry.ports.iter().any(|p| p.name == *n))
        .collect();
    new_ports.sort_unstable();
    new_ports.dedup();
    entry.ports.reserve_exact(new_ports.len());
    entry.backends.reserve_exact(svc.backends.len());
    for ports in svc.frontends.values() {
        for (pname, pc) in ports.iter() {
            let Some(pr) = proto(pc.protocol) else {
                out.problems.push(format!(
                    "{name} in {cluster}: port {pname} uses {:?}, which portals do not carry",
                    pc.protocol
                ));
                continue;
            };
            if !entry.ports.iter().any(|p| p.name == pname) {
                entry.ports.push(Port {
                    name: pname.to_string(),
                    port: pc.port,
                    proto: pr,
                });
            }
        }
    }
    let mut backends = Vec::with_capacity(svc.backends.len());
    for (ip, ports) in svc.backends.iter() {
        let Some(node) = nodes.node_of(state, *ip) else {
            out.problems.push(format!(
                "{name}: backend {ip} in {cluster}: no known node hosts it"
            ));
            continue;
        };
        // The pod's identity and labels, where the cluster exports its ipcache.
        let identity = state
            .ip_pair(*ip)
            .filter(|p| p.mask.is_none())
            .map(|p| p.id);
        let labels = identity
            .map(|id| out.labels(cluster, state, id))
            .unwrap_or_default();
        let ports = out.port_map(named_ports(ports.iter().map(|(n, pc)| (n, pc.port))));
        let node = out.node_id(cluster, &node.name);
        backends.push(Backend {
            addr: *ip,
            ports,
            node,
            weight: 1,
            identity,
            labels,
        });
    }
    if let Some(entry) = out.services.get_mut(&name) {
        entry.backends.extend(backends);
    }
}

/// Sorts what the clusters gave each service and decides its VIP requests.
fn finish(
    out: &mut Imported,
    pins: &BTreeMap<ServiceName, &PortalSelector>,
    has4: bool,
    has6: bool,
) {
    for svc in out.services.values_mut() {
        svc.ports.sort_by(|a, b| a.name.cmp(&b.name));
        svc.backends
            .sort_by(|a, b| (a.addr, &a.node).cmp(&(b.addr, &b.node)));
        let pin = pins.get(&svc.name);
        let v4 = svc.backends.iter().any(|b| b.addr.is_ipv4());
        let v6 = svc.backends.iter().any(|b| b.addr.is_ipv6());
        svc.vip4 = request(pin.map(|p| &p.vip4), has4 && v4);
        svc.vip6 = request(pin.map(|p| &p.vip6), has6 && v6);
    }
}

/// The import of only the services `names` (merged across clusters, as [`import`] makes them;
/// a name no cluster shares as a portal any more is absent from the result). Nodes are not
/// imported: a change of them is a full import. An event about a few services costs their
/// import, not every service's.
pub fn import_services(
    clusters: &BTreeMap<String, ClusterState>,
    portals: &[PortalSelector],
    has4: bool,
    has6: bool,
    names: &std::collections::BTreeSet<ServiceName>,
) -> Imported {
    let mut out = Imported::default();
    let mut pins: BTreeMap<ServiceName, &PortalSelector> = BTreeMap::new();
    for (cluster, state) in clusters {
        // Indexed only for a cluster that holds one of the services.
        let mut nodes: Option<NodeIndex> = None;
        for name in names {
            if let Some(svc) = state.service(&name.namespace, &name.name) {
                let nodes = nodes.get_or_insert_with(|| NodeIndex::new(state));
                add_service(&mut out, &mut pins, portals, (cluster, state, nodes), svc);
            }
        }
    }
    finish(&mut out, &pins, has4, has6);
    out
}

/// Keeps withdrawn services (VIP and last backends) for a grace period, so established flows drain
/// before the VIP goes (its service entries, and for IPv6 its address and neighbour answers; the
/// IPv4 pool's local route keeps answering ARP for every pool address).
///
/// Only names are remembered between passes: a withdrawn service's last version is taken from
/// what the caller served (its catalog), not from a second copy of every imported service.
#[derive(Debug, Default)]
pub struct Grace {
    withdrawn: BTreeMap<ServiceName, (Instant, Service)>,
    /// The services the last successful pass served.
    last: std::collections::BTreeSet<ServiceName>,
    /// The services the full pass in progress serves: `last` once it succeeds
    /// ([`Grace::pass_succeeded`]). A failed pass leaves `last` alone, so that its services,
    /// never served, are not kept for a grace period by the next one.
    next: Option<std::collections::BTreeSet<ServiceName>>,
}

impl Grace {
    /// The services to serve now: `current`, plus those withdrawn less than `grace` ago.
    /// `served` holds the services' last versions (where a newly withdrawn service's version
    /// comes from; a service the last successful pass did not serve is never kept). Call
    /// [`Grace::pass_succeeded`] once the pass serving the result succeeded.
    pub fn apply(
        &mut self,
        current: BTreeMap<ServiceName, Service>,
        served: &BTreeMap<ServiceName, Service>,
        now: Instant,
        grace: Duration,
    ) -> BTreeMap<ServiceName, Service> {
        for name in &self.last {
            if !current.contains_key(name) && !self.withdrawn.contains_key(name) {
                if let Some(svc) = served.get(name) {
                    info!(service = %name, grace_s = grace.as_secs(), "service withdrawn; keeping its VIP for the grace period");
                    self.withdrawn
                        .insert(name.clone(), (now + grace, svc.clone()));
                }
            }
        }
        self.withdrawn.retain(|name, (deadline, _)| {
            let keep = !current.contains_key(name) && *deadline > now;
            if !keep && !current.contains_key(name) {
                info!(service = %name, "grace period over; VIP released");
            }
            keep
        });
        self.next = Some(current.keys().cloned().collect());
        let mut out = current;
        for (name, (_, svc)) in &self.withdrawn {
            out.entry(name.clone()).or_insert_with(|| svc.clone());
        }
        out
    }

    /// [`Grace::apply`] for only the services `names` (an event about them): `current` holds
    /// those of them the clusters still share. Returns what to serve for them: the current
    /// ones, and the withdrawn ones still in their grace period (a name absent from the result
    /// is served no more). Expiry is left to the next [`Grace::apply`] (at
    /// [`Grace::next_deadline`]).
    pub fn apply_some(
        &mut self,
        names: &std::collections::BTreeSet<ServiceName>,
        mut current: BTreeMap<ServiceName, Service>,
        served: &BTreeMap<ServiceName, Service>,
        now: Instant,
        grace: Duration,
    ) -> BTreeMap<ServiceName, Service> {
        for name in names {
            if current.contains_key(name) {
                self.withdrawn.remove(name);
                self.last.insert(name.clone());
                continue;
            }
            if self.last.remove(name) {
                if let Some(svc) = served.get(name) {
                    info!(service = %name, grace_s = grace.as_secs(), "service withdrawn; keeping its VIP for the grace period");
                    self.withdrawn
                        .insert(name.clone(), (now + grace, svc.clone()));
                }
            }
            if let Some((_, svc)) = self.withdrawn.get(name) {
                current.insert(name.clone(), svc.clone());
            }
        }
        current
    }

    /// The full pass that served what [`Grace::apply`] returned succeeded.
    pub fn pass_succeeded(&mut self) {
        if let Some(next) = self.next.take() {
            self.last = next;
        }
    }

    /// When the next withdrawn service expires.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.withdrawn.values().map(|(d, _)| *d).min()
    }

    /// Services in their grace period.
    pub fn draining(&self) -> impl Iterator<Item = &ServiceName> {
        self.withdrawn.keys()
    }
}

#[cfg(test)]
mod tests;
