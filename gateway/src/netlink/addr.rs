//! Addresses: the VIPs on their dummy device, as host addresses.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use rtnetlink::packet_route::address::{
    AddressAttribute, AddressHeaderFlags, AddressMessage, AddressScope,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use tracing::{debug, info};

use super::{is_absent, Changes, Netlink, NetlinkError, Progress};

impl Netlink {
    /// The IPv4 addresses on device `index`, in the kernel's order (primary first).
    pub async fn ipv4_addrs(&self, index: u32) -> Result<Vec<Ipv4Addr>, NetlinkError> {
        let addrs = self.addresses(index, AddressFamily::Inet).await?;
        Ok(addrs
            .iter()
            .filter_map(|m| match address_of(m) {
                Some(IpAddr::V4(v4)) => Some(v4),
                _ => None,
            })
            .collect())
    }

    /// Makes the addresses on device `index` exactly `desired`, as /32 and /128 host addresses
    /// (IPv6 ones with `IFA_F_NODAD`: a VIP must be usable at once, and duplicate detection on a
    /// dummy device could only ever race with itself). Touches no other device. IPv6 link-local
    /// addresses are the kernel's own and are left alone.
    pub async fn reconcile_addresses(
        &self,
        index: u32,
        desired: &BTreeSet<IpAddr>,
    ) -> Result<Changes, NetlinkError> {
        self.reconcile_host_addresses(index, desired, None).await
    }

    /// Like [`Netlink::reconcile_addresses`] on a device that has addresses of its own (the
    /// legacy interface): only addresses inside `owned` (the VIP pool) are ours and may be
    /// removed; every other address of the device is left alone. A desired address outside
    /// `owned` is still added, but would never be removed again: callers keep VIPs in the pool.
    pub async fn reconcile_addresses_in(
        &self,
        index: u32,
        desired: &BTreeSet<IpAddr>,
        owned: &[ipnet::IpNet],
    ) -> Result<Changes, NetlinkError> {
        self.reconcile_host_addresses(index, desired, Some(owned))
            .await
    }

    /// The reconcile behind both: `owned` `None` means every address of the device is ours.
    async fn reconcile_host_addresses(
        &self,
        index: u32,
        desired: &BTreeSet<IpAddr>,
        owned: Option<&[ipnet::IpNet]>,
    ) -> Result<Changes, NetlinkError> {
        let mut progress = Progress::default();
        // Existing addresses by IP; the prefix length matters too (a VIP must be a host address).
        let mut present: BTreeMap<IpAddr, AddressMessage> = BTreeMap::new();
        for msg in self.addresses(index, AddressFamily::Unspec).await? {
            let Some(ip) = address_of(&msg) else { continue };
            if is_ipv6_link_local(&ip) && !desired.contains(&ip) {
                continue;
            }
            present.insert(ip, msg);
        }
        // Removals first: IPv6 keys addresses by IP alone, so a VIP present with the wrong prefix
        // length has to go before its host form can be added.
        for (ip, msg) in &present {
            if desired.contains(ip) && msg.header.prefix_len == host_prefix(ip) {
                continue;
            }
            if owned.is_some_and(|nets| !nets.iter().any(|n| n.contains(ip))) {
                continue;
            }
            let op = format!(
                "delete address {ip}/{} on ifindex {index}",
                msg.header.prefix_len
            );
            match self
                .change(RouteNetlinkMessage::DelAddress(msg.clone()), 0, &op)
                .await
            {
                Ok(()) => {
                    info!(ifindex = index, addr = %ip, prefix_len = msg.header.prefix_len, "removed address");
                    progress.changes.removed += 1;
                }
                Err(e) if is_absent(&e) => {
                    debug!(ifindex = index, addr = %ip, "address already gone")
                }
                Err(e) => progress.fail(e),
            }
        }
        for ip in desired {
            if present
                .get(ip)
                .is_some_and(|m| m.header.prefix_len == host_prefix(ip))
            {
                continue;
            }
            let op = format!("add address {ip}/{} on ifindex {index}", host_prefix(ip));
            let msg = RouteNetlinkMessage::NewAddress(host_address(index, *ip));
            match self.change(msg, NLM_F_CREATE | NLM_F_REPLACE, &op).await {
                Ok(()) => {
                    info!(ifindex = index, addr = %ip, "added VIP address");
                    progress.changes.added += 1;
                }
                Err(e) => progress.fail(e),
            }
        }
        progress.finish()
    }

    /// The address messages of device `index` (family `Unspec` for both).
    async fn addresses(
        &self,
        index: u32,
        family: AddressFamily,
    ) -> Result<Vec<AddressMessage>, NetlinkError> {
        let mut req = AddressMessage::default();
        req.header.family = family;
        req.header.index = index;
        let answers = self
            .dump(
                RouteNetlinkMessage::GetAddress(req),
                &format!("list addresses of ifindex {index}"),
            )
            .await?;
        // Filtered here as well: without strict checking a kernel ignores the filter.
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => Some(a),
                _ => None,
            })
            .collect())
    }
}

/// The address an RTM_NEWADDR message is about: `IFA_LOCAL` for IPv4 (`IFA_ADDRESS` is the peer
/// on point-to-point links), `IFA_ADDRESS` for IPv6.
fn address_of(msg: &AddressMessage) -> Option<IpAddr> {
    let local = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let address = msg.attributes.iter().find_map(|a| match a {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    });
    match msg.header.family {
        AddressFamily::Inet => local.or(address),
        _ => address.or(local),
    }
}

fn host_prefix(ip: &IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn is_ipv6_link_local(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

/// The RTM_NEWADDR message for host address `ip` on device `index`.
fn host_address(index: u32, ip: IpAddr) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.index = index;
    msg.header.prefix_len = host_prefix(&ip);
    msg.header.scope = AddressScope::Universe;
    match ip {
        IpAddr::V4(_) => {
            msg.header.family = AddressFamily::Inet;
            msg.attributes.push(AddressAttribute::Local(ip));
            msg.attributes.push(AddressAttribute::Address(ip));
        }
        IpAddr::V6(_) => {
            msg.header.family = AddressFamily::Inet6;
            msg.header.flags = AddressHeaderFlags::Nodad;
            msg.attributes.push(AddressAttribute::Address(ip));
        }
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_detection() {
        assert!(is_ipv6_link_local(&"fe80::1".parse().unwrap()));
        assert!(is_ipv6_link_local(&"febf::1".parse().unwrap()));
        assert!(!is_ipv6_link_local(&"fec0::1".parse().unwrap()));
        assert!(!is_ipv6_link_local(&"fd00:200::10".parse().unwrap()));
        assert!(!is_ipv6_link_local(&"10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn host_address_messages() {
        let v4 = host_address(7, "10.200.0.10".parse().unwrap());
        assert_eq!(v4.header.prefix_len, 32);
        assert_eq!(address_of(&v4), Some("10.200.0.10".parse().unwrap()));
        let v6 = host_address(7, "fd00:200::10".parse().unwrap());
        assert_eq!(v6.header.prefix_len, 128);
        assert!(v6.header.flags.contains(AddressHeaderFlags::Nodad));
        assert_eq!(address_of(&v6), Some("fd00:200::10".parse().unwrap()));
    }
}
