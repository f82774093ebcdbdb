//! The JSON values of Cilium's kvstore, with serde field names exactly as Cilium writes them.
//! Unknown fields are ignored on purpose: Cilium adds fields from release to release.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;
use serde::de::Deserializer;
use serde::Deserialize;

use super::kv_compact::string_map_shape;
pub use super::kv_compact::{Labels, Ports, PortsByIp};
use super::kv_serde::{addresses, cidr, cidrs, null_default, opt_ip, opt_mask, prefix_len};

/// `cilium/cluster-config/<cluster>`: the cluster's id and what its Cluster Mesh API offers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct ClusterConfig {
    /// Cluster id (1-255, or up to 511 with `maxConnectedClusters` 511). Go omits it when 0.
    #[serde(default)]
    pub id: u32,
    /// Capabilities. Go omits the object when all are unset.
    #[serde(default, deserialize_with = "null_default")]
    pub capabilities: Capabilities,
}

/// The capabilities a cluster config announces.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Capabilities {
    /// The server writes `cilium/synced/...` canaries once each prefix is complete.
    #[serde(default, rename = "syncedCanaries")]
    pub synced_canaries: bool,
    /// The data is KVStoreMesh's copy under `cilium/cache/`.
    #[serde(default)]
    pub cached: bool,
    /// 255 or 511: how many bits of an identity carry the cluster id.
    #[serde(default, rename = "maxConnectedClusters")]
    pub max_connected_clusters: u32,
    /// Whether only services with a ServiceExport are exported; `None` when the writer predates
    /// the field.
    #[serde(default, rename = "serviceExportsEnabled")]
    pub service_exports_enabled: Option<bool>,
}

/// An L4 protocol as Cilium's load balancer writes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum L4Protocol {
    /// `TCP`.
    Tcp,
    /// `UDP`.
    Udp,
    /// `SCTP`.
    Sctp,
    /// `ANY`.
    Any,
    /// `NONE` or empty.
    None,
    /// A name this gateway does not know (a newer Cilium's): the port is kept, so the caller can
    /// report it, rather than the whole service being rejected.
    Unknown,
}

impl L4Protocol {
    fn from_name(s: &str) -> Self {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => L4Protocol::Tcp,
            "UDP" => L4Protocol::Udp,
            "SCTP" => L4Protocol::Sctp,
            "ANY" => L4Protocol::Any,
            "NONE" | "" => L4Protocol::None,
            _ => L4Protocol::Unknown,
        }
    }
}

impl<'de> Deserialize<'de> for L4Protocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // A non-string (e.g. 6) is a wrong type and stays an error.
        let s = String::deserialize(d)?;
        Ok(L4Protocol::from_name(&s))
    }
}

/// One named port of a frontend or backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub struct PortConfig {
    /// Protocol.
    #[serde(rename = "Protocol")]
    pub protocol: L4Protocol,
    /// Port number.
    #[serde(rename = "Port")]
    pub port: u16,
}

/// `services/v1`: a global service as one cluster exports it. Held for every service of every
/// cluster, so kept compact: boxed strings, sorted slices, and the fields nothing reads only
/// checked, not held.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct ClusterService {
    /// Exporting cluster.
    pub cluster: Box<str>,
    /// Namespace.
    pub namespace: Box<str>,
    /// Name.
    pub name: Box<str>,
    /// Frontend IP -> port name -> port.
    #[serde(default)]
    pub frontends: PortsByIp,
    /// Backend IP -> port name -> port.
    #[serde(default)]
    pub backends: PortsByIp,
    /// Backend IP -> hostname (Cilium writes a map here, not a list). Unread: checked only.
    #[serde(default, deserialize_with = "string_map_shape")]
    hostnames: (),
    /// Service labels.
    #[serde(default)]
    pub labels: Labels,
    /// The service's pod selector. Unread: checked only.
    #[serde(default, deserialize_with = "string_map_shape")]
    selector: (),
    /// Whether backends of other clusters are included.
    #[serde(default, rename = "includeExternal")]
    pub include_external: bool,
    /// Whether the service is shared with other clusters.
    #[serde(default)]
    pub shared: bool,
    /// The exporting cluster's id.
    #[serde(default, rename = "clusterID")]
    pub cluster_id: u32,
}

/// The label that marks a service as a portal without a `[[portal]]` selector.
pub const PORTAL_LABEL: &str = "io.cilium/portal";

impl ClusterService {
    /// Whether the cluster shares the service with other clusters.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Whether the service's labels carry [`PORTAL_LABEL`] with any value but `false`
    /// (annotations are not exported, so a label is the only marker that can reach us).
    pub fn portal_marker(&self) -> bool {
        self.labels
            .get(PORTAL_LABEL)
            .is_some_and(|v| !v.trim().eq_ignore_ascii_case("false"))
    }
}

/// One address of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAddress {
    /// `InternalIP`, `ExternalIP`, `CiliumInternalIP`, ...
    pub addr_type: String,
    /// The address.
    pub ip: IpAddr,
}

/// `nodes/v1`: a node of a cluster.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct KvNode {
    /// Node name.
    #[serde(rename = "Name")]
    pub name: String,
    /// Cluster name.
    #[serde(default, rename = "Cluster")]
    pub cluster: String,
    /// Addresses; entries without an IP are dropped.
    #[serde(default, rename = "IPAddresses", deserialize_with = "addresses")]
    pub ip_addresses: Vec<NodeAddress>,
    /// Primary IPv4 pod CIDR.
    #[serde(default, rename = "IPv4AllocCIDR", deserialize_with = "cidr")]
    pub ipv4_alloc_cidr: Option<IpNet>,
    /// Secondary IPv4 pod CIDRs.
    #[serde(
        default,
        rename = "IPv4SecondaryAllocCIDRs",
        deserialize_with = "cidrs"
    )]
    pub ipv4_secondary_alloc_cidrs: Vec<IpNet>,
    /// Primary IPv6 pod CIDR.
    #[serde(default, rename = "IPv6AllocCIDR", deserialize_with = "cidr")]
    pub ipv6_alloc_cidr: Option<IpNet>,
    /// Secondary IPv6 pod CIDRs.
    #[serde(
        default,
        rename = "IPv6SecondaryAllocCIDRs",
        deserialize_with = "cidrs"
    )]
    pub ipv6_secondary_alloc_cidrs: Vec<IpNet>,
    /// cilium-health endpoint, IPv4.
    #[serde(default, rename = "IPv4HealthIP", deserialize_with = "opt_ip")]
    pub ipv4_health_ip: Option<IpAddr>,
    /// cilium-health endpoint, IPv6.
    #[serde(default, rename = "IPv6HealthIP", deserialize_with = "opt_ip")]
    pub ipv6_health_ip: Option<IpAddr>,
    /// Ingress proxy address, IPv4.
    #[serde(default, rename = "IPv4IngressIP", deserialize_with = "opt_ip")]
    pub ipv4_ingress_ip: Option<IpAddr>,
    /// Ingress proxy address, IPv6.
    #[serde(default, rename = "IPv6IngressIP", deserialize_with = "opt_ip")]
    pub ipv6_ingress_ip: Option<IpAddr>,
    /// Cluster id.
    #[serde(default, rename = "ClusterID")]
    pub cluster_id: u32,
    /// Where the node came from (`custom-resource`, `kvstore`, ...).
    #[serde(default, rename = "Source")]
    pub source: String,
    /// IPsec key index, 0 when not encrypting.
    #[serde(default, rename = "EncryptionKey")]
    pub encryption_key: u8,
    /// Node labels.
    #[serde(default, rename = "Labels", deserialize_with = "null_default")]
    pub labels: BTreeMap<String, String>,
    /// Node annotations.
    #[serde(default, rename = "Annotations", deserialize_with = "null_default")]
    pub annotations: BTreeMap<String, String>,
    /// WireGuard public key, empty without WireGuard.
    #[serde(default, rename = "WireguardPubKey")]
    pub wireguard_pub_key: String,
    /// Boot id: changes when the node reboots.
    #[serde(default, rename = "BootID")]
    pub boot_id: String,
}

impl KvNode {
    fn ips_of<'a>(&'a self, t: &'a str) -> impl Iterator<Item = IpAddr> + 'a {
        self.ip_addresses
            .iter()
            .filter(move |a| a.addr_type == t)
            .map(|a| a.ip)
    }

    /// The first IPv4 `InternalIP`: the node's VXLAN tunnel endpoint.
    pub fn internal_ipv4(&self) -> Option<Ipv4Addr> {
        self.ips_of("InternalIP").find_map(|ip| match ip {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
    }

    /// The `CiliumInternalIP`s (the node's `cilium_host` addresses), both families.
    pub fn cilium_internal_ips(&self) -> Vec<IpAddr> {
        self.ips_of("CiliumInternalIP").collect()
    }

    /// Pod CIDRs: primary then secondary, IPv4 then IPv6.
    pub fn pod_cidrs(&self) -> Vec<IpNet> {
        self.ipv4_alloc_cidr
            .iter()
            .chain(&self.ipv4_secondary_alloc_cidrs)
            .chain(&self.ipv6_alloc_cidr)
            .chain(&self.ipv6_secondary_alloc_cidrs)
            .copied()
            .collect()
    }
}

/// A named port of an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct NamedPort {
    /// Port name.
    #[serde(rename = "Name")]
    pub name: Box<str>,
    /// Port number.
    #[serde(rename = "Port")]
    pub port: u16,
    /// Protocol.
    #[serde(default = "no_protocol", rename = "Protocol")]
    pub protocol: L4Protocol,
}

fn no_protocol() -> L4Protocol {
    L4Protocol::None
}

/// `ip/v1`: which security identity an IP (or CIDR) has, and which node hosts it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawIpPair")]
pub struct IpIdentityPair {
    /// The address (the network address for a CIDR entry).
    pub ip: IpAddr,
    /// Prefix length when the entry is a CIDR; `None` for a single address.
    pub mask: Option<u8>,
    /// The node hosting the endpoint (its InternalIP); `None` when Cilium wrote `""`.
    pub host_ip: Option<IpAddr>,
    /// Security identity; its upper bits are the cluster id.
    pub id: u32,
    /// IPsec key index.
    pub key: u8,
    /// Opaque metadata.
    pub metadata: Box<str>,
    /// The endpoint's namespace.
    pub k8s_namespace: Box<str>,
    /// The endpoint's pod.
    pub k8s_pod_name: Box<str>,
    /// The pod's service account.
    pub k8s_service_account: Box<str>,
    /// Named ports of the pod.
    pub named_ports: Box<[NamedPort]>,
}

impl IpIdentityPair {
    /// The cluster id in the identity, for the default 255 connected clusters (`id >> 16`).
    pub fn cluster_id(&self) -> u32 {
        self.id >> 16
    }

    /// The cluster id in the identity for the cluster's `maxConnectedClusters` (511 gives the
    /// cluster id one more bit, taken from the local part).
    pub fn cluster_id_for(&self, max_connected_clusters: u32) -> u32 {
        if max_connected_clusters == 511 {
            (self.id >> 15) & 0x1ff
        } else {
            (self.id >> 16) & 0xff
        }
    }

    /// The entry as a prefix: `/32` or `/128` for a single address.
    pub fn prefix(&self) -> IpNet {
        let full = match self.ip {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        // try_from checked the mask against the family, so this cannot fall back in practice.
        IpNet::new(self.ip, self.mask.unwrap_or(full)).unwrap_or_else(|_| IpNet::from(self.ip))
    }
}

#[derive(Deserialize)]
struct RawIpPair {
    #[serde(rename = "IP")]
    ip: IpAddr,
    #[serde(default, rename = "Mask", deserialize_with = "opt_mask")]
    mask: Option<Vec<u8>>,
    #[serde(default, rename = "HostIP", deserialize_with = "opt_ip")]
    host_ip: Option<IpAddr>,
    #[serde(rename = "ID")]
    id: u32,
    #[serde(default, rename = "Key")]
    key: u8,
    #[serde(default, rename = "Metadata")]
    metadata: Box<str>,
    #[serde(default, rename = "K8sNamespace")]
    k8s_namespace: Box<str>,
    #[serde(default, rename = "K8sPodName")]
    k8s_pod_name: Box<str>,
    #[serde(default, rename = "K8sServiceAccount")]
    k8s_service_account: Box<str>,
    #[serde(default, rename = "NamedPorts", deserialize_with = "null_default")]
    named_ports: Box<[NamedPort]>,
}

impl TryFrom<RawIpPair> for IpIdentityPair {
    type Error = String;

    fn try_from(r: RawIpPair) -> Result<Self, String> {
        let mask = match r.mask {
            Some(m) => Some(prefix_len(r.ip, &m)?),
            None => None,
        };
        Ok(IpIdentityPair {
            ip: r.ip,
            mask,
            host_ip: r.host_ip,
            id: r.id,
            key: r.key,
            metadata: r.metadata,
            k8s_namespace: r.k8s_namespace,
            k8s_pod_name: r.k8s_pod_name,
            k8s_service_account: r.k8s_service_account,
            named_ports: r.named_ports,
        })
    }
}
