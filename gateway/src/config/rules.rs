//! Semantic checks, turning the raw file into the typed [`Config`]. Every problem is collected
//! with its key path; nothing stops at the first.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use ipnet::IpNet;
use toml_edit::ImDocument;

use super::position::{problem, KeyPath};

mod transit;
use super::*;

mod egress;
pub(super) mod observe;

struct Ctx<'a> {
    text: &'a str,
    doc: Option<ImDocument<&'a str>>,
    problems: Vec<Problem>,
}

impl Ctx<'_> {
    fn err(&mut self, path: &KeyPath, message: impl Into<String>) {
        let p = problem(self.text, self.doc.as_ref(), path, message.into());
        self.problems.push(p);
    }
}

fn root(k: &str) -> KeyPath {
    KeyPath::default().key(k)
}

fn is_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn ifname_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 15 && !s.contains(['/', ' ', '\0']) && s != "." && s != ".."
}

/// Parses "aa:bb:cc:dd:ee:ff".
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return None;
    }
    let mut m = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return None;
        }
        m[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(m)
}

fn mac(c: &mut Ctx<'_>, path: KeyPath, s: &Option<String>) -> Option<[u8; 6]> {
    let s = s.as_ref()?;
    match parse_mac(s) {
        Some(m) if m[0] & 1 == 0 => Some(m),
        Some(_) => {
            c.err(
                &path,
                format!("{s:?} is a multicast MAC; a unicast one is needed"),
            );
            None
        }
        None => {
            c.err(
                &path,
                format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"),
            );
            None
        }
    }
}

fn iface(c: &mut Ctx<'_>, path: KeyPath, s: &str) {
    if !ifname_ok(s) {
        c.err(
            &path,
            format!("{s:?} is not a valid interface name (1 to 15 characters, no '/' or spaces)"),
        );
    }
}

/// `vip4` and `vip6` under `p`.
fn vip_specs(
    c: &mut Ctx<'_>,
    p: &KeyPath,
    (v4, v6): (&Option<String>, &Option<String>),
    pool_has: (bool, bool),
    static_vips: &mut BTreeMap<IpAddr, String>,
    owner: &str,
) -> (Option<VipSpec>, Option<VipSpec>) {
    (
        vip_spec(c, &p.key("vip4"), v4, false, pool_has, static_vips, owner),
        vip_spec(c, &p.key("vip6"), v6, true, pool_has, static_vips, owner),
    )
}

/// Parses a VIP request (`"auto"` or an address of family `v6`) at `path`: `auto` needs a pool
/// range of its family, and a static VIP may belong to one service (`owner`) only.
fn vip_spec(
    c: &mut Ctx<'_>,
    path: &KeyPath,
    v: &Option<String>,
    v6: bool,
    (has4, has6): (bool, bool),
    static_vips: &mut BTreeMap<IpAddr, String>,
    owner: &str,
) -> Option<VipSpec> {
    let s = v.as_ref()?;
    let family = if v6 { "IPv6" } else { "IPv4" };
    if s == "auto" {
        if (v6 && !has6) || (!v6 && !has4) {
            c.err(
                path,
                format!("\"auto\" needs an {family} range in [vips].pool"),
            );
        }
        return Some(VipSpec::Auto);
    }
    match s.parse::<IpAddr>() {
        Ok(ip) if ip.is_ipv6() == v6 => {
            if let Some(other) = static_vips.insert(ip, owner.to_string()) {
                c.err(path, format!("{ip} is already the VIP of {other}"));
            }
            Some(VipSpec::Static(ip))
        }
        Ok(ip) => {
            c.err(path, format!("{ip} is not an {family} address"));
            None
        }
        Err(_) => {
            c.err(
                path,
                format!("{s:?}: expected \"auto\" or an {family} address"),
            );
            None
        }
    }
}

/// Turns the raw file into a [`Config`], or every problem found.
pub fn validate(f: raw::File, text: &str) -> Result<Config, Vec<Problem>> {
    let mut c = Ctx {
        text,
        doc: ImDocument::parse(text).ok(),
        problems: Vec::new(),
    };

    // [gateway]
    let g = root("gateway");
    if !is_label(&f.gateway.name, 32) {
        c.err(
            &g.key("name"),
            format!("{:?}: use 1 to 32 of a-z, 0-9 and '-'", f.gateway.name),
        );
    }
    let identity = f.gateway.identity.unwrap_or(2);
    if identity == 0 || identity > 0x00ff_ffff {
        c.err(
            &g.key("identity"),
            format!("{identity} is not a VXLAN VNI (1 to 16777215)"),
        );
    }
    let state_dir = f
        .gateway
        .state_dir
        .unwrap_or_else(|| PathBuf::from("/var/lib/meshgw"));
    let bpf_pin_dir = f
        .gateway
        .bpf_pin_dir
        .unwrap_or_else(|| PathBuf::from(format!("/sys/fs/bpf/meshgw/{}", f.gateway.name)));
    for (k, p) in [("state_dir", &state_dir), ("bpf_pin_dir", &bpf_pin_dir)] {
        if !p.is_absolute() {
            c.err(
                &g.key(k),
                format!("{} must be an absolute path", p.display()),
            );
        }
    }

    // [interfaces]
    let i = root("interfaces");
    iface(&mut c, i.key("legacy"), &f.interfaces.legacy);
    iface(&mut c, i.key("mesh"), &f.interfaces.mesh);
    if f.interfaces.legacy == f.interfaces.mesh {
        c.err(&i.key("mesh"), "the mesh and legacy interfaces must differ");
    }
    let xdp_mode = match f.interfaces.xdp_mode.as_deref().unwrap_or("native") {
        "native" => XdpMode::Native,
        "skb" => XdpMode::Skb,
        "auto" => XdpMode::Auto,
        other => {
            c.err(
                &i.key("xdp_mode"),
                format!("{other:?}: expected \"native\", \"skb\" or \"auto\""),
            );
            XdpMode::Native
        }
    };

    // [mesh]
    let m = root("mesh");
    let address = f
        .mesh
        .address
        .as_ref()
        .and_then(|a| match a.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => Some(v4),
            Ok(IpAddr::V6(_)) => {
                c.err(
                    &m.key("address"),
                    format!("{a}: the mesh underlay is IPv4 (Cilium's VTEP mode is IPv4-only)"),
                );
                None
            }
            Err(_) => {
                c.err(&m.key("address"), format!("{a:?} is not an IPv4 address"));
                None
            }
        });
    let vxlan_port = f.mesh.vxlan_port.unwrap_or(8472);
    if vxlan_port == 0 {
        c.err(&m.key("vxlan_port"), "port 0 is not a port");
    }
    let vtep_mac = mac(&mut c, m.key("vtep_mac"), &f.mesh.vtep_mac);
    let vxlan_device = f.mesh.vxlan_device.unwrap_or_else(|| "meshgw-vx".into());
    iface(&mut c, m.key("vxlan_device"), &vxlan_device);

    // [vips]
    let v = root("vips");
    let mut pool: Vec<IpNet> = Vec::new();
    if f.vips.pool.is_empty() {
        c.err(&v.key("pool"), "at least one CIDR is needed");
    }
    for (n, s) in f.vips.pool.iter().enumerate() {
        match s.parse::<IpNet>() {
            Ok(net) if net != net.trunc() => c.err(
                &v.key("pool").idx(n),
                format!("{s}: host bits set (did you mean {}?)", net.trunc()),
            ),
            Ok(net) => {
                if let Some(o) = pool
                    .iter()
                    .find(|p| p.contains(&net.network()) || net.contains(&p.network()))
                {
                    c.err(&v.key("pool").idx(n), format!("{s} overlaps {o}"));
                }
                pool.push(net);
            }
            Err(_) => c.err(
                &v.key("pool").idx(n),
                format!("{s:?} is not a CIDR (e.g. 10.200.0.0/24)"),
            ),
        }
    }
    if let Some(d) = &f.vips.device {
        iface(&mut c, v.key("device"), d);
    }

    // [[node]]
    let mut nodes = Vec::new();
    let mut node_names = BTreeSet::new();
    let mut node_addrs = BTreeSet::new();
    for (n, raw) in f.node.iter().enumerate() {
        let p = root("node").idx(n);
        if !is_label(&raw.name, 253) && !raw.name.contains('.') {
            c.err(&p.key("name"), format!("{:?} is not a node name", raw.name));
        }
        if !node_names.insert(raw.name.clone()) {
            c.err(
                &p.key("name"),
                format!("node {:?} is defined twice", raw.name),
            );
        }
        let address = match raw.address.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) => a,
            Ok(IpAddr::V6(_)) => {
                c.err(
                    &p.key("address"),
                    format!(
                        "{}: node addresses are IPv4 (Cilium's VTEP mode is IPv4-only)",
                        raw.address
                    ),
                );
                Ipv4Addr::UNSPECIFIED
            }
            Err(_) => {
                c.err(
                    &p.key("address"),
                    format!("{:?} is not an IPv4 address", raw.address),
                );
                Ipv4Addr::UNSPECIFIED
            }
        };
        if !address.is_unspecified() && !node_addrs.insert(address) {
            c.err(
                &p.key("address"),
                format!("{address} is the address of another node"),
            );
        }
        let mut pod_cidrs = Vec::new();
        for (k, s) in raw.pod_cidrs.iter().enumerate() {
            match s.parse::<IpNet>() {
                Ok(net) => pod_cidrs.push(net.trunc()),
                Err(_) => c.err(&p.key("pod_cidrs").idx(k), format!("{s:?} is not a CIDR")),
            }
        }
        let mut router_ips: Vec<IpAddr> = Vec::new();
        for (k, s) in raw.router_ips.iter().enumerate() {
            match s.parse::<IpAddr>() {
                Ok(ip) if router_ips.iter().any(|r| r.is_ipv4() == ip.is_ipv4()) => c.err(
                    &p.key("router_ips").idx(k),
                    format!("{ip}: at most one router address per family"),
                ),
                Ok(ip) => router_ips.push(ip),
                Err(_) => c.err(
                    &p.key("router_ips").idx(k),
                    format!("{s:?} is not an IP address"),
                ),
            }
        }
        let mac = mac(&mut c, p.key("mac"), &raw.mac);
        nodes.push(Node {
            name: raw.name.clone(),
            address,
            pod_cidrs,
            router_ips,
            mac,
        });
    }

    // [[service]]
    let mut services = Vec::new();
    let mut seen = BTreeSet::new();
    let mut static_vips: BTreeMap<IpAddr, String> = BTreeMap::new();
    let has4 = pool.iter().any(|n| matches!(n, IpNet::V4(_)));
    let has6 = pool.iter().any(|n| matches!(n, IpNet::V6(_)));
    for (n, raw) in f.service.iter().enumerate() {
        let p = root("service").idx(n);
        let namespace = raw.namespace.clone().unwrap_or_else(|| "default".into());
        if !is_label(&raw.name, 63) {
            c.err(
                &p.key("name"),
                format!("{:?}: use 1 to 63 of a-z, 0-9 and '-'", raw.name),
            );
        }
        if !is_label(&namespace, 63) {
            c.err(
                &p.key("namespace"),
                format!("{namespace:?}: use 1 to 63 of a-z, 0-9 and '-'"),
            );
        }
        let full = format!("{namespace}/{}", raw.name);
        if !seen.insert(full.clone()) {
            c.err(&p.key("name"), format!("service {full} is defined twice"));
        }
        let pool_has = (has4, has6);
        let (mut vip4, vip6) = vip_specs(
            &mut c,
            &p,
            (&raw.vip4, &raw.vip6),
            pool_has,
            &mut static_vips,
            &full,
        );
        if raw.vip4.is_none() && raw.vip6.is_none() {
            vip4 = Some(VipSpec::Auto);
            if !has4 {
                c.err(&p, "no vip4/vip6 given and the pool has no IPv4 range for the default vip4 = \"auto\"");
            }
        }
        if raw.ports.is_empty() {
            c.err(&p.key("ports"), "a service needs at least one port");
        }
        let mut ports = Vec::new();
        let mut names = BTreeSet::new();
        let mut pp = BTreeSet::new();
        for (k, rp) in raw.ports.iter().enumerate() {
            let q = p.key("ports").idx(k);
            let protocol = match rp.protocol.as_str() {
                "tcp" | "TCP" => Protocol::Tcp,
                "udp" | "UDP" => Protocol::Udp,
                other => {
                    c.err(
                        &q.key("protocol"),
                        format!("{other:?}: expected \"tcp\" or \"udp\""),
                    );
                    Protocol::Tcp
                }
            };
            let port = match u16::try_from(rp.port) {
                Ok(0) | Err(_) => {
                    c.err(
                        &q.key("port"),
                        format!("{} is not a port (1 to 65535)", rp.port),
                    );
                    0
                }
                Ok(x) => x,
            };
            if !names.insert(rp.name.clone()) {
                c.err(
                    &q.key("name"),
                    format!("port name {:?} is used twice", rp.name),
                );
            }
            if port != 0 && !pp.insert((port, protocol.number())) {
                c.err(&q.key("port"), format!("{port}/{protocol} is listed twice"));
            }
            ports.push(ServicePort {
                name: rp.name.clone(),
                port,
                protocol,
            });
        }
        let mut backends = Vec::new();
        for (k, rb) in raw.backend.iter().enumerate() {
            let q = p.key("backend").idx(k);
            let address = match rb.address.parse::<IpAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    c.err(
                        &q.key("address"),
                        format!("{:?} is not an IP address", rb.address),
                    );
                    None
                }
            };
            if !node_names.contains(&rb.node) {
                let known: Vec<&str> = node_names.iter().map(String::as_str).collect();
                c.err(
                    &q.key("node"),
                    format!(
                        "unknown node {:?} (known: {})",
                        rb.node,
                        if known.is_empty() {
                            "none".into()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            }
            let mut bports = BTreeMap::new();
            for (name, target) in &rb.ports {
                if !names.contains(name) {
                    c.err(
                        &q.key("ports").key(name),
                        format!("{name:?} is not a port name of this service"),
                    );
                }
                match u16::try_from(*target) {
                    Ok(t) if t != 0 => {
                        bports.insert(name.clone(), t);
                    }
                    _ => c.err(
                        &q.key("ports").key(name),
                        format!("{target} is not a port (1 to 65535)"),
                    ),
                }
            }
            if let Some(a) = address {
                let fits = if a.is_ipv6() {
                    vip6.is_some()
                } else {
                    vip4.is_some()
                };
                if !fits {
                    c.err(
                        &q.key("address"),
                        format!(
                            "backend {a} is {} but service {full} has no {}",
                            if a.is_ipv6() { "IPv6" } else { "IPv4" },
                            if a.is_ipv6() { "vip6" } else { "vip4" }
                        ),
                    );
                }
                backends.push(Backend {
                    address: a,
                    node: rb.node.clone(),
                    ports: bports,
                    labels: rb.labels.clone(),
                });
            }
        }
        services.push(Service {
            name: raw.name.clone(),
            namespace,
            vip4,
            vip6,
            ports,
            backends,
        });
    }

    // [[cluster]]
    let mut clusters = Vec::new();
    let mut cluster_names = BTreeSet::new();
    for (n, raw) in f.cluster.iter().enumerate() {
        let p = root("cluster").idx(n);
        if !is_label(&raw.name, 63) && !raw.name.contains('.') {
            c.err(
                &p.key("name"),
                format!("{:?} is not a cluster name", raw.name),
            );
        }
        if !cluster_names.insert(raw.name.clone()) {
            c.err(
                &p.key("name"),
                format!("cluster {:?} is defined twice", raw.name),
            );
        }
        let inline = raw.endpoints.is_some()
            || raw.trusted_ca_file.is_some()
            || raw.cert_file.is_some()
            || raw.key_file.is_some();
        let absolute = |c: &mut Ctx<'_>, key: &str, path: &Option<PathBuf>| -> Option<PathBuf> {
            match path {
                Some(pb) if pb.is_absolute() => Some(pb.clone()),
                Some(pb) => {
                    c.err(
                        &p.key(key),
                        format!("{} must be an absolute path", pb.display()),
                    );
                    None
                }
                None => {
                    c.err(
                        &p.key(key),
                        format!("{key} is needed when the connection is given inline"),
                    );
                    None
                }
            }
        };
        let source = match (&raw.config_file, inline) {
            (Some(_), true) => {
                c.err(
                    &p.key("config_file"),
                    "give either config_file (Cilium's clustermesh YAML) or endpoints + trusted_ca_file + cert_file + key_file, not both",
                );
                None
            }
            (Some(file), false) => absolute(&mut c, "config_file", &Some(file.clone()))
                .map(ClusterSource::CiliumConfig),
            (None, true) => {
                let endpoints = raw.endpoints.clone().unwrap_or_default();
                if endpoints.is_empty() {
                    c.err(
                        &p.key("endpoints"),
                        "at least one https:// endpoint is needed",
                    );
                }
                for (k, e) in endpoints.iter().enumerate() {
                    if !e.starts_with("https://") {
                        c.err(
                            &p.key("endpoints").idx(k),
                            format!("{e:?}: the Cluster Mesh API is reached over mutual TLS: use https://host:port"),
                        );
                    }
                }
                let ca = absolute(&mut c, "trusted_ca_file", &raw.trusted_ca_file);
                let cert = absolute(&mut c, "cert_file", &raw.cert_file);
                let key = absolute(&mut c, "key_file", &raw.key_file);
                match (ca, cert, key) {
                    (Some(ca_file), Some(cert_file), Some(key_file)) => {
                        Some(ClusterSource::Inline {
                            endpoints,
                            ca_file,
                            cert_file,
                            key_file,
                        })
                    }
                    _ => None,
                }
            }
            (None, false) => {
                c.err(
                    &p,
                    "needs config_file, or endpoints + trusted_ca_file + cert_file + key_file",
                );
                None
            }
        };
        if let Some(source) = source {
            clusters.push(ClusterSpec {
                name: raw.name.clone(),
                source,
                server_name: raw.server_name.clone(),
            });
        }
    }

    // [[portal]]
    let mut portals = Vec::new();
    for (n, raw) in f.portal.iter().enumerate() {
        let p = root("portal").idx(n);
        let glob_of = |c: &mut Ctx<'_>, key: &str, v: &Option<String>| -> String {
            let g = v.clone().unwrap_or_else(|| "*".into());
            if let Err(e) = glob::Pattern::new(&g) {
                c.err(&p.key(key), format!("{g:?} is not a glob pattern: {e}"));
            }
            g
        };
        let cluster = glob_of(&mut c, "cluster", &raw.cluster);
        let namespace = glob_of(&mut c, "namespace", &raw.namespace);
        let name = glob_of(&mut c, "name", &raw.name);
        let exact = |g: &str| !g.contains(['*', '?', '[']);
        let pinned = raw.vip4.is_some() || raw.vip6.is_some();
        if pinned
            && !(exact(&namespace) && exact(&name) && raw.namespace.is_some() && raw.name.is_some())
        {
            c.err(
                &p.key(if raw.vip4.is_some() { "vip4" } else { "vip6" }),
                "a VIP pin needs a selector that names one service exactly (namespace and name without wildcards)",
            );
        }
        let full = format!("{namespace}/{name}");
        let pool_has = (has4, has6);
        let (vip4, vip6) = vip_specs(
            &mut c,
            &p,
            (&raw.vip4, &raw.vip6),
            pool_has,
            &mut static_vips,
            &full,
        );
        portals.push(PortalSelector {
            cluster,
            namespace,
            name,
            labels: raw.labels.clone(),
            vip4,
            vip6,
        });
    }

    // [dns]
    let d = root("dns");
    let raw_dns = f.dns.unwrap_or(raw::Dns {
        enabled: None,
        listen: None,
        domain: None,
    });
    let domain = raw_dns.domain.unwrap_or_else(|| "mesh.local".into());
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if domain.is_empty() || !domain.split('.').all(|l| is_label(l, 63)) {
        c.err(&d.key("domain"), format!("{domain:?} is not a DNS domain"));
    }
    let listen = raw_dns.listen.map(|v| {
        v.iter()
            .enumerate()
            .filter_map(|(k, s)| match s.parse::<std::net::SocketAddr>() {
                Ok(a) => Some(a),
                Err(_) => {
                    c.err(
                        &d.key("listen").idx(k),
                        format!("{s:?} is not an address:port (e.g. \"10.100.0.1:53\" or \"[fd00::1]:53\")"),
                    );
                    None
                }
            })
            .collect::<Vec<_>>()
    });
    let dns = Dns {
        enabled: raw_dns.enabled.unwrap_or(true),
        listen,
        domain,
    };

    // [[legacy_prefix]]
    let mut legacy_prefixes = Vec::new();
    let mut seen_prefixes = BTreeSet::new();
    for (n, raw) in f.legacy_prefix.iter().enumerate() {
        let q = root("legacy_prefix").idx(n);
        match raw.prefix.parse::<IpNet>() {
            Ok(net) if net.trunc() != net => c.err(
                &q.key("prefix"),
                format!("{net} has host bits set (did you mean {}?)", net.trunc()),
            ),
            Ok(net) => {
                if !seen_prefixes.insert(net) {
                    c.err(&q.key("prefix"), format!("{net} is listed twice"));
                }
                if raw.labels.is_empty() {
                    c.err(&q.key("labels"), "give at least one label");
                }
                legacy_prefixes.push(LegacyPrefix {
                    prefix: net,
                    labels: raw.labels.clone(),
                });
            }
            Err(_) => c.err(
                &q.key("prefix"),
                format!("{:?} is not a prefix (e.g. \"10.20.0.0/24\")", raw.prefix),
            ),
        }
    }
    let egress = egress::validate(&mut c, &f.egress, &pool, &static_vips);
    let observe = observe::validate(
        &mut c,
        observe::Raw {
            api: f.api,
            metrics: f.metrics,
            flows: f.flows,
            ipfix: f.ipfix,
        },
        &state_dir,
    );
    let policy_files = f.policy.map(|p| p.files).unwrap_or_default();
    for (n, pat) in policy_files.iter().enumerate() {
        if let Err(e) = glob::Pattern::new(pat) {
            c.err(&root("policy").key("files").idx(n), format!("{pat:?}: {e}"));
        }
    }

    let transit = transit::validate(&mut c, f.wireguard, f.peer, f.peering, &f.gateway.name);

    if !c.problems.is_empty() {
        c.problems
            .sort_by_key(|p| (p.line.unwrap_or(usize::MAX), p.column.unwrap_or(0)));
        return Err(c.problems);
    }
    Ok(Config {
        gateway: Gateway {
            name: f.gateway.name,
            identity,
            state_dir,
            bpf_pin_dir,
        },
        interfaces: Interfaces {
            legacy: f.interfaces.legacy,
            mesh: f.interfaces.mesh,
            xdp_mode,
        },
        mesh: Mesh {
            address,
            vxlan_port,
            vtep_mac,
            vxlan_device,
        },
        vips: Vips {
            pool,
            device: f.vips.device,
            announce: f.vips.announce.unwrap_or(true),
            withdraw_grace_seconds: f.vips.withdraw_grace_seconds.unwrap_or(30),
        },
        nodes,
        services,
        clusters,
        portals,
        dns,
        legacy_prefixes,
        policy_files,
        egress,
        observe,
        transit,
    })
}
