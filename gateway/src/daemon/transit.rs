//! Gateway-to-gateway transit in the daemon: the WireGuard interface (kernel or boringtun), the
//! peering session set, the WireGuard allowed IPs that follow what peering learned, TCP MSS
//! clamping on the tunnel, and the status of both.
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
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use ipnet::IpNet;
use meshgw_tunnel::mtu::{tunnel_mtu, Encap};
use meshgw_tunnel::peering::proto::RouteKey;
use meshgw_tunnel::peering::session::{PeerSpec, Peering, PeeringConfig, PeeringStatus};
use meshgw_tunnel::peering::tls::{Identity, Trust};
use meshgw_tunnel::wireguard::kernel::{kernel_available, KernelDevice};
use meshgw_tunnel::wireguard::userspace::UserspaceDevice;
use meshgw_tunnel::wireguard::{keys, DeviceStatus, WgDeviceConfig, WgPeerConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

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

/// The nftables table that clamps the MSS of TCP SYNs entering or leaving the tunnel to the
/// route's MTU, so that endpoints with 1,500-byte MTUs never send segments the tunnel drops.
fn mss_clamp_script(interface: &str) -> String {
    format!(
        "table inet meshgw_transit {{}}\n\
         delete table inet meshgw_transit\n\
         table inet meshgw_transit {{\n\
           chain forward {{\n\
             type filter hook forward priority mangle; policy accept;\n\
             oifname \"{interface}\" tcp flags syn counter tcp option maxseg size set rt mtu\n\
             iifname \"{interface}\" tcp flags syn counter tcp option maxseg size set rt mtu\n\
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
        if let Err(e) = nft(&mss_clamp_script(&wg.interface)) {
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
        })
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
        let peering_changed = cfg.peering != self.cfg.peering
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
    fn mss_clamp_script_names_the_interface_both_ways_and_replaces_the_table() {
        let s = mss_clamp_script("meshgw-wg");
        assert!(s.contains(
            "oifname \"meshgw-wg\" tcp flags syn counter tcp option maxseg size set rt mtu"
        ));
        assert!(s.contains("iifname \"meshgw-wg\""));
        assert!(s.contains("delete table inet meshgw_transit"));
    }
}
