//! The kernel objects around the datapath, reconciled through netlink: the VXLAN device (slow
//! path and the endpoint Cilium's VTEP mode talks to), the VIP addresses, proxy NDP for IPv6 VIPs,
//! pod-CIDR routes, the routers' neighbour entries, and kept-resolved neighbours for the nodes'
//! next hops (what the XDP program's FIB lookups find).

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv6Addr};

use anyhow::{Context, Result};
use ipnet::{IpNet, Ipv4Net};
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

/// The IPv4 ranges of the VIP pool (each owned by one local route).
pub fn ipv4_pool(pool: &[IpNet]) -> Vec<Ipv4Net> {
    pool.iter()
        .filter_map(|n| match n {
            IpNet::V4(v4) => Some(*v4),
            IpNet::V6(_) => None,
        })
        .collect()
}

/// The VIPs that need an address of their own: IPv6 ones, and IPv4 ones outside the pool route.
pub fn host_addresses(vips: &BTreeSet<IpAddr>, pool4: &[Ipv4Net]) -> BTreeSet<IpAddr> {
    vips.iter()
        .copied()
        .filter(|ip| match ip {
            IpAddr::V4(v4) => !pool4.iter().any(|n| n.contains(v4)),
            IpAddr::V6(_) => true,
        })
        .collect()
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
    // The IPv4 pool is owned as a whole by one AnyIP `local` route: the kernel accepts every
    // address of it (VIPs, egress addresses) without an address per VIP. IPv6 VIPs stay host
    // addresses (NDP answers need them, and there are no 50,000-address IPv6 pools to carry).
    let pool4 = ipv4_pool(&cfg.vips.pool);
    add(
        &mut ch,
        nl.reconcile_local_routes(dev.vips, &pool4)
            .await
            .context("local route for the IPv4 VIP pool")?,
    );
    // Only addresses inside the VIP pool are ours: the legacy interface has its own addresses
    // too. IPv4 addresses the pool route covers are not wanted as addresses (an older version
    // left them there).
    let addrs = host_addresses(&d.vips, &pool4);
    add(
        &mut ch,
        nl.reconcile_addresses_in(dev.vips, &addrs, &cfg.vips.pool)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ipv4_pool_is_a_route_and_only_the_rest_are_addresses() {
        let pool: Vec<IpNet> = vec![
            "10.200.0.0/24".parse().unwrap(),
            "fd00:200::/120".parse().unwrap(),
        ];
        let pool4 = ipv4_pool(&pool);
        assert_eq!(pool4, vec!["10.200.0.0/24".parse::<Ipv4Net>().unwrap()]);
        let vips: BTreeSet<IpAddr> = ["10.200.0.10", "10.200.0.250", "10.9.9.9", "fd00:200::10"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let want: BTreeSet<IpAddr> = ["10.9.9.9", "fd00:200::10"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(host_addresses(&vips, &pool4), want);
    }
}
