//! Neighbour entries: permanent ones (the nodes' router IPs on the VXLAN device), proxy NDP
//! entries (the IPv6 VIPs on the legacy device) and kept-resolved ones (the nodes' next hops).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv6Addr};

use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourFlags, NeighbourMessage,
    NeighbourState,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use tracing::{debug, info, warn};

use super::{is_absent, mac_str, Changes, DesiredNeighbour, Netlink, NetlinkError, Progress};

impl Netlink {
    /// Makes the PERMANENT neighbour entries on device `index` exactly `desired` (both address
    /// families). Entries in other states (learnt ones) are left alone unless a desired entry
    /// takes their address over.
    pub async fn reconcile_neighbours(
        &self,
        index: u32,
        desired: &[DesiredNeighbour],
    ) -> Result<Changes, NetlinkError> {
        let want: BTreeMap<IpAddr, [u8; 6]> = desired.iter().map(|n| (n.ip, n.mac)).collect();
        let mut permanent: BTreeMap<IpAddr, Option<[u8; 6]>> = BTreeMap::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            for msg in self
                .neighbours(index, family, NeighbourFlags::empty())
                .await?
            {
                if msg.header.state != NeighbourState::Permanent {
                    continue;
                }
                if let Some(ip) = neighbour_ip(&msg) {
                    permanent.insert(ip, neighbour_mac(&msg));
                }
            }
        }
        let mut progress = Progress::default();
        for ip in permanent.keys().filter(|ip| !want.contains_key(ip)) {
            match self
                .delete_neighbour(index, *ip, NeighbourFlags::empty())
                .await
            {
                Ok(true) => {
                    info!(ifindex = index, ip = %ip, "removed permanent neighbour");
                    progress.changes.removed += 1;
                }
                Ok(false) => {}
                Err(e) => progress.fail(e),
            }
        }
        for (ip, mac) in &want {
            if permanent.get(ip) == Some(&Some(*mac)) {
                continue;
            }
            let mut msg = neighbour_message(index, *ip);
            msg.header.state = NeighbourState::Permanent;
            msg.attributes
                .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
            let op = format!(
                "set permanent neighbour {ip} lladdr {} on ifindex {index}",
                mac_str(mac)
            );
            // REPLACE: an entry the kernel learnt for this address, or ours with an old MAC, is
            // overwritten in place.
            match self
                .change(
                    RouteNetlinkMessage::NewNeighbour(msg),
                    NLM_F_CREATE | NLM_F_REPLACE,
                    &op,
                )
                .await
            {
                Ok(()) => {
                    info!(ifindex = index, ip = %ip, mac = %mac_str(mac), "set permanent neighbour");
                    progress.changes.added += 1;
                }
                Err(e) => progress.fail(e),
            }
        }
        progress.finish()
    }

    /// Makes the proxy NDP entries (`NTF_PROXY`) on device `index` that fall inside `owned`
    /// exactly `desired`: the kernel then answers neighbour solicitations for those addresses on
    /// that device. Entries outside `owned` are somebody else's and are left alone.
    ///
    /// The kernel answers only if the device forwards IPv6 and has `proxy_ndp` on (see
    /// [`super::sysctl`]); creating the entries does not depend on it.
    pub async fn reconcile_proxy_ndp(
        &self,
        index: u32,
        desired: &BTreeSet<Ipv6Addr>,
        owned: &[ipnet::Ipv6Net],
    ) -> Result<Changes, NetlinkError> {
        let mut present = BTreeSet::new();
        for msg in self
            .neighbours(index, AddressFamily::Inet6, NeighbourFlags::Proxy)
            .await?
        {
            if !msg.header.flags.contains(NeighbourFlags::Proxy) {
                continue;
            }
            if let Some(IpAddr::V6(ip)) = neighbour_ip(&msg) {
                present.insert(ip);
            }
        }
        let mut progress = Progress::default();
        for ip in present.difference(desired) {
            if !owned.iter().any(|net| net.contains(ip)) {
                continue;
            }
            match self
                .delete_neighbour(index, IpAddr::V6(*ip), NeighbourFlags::Proxy)
                .await
            {
                Ok(true) => {
                    info!(ifindex = index, ip = %ip, "removed proxy NDP entry");
                    progress.changes.removed += 1;
                }
                Ok(false) => {}
                Err(e) => progress.fail(e),
            }
        }
        for ip in desired.difference(&present) {
            let mut msg = neighbour_message(index, IpAddr::V6(*ip));
            msg.header.flags = NeighbourFlags::Proxy;
            let op = format!("add proxy NDP entry {ip} on ifindex {index}");
            match self
                .change(
                    RouteNetlinkMessage::NewNeighbour(msg),
                    NLM_F_CREATE | NLM_F_REPLACE,
                    &op,
                )
                .await
            {
                Ok(()) => {
                    info!(ifindex = index, ip = %ip, "added proxy NDP entry");
                    progress.changes.added += 1;
                }
                Err(e) => progress.fail(e),
            }
        }
        progress.finish()
    }

    /// Asks the kernel to resolve neighbour `ip` on device `index` and to keep it resolved
    /// (`NTF_EXT_MANAGED`, Linux 5.16+), so that the XDP program's `bpf_fib_lookup` finds its MAC.
    /// A kernel without managed entries gets a one-shot resolution (`NTF_USE`) instead.
    ///
    /// A managed entry is flushed like any learnt one when the device loses carrier or goes
    /// down, so callers re-run this on every reconcile; it does nothing when the entry is
    /// already managed, or permanent (configured by hand: resolved for good).
    pub async fn ensure_managed_neighbour(
        &self,
        index: u32,
        ip: IpAddr,
    ) -> Result<(), NetlinkError> {
        let current = self.neighbour(index, ip).await?;
        // A managed update clears NUD_PERMANENT: a static entry somebody configured for this
        // address would be demoted to a probed one. It already does what is asked.
        if current
            .as_ref()
            .is_some_and(|m| is_managed(m) || m.header.state == NeighbourState::Permanent)
        {
            return Ok(());
        }
        let mut msg = neighbour_message(index, ip);
        msg.header.state = NeighbourState::None;
        msg.attributes
            .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
        let op = format!("add managed neighbour {ip} on ifindex {index}");
        match self
            .change(
                RouteNetlinkMessage::NewNeighbour(msg),
                NLM_F_CREATE | NLM_F_REPLACE,
                &op,
            )
            .await
        {
            Ok(()) => {
                info!(ifindex = index, ip = %ip, "neighbour kept resolved (managed)");
                Ok(())
            }
            Err(e) if matches!(e.errno(), Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)) => {
                warn!(ifindex = index, ip = %ip, error = %e, "managed neighbours unsupported; resolving once (NTF_USE)");
                if current.as_ref().is_some_and(is_valid) {
                    return Ok(());
                }
                let mut msg = neighbour_message(index, ip);
                msg.header.flags = NeighbourFlags::Use;
                let op = format!("resolve neighbour {ip} on ifindex {index}");
                self.change(
                    RouteNetlinkMessage::NewNeighbour(msg),
                    NLM_F_CREATE | NLM_F_REPLACE,
                    &op,
                )
                .await
            }
            Err(e) => Err(e),
        }
    }

    /// The neighbour entries on device `index` of one family; `NeighbourFlags::Proxy` dumps
    /// the proxy table instead.
    async fn neighbours(
        &self,
        index: u32,
        family: AddressFamily,
        flags: NeighbourFlags,
    ) -> Result<Vec<NeighbourMessage>, NetlinkError> {
        let mut req = NeighbourMessage::default();
        req.header.family = family;
        req.header.flags = flags;
        // Under strict checking the device filter is NDA_IFINDEX; the header's must stay 0.
        req.attributes.push(NeighbourAttribute::IfIndex(index));
        let op = format!("list {family:?} neighbours of ifindex {index}");
        let answers = self
            .dump(RouteNetlinkMessage::GetNeighbour(req), &op)
            .await?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewNeighbour(n)
                    if n.header.ifindex == index && n.header.family == family =>
                {
                    Some(n)
                }
                _ => None,
            })
            .collect())
    }

    /// The neighbour entry for `ip` on device `index`, if any.
    async fn neighbour(
        &self,
        index: u32,
        ip: IpAddr,
    ) -> Result<Option<NeighbourMessage>, NetlinkError> {
        let family = family_of(&ip);
        Ok(self
            .neighbours(index, family, NeighbourFlags::empty())
            .await?
            .into_iter()
            .find(|m| neighbour_ip(m) == Some(ip)))
    }

    /// Deletes one entry; `false` if it was already gone.
    async fn delete_neighbour(
        &self,
        index: u32,
        ip: IpAddr,
        flags: NeighbourFlags,
    ) -> Result<bool, NetlinkError> {
        let mut msg = neighbour_message(index, ip);
        msg.header.flags = flags;
        let op = format!("delete neighbour {ip} ({flags:?}) on ifindex {index}");
        match self
            .change(RouteNetlinkMessage::DelNeighbour(msg), 0, &op)
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if is_absent(&e) => {
                debug!(ifindex = index, ip = %ip, "neighbour already gone");
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

fn family_of(ip: &IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// A neighbour message for `ip` on device `index` with an empty state and no flags.
fn neighbour_message(index: u32, ip: IpAddr) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family_of(&ip);
    msg.header.ifindex = index;
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::from(ip)));
    msg
}

fn neighbour_ip(msg: &NeighbourMessage) -> Option<IpAddr> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    })
}

fn neighbour_mac(msg: &NeighbourMessage) -> Option<[u8; 6]> {
    msg.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(l) => <[u8; 6]>::try_from(l.as_slice()).ok(),
        _ => None,
    })
}

fn is_managed(msg: &NeighbourMessage) -> bool {
    msg.attributes.iter().any(
        |a| matches!(a, NeighbourAttribute::ExtFlags(f) if f.contains(NeighbourExtFlags::Managed)),
    )
}

/// The entry has a usable link-layer address (`NUD_VALID`).
fn is_valid(msg: &NeighbourMessage) -> bool {
    const NUD_VALID: u16 = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80;
    u16::from(msg.header.state) & NUD_VALID != 0
}
