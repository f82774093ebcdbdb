//! The kernel WireGuard module, configured over generic netlink (the messages `wg set` sends).
//!
//! wireguard-control (the brief's choice) cannot be linked beside boringtun 0.6: both need
//! x25519-dalek 2, boringtun pinned to `=2.0.0-rc.3` and wireguard-control 1.6+ to `^2.0.1`.
//! This module speaks the same protocol through netlink-packet-wireguard and genetlink, which
//! is what wireguard-control uses underneath. Message building and parsing are pure functions,
//! tested without the module (this machine has none); the device itself is only used where
//! [`kernel_available`] says the module works.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use genetlink::GenetlinkHandle;
use ipnet::IpNet;
use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_generic::GenlMessage;
use netlink_packet_wireguard::{
    WireguardAddressFamily, WireguardAllowedIp, WireguardAllowedIpAttr, WireguardAttribute,
    WireguardCmd, WireguardMessage, WireguardPeer, WireguardPeerAttribute, WireguardPeerFlags,
};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::{Handle, LinkUnspec, LinkWireguard};
use tracing::info;

use super::{keys, DeviceStatus, PeerCounters, PeerStatus, WgDeviceConfig, WgError};

/// The `WG_CMD_SET_DEVICE` message that makes the kernel device match `cfg`.
///
/// Peers are updated one by one, never with the device-wide replace-peers flag: that flag
/// removes every peer and its sessions, while a reload must leave the unchanged peers'
/// sessions alone. Peers in `kernel_peers` (the device's current public keys) but not in `cfg`
/// are removed individually; each configured peer's allowed IPs are replaced as a whole.
pub fn set_device_message(cfg: &WgDeviceConfig, kernel_peers: &[[u8; 32]]) -> WireguardMessage {
    let mut peers: Vec<WireguardPeer> = cfg
        .peers
        .iter()
        .map(|p| {
            let mut attrs = vec![
                WireguardPeerAttribute::PublicKey(p.public_key),
                WireguardPeerAttribute::Flags(WireguardPeerFlags::ReplaceAllowedIps),
                // 0 switches keepalive off, so a removed setting is removed in the kernel too.
                WireguardPeerAttribute::PersistentKeepalive(p.persistent_keepalive.unwrap_or(0)),
                WireguardPeerAttribute::AllowedIps(p.allowed_ips.iter().map(allowed_ip).collect()),
            ];
            if let Some(ep) = p.endpoint {
                attrs.push(WireguardPeerAttribute::Endpoint(ep));
            }
            WireguardPeer(attrs)
        })
        .collect();
    for gone in kernel_peers {
        if !cfg.peers.iter().any(|p| p.public_key == *gone) {
            peers.push(WireguardPeer(vec![
                WireguardPeerAttribute::PublicKey(*gone),
                WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe),
            ]));
        }
    }
    WireguardMessage {
        cmd: WireguardCmd::SetDevice,
        attributes: vec![
            WireguardAttribute::IfName(cfg.interface.clone()),
            WireguardAttribute::PrivateKey(cfg.private_key),
            WireguardAttribute::ListenPort(cfg.listen_port),
            WireguardAttribute::Peers(peers),
        ],
    }
}

fn allowed_ip(net: &IpNet) -> WireguardAllowedIp {
    let family = match net {
        IpNet::V4(_) => WireguardAddressFamily::Ipv4,
        IpNet::V6(_) => WireguardAddressFamily::Ipv6,
    };
    WireguardAllowedIp(vec![
        WireguardAllowedIpAttr::Family(family),
        WireguardAllowedIpAttr::IpAddr(net.network()),
        WireguardAllowedIpAttr::Cidr(net.prefix_len()),
    ])
}

/// The status of a device from the `WG_CMD_GET_DEVICE` dump (the kernel splits a device with
/// many peers over several messages). Peer ids come from `cfg`; `now` is the wall clock.
pub fn parse_device(
    msgs: &[WireguardMessage],
    cfg: &WgDeviceConfig,
    now: SystemTime,
) -> DeviceStatus {
    let mut status = DeviceStatus {
        backend: "kernel".into(),
        ..DeviceStatus::default()
    };
    for m in msgs {
        for a in &m.attributes {
            let WireguardAttribute::Peers(peers) = a else {
                continue;
            };
            for WireguardPeer(attrs) in peers {
                let mut p = PeerStatus {
                    id: String::new(),
                    public_key: String::new(),
                    endpoint: None,
                    allowed_ips: Vec::new(),
                    last_handshake_secs: None,
                    counters: PeerCounters::default(),
                };
                for attr in attrs {
                    match attr {
                        WireguardPeerAttribute::PublicKey(k) => {
                            p.public_key = keys::encode_key(k);
                            p.id = cfg
                                .peers
                                .iter()
                                .find(|c| c.public_key == *k)
                                .map_or_else(|| "(unconfigured)".into(), |c| c.id.clone());
                        }
                        WireguardPeerAttribute::Endpoint(ep) => p.endpoint = Some(*ep),
                        WireguardPeerAttribute::RxBytes(n) => p.counters.rx_bytes = *n,
                        WireguardPeerAttribute::TxBytes(n) => p.counters.tx_bytes = *n,
                        WireguardPeerAttribute::LastHandshake(t) if t.seconds > 0 => {
                            let at = UNIX_EPOCH + Duration::from_secs(t.seconds.unsigned_abs());
                            p.last_handshake_secs =
                                Some(now.duration_since(at).unwrap_or_default().as_secs());
                        }
                        WireguardPeerAttribute::AllowedIps(ips) => {
                            p.allowed_ips
                                .extend(ips.iter().filter_map(parse_allowed_ip));
                        }
                        _ => {}
                    }
                }
                // A dump continued in the next message repeats the public key only.
                match status
                    .peers
                    .iter_mut()
                    .find(|q| q.public_key == p.public_key)
                {
                    Some(q) => q.allowed_ips.extend(p.allowed_ips),
                    None => status.peers.push(p),
                }
            }
        }
    }
    status
}

fn parse_allowed_ip(ip: &WireguardAllowedIp) -> Option<IpNet> {
    let mut addr = None;
    let mut len = None;
    for a in &ip.0 {
        match a {
            WireguardAllowedIpAttr::IpAddr(x) => addr = Some(*x),
            WireguardAllowedIpAttr::Cidr(c) => len = Some(*c),
            _ => {}
        }
    }
    IpNet::new(addr?, len?).ok()
}

/// Whether the kernel can run WireGuard here: the module is loaded, or creating a device of
/// kind `wireguard` succeeds (which autoloads it). The probe device is deleted at once.
pub async fn kernel_available(handle: &Handle, sys_module: &Path) -> bool {
    if super::select_backend(sys_module) == super::Backend::Kernel {
        return true;
    }
    let probe = "mgw-wgprobe";
    if handle
        .link()
        .add(LinkWireguard::new(probe).build())
        .execute()
        .await
        .is_err()
    {
        return false;
    }
    let mut links = handle.link().get().match_name(probe.to_owned()).execute();
    if let Some(Ok(link)) = links.next().await {
        let _ = handle.link().del(link.header.index).execute().await;
    }
    true
}

/// A kernel WireGuard interface.
pub struct KernelDevice {
    cfg: WgDeviceConfig,
    genl: GenetlinkHandle,
}

fn err(cfg: &WgDeviceConfig, op: &str, e: impl std::fmt::Display) -> WgError {
    WgError::Io {
        interface: cfg.interface.clone(),
        op: op.to_owned(),
        source: std::io::Error::other(e.to_string()),
    }
}

impl KernelDevice {
    /// Creates the interface if it is missing, sets MTU and up, and configures it.
    pub async fn start(handle: &Handle, cfg: &WgDeviceConfig) -> Result<KernelDevice, WgError> {
        super::validate(cfg)?;
        let mut links = handle
            .link()
            .get()
            .match_name(cfg.interface.clone())
            .execute();
        let exists = matches!(links.next().await, Some(Ok(_)));
        if !exists {
            handle
                .link()
                .add(LinkWireguard::new(&cfg.interface).build())
                .execute()
                .await
                .map_err(|e| err(cfg, "create wireguard link", e))?;
        }
        let mut msg = LinkUnspec::new_with_name(&cfg.interface).up().build();
        msg.attributes.push(LinkAttribute::Mtu(cfg.mtu));
        handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| err(cfg, "set MTU and up", e))?;
        let (conn, genl, _) =
            genetlink::new_connection().map_err(|e| err(cfg, "generic netlink socket", e))?;
        tokio::spawn(conn);
        let mut dev = KernelDevice {
            cfg: cfg.clone(),
            genl,
        };
        dev.apply(cfg).await?;
        info!(interface = %cfg.interface, peers = cfg.peers.len(), "configured kernel WireGuard");
        Ok(dev)
    }

    async fn get(&mut self) -> Result<Vec<WireguardMessage>, WgError> {
        let req = WireguardMessage {
            cmd: WireguardCmd::GetDevice,
            attributes: vec![WireguardAttribute::IfName(self.cfg.interface.clone())],
        };
        let mut nl = NetlinkMessage::from(GenlMessage::from_payload(req));
        nl.header.flags = NLM_F_REQUEST | NLM_F_DUMP;
        let mut stream = self
            .genl
            .request(nl)
            .await
            .map_err(|e| err(&self.cfg, "get device", e))?;
        let mut out = Vec::new();
        while let Some(m) = stream.next().await {
            let m = m.map_err(|e| err(&self.cfg, "get device", e))?;
            match m.payload {
                NetlinkPayload::InnerMessage(g) => out.push(g.payload),
                NetlinkPayload::Error(e) => return Err(err(&self.cfg, "get device", e)),
                _ => {}
            }
        }
        Ok(out)
    }

    /// Applies a configuration (see [`set_device_message`]).
    pub async fn apply(&mut self, cfg: &WgDeviceConfig) -> Result<(), WgError> {
        super::validate(cfg)?;
        self.cfg = cfg.clone();
        let current: Vec<[u8; 32]> = parse_device(&self.get().await?, cfg, SystemTime::now())
            .peers
            .iter()
            .filter_map(|p| keys::parse_key(&p.public_key, "kernel").ok())
            .collect();
        let mut nl =
            NetlinkMessage::from(GenlMessage::from_payload(set_device_message(cfg, &current)));
        nl.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        let mut stream = self
            .genl
            .request(nl)
            .await
            .map_err(|e| err(cfg, "set device", e))?;
        while let Some(m) = stream.next().await {
            let m = m.map_err(|e| err(cfg, "set device", e))?;
            if let NetlinkPayload::Error(e) = m.payload {
                if e.code.is_some() {
                    return Err(err(cfg, "set device", e));
                }
            }
        }
        Ok(())
    }

    /// Peers and counters as the kernel reports them.
    pub async fn status(&mut self) -> Result<DeviceStatus, WgError> {
        let msgs = self.get().await?;
        Ok(parse_device(&msgs, &self.cfg, SystemTime::now()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::wireguard::WgPeerConfig;
    use netlink_packet_core::{Emitable, ParseableParametrized};
    use netlink_packet_generic::GenlHeader;
    use netlink_packet_wireguard::WireguardTimeSpec;

    fn cfg() -> WgDeviceConfig {
        WgDeviceConfig {
            interface: "mgw-wg".into(),
            listen_port: 51820,
            private_key: [9; 32],
            mtu: 1420,
            peers: vec![WgPeerConfig {
                id: "b".into(),
                public_key: [1; 32],
                endpoint: Some("192.0.2.2:51820".parse().unwrap()),
                allowed_ips: vec![
                    "10.2.0.0/16".parse().unwrap(),
                    "fd00:2::/64".parse().unwrap(),
                ],
                persistent_keepalive: Some(25),
            }],
        }
    }

    /// Emits and parses back, as the kernel would read it.
    fn wire(m: &WireguardMessage) -> WireguardMessage {
        let header = GenlHeader {
            cmd: m.cmd.into(),
            version: 1,
        };
        let mut buf = vec![0; m.buffer_len()];
        m.emit(&mut buf);
        WireguardMessage::parse_with_param(&buf[..], header).unwrap()
    }

    #[test]
    fn set_message_carries_key_port_and_peers_and_removes_unconfigured_peers_only() {
        let m = wire(&set_device_message(&cfg(), &[[1; 32], [3; 32]]));
        assert_eq!(m.cmd, WireguardCmd::SetDevice);
        assert!(m
            .attributes
            .contains(&WireguardAttribute::PrivateKey([9; 32])));
        assert!(m
            .attributes
            .contains(&WireguardAttribute::ListenPort(51820)));
        assert!(
            !m.attributes
                .iter()
                .any(|a| matches!(a, WireguardAttribute::Flags(_))),
            "never the device-wide replace-peers flag"
        );
        let Some(WireguardAttribute::Peers(peers)) = m
            .attributes
            .iter()
            .find(|a| matches!(a, WireguardAttribute::Peers(_)))
        else {
            panic!("no peers")
        };
        assert_eq!(peers.len(), 2);
        let b = &peers[0].0;
        assert!(b.contains(&WireguardPeerAttribute::PublicKey([1; 32])));
        assert!(b.contains(&WireguardPeerAttribute::PersistentKeepalive(25)));
        assert!(b.contains(&WireguardPeerAttribute::Endpoint(
            "192.0.2.2:51820".parse().unwrap()
        )));
        assert!(b.contains(&WireguardPeerAttribute::Flags(
            WireguardPeerFlags::ReplaceAllowedIps
        )));
        assert_eq!(
            peers[1].0,
            vec![
                WireguardPeerAttribute::PublicKey([3; 32]),
                WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe)
            ]
        );
    }

    #[test]
    fn dump_parses_into_status_with_ids_from_config_and_split_peers_merged() {
        let set = set_device_message(&cfg(), &[]);
        let WireguardAttribute::Peers(mut peers) = set.attributes[3].clone() else {
            panic!()
        };
        peers[0].0.extend([
            WireguardPeerAttribute::RxBytes(1000),
            WireguardPeerAttribute::TxBytes(2000),
            WireguardPeerAttribute::LastHandshake(WireguardTimeSpec {
                seconds: 1_000_000,
                nano_seconds: 0,
            }),
        ]);
        // The second message continues the same peer with one more allowed IP.
        let cont = WireguardPeer(vec![
            WireguardPeerAttribute::PublicKey([1; 32]),
            WireguardPeerAttribute::AllowedIps(vec![allowed_ip(&"10.9.0.0/24".parse().unwrap())]),
        ]);
        let msgs = [
            wire(&WireguardMessage {
                cmd: WireguardCmd::GetDevice,
                attributes: vec![WireguardAttribute::Peers(peers)],
            }),
            wire(&WireguardMessage {
                cmd: WireguardCmd::GetDevice,
                attributes: vec![WireguardAttribute::Peers(vec![cont])],
            }),
        ];
        let now = UNIX_EPOCH + Duration::from_secs(1_000_042);
        let s = parse_device(&msgs, &cfg(), now);
        assert_eq!(s.backend, "kernel");
        assert_eq!(s.peers.len(), 1);
        let p = &s.peers[0];
        assert_eq!(p.id, "b");
        assert_eq!((p.counters.rx_bytes, p.counters.tx_bytes), (1000, 2000));
        assert_eq!(p.last_handshake_secs, Some(42));
        let nets: Vec<String> = p.allowed_ips.iter().map(|n| n.to_string()).collect();
        assert_eq!(nets, ["10.2.0.0/16", "fd00:2::/64", "10.9.0.0/24"]);
    }
}
