//! The kernel objects around the datapath, reconciled through netlink: the VXLAN device (slow
//! path and the endpoint Cilium's VTEP mode talks to), the VIP addresses, proxy NDP for IPv6 VIPs,
//! pod-CIDR routes, the routers' neighbour entries, and kept-resolved neighbours for the nodes'
//! next hops (what the XDP program's FIB lookups find).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv6Addr};

use anyhow::{Context, Result};
use ipnet::IpNet;
use tracing::{info, warn};

use crate::config::Config;
use crate::desired::Desired;
use crate::netlink::{DesiredNeighbour, DesiredRoute, IpEncap, Netlink};
use crate::reconcile::Changes;

/// Interface indexes the reconcile needs.
#[derive(Clone, Copy, Debug)]
pub struct Devices {
    /// Legacy interface.
    pub legacy: u32,
    /// Mesh interface.
    pub mesh: u32,
    /// The VIP dummy device.
    pub vips: u32,
    /// The kernel VXLAN device.
    pub vxlan: u32,
}

/// Makes addresses, proxy entries, routes and neighbours match `d`; `tunnel` are the routes
/// into the WireGuard interface (prefixes learned over peering), reconciled with the pod routes
/// because both are routes of protocol meshgw.
pub async fn reconcile(
    nl: &Netlink,
    cfg: &Config,
    dev: &Devices,
    d: &Desired,
    tunnel: &[DesiredRoute],
) -> Result<Changes> {
    let mut ch = Changes::default();
    let add = |ch: &mut Changes, c: crate::netlink::Changes| {
        ch.written += c.added;
        ch.removed += c.removed;
    };
    // Only addresses inside the VIP pool are ours: the legacy interface has its own addresses too.
    add(
        &mut ch,
        nl.reconcile_addresses_in(dev.vips, &d.vips, &cfg.vips.pool)
            .await
            .context("VIP addresses")?,
    );

    // IPv6 VIPs on a separate device need proxy NDP on the legacy side; on the legacy interface
    // itself the kernel answers for them directly.
    let v6_vips: BTreeSet<Ipv6Addr> = if dev.vips == dev.legacy {
        BTreeSet::new()
    } else {
        d.vips
            .iter()
            .filter_map(|ip| {
                if let IpAddr::V6(v6) = ip {
                    Some(*v6)
                } else {
                    None
                }
            })
            .collect()
    };
    let owned: Vec<ipnet::Ipv6Net> = cfg
        .vips
        .pool
        .iter()
        .filter_map(|n| {
            if let IpNet::V6(v6) = n {
                Some(*v6)
            } else {
                None
            }
        })
        .collect();
    add(
        &mut ch,
        nl.reconcile_proxy_ndp(dev.legacy, &v6_vips, &owned)
            .await
            .context("proxy NDP for IPv6 VIPs")?,
    );

    let mut routes: Vec<DesiredRoute> = d
        .routes
        .iter()
        .map(|r| DesiredRoute {
            dst: r.dst,
            oif: dev.vxlan,
            via: r.via,
            onlink: true,
            encap: Some(IpEncap {
                id: u64::from(cfg.gateway.identity),
                dst: r.node_ip,
            }),
        })
        .collect();
    routes.extend_from_slice(tunnel);
    let neighbours: Vec<DesiredNeighbour> = d
        .routes
        .iter()
        .filter_map(|r| r.via.map(|ip| DesiredNeighbour { ip, mac: r.mac }))
        .collect();
    // Neighbours before routes: a route whose next hop cannot be resolved would be used meanwhile.
    add(
        &mut ch,
        nl.reconcile_neighbours(dev.vxlan, &neighbours)
            .await
            .context("router neighbours")?,
    );
    add(
        &mut ch,
        nl.reconcile_routes(&routes)
            .await
            .context("pod CIDR and tunnel routes")?,
    );

    for node in &d.nodes {
        let target = IpAddr::V4(*node);
        match nl.route_get(target).await {
            Ok((oif, gw)) => {
                if oif != dev.mesh {
                    warn!(node = %node, oif, mesh = dev.mesh, "node is not routed through the mesh interface");
                }
                if let Err(e) = nl.ensure_managed_neighbour(oif, gw.unwrap_or(target)).await {
                    warn!(node = %node, error = %e, "cannot keep the node's next hop resolved");
                }
            }
            Err(e) => warn!(node = %node, error = %e, "no route to node"),
        }
    }
    if !ch.is_empty() {
        info!(
            written = ch.written,
            removed = ch.removed,
            "kernel objects reconciled"
        );
    }
    Ok(ch)
}
