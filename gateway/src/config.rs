//! The gateway's configuration: one TOML file, parsed once at the edge into typed, validated
//! structs. Unknown keys are errors (`deny_unknown_fields` everywhere), and every problem is
//! reported with its file, line, column and key path, all at once, so an operator fixes a file in
//! one pass (`meshgw check FILE`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

/// The shipped default (config/default.toml), used when no file is given or installed.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `[gateway]`.
    pub gateway: Gateway,
    /// `[interfaces]`.
    pub interfaces: Interfaces,
    /// `[mesh]`.
    pub mesh: Mesh,
    /// `[vips]`.
    pub vips: Vips,
    /// `[[node]]`.
    pub nodes: Vec<Node>,
    /// `[[service]]`.
    pub services: Vec<Service>,
    /// `[[cluster]]`: Cluster Mesh APIs to import from.
    pub clusters: Vec<ClusterSpec>,
    /// `[[portal]]`: which imported services become portals.
    pub portals: Vec<PortalSelector>,
    /// `[dns]`.
    pub dns: Dns,
    /// `[[legacy_prefix]]`: labels of legacy sources, for policy.
    pub legacy_prefixes: Vec<LegacyPrefix>,
    /// `[policy].files`: CiliumNetworkPolicy YAML files (globs allowed).
    pub policy_files: Vec<String>,
    /// `[[egress]]` rules.
    pub egress: Vec<EgressRule>,
    /// `[api]`, `[metrics]`, `[flows]`, `[ipfix]`.
    pub observe: Observability,
    /// `[wireguard]`, `[[peer]]` and `[peering]`: transit to other gateways.
    pub transit: Option<Transit>,
}

/// Where the gateway tells what it does: the control socket, `/metrics`, flow events, IPFIX.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observability {
    /// `[api].socket`: the control API's Unix socket (mode 0600).
    pub api_socket: PathBuf,
    /// `[metrics].listen`: the Prometheus endpoint (`None`: off).
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `[flows].sample_rate`: one packet of tracked flows in this many is a flow event (0: off).
    pub sample_rate: u32,
    /// `[flows].events`: new flows and policy drops are sent as events.
    pub flow_events: bool,
    /// `[flows].max_flows`: flows kept in memory for `meshgw flows`, the dashboard and IPFIX.
    pub max_flows: usize,
    /// `[ipfix].collector`: where IPFIX records go (`None`: no export).
    pub ipfix_collector: Option<std::net::SocketAddr>,
    /// `[ipfix].interval_seconds`: how often flow records are exported.
    pub ipfix_interval_seconds: u64,
    /// `[ipfix].observation_domain`: the Observation Domain ID of the messages.
    pub ipfix_domain: u32,
}

/// `[[egress]]`: endpoints selected by their labels (and namespace) reach the destination
/// prefixes through the gateway with `egress_ip` as their source, as Cilium's egress gateway
/// does. IPv4 only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EgressRule {
    /// Name (status, flow records).
    pub name: String,
    /// Only endpoints of this namespace (any namespace if unset).
    pub namespace: Option<String>,
    /// Labels an endpoint must all carry (empty: every endpoint).
    pub pod_labels: BTreeMap<String, String>,
    /// Destinations translated.
    pub destination_cidrs: Vec<IpNet>,
    /// Destinations inside those that are routed untranslated.
    pub excluded_cidrs: Vec<IpNet>,
    /// The source address the flows leave with (inside `[vips].pool`).
    pub egress_ip: Ipv4Addr,
}

/// Gateway-to-gateway transit: the WireGuard interface, its peers and the peering channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transit {
    /// `[wireguard]`.
    pub wireguard: WireguardCfg,
    /// `[[peer]]`.
    pub peers: Vec<PeerCfg>,
    /// `[peering]`.
    pub peering: PeeringCfg,
}

/// Which WireGuard data plane runs the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WgBackendChoice {
    /// The kernel module where it works, else boringtun.
    Auto,
    /// The kernel module (the start fails without it).
    Kernel,
    /// boringtun in the daemon on a TUN device.
    Userspace,
}

/// `[wireguard]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireguardCfg {
    /// Interface name.
    pub interface: String,
    /// UDP port.
    pub listen_port: u16,
    /// Base64 private key file (mode 0600).
    pub private_key_file: PathBuf,
    /// Tunnel MTU; `None` derives it from the underlay.
    pub mtu: Option<u32>,
    /// Data plane.
    pub backend: WgBackendChoice,
}

/// `[[peer]]`: another gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCfg {
    /// Its gateway id.
    pub id: String,
    /// Its WireGuard public key.
    pub public_key: [u8; 32],
    /// Its WireGuard endpoint.
    pub endpoint: Option<std::net::SocketAddr>,
    /// Prefixes always routed to it (learned ones are added).
    pub allowed_ips: Vec<IpNet>,
    /// Keepalive seconds.
    pub persistent_keepalive: Option<u16>,
    /// Its peering (QUIC) address.
    pub quic_endpoint: Option<std::net::SocketAddr>,
}

/// `[peering]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeeringCfg {
    /// This gateway's id (default: `[gateway].name`).
    pub gateway_id: String,
    /// QUIC listen address.
    pub listen: std::net::SocketAddr,
    /// This gateway's certificate (PEM).
    pub cert_file: PathBuf,
    /// Its key (PEM, mode 0600).
    pub key_file: PathBuf,
    /// CAs whose certificates are accepted (for the peer's gateway id as DNS name).
    pub ca_files: Vec<PathBuf>,
    /// Or: the SHA-256 of each peer's certificate.
    pub pinned: BTreeMap<String, [u8; 32]>,
    /// How long a silent peer's routes are kept.
    pub hold_time_seconds: u64,
    /// Legacy prefixes behind this gateway, announced to the peers.
    pub announce: Vec<IpNet>,
}

/// `[[legacy_prefix]]`: the labels (and so the security identity) of legacy sources in a prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegacyPrefix {
    /// The prefix.
    pub prefix: IpNet,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
}

/// Where a cluster's Cluster Mesh API is and how to authenticate to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterSource {
    /// Cilium's own clustermesh config file (YAML: endpoints, trusted-ca-file, cert-file, key-file).
    CiliumConfig(PathBuf),
    /// The same, inline.
    Inline {
        /// `https://host:port` URLs.
        endpoints: Vec<String>,
        /// CA that signed the server certificate.
        ca_file: PathBuf,
        /// Client certificate.
        cert_file: PathBuf,
        /// Client key.
        key_file: PathBuf,
    },
}

/// `[[cluster]]`: one remote cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSpec {
    /// The cluster's name (as in `cilium/state/.../<cluster>/...`).
    pub name: String,
    /// Connection details.
    pub source: ClusterSource,
    /// TLS server name to verify, when it differs from the dialled host.
    pub server_name: Option<String>,
}

/// `[[portal]]`: selects imported global services for portals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortalSelector {
    /// Glob on the cluster name.
    pub cluster: String,
    /// Glob on the namespace.
    pub namespace: String,
    /// Glob on the service name.
    pub name: String,
    /// Labels the service must carry (all of them).
    pub labels: BTreeMap<String, String>,
    /// VIP pin (only for a selector naming one service exactly).
    pub vip4: Option<VipSpec>,
    /// VIP pin (only for a selector naming one service exactly).
    pub vip6: Option<VipSpec>,
}

/// `[dns]`: the responder for portal names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dns {
    /// Whether to serve.
    pub enabled: bool,
    /// Addresses to listen on (default: the legacy interface's addresses, port 53).
    pub listen: Option<Vec<std::net::SocketAddr>>,
    /// Names are `<service>.<namespace>.<domain>`.
    pub domain: String,
}

/// `[gateway]`: identity and where state lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gateway {
    /// Name, used in logs and in the default pin directory.
    pub name: String,
    /// Security identity sent as the VXLAN VNI (2 = Cilium's `world`, required by VTEP mode).
    pub identity: u32,
    /// Persistent state (VIP assignments, status).
    pub state_dir: PathBuf,
    /// Where maps and links are pinned.
    pub bpf_pin_dir: PathBuf,
}

/// How XDP programs are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver.
    Native,
    /// Generic (in the stack).
    Skb,
    /// Native where possible.
    Auto,
}

/// `[interfaces]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interfaces {
    /// Towards the legacy network.
    pub legacy: String,
    /// Towards the Cilium nodes.
    pub mesh: String,
    /// XDP attach mode.
    pub xdp_mode: XdpMode,
}

/// `[mesh]`: the VXLAN underlay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mesh {
    /// Outer source address (default: the mesh interface's first IPv4 address).
    pub address: Option<Ipv4Addr>,
    /// VXLAN UDP port.
    pub vxlan_port: u16,
    /// The MAC given to Cilium as `vtep-mac` (default: the mesh interface's MAC).
    pub vtep_mac: Option<[u8; 6]>,
    /// Name of the kernel VXLAN device (the slow path).
    pub vxlan_device: String,
}

/// `[vips]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vips {
    /// Ranges VIPs are allocated from.
    pub pool: Vec<IpNet>,
    /// Device holding the VIP addresses (default: the legacy interface).
    pub device: Option<String>,
    /// Send gratuitous ARP / unsolicited NA when a VIP appears.
    pub announce: bool,
    /// How long a withdrawn imported service keeps its VIP and backends, for flows to drain.
    pub withdraw_grace_seconds: u64,
}

/// `[[node]]`: a mesh node (VXLAN peer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Unique name.
    pub name: String,
    /// Underlay IPv4 address.
    pub address: Ipv4Addr,
    /// Pod CIDRs on the node.
    pub pod_cidrs: Vec<IpNet>,
    /// In-cluster router addresses (one per family at most).
    pub router_ips: Vec<IpAddr>,
    /// Inner destination MAC.
    pub mac: Option<[u8; 6]>,
}

/// A VIP request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VipSpec {
    /// From the pool.
    Auto,
    /// This address.
    Static(IpAddr),
}

/// L4 protocol of a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// A frontend port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// Name (backends map names to target ports).
    pub name: String,
    /// Port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

/// A backend of a static service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Pod address.
    pub address: IpAddr,
    /// Node name.
    pub node: String,
    /// Target port per service port name.
    pub ports: BTreeMap<String, u16>,
    /// The pod's labels (what policies' endpoint selectors match).
    pub labels: BTreeMap<String, String>,
}

/// `[[service]]`: a static service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// Name.
    pub name: String,
    /// Namespace.
    pub namespace: String,
    /// IPv4 VIP.
    pub vip4: Option<VipSpec>,
    /// IPv6 VIP.
    pub vip6: Option<VipSpec>,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// Backends.
    pub backends: Vec<Backend>,
}

/// One problem in a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// Dotted key path, e.g. `service[0].backend[1].node`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// Every problem found in a configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file (or `<embedded default>`).
    pub origin: String,
    /// The problems, in file order.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.origin)?;
            if let Some(l) = p.line {
                write!(f, ":{l}")?;
                if let Some(c) = p.column {
                    write!(f, ":{c}")?;
                }
            }
            if p.key.is_empty() {
                write!(f, ": {}", p.message)?;
            } else {
                write!(f, ": {}: {}", p.key, p.message)?;
            }
        }
        Ok(())
    }
}

mod raw {
    //! The file's shape, exactly as written.
    use super::*;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct File {
        pub gateway: Gateway,
        pub interfaces: Interfaces,
        #[serde(default)]
        pub mesh: Mesh,
        pub vips: Vips,
        #[serde(default)]
        pub node: Vec<Node>,
        #[serde(default)]
        pub service: Vec<Service>,
        #[serde(default)]
        pub cluster: Vec<Cluster>,
        #[serde(default)]
        pub portal: Vec<Portal>,
        pub dns: Option<Dns>,
        #[serde(default)]
        pub legacy_prefix: Vec<LegacyPrefix>,
        pub policy: Option<Policy>,
        #[serde(default)]
        pub egress: Vec<Egress>,
        pub api: Option<super::rules::observe::RawApi>,
        pub metrics: Option<super::rules::observe::RawMetrics>,
        pub flows: Option<super::rules::observe::RawFlows>,
        pub ipfix: Option<super::rules::observe::RawIpfix>,
        pub wireguard: Option<Wireguard>,
        #[serde(default)]
        pub peer: Vec<Peer>,
        pub peering: Option<Peering>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Egress {
        pub name: String,
        pub namespace: Option<String>,
        #[serde(default)]
        pub pod_labels: BTreeMap<String, String>,
        #[serde(default)]
        pub destination_cidrs: Vec<String>,
        #[serde(default)]
        pub excluded_cidrs: Vec<String>,
        pub egress_ip: String,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Wireguard {
        pub interface: Option<String>,
        pub listen_port: Option<u16>,
        pub private_key_file: PathBuf,
        pub mtu: Option<u32>,
        pub backend: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Peer {
        pub id: String,
        pub public_key: String,
        pub endpoint: Option<String>,
        #[serde(default)]
        pub allowed_ips: Vec<String>,
        pub persistent_keepalive: Option<u16>,
        pub quic_endpoint: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Peering {
        pub gateway_id: Option<String>,
        pub listen: Option<String>,
        pub cert_file: PathBuf,
        pub key_file: PathBuf,
        #[serde(default)]
        pub ca_files: Vec<PathBuf>,
        #[serde(default)]
        pub pinned: BTreeMap<String, String>,
        pub hold_time_seconds: Option<u64>,
        #[serde(default)]
        pub announce: Vec<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct LegacyPrefix {
        pub prefix: String,
        pub labels: BTreeMap<String, String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Policy {
        #[serde(default)]
        pub files: Vec<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Cluster {
        pub name: String,
        pub config_file: Option<PathBuf>,
        pub endpoints: Option<Vec<String>>,
        pub trusted_ca_file: Option<PathBuf>,
        pub cert_file: Option<PathBuf>,
        pub key_file: Option<PathBuf>,
        pub server_name: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Portal {
        pub cluster: Option<String>,
        pub namespace: Option<String>,
        pub name: Option<String>,
        #[serde(default)]
        pub labels: BTreeMap<String, String>,
        pub vip4: Option<String>,
        pub vip6: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Dns {
        pub enabled: Option<bool>,
        pub listen: Option<Vec<String>>,
        pub domain: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Gateway {
        pub name: String,
        pub identity: Option<u32>,
        pub state_dir: Option<PathBuf>,
        pub bpf_pin_dir: Option<PathBuf>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Interfaces {
        pub legacy: String,
        pub mesh: String,
        pub xdp_mode: Option<String>,
    }

    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct Mesh {
        pub address: Option<String>,
        pub vxlan_port: Option<u16>,
        pub vtep_mac: Option<String>,
        pub vxlan_device: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Vips {
        pub pool: Vec<String>,
        pub device: Option<String>,
        pub announce: Option<bool>,
        pub withdraw_grace_seconds: Option<u64>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Node {
        pub name: String,
        pub address: String,
        #[serde(default)]
        pub pod_cidrs: Vec<String>,
        #[serde(default)]
        pub router_ips: Vec<String>,
        pub mac: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Service {
        pub name: String,
        pub namespace: Option<String>,
        pub vip4: Option<String>,
        pub vip6: Option<String>,
        pub ports: Vec<Port>,
        #[serde(default)]
        pub backend: Vec<Backend>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Port {
        pub name: String,
        pub port: u32,
        pub protocol: String,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Backend {
        pub address: String,
        pub node: String,
        #[serde(default)]
        pub ports: BTreeMap<String, u32>,
        #[serde(default)]
        pub labels: BTreeMap<String, String>,
    }
}

mod position;
mod rules;

/// Reads, parses and validates a file.
pub fn load_file(path: &Path) -> Result<Config, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        origin: origin.clone(),
        problems: vec![Problem {
            line: None,
            column: None,
            key: String::new(),
            message: format!("cannot read: {e}"),
        }],
    })?;
    parse_str(&text, &origin)
}

/// Parses and validates `text`; `origin` names it in errors.
pub fn parse_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let fail = |problems| ConfigError {
        origin: origin.to_string(),
        problems,
    };
    let file: raw::File =
        toml::from_str(text).map_err(|e| fail(vec![position::from_toml_error(text, &e)]))?;
    rules::validate(file, text).map_err(fail)
}

#[cfg(test)]
mod tests;
