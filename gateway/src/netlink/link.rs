//! Links: look-up by name, bringing up, and the VIP dummy device.

use rtnetlink::packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use rtnetlink::packet_route::link::{
    InfoKind, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
};
use rtnetlink::packet_route::RouteNetlinkMessage;
use tracing::{info, warn};

use super::{is_absent, LinkInfo, Netlink, NetlinkError};

impl Netlink {
    /// The device called `name`, or `None` if there is none.
    pub async fn link(&self, name: &str) -> Result<Option<LinkInfo>, NetlinkError> {
        Ok(self.link_message(name).await?.map(|m| link_info(&m)))
    }

    /// Sets device `index` administratively up (a no-op if it already is).
    pub async fn set_up(&self, index: u32) -> Result<(), NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        self.change(
            RouteNetlinkMessage::SetLink(msg),
            0,
            &format!("set ifindex {index} up"),
        )
        .await
    }

    /// Ensures a dummy device called `name` exists and is up; returns its ifindex.
    ///
    /// On a kernel built without dummy devices (`CONFIG_DUMMY`, absent from some minimal
    /// kernels, this project's test machine included) an `ifb` device is created instead: it
    /// holds addresses the same way and, like a dummy, never carries traffic of its own. A device
    /// of that name but of another kind is an error: it is somebody else's and is left alone.
    pub async fn ensure_dummy(&self, name: &str) -> Result<u32, NetlinkError> {
        if self.link_message(name).await?.is_none() {
            self.create_placeholder(name).await?;
        }
        let msg = self
            .link_message(name)
            .await?
            .ok_or_else(|| NetlinkError::Unexpected {
                op: format!("create dummy device {name}"),
                detail: "the device vanished right after its creation".to_owned(),
            })?;
        let kind = link_kind(&msg);
        if !matches!(kind, Some(InfoKind::Dummy | InfoKind::Ifb)) {
            return Err(NetlinkError::WrongKind {
                name: name.to_owned(),
                found: kind.map_or_else(|| "device without a kind".to_owned(), |k| k.to_string()),
                wanted: "dummy (or ifb)",
            });
        }
        let link = link_info(&msg);
        if !link.up {
            self.set_up(link.index).await?;
            info!(device = name, ifindex = link.index, "device set up");
        }
        Ok(link.index)
    }

    /// Creates device `name` as a dummy, or as an ifb where the kernel has no dummy driver.
    async fn create_placeholder(&self, name: &str) -> Result<(), NetlinkError> {
        for kind in [InfoKind::Dummy, InfoKind::Ifb] {
            let mut msg = LinkMessage::default();
            msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
            msg.attributes
                .push(LinkAttribute::LinkInfo(vec![NlLinkInfo::Kind(
                    kind.clone(),
                )]));
            let op = format!("create {kind} device {name}");
            match self
                .change(
                    RouteNetlinkMessage::NewLink(msg),
                    NLM_F_CREATE | NLM_F_EXCL,
                    &op,
                )
                .await
            {
                Ok(()) => {
                    info!(device = name, kind = %kind, "created device");
                    return Ok(());
                }
                // Created concurrently since the look-up: fine, the caller checks its kind.
                Err(e) if e.errno() == Some(libc::EEXIST) => return Ok(()),
                // "Unknown device type": this driver is not built in.
                Err(e) if e.errno() == Some(libc::EOPNOTSUPP) && kind == InfoKind::Dummy => {
                    warn!(
                        device = name,
                        "kernel has no dummy devices; using an ifb device instead"
                    );
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Deletes the device called `name`; `false` if there was none.
    pub async fn delete_link(&self, name: &str) -> Result<bool, NetlinkError> {
        let Some(msg) = self.link_message(name).await? else {
            return Ok(false);
        };
        let index = msg.header.index;
        let mut del = LinkMessage::default();
        del.header.index = index;
        match self
            .change(
                RouteNetlinkMessage::DelLink(del),
                0,
                &format!("delete device {name} (ifindex {index})"),
            )
            .await
        {
            Ok(()) => {
                info!(device = name, ifindex = index, "deleted device");
                Ok(true)
            }
            Err(e) if is_absent(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The full RTM_NEWLINK message of device `name`, or `None`.
    pub(super) async fn link_message(
        &self,
        name: &str,
    ) -> Result<Option<LinkMessage>, NetlinkError> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        match self
            .get_one(
                RouteNetlinkMessage::GetLink(msg),
                &format!("look up device {name}"),
            )
            .await
        {
            Ok(RouteNetlinkMessage::NewLink(m)) => Ok(Some(m)),
            Ok(other) => Err(NetlinkError::Unexpected {
                op: format!("look up device {name}"),
                detail: format!("{other:?}"),
            }),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The fields of [`LinkInfo`] from a link message.
fn link_info(msg: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: msg.header.index,
        name: String::new(),
        mac: [0; 6],
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => info.name = n.clone(),
            LinkAttribute::Mtu(m) => info.mtu = *m,
            LinkAttribute::Address(a) => {
                if let Ok(mac) = <[u8; 6]>::try_from(a.as_slice()) {
                    info.mac = mac;
                }
            }
            _ => {}
        }
    }
    info
}

/// The `IFLA_INFO_KIND` of a link message (`None` for devices without one, like `lo`).
fn link_kind(msg: &LinkMessage) -> Option<InfoKind> {
    msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            NlLinkInfo::Kind(k) => Some(k.clone()),
            _ => None,
        }),
        _ => None,
    })
}
