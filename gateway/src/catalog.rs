//! The service catalog: what the gateway knows of services, backends and nodes, whatever told it
//! (the TOML file today, Cluster Mesh peers next). Everything downstream (VIP allocation, the
//! desired datapath, the reconcilers) reads only this.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::Deref;
use std::sync::Arc;

use ipnet::IpNet;

use crate::config::{self, Config};
use crate::vip::Request;

/// A service's identity: namespace and name (the same across clusters, as for Cilium's global
/// services). Shared strings: a name is a key in the catalog, the VIP requests and allocation,
/// the status cache and the telemetry, and at 50,000 services each copy was 100,000 allocations.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName {
    /// Kubernetes namespace.
    pub namespace: Arc<str>,
    /// Service name.
    pub name: Arc<str>,
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A node's identity: its cluster and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId {
    /// Cluster name ("static" for nodes from the TOML file). Shared, like the name, by every
    /// backend on the node: a catalog of 150,000 backends would otherwise hold 300,000 copies.
    pub cluster: Arc<str>,
    /// Node name.
    pub name: Arc<str>,
}

/// The cluster name given to services and nodes from the TOML file.
pub const STATIC_CLUSTER: &str = "static";

/// A frontend port of a service.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Port {
    /// Port name (backends map names to target ports).
    pub name: String,
    /// Frontend port.
    pub port: u16,
    /// IP protocol number.
    pub proto: u8,
}

/// A backend (pod) of a service.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Backend {
    /// Pod address.
    pub addr: IpAddr,
    /// Target port per frontend port name; a name not listed means the frontend port. Shared
    /// by the backends of a service that map their ports alike (the common case).
    pub ports: NamedPorts,
    /// The node hosting the pod, shared by its backends: an id inline (two counted strings)
    /// took 32 bytes in each of 150,000 backends, and a full pass holds two catalogs at once.
    pub node: Arc<NodeId>,
    /// Maglev weight (≥ 1).
    pub weight: u32,
    /// The pod's security identity as its cluster numbers it (from the ipcache); `None` for
    /// static backends, which get a gateway-local identity from their labels.
    pub identity: Option<u32>,
    /// The pod's labels, as policy endpoint selectors see them.
    pub labels: PodLabels,
}

/// A pod's labels: shared by the backends of one identity, and a null pointer when there are
/// none (clusters that do not export their identities), where a map inline took 24 bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct PodLabels(Option<Arc<BTreeMap<String, String>>>);

impl From<BTreeMap<String, String>> for PodLabels {
    fn from(l: BTreeMap<String, String>) -> PodLabels {
        PodLabels((!l.is_empty()).then(|| Arc::new(l)))
    }
}

impl Deref for PodLabels {
    type Target = BTreeMap<String, String>;

    fn deref(&self) -> &BTreeMap<String, String> {
        static NONE: BTreeMap<String, String> = BTreeMap::new();
        self.0.as_deref().unwrap_or(&NONE)
    }
}

/// Port name -> target port, sorted by name.
pub type NamedPorts = Arc<[(Box<str>, u16)]>;

/// `ports` as [`NamedPorts`].
pub fn named_ports<'a>(ports: impl IntoIterator<Item = (&'a str, u16)>) -> NamedPorts {
    let mut v: Vec<(Box<str>, u16)> = ports.into_iter().map(|(n, p)| (n.into(), p)).collect();
    v.sort();
    v.dedup_by(|a, b| a.0 == b.0);
    v.into()
}

impl Backend {
    /// The port this backend serves frontend port `p` on.
    pub fn target_port(&self, p: &Port) -> u16 {
        self.port_named(&p.name).unwrap_or(p.port)
    }

    /// The target port of the frontend port named `name`, if the backend maps it.
    pub fn port_named(&self, name: &str) -> Option<u16> {
        self.ports
            .binary_search_by(|(n, _)| (**n).cmp(name))
            .ok()
            .map(|i| self.ports[i].1)
    }
}

/// A service that may become a portal.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Service {
    /// Identity.
    pub name: ServiceName,
    /// IPv4 VIP request.
    pub vip4: Option<Request>,
    /// IPv6 VIP request.
    pub vip6: Option<Request>,
    /// Frontend ports.
    pub ports: Vec<Port>,
    /// Backends, from every source.
    pub backends: Vec<Backend>,
}

/// A mesh node (a VXLAN peer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Identity.
    pub id: NodeId,
    /// Underlay (VXLAN endpoint) address.
    pub address: Ipv4Addr,
    /// Pod CIDRs it hosts.
    pub pod_cidrs: Vec<IpNet>,
    /// Its in-cluster router addresses (next hops for pod-CIDR routes).
    pub router_ips: Vec<IpAddr>,
    /// Inner destination MAC, if known.
    pub mac: Option<[u8; 6]>,
}

/// Everything known.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalog {
    /// Services by identity.
    pub services: BTreeMap<ServiceName, Service>,
    /// Nodes by identity.
    pub nodes: BTreeMap<NodeId, Node>,
}

fn request(v: &Option<config::VipSpec>) -> Option<Request> {
    v.as_ref().map(|v| match v {
        config::VipSpec::Auto => Request::Auto,
        config::VipSpec::Static(ip) => Request::Static(*ip),
    })
}

impl Catalog {
    /// The catalog the TOML file describes.
    pub fn from_config(cfg: &Config) -> Catalog {
        let node_id = |name: &str| NodeId {
            cluster: STATIC_CLUSTER.into(),
            name: name.into(),
        };
        // Each node's id once, shared by its backends.
        let mut ids: BTreeMap<&str, Arc<NodeId>> = BTreeMap::new();
        let nodes = cfg
            .nodes
            .iter()
            .map(|n| {
                let id = node_id(&n.name);
                let node = Node {
                    id: id.clone(),
                    address: n.address,
                    pod_cidrs: n.pod_cidrs.clone(),
                    router_ips: n.router_ips.clone(),
                    mac: n.mac,
                };
                (id, node)
            })
            .collect();
        let services = cfg
            .services
            .iter()
            .map(|s| {
                let name = ServiceName {
                    namespace: s.namespace.as_str().into(),
                    name: s.name.as_str().into(),
                };
                let svc = Service {
                    name: name.clone(),
                    vip4: request(&s.vip4),
                    vip6: request(&s.vip6),
                    ports: s
                        .ports
                        .iter()
                        .map(|p| Port {
                            name: p.name.clone(),
                            port: p.port,
                            proto: p.protocol.number(),
                        })
                        .collect(),
                    backends: s
                        .backends
                        .iter()
                        .map(|b| Backend {
                            addr: b.address,
                            ports: named_ports(b.ports.iter().map(|(n, p)| (n.as_str(), *p))),
                            node: ids
                                .entry(&b.node)
                                .or_insert_with(|| Arc::new(node_id(&b.node)))
                                .clone(),
                            weight: 1,
                            identity: None,
                            labels: b.labels.clone().into(),
                        })
                        .collect(),
                };
                (name, svc)
            })
            .collect();
        Catalog { services, nodes }
    }

    /// Adds what the Cluster Mesh import produced. A `[[service]]` of the TOML wins over an
    /// imported service of the same namespace/name (the operator said so explicitly). An
    /// imported node whose underlay address is a `[[node]]` of the TOML takes the MAC and router
    /// addresses given there where the kvstore has none (Cilium does not export the inner MAC a
    /// kernel VXLAN peer needs). Returns what was overridden, for the status.
    pub fn merge_imported(
        &mut self,
        services: BTreeMap<ServiceName, Service>,
        nodes: BTreeMap<NodeId, Node>,
    ) -> Vec<String> {
        let mut notes = Vec::new();
        for (id, mut node) in nodes {
            if let Some(st) = self
                .nodes
                .values()
                .find(|n| &*n.id.cluster == STATIC_CLUSTER && n.address == node.address)
            {
                node.mac = node.mac.or(st.mac);
                if node.router_ips.is_empty() {
                    node.router_ips = st.router_ips.clone();
                }
            }
            self.nodes.insert(id, node);
        }
        for (name, svc) in services {
            if self.services.contains_key(&name) {
                notes.push(format!(
                    "{name}: a [[service]] of the configuration overrides the imported global service"
                ));
                continue;
            }
            self.services.insert(name, svc);
        }
        notes
    }

    /// VIP requests of every service, for the allocator.
    pub fn vip_requests(&self) -> BTreeMap<(ServiceName, bool), Request> {
        let mut r = BTreeMap::new();
        for s in self.services.values() {
            if let Some(v) = s.vip4 {
                r.insert((s.name.clone(), false), v);
            }
            if let Some(v) = s.vip6 {
                r.insert((s.name.clone(), true), v);
            }
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demo() -> Catalog {
        let cfg = crate::config::parse_str(include_str!("../../config/demo.toml"), "demo.toml")
            .expect("demo config");
        Catalog::from_config(&cfg)
    }

    fn imported_node(cluster: &str, name: &str, addr: [u8; 4]) -> (NodeId, Node) {
        let id = NodeId {
            cluster: cluster.into(),
            name: name.into(),
        };
        let node = Node {
            id: id.clone(),
            address: Ipv4Addr::from(addr),
            pod_cidrs: vec!["10.244.1.0/24".parse().unwrap()],
            router_ips: Vec::new(),
            mac: None,
        };
        (id, node)
    }

    #[test]
    fn static_services_win_and_static_nodes_lend_their_mac() {
        let mut cat = demo();
        let echo = ServiceName {
            namespace: "default".into(),
            name: "echo".into(),
        };
        let web = ServiceName {
            namespace: "default".into(),
            name: "web".into(),
        };
        let mut services = BTreeMap::new();
        for name in [&echo, &web] {
            services.insert(
                name.clone(),
                Service {
                    name: name.clone(),
                    vip4: Some(Request::Auto),
                    vip6: None,
                    ports: Vec::new(),
                    backends: Vec::new(),
                },
            );
        }
        let static_echo = cat.services[&echo].clone();
        let nodes = BTreeMap::from([
            imported_node("cluster1", "node-1", [172, 18, 0, 11]),
            imported_node("cluster1", "node-9", [172, 18, 0, 99]),
        ]);
        let notes = cat.merge_imported(services, nodes);
        assert_eq!(cat.services[&echo], static_echo, "the [[service]] wins");
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("default/echo"), "{notes:?}");
        assert!(cat.services.contains_key(&web));
        let n1 = &cat.nodes[&NodeId {
            cluster: "cluster1".into(),
            name: "node-1".into(),
        }];
        assert_eq!(n1.mac, Some([2, 0xaa, 0, 0, 0, 1]));
        assert_eq!(n1.router_ips.len(), 2, "router IPs from the [[node]] too");
        let n9 = &cat.nodes[&NodeId {
            cluster: "cluster1".into(),
            name: "node-9".into(),
        }];
        assert_eq!(n9.mac, None, "no [[node]] at that address");
    }
}
