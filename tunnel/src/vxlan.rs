//! The kernel VXLAN device in external mode (`collect_md`, iproute2's `external`).
//!
//! An external device has no VNI or remote of its own: each packet carries them as tunnel
//! metadata, set by a route's lightweight-tunnel encap (`encap ip id 2 dst <node>`) or by BPF.
//! That is how one device reaches every Cilium node, with VNI 2 (the world identity) as Cilium's
//! VTEP integration requires. It is also the device that receives VXLAN traffic the XDP program
//! passes to the kernel (slow path).
//!
//! Only one external VXLAN device can listen on a UDP port per network namespace (and local
//! address): a leftover under another name makes the creation fail with EEXIST.

use std::future::Future;
use std::net::Ipv4Addr;
use std::time::Duration;

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::Handle;
use tracing::{info, warn};

use crate::TunnelError;

/// Cilium's VXLAN port (`tunnel-port` default).
pub const CILIUM_VXLAN_PORT: u16 = 8472;

/// How long one request may wait for the kernel.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

const ENODEV: i32 = 19;

/// The VXLAN device meshgw wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VxlanSpec {
    /// Device name.
    pub name: String,
    /// UDP destination port, also the port the device listens on (8472 for Cilium).
    pub port: u16,
    /// Source address of the outer packets (the gateway's mesh address); `None` lets the
    /// kernel choose per route.
    pub local: Option<Ipv4Addr>,
    /// Ifindex of the underlay device (the mesh interface); `None` for no binding.
    pub lower: Option<u32>,
    /// MAC address of the device (the VTEP MAC given to Cilium); `None` for a random one.
    pub mac: Option<[u8; 6]>,
    /// MTU; `None` for the kernel's default (the lower device's MTU minus 50).
    pub mtu: Option<u32>,
}

/// Ensures an external-mode VXLAN device exists with this spec and is up; returns its ifindex.
///
/// An existing device of that name is kept if it is an external VXLAN device with the same
/// port, local address, lower device and zero outer UDP checksums; its MAC and MTU are then
/// corrected in place. Otherwise (another kind, port or mode: the kernel cannot change those
/// on a live device) it is deleted and created anew, which also removes the routes through it.
/// Idempotent: with a matching device it changes nothing.
pub async fn ensure_vxlan(handle: &Handle, spec: &VxlanSpec) -> Result<u32, TunnelError> {
    validate(spec)?;
    if let Some(existing) = get_link(handle, &spec.name).await? {
        let index = existing.header.index;
        match mismatch(&existing, spec) {
            None => {
                adjust(handle, &existing, spec).await?;
                return Ok(index);
            }
            Some(reason) => {
                warn!(device = %spec.name, ifindex = index, reason, "recreating VXLAN device");
                let op = format!("delete device {} (ifindex {index})", spec.name);
                match run(&op, handle.link().del(index).execute()).await {
                    Ok(()) => {}
                    Err(e) if e.errno() == Some(ENODEV) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    let op = format!("create VXLAN device {}", spec.name);
    run(&op, handle.link().add(creation(spec)).execute()).await?;
    let link = get_link(handle, &spec.name)
        .await?
        .ok_or_else(|| TunnelError::Vanished(spec.name.clone()))?;
    let index = link.header.index;
    info!(
        device = %spec.name,
        ifindex = index,
        port = spec.port,
        local = ?spec.local,
        lower = ?spec.lower,
        "created external VXLAN device"
    );
    Ok(index)
}

/// Deletes the VXLAN device `name`; `false` if there is none. A device of that name that is not
/// a VXLAN device is not ours and is refused.
pub async fn remove_vxlan(handle: &Handle, name: &str) -> Result<bool, TunnelError> {
    let Some(existing) = get_link(handle, name).await? else {
        return Ok(false);
    };
    let kind = kind_of(&existing);
    if kind != Some(InfoKind::Vxlan) {
        return Err(TunnelError::NotVxlan {
            name: name.to_owned(),
            found: kind.map_or_else(|| "device without a kind".to_owned(), |k| k.to_string()),
        });
    }
    let index = existing.header.index;
    let op = format!("delete VXLAN device {name} (ifindex {index})");
    match run(&op, handle.link().del(index).execute()).await {
        Ok(()) => {
            info!(device = name, ifindex = index, "deleted VXLAN device");
            Ok(true)
        }
        Err(e) if e.errno() == Some(ENODEV) => Ok(false),
        Err(e) => Err(e),
    }
}

fn validate(spec: &VxlanSpec) -> Result<(), TunnelError> {
    let invalid = |reason| TunnelError::InvalidSpec {
        name: spec.name.clone(),
        reason,
    };
    if spec.name.is_empty() || spec.name.len() >= 16 || spec.name.contains(['/', ' ', '\0']) {
        return Err(invalid("not a valid interface name"));
    }
    if spec.port == 0 {
        return Err(invalid("port 0"));
    }
    if spec.mac.is_some_and(|m| m[0] & 1 == 1 || m == [0; 6]) {
        return Err(invalid("the MAC address must be unicast and non-zero"));
    }
    if spec.mtu.is_some_and(|m| m < 68) {
        return Err(invalid("MTU below 68"));
    }
    Ok(())
}

/// Awaits an rtnetlink request with a time limit.
async fn run<T>(
    op: &str,
    fut: impl Future<Output = Result<T, rtnetlink::Error>>,
) -> Result<T, TunnelError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(TunnelError::Netlink {
            op: op.to_owned(),
            source,
        }),
        Err(_) => Err(TunnelError::Timeout {
            op: op.to_owned(),
            secs: REQUEST_TIMEOUT.as_secs(),
        }),
    }
}

/// The link message of device `name`, or `None`.
async fn get_link(handle: &Handle, name: &str) -> Result<Option<LinkMessage>, TunnelError> {
    let op = format!("look up device {name}");
    let mut answers = handle.link().get().match_name(name).execute();
    match run(&op, answers.try_next()).await {
        Ok(m) => Ok(m),
        Err(e) if e.errno() == Some(ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The RTM_NEWLINK message that creates the device, up.
fn creation(spec: &VxlanSpec) -> LinkMessage {
    let mut data = vec![
        InfoVxlan::CollectMetadata(true),
        InfoVxlan::Port(spec.port),
        // What iproute2's `external` implies: no FDB learning, which metadata mode never uses.
        InfoVxlan::Learning(false),
        // Zero outer UDP checksums, as Cilium's datapath sends them.
        InfoVxlan::UDPCsum(false),
    ];
    if let Some(local) = spec.local {
        data.push(InfoVxlan::Local(local));
    }
    if let Some(lower) = spec.lower {
        data.push(InfoVxlan::Link(lower));
    }
    let mut msg = LinkMessage::default();
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    msg.attributes
        .push(LinkAttribute::IfName(spec.name.clone()));
    if let Some(mac) = spec.mac {
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
    }
    if let Some(mtu) = spec.mtu {
        msg.attributes.push(LinkAttribute::Mtu(mtu));
    }
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Vxlan),
        LinkInfo::Data(InfoData::Vxlan(data)),
    ]));
    msg
}

fn kind_of(msg: &LinkMessage) -> Option<InfoKind> {
    link_infos(msg).find_map(|i| match i {
        LinkInfo::Kind(k) => Some(k.clone()),
        _ => None,
    })
}

fn link_infos(msg: &LinkMessage) -> impl Iterator<Item = &LinkInfo> {
    msg.attributes
        .iter()
        .filter_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => Some(infos.iter()),
            _ => None,
        })
        .flatten()
}

fn vxlan_data(msg: &LinkMessage) -> &[InfoVxlan] {
    link_infos(msg)
        .find_map(|i| match i {
            LinkInfo::Data(InfoData::Vxlan(d)) => Some(d.as_slice()),
            _ => None,
        })
        .unwrap_or(&[])
}

/// Why an existing device cannot be kept for `spec` (a property the kernel cannot change on a
/// live device), or `None` when it can.
fn mismatch(msg: &LinkMessage, spec: &VxlanSpec) -> Option<&'static str> {
    if kind_of(msg) != Some(InfoKind::Vxlan) {
        return Some("not a VXLAN device");
    }
    let data = vxlan_data(msg);
    let mut external = false;
    let mut port = None;
    let mut local = None;
    let mut lower = None;
    let mut udp_csum = None;
    for d in data {
        match d {
            InfoVxlan::CollectMetadata(v) => external = *v,
            InfoVxlan::Port(p) => port = Some(*p),
            InfoVxlan::Local(ip) if !ip.is_unspecified() => local = Some(*ip),
            InfoVxlan::Link(i) if *i != 0 => lower = Some(*i),
            InfoVxlan::UDPCsum(v) => udp_csum = Some(*v),
            _ => {}
        }
    }
    if !external {
        Some("not in external (metadata) mode")
    } else if port != Some(spec.port) {
        Some("different UDP port")
    } else if local != spec.local {
        Some("different local address")
    } else if lower != spec.lower {
        Some("different lower device")
    } else if udp_csum == Some(true) {
        Some("outer UDP checksums on")
    } else {
        None
    }
}

/// Corrects what can change on a live device: MAC, MTU, up.
async fn adjust(
    handle: &Handle,
    existing: &LinkMessage,
    spec: &VxlanSpec,
) -> Result<(), TunnelError> {
    let index = existing.header.index;
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    let mut what = Vec::new();
    if let Some(mac) = spec.mac {
        let current = existing.attributes.iter().find_map(|a| match a {
            LinkAttribute::Address(a) => Some(a.as_slice()),
            _ => None,
        });
        if current != Some(&mac[..]) {
            msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
            what.push("mac");
        }
    }
    if let Some(mtu) = spec.mtu {
        let current = existing.attributes.iter().find_map(|a| match a {
            LinkAttribute::Mtu(m) => Some(*m),
            _ => None,
        });
        if current != Some(mtu) {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
            what.push("mtu");
        }
    }
    if !existing.header.flags.contains(LinkFlags::Up) {
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        what.push("up");
    }
    if what.is_empty() {
        return Ok(());
    }
    let op = format!("update VXLAN device {} ({})", spec.name, what.join(", "));
    run(&op, handle.link().set(msg).execute()).await?;
    info!(device = %spec.name, ifindex = index, changed = ?what, "updated VXLAN device");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VxlanSpec {
        VxlanSpec {
            name: "mgw-vxlan".to_owned(),
            port: CILIUM_VXLAN_PORT,
            local: Some(Ipv4Addr::new(172, 18, 0, 1)),
            lower: Some(3),
            mac: Some([0x02, 0x6d, 0x67, 0, 0, 1]),
            mtu: None,
        }
    }

    #[test]
    fn created_device_matches_its_spec() {
        let s = spec();
        let mut msg = creation(&s);
        msg.header.index = 9;
        assert_eq!(mismatch(&msg, &s), None);
        let other_port = VxlanSpec {
            port: 4789,
            ..s.clone()
        };
        assert_eq!(mismatch(&msg, &other_port), Some("different UDP port"));
        let no_local = VxlanSpec {
            local: None,
            ..s.clone()
        };
        assert_eq!(mismatch(&msg, &no_local), Some("different local address"));
    }

    #[test]
    fn invalid_specs_are_refused() {
        assert!(validate(&spec()).is_ok());
        for bad in [
            VxlanSpec {
                name: String::new(),
                ..spec()
            },
            VxlanSpec {
                name: "x".repeat(16),
                ..spec()
            },
            VxlanSpec { port: 0, ..spec() },
            VxlanSpec {
                mac: Some([1, 0, 0, 0, 0, 1]),
                ..spec()
            },
            VxlanSpec {
                mtu: Some(10),
                ..spec()
            },
        ] {
            assert!(validate(&bad).is_err(), "{bad:?} accepted");
        }
    }
}
