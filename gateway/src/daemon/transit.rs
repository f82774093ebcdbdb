//! Gateway-to-gateway transit in the daemon: the WireGuard interface (kernel or boringtun), the
//! peering session set, the WireGuard allowed IPs that follow what peering learned, remote
//! services under local VIPs (kernel DNAT), TCP MSS clamping on the tunnel, and the status.
//!
//! Forwarding of learned prefixes is the kernel's: they are routed into the WireGuard interface
//! by the route reconciler (protocol meshgw, like the pod routes). The XDP program passes
//! traffic that is not for a portal VIP to the kernel, which routes it. XDP_REDIRECT straight
//! into the TUN device was tried on this kernel (6.18, veth ingress, a one-instruction
//! `bpf_redirect(tun)` program): in native mode every redirected frame is dropped (veth rx
//! `dropped` grows, the TUN transmits nothing); in generic mode the TUN reader gets the frame
//! with its Ethernet header, which is not an IP packet. So the kernel path it is. MSS clamping is an
//! nftables rule on the forward hook (`tcp option maxseg size set rt mtu`), and an oversize
//! packet with DF set gets the kernel's ICMP "fragmentation needed" from the forward path
//! because the tunnel's MTU is smaller than the legacy side's.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use ipnet::IpNet;
use meshgw_tunnel::mtu::{tunnel_mtu, Encap};
use meshgw_tunnel::peering::proto::{RouteKey, ServiceAttrs, ServicePort};
use meshgw_tunnel::peering::session::{PeerSpec, Peering, PeeringConfig, PeeringStatus};
use meshgw_tunnel::peering::tls::{Identity, Trust};
use meshgw_tunnel::wireguard::kernel::{kernel_available, KernelDevice};
use meshgw_tunnel::wireguard::userspace::UserspaceDevice;
use meshgw_tunnel::wireguard::{keys, DeviceStatus, WgDeviceConfig, WgPeerConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::catalog::ServiceName;
use crate::config::{Transit, WgBackendChoice};
use crate::netlink::Netlink;

/// What `meshgw status` shows of transit.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TransitStatus {
    /// WireGuard interface.
    pub interface: String,
    /// `kernel` or `userspace`.
    pub backend: String,
    /// Tunnel MTU in force.
    pub mtu: u32,
    /// WireGuard peers, as JSON (see meshgw_tunnel::wireguard::DeviceStatus).
    pub wireguard: serde_json::Value,
    /// Peering sessions, as JSON (see meshgw_tunnel::peering::session::PeeringStatus).
    pub peering: serde_json::Value,
    /// Prefixes routed into the tunnel.
    pub routes: Vec<String>,
}

enum Device {
    Userspace(UserspaceDevice),
    Kernel(KernelDevice),
}

/// The running transit.
pub struct TransitRuntime {
    cfg: Transit,
    device: Device,
    wg: WgDeviceConfig,
    /// The WireGuard interface's index.
    pub ifindex: u32,
    peering: Peering,
    changes: watch::Receiver<u64>,
    /// The nftables script last applied.
    table: String,
    /// What was last given to peering (set only on change: every change wakes the daemon).
    offered: Option<(Vec<Origin>, Vec<Imported>)>,
}

fn nft(script: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nft (package nftables) for TCP MSS clamping")?;
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write;
        stdin.write_all(script.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("nft: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// One frontend port of an offered service: protocol name, port, backends (address, target
/// port).
pub type OriginPort = (String, u16, Vec<(IpAddr, u16)>);

/// A portal service of this gateway offered to peers: tunnel traffic to its VIP is balanced
/// over its backends by the kernel (the XDP program only sees the legacy side).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// `namespace`, `name`.
    pub key: RouteKey,
    /// Its IPv4 VIP here.
    pub vip: Ipv4Addr,
    /// Per frontend port: protocol name, port, backends (address, target port).
    pub ports: Vec<OriginPort>,
}

/// A service learned from a peer and served here under a local VIP, forwarded to the VIP the
/// peer announced (which is routed into the tunnel).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Imported {
    /// `namespace`, `name`.
    pub key: RouteKey,
    /// The VIP here.
    pub vip: Ipv4Addr,
    /// The next gateway's VIP for it.
    pub next: IpAddr,
    /// Its ports.
    pub ports: Vec<ServicePort>,
}

/// The portal services of the catalog that can be offered: an IPv4 VIP and backends.
pub fn origins(cat: &crate::catalog::Catalog, alloc: &crate::vip::Allocation) -> Vec<Origin> {
    let mut out = Vec::new();
    for svc in cat.services.values() {
        let Some(IpAddr::V4(vip)) = alloc.vips.get(&(svc.name.clone(), false)).copied() else {
            continue;
        };
        let ports: Vec<OriginPort> = svc
            .ports
            .iter()
            .map(|p| {
                let backends = svc
                    .backends
                    .iter()
                    .filter(|b| b.addr.is_ipv4())
                    .filter_map(|b| b.port_named(&p.name).map(|t| (b.addr, t)))
                    .collect();
                let proto = if p.proto == 6 { "tcp" } else { "udp" };
                (proto.to_owned(), p.port, backends)
            })
            .filter(|(_, _, b): &OriginPort| !b.is_empty())
            .collect();
        if ports.is_empty() {
            continue;
        }
        out.push(Origin {
            key: RouteKey::Service {
                namespace: svc.name.namespace.to_string(),
                name: svc.name.name.to_string(),
            },
            vip,
            ports,
        });
    }
    out
}

/// The learned services to import, as VIP requests: IPv4, automatic (from the pool, through
/// the same allocator as the catalog's services, so an imported service keeps its VIP across
/// restarts and never takes an egress address or a pinned one). A service the catalog already
/// serves is not imported: the gateway reaches it directly.
pub fn import_requests(
    learned: &[(RouteKey, ServiceAttrs)],
    local: &BTreeMap<(ServiceName, bool), crate::vip::Request>,
) -> BTreeMap<(ServiceName, bool), crate::vip::Request> {
    learned
        .iter()
        .filter_map(|(k, _)| service_name(k))
        .filter(|n| {
            !local.contains_key(&(n.clone(), false)) && !local.contains_key(&(n.clone(), true))
        })
        .map(|n| ((n, false), crate::vip::Request::Auto))
        .collect()
}

fn service_name(k: &RouteKey) -> Option<ServiceName> {
    match k {
        RouteKey::Service { namespace, name } => Some(ServiceName {
            namespace: namespace.as_str().into(),
            name: name.as_str().into(),
        }),
        RouteKey::Prefix { .. } => None,
    }
}

/// The imports that got a local VIP in `alloc` (see [`import_requests`]), in key order.
pub fn plan_imports(
    learned: &[(RouteKey, ServiceAttrs)],
    requested: &BTreeMap<(ServiceName, bool), crate::vip::Request>,
    alloc: &crate::vip::Allocation,
) -> Vec<Imported> {
    let mut out: Vec<Imported> = learned
        .iter()
        .filter_map(|(key, attrs)| {
            let name = (service_name(key)?, false);
            if !requested.contains_key(&name) {
                return None;
            }
            let IpAddr::V4(vip) = *alloc.vips.get(&name)? else {
                return None;
            };
            Some(Imported {
                key: key.clone(),
                vip,
                next: attrs.vip,
                ports: attrs.ports.clone(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

/// The nftables table of transit: TCP MSS clamping on the tunnel (SYNs entering or leaving it
/// get the route's MTU, so endpoints with 1,500-byte MTUs never send segments the tunnel
/// drops), and the DNAT of service traffic: a local VIP of an imported service to the next
/// gateway's VIP, and tunnel traffic to a VIP of ours to its backends.
fn table_script(interface: &str, origins: &[Origin], imports: &[Imported]) -> String {
    let mut nat = String::new();
    for i in imports {
        for p in &i.ports {
            let proto = if p.protocol == "udp" { "udp" } else { "tcp" };
            nat.push_str(&format!(
                "    ip daddr {} {proto} dport {} dnat ip to {}\n",
                i.vip, p.port, i.next
            ));
        }
    }
    for o in origins {
        for (proto, port, backends) in &o.ports {
            let map: Vec<String> = backends
                .iter()
                .enumerate()
                .map(|(n, (a, t))| format!("{n} : {a} . {t}"))
                .collect();
            nat.push_str(&format!(
                "    iifname \"{interface}\" ip daddr {} {proto} dport {port} dnat ip to numgen random mod {} map {{ {} }}\n",
                o.vip,
                backends.len(),
                map.join(", ")
            ));
        }
    }
    format!(
        "table inet meshgw_transit {{}}\n\
         delete table inet meshgw_transit\n\
         table inet meshgw_transit {{\n\
           chain forward {{\n\
             type filter hook forward priority mangle; policy accept;\n\
             oifname \"{interface}\" tcp flags syn counter tcp option maxseg size set rt mtu\n\
             iifname \"{interface}\" tcp flags syn counter tcp option maxseg size set rt mtu\n\
           }}\n\
           chain prerouting {{\n\
             type nat hook prerouting priority dstnat; policy accept;\n\
         {nat}\
           }}\n\
         }}\n"
    )
}

/// Removes the MSS clamping table (`meshgw down`); absent is fine.
pub fn remove_mss_clamp() {
    let _ = nft("table inet meshgw_transit {}\ndelete table inet meshgw_transit\n");
}

fn mtu_of(ifindex: u32) -> Option<u32> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes into buf.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    std::fs::read_to_string(format!("/sys/class/net/{name}/mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The tunnel MTU: configured, or the smallest underlay MTU towards the peers minus the
/// WireGuard overhead of their address family.
async fn derive_mtu(cfg: &Transit, nl: &Netlink) -> u32 {
    if let Some(m) = cfg.wireguard.mtu {
        return m;
    }
    let mut best: Option<u32> = None;
    for p in &cfg.peers {
        let Some(ep) = p.endpoint else { continue };
        let encap = if ep.is_ipv4() {
            Encap::WireguardV4
        } else {
            Encap::WireguardV6
        };
        let Ok((oif, _)) = nl.route_get(ep.ip()).await else {
            continue;
        };
        if let Some(m) = mtu_of(oif).and_then(|u| tunnel_mtu(u, encap)) {
            best = Some(best.map_or(m, |b| b.min(m)));
        }
    }
    best.unwrap_or(1420)
}

impl TransitRuntime {
    /// Loads the keys (refusing a private key others can read), brings up the WireGuard
    /// interface and starts peering.
    pub async fn start(cfg: &Transit, nl: &Netlink) -> Result<TransitRuntime> {
        let wg = device_config(cfg, nl, &BTreeMap::new()).await?;
        let backend = match cfg.wireguard.backend {
            WgBackendChoice::Userspace => WgBackendChoice::Userspace,
            WgBackendChoice::Kernel => WgBackendChoice::Kernel,
            WgBackendChoice::Auto => {
                if kernel_available(nl.handle(), std::path::Path::new("/sys/module")).await {
                    WgBackendChoice::Kernel
                } else {
                    WgBackendChoice::Userspace
                }
            }
        };
        let device = match backend {
            WgBackendChoice::Kernel => Device::Kernel(
                KernelDevice::start(nl.handle(), &wg)
                    .await
                    .context("kernel WireGuard")?,
            ),
            _ => Device::Userspace(
                UserspaceDevice::start(&wg)
                    .await
                    .context("user-space WireGuard")?,
            ),
        };
        let ifindex = nl
            .link(&wg.interface)
            .await?
            .with_context(|| format!("WireGuard interface {} vanished", wg.interface))?
            .index;
        let table = table_script(&wg.interface, &[], &[]);
        if let Err(e) = nft(&table) {
            warn!(error = %format!("{e:#}"), "TCP MSS clamping is not installed");
        }
        let peering = start_peering(cfg)?;
        let changes = peering.subscribe();
        info!(interface = %wg.interface, ifindex, mtu = wg.mtu, backend = ?backend, "transit ready");
        Ok(TransitRuntime {
            cfg: cfg.clone(),
            device,
            wg,
            ifindex,
            peering,
            changes,
            table,
            offered: None,
        })
    }

    /// Services learned from peers, with the VIP the peer serves them under.
    pub fn learned_services(&self) -> Vec<(RouteKey, ServiceAttrs)> {
        self.peering
            .best()
            .into_iter()
            .filter(|(k, b)| b.via.is_some() && matches!(k, RouteKey::Service { .. }))
            .filter_map(|(k, b)| b.service.map(|s| (k, s)))
            .collect()
    }

    /// Offers this gateway's portal services to peers, serves the imported ones under their
    /// local VIPs (re-offered to other peers with those VIPs) and installs the DNAT rules.
    pub fn set_services(&mut self, origins: Vec<Origin>, imports: Vec<Imported>) {
        let offer = (origins, imports);
        if self.offered.as_ref() != Some(&offer) {
            let mut local: BTreeMap<RouteKey, Option<ServiceAttrs>> = self
                .cfg
                .peering
                .announce
                .iter()
                .map(|n| (RouteKey::Prefix { prefix: *n }, None))
                .collect();
            for o in &offer.0 {
                local.insert(
                    o.key.clone(),
                    Some(ServiceAttrs {
                        vip: IpAddr::V4(o.vip),
                        ports: o
                            .ports
                            .iter()
                            .map(|(proto, port, _)| ServicePort {
                                port: *port,
                                protocol: proto.clone(),
                            })
                            .collect(),
                    }),
                );
            }
            self.peering.set_local(local);
            self.peering.set_served(
                offer
                    .1
                    .iter()
                    .map(|i| {
                        (
                            i.key.clone(),
                            ServiceAttrs {
                                vip: IpAddr::V4(i.vip),
                                ports: i.ports.clone(),
                            },
                        )
                    })
                    .collect(),
            );
            self.offered = Some(offer);
        }
        let Some((origins, imports)) = &self.offered else {
            return;
        };
        let table = table_script(&self.wg.interface, origins, imports);
        if table != self.table {
            match nft(&table) {
                Ok(()) => {
                    info!(
                        origins = origins.len(),
                        imports = imports.len(),
                        "transit DNAT rules installed"
                    );
                    self.table = table;
                }
                Err(e) => warn!(error = %format!("{e:#}"), "transit DNAT rules not installed"),
            }
        }
    }

    /// Resolves when peering learned or withdrew something.
    pub async fn changed(&mut self) {
        if self.changes.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Prefixes (and remote service VIPs) to route into the tunnel, with the peer each goes
    /// to.
    pub fn learned(&self) -> BTreeMap<IpNet, String> {
        let mut out = BTreeMap::new();
        for (k, b) in self.peering.best() {
            let Some(via) = b.via else { continue };
            match k {
                RouteKey::Prefix { prefix } => {
                    out.insert(prefix, via);
                }
                RouteKey::Service { .. } => {
                    if let Some(s) = b.service {
                        out.insert(IpNet::from(s.vip), via);
                    }
                }
            }
        }
        out
    }

    /// Makes the WireGuard peers' allowed IPs follow what peering learned (crypto-key routing
    /// must send a learned prefix to the peer it came from, and accept its sources from it).
    pub async fn sync(&mut self, nl: &Netlink) -> Result<()> {
        let learned = self.learned();
        let want = device_config(&self.cfg, nl, &learned).await?;
        if want != self.wg {
            self.apply(&want).await?;
            self.wg = want;
        }
        Ok(())
    }

    async fn apply(&mut self, want: &WgDeviceConfig) -> Result<()> {
        match &mut self.device {
            Device::Userspace(d) => {
                let r = d.apply(want).await?;
                if !r.added.is_empty() || !r.removed.is_empty() || r.own_key_changed {
                    info!(added = ?r.added, removed = ?r.removed, rebuilt = ?r.rebuilt, own_key_changed = r.own_key_changed, "WireGuard peers updated");
                }
            }
            Device::Kernel(d) => d.apply(want).await?,
        }
        Ok(())
    }

    /// A reload: new keys and peers apply in place (other peers keep their sessions); a
    /// changed peering section restarts peering.
    pub async fn reload(&mut self, cfg: &Transit, nl: &Netlink) -> Result<()> {
        if cfg.wireguard.interface != self.cfg.wireguard.interface
            || cfg.wireguard.backend != self.cfg.wireguard.backend
        {
            bail!("wireguard.interface and wireguard.backend take effect at the next start");
        }
        let learned = self.learned();
        let want = device_config(cfg, nl, &learned).await?;
        self.apply(&want).await?;
        self.wg = want;
        // A changed announce list is an update on the running sessions; anything else about
        // peering (identity, trust, listen address, peers) needs new sessions.
        let mut same_announce = cfg.peering.clone();
        same_announce
            .announce
            .clone_from(&self.cfg.peering.announce);
        let peering_changed = same_announce != self.cfg.peering
            || cfg
                .peers
                .iter()
                .map(|p| (&p.id, p.quic_endpoint))
                .collect::<Vec<_>>()
                != self
                    .cfg
                    .peers
                    .iter()
                    .map(|p| (&p.id, p.quic_endpoint))
                    .collect::<Vec<_>>();
        if peering_changed {
            let peering = start_peering(cfg)?;
            self.changes = peering.subscribe();
            self.peering = peering;
        }
        if cfg.peering.announce != self.cfg.peering.announce {
            // The next reconcile offers the new list (set_services compares what it offered).
            self.offered = None;
        }
        self.cfg = cfg.clone();
        Ok(())
    }

    /// Status for status.json.
    pub async fn status(&mut self, routes: &BTreeSet<IpNet>) -> TransitStatus {
        let wg: Option<DeviceStatus> = match &mut self.device {
            Device::Userspace(d) => d.status().await.ok(),
            Device::Kernel(d) => d.status().await.ok(),
        };
        let peering: PeeringStatus = self.peering.status();
        TransitStatus {
            interface: self.wg.interface.clone(),
            backend: wg.as_ref().map(|w| w.backend.clone()).unwrap_or_default(),
            mtu: self.wg.mtu,
            wireguard: serde_json::to_value(&wg).unwrap_or_default(),
            peering: serde_json::to_value(&peering).unwrap_or_default(),
            routes: routes.iter().map(|r| r.to_string()).collect(),
        }
    }
}

fn start_peering(cfg: &Transit) -> Result<Peering> {
    let p = &cfg.peering;
    let identity = Identity::load(&p.cert_file, &p.key_file).context("peering certificate")?;
    let trust = if p.pinned.is_empty() {
        Trust::ca_from_files(&p.ca_files).context("peering CA")?
    } else {
        Trust::Pinned(p.pinned.clone())
    };
    let generation = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1);
    let peering = Peering::start(
        PeeringConfig {
            gateway_id: p.gateway_id.clone(),
            listen: p.listen,
            hold_time: Duration::from_secs(p.hold_time_seconds),
            generation,
            peers: cfg
                .peers
                .iter()
                .map(|q| PeerSpec {
                    id: q.id.clone(),
                    endpoint: q.quic_endpoint,
                })
                .collect(),
        },
        &identity,
        trust,
    )?;
    peering.set_local(
        p.announce
            .iter()
            .map(|n| (RouteKey::Prefix { prefix: *n }, None))
            .collect(),
    );
    Ok(peering)
}

async fn device_config(
    cfg: &Transit,
    nl: &Netlink,
    learned: &BTreeMap<IpNet, String>,
) -> Result<WgDeviceConfig> {
    let secret = keys::load_private_key(&cfg.wireguard.private_key_file)
        .context("wireguard.private_key_file")?;
    let peers = cfg
        .peers
        .iter()
        .map(|p| {
            let mut allowed: BTreeSet<IpNet> = p.allowed_ips.iter().copied().collect();
            allowed.extend(
                learned
                    .iter()
                    .filter(|(_, via)| **via == p.id)
                    .map(|(net, _)| *net),
            );
            WgPeerConfig {
                id: p.id.clone(),
                public_key: p.public_key,
                endpoint: p.endpoint,
                allowed_ips: allowed.into_iter().collect(),
                persistent_keepalive: p.persistent_keepalive,
            }
        })
        .collect();
    let wg = WgDeviceConfig {
        interface: cfg.wireguard.interface.clone(),
        listen_port: cfg.wireguard.listen_port,
        private_key: secret.to_bytes(),
        mtu: derive_mtu(cfg, nl).await,
        peers,
    };
    meshgw_tunnel::wireguard::validate(&wg)?;
    Ok(wg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_script_names_the_interface_both_ways_and_replaces_the_table() {
        let s = table_script("meshgw-wg", &[], &[]);
        assert!(s.contains(
            "oifname \"meshgw-wg\" tcp flags syn counter tcp option maxseg size set rt mtu"
        ));
        assert!(s.contains("iifname \"meshgw-wg\""));
        assert!(s.contains("delete table inet meshgw_transit"));
    }

    fn svc(name: &str) -> RouteKey {
        RouteKey::Service {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    #[test]
    fn imports_get_vips_from_the_shared_allocator_and_skip_local_services() {
        let attrs = |v: &str| ServiceAttrs {
            vip: v.parse().unwrap(),
            ports: vec![ServicePort {
                port: 80,
                protocol: "tcp".into(),
            }],
        };
        let learned = vec![
            (svc("web"), attrs("10.202.0.9")),
            (svc("api"), attrs("10.202.0.8")),
            (svc("local"), attrs("10.202.0.7")),
        ];
        let name = |n: &str| ServiceName {
            namespace: "default".into(),
            name: n.into(),
        };
        let mut local = BTreeMap::new();
        local.insert((name("local"), false), crate::vip::Request::Auto);
        let requested = import_requests(&learned, &local);
        assert_eq!(requested.len(), 2, "{requested:?}");
        let pool: Vec<IpNet> = vec!["10.201.0.0/29".parse().unwrap()];
        // The egress address and what the services held before are respected.
        let egress = BTreeSet::from(["10.201.0.6".parse().unwrap()]);
        let mut prev = crate::vip::VipState::default();
        prev.assigned
            .insert("default/web".into(), vec!["10.201.0.2".parse().unwrap()]);
        let mut all = local.clone();
        all.extend(requested.clone());
        let alloc = crate::vip::allocate(&pool, &all, &prev, false, &egress);
        let plan = plan_imports(&learned, &requested, &alloc);
        assert_eq!(plan.len(), 2);
        assert_eq!(plan[0].key, svc("api"));
        assert_eq!(
            (plan[1].key.clone(), plan[1].vip),
            (svc("web"), "10.201.0.2".parse().unwrap())
        );
        let vips: BTreeSet<IpAddr> = alloc.vips.values().copied().collect();
        assert_eq!(vips.len(), 3, "distinct VIPs: {alloc:?}");
        assert!(!vips.contains(&"10.201.0.6".parse::<IpAddr>().unwrap()));
        assert!(
            alloc.state().assigned.contains_key("default/api"),
            "persisted"
        );
        let plan = vec![Imported {
            vip: "10.201.0.5".parse().unwrap(),
            ..plan[0].clone()
        }];
        let s = table_script("wg", &[], &plan);
        assert!(
            s.contains("ip daddr 10.201.0.5 tcp dport 80 dnat ip to 10.202.0.8"),
            "{s}"
        );
        let o = Origin {
            key: svc("echo"),
            vip: "10.200.0.10".parse().unwrap(),
            ports: vec![(
                "tcp".into(),
                80,
                vec![
                    ("10.244.1.10".parse().unwrap(), 8080),
                    ("10.244.2.10".parse().unwrap(), 8080),
                ],
            )],
        };
        let s = table_script("wg", &[o], &[]);
        assert!(s.contains("iifname \"wg\" ip daddr 10.200.0.10 tcp dport 80 dnat ip to numgen random mod 2 map { 0 : 10.244.1.10 . 8080, 1 : 10.244.2.10 . 8080 }"), "{s}");
    }
}
