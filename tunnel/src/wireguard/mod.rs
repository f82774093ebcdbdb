//! WireGuard between gateways: one interface, one peer per remote gateway.
//!
//! Two data planes implement the same [`WgDeviceConfig`]: the kernel module (driven through
//! generic netlink, [`kernel`]) where it exists, and boringtun in user space on a TUN device
//! ([`userspace`]) where it does not. [`select_backend`] chooses at run time. The packet logic of
//! the user-space path lives in [`engine`], free of I/O, so that handshakes, crypto-key routing,
//! rotation and the drop counters are tested without devices.

pub mod engine;
pub mod kernel;
pub mod keys;
pub mod tun;
pub mod userspace;

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use ipnet::IpNet;
use serde::Serialize;

pub use keys::KeyError;

/// The WireGuard interface meshgw wants.
#[derive(Clone, PartialEq, Eq)]
pub struct WgDeviceConfig {
    /// Interface name.
    pub interface: String,
    /// UDP port the interface listens on.
    pub listen_port: u16,
    /// This gateway's private key (never printed: `Debug` shows its public key).
    pub private_key: [u8; 32],
    /// Interface MTU (see [`crate::mtu`] for how it is derived).
    pub mtu: u32,
    /// The peers.
    pub peers: Vec<WgPeerConfig>,
}

impl fmt::Debug for WgDeviceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let public = keys::public_of(&boringtun::x25519::StaticSecret::from(self.private_key));
        f.debug_struct("WgDeviceConfig")
            .field("interface", &self.interface)
            .field("listen_port", &self.listen_port)
            .field("public_key", &keys::encode_key(public.as_bytes()))
            .field("mtu", &self.mtu)
            .field("peers", &self.peers)
            .finish()
    }
}

/// One peer (a remote gateway).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WgPeerConfig {
    /// The peer's gateway id (for logs and status).
    pub id: String,
    /// Its public key.
    pub public_key: [u8; 32],
    /// Where to send to it first; `None` waits for it to connect (it roams to wherever
    /// authenticated packets come from).
    pub endpoint: Option<SocketAddr>,
    /// Inner addresses it may send from and that are routed to it.
    pub allowed_ips: Vec<IpNet>,
    /// Keepalive interval in seconds, to keep NAT and firewall state alive.
    pub persistent_keepalive: Option<u16>,
}

/// A configuration that cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum WgError {
    /// A key is unusable.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The configuration contradicts itself.
    #[error("WireGuard interface {interface}: {reason}")]
    Invalid {
        /// The interface.
        interface: String,
        /// What is wrong.
        reason: String,
    },
    /// The device or socket could not be set up.
    #[error("WireGuard interface {interface}: {op}: {source}")]
    Io {
        /// The interface.
        interface: String,
        /// What was attempted.
        op: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The device task has stopped.
    #[error("WireGuard interface {0}: the device task has stopped")]
    Stopped(String),
}

/// Counters of one peer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PeerCounters {
    /// Inner bytes sent to the peer (accepted for it, sent or queued behind a handshake).
    pub tx_bytes: u64,
    /// Inner bytes received from the peer and delivered.
    pub rx_bytes: u64,
    /// Inner packets sent.
    pub tx_packets: u64,
    /// Inner packets received and delivered.
    pub rx_packets: u64,
    /// Packets from this peer that failed authentication (tampered, forged, wrong key).
    pub tampered: u64,
    /// Packets from this peer dropped for other reasons (replayed, out of window, no session).
    pub dropped: u64,
    /// Decrypted packets whose inner source is outside the peer's allowed IPs.
    pub src_not_allowed: u64,
}

/// Counters of packets that belong to no peer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DeviceCounters {
    /// Datagrams that are not WireGuard messages.
    pub malformed: u64,
    /// WireGuard messages for no known peer or session (includes handshakes that fail to
    /// authenticate, so forged or tampered handshakes land here).
    pub unknown_peer: u64,
    /// Packets from the TUN device whose destination no peer's allowed IPs cover.
    pub no_route: u64,
    /// Packets for a peer whose endpoint is not known yet.
    pub no_endpoint: u64,
}

/// What `meshgw status` shows of one peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerStatus {
    /// Gateway id.
    pub id: String,
    /// Public key, base64.
    pub public_key: String,
    /// Current endpoint (configured or roamed to).
    pub endpoint: Option<SocketAddr>,
    /// Allowed IPs.
    pub allowed_ips: Vec<IpNet>,
    /// Seconds since the last completed handshake; `None` before the first.
    pub last_handshake_secs: Option<u64>,
    /// Counters.
    pub counters: PeerCounters,
}

/// What the device reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DeviceStatus {
    /// Which data plane runs the interface.
    pub backend: String,
    /// Peers.
    pub peers: Vec<PeerStatus>,
    /// Packets that belong to no peer.
    pub counters: DeviceCounters,
}

/// The data plane that runs the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Backend {
    /// The kernel module, configured through generic netlink.
    Kernel,
    /// boringtun in this process on a TUN device.
    Userspace,
}

/// Chooses the data plane: the kernel module when it is loaded (its directory under
/// `sys_module` exists), else user space. `sys_module` is `/sys/module` outside tests.
pub fn select_backend(sys_module: &Path) -> Backend {
    if sys_module.join("wireguard").is_dir() {
        Backend::Kernel
    } else {
        Backend::Userspace
    }
}

/// Checks what the engine cannot enforce per packet: unique keys, no allowed IP shared by two
/// peers (crypto-key routing would be ambiguous), a usable interface name and MTU.
pub fn validate(cfg: &WgDeviceConfig) -> Result<(), WgError> {
    let invalid = |reason: String| WgError::Invalid {
        interface: cfg.interface.clone(),
        reason,
    };
    if cfg.interface.is_empty() || cfg.interface.len() >= 16 || cfg.interface.contains(['/', ' ']) {
        return Err(invalid("not a valid interface name".into()));
    }
    if !(576..=65_440).contains(&cfg.mtu) {
        return Err(invalid(format!("MTU {} is outside 576..=65440", cfg.mtu)));
    }
    let own_public = keys::public_of(&boringtun::x25519::StaticSecret::from(cfg.private_key));
    for (i, p) in cfg.peers.iter().enumerate() {
        if p.public_key == *own_public.as_bytes() {
            return Err(invalid(format!(
                "peer {} has this gateway's own public key",
                p.id
            )));
        }
        for q in &cfg.peers[..i] {
            if q.public_key == p.public_key {
                return Err(invalid(format!(
                    "peers {} and {} have the same public key",
                    q.id, p.id
                )));
            }
            if q.id == p.id {
                return Err(invalid(format!("two peers named {}", p.id)));
            }
            for a in &p.allowed_ips {
                if let Some(b) = q.allowed_ips.iter().find(|b| **b == a.trunc()) {
                    return Err(invalid(format!(
                        "allowed IP {b} is given to both {} and {}",
                        q.id, p.id
                    )));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn backend_is_kernel_only_where_the_module_directory_exists() {
        let dir = std::env::temp_dir().join(format!("mgw-sysmod-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(select_backend(&dir), Backend::Userspace);
        std::fs::create_dir_all(dir.join("wireguard")).unwrap();
        assert_eq!(select_backend(&dir), Backend::Kernel);
        // This machine has no module: the real check must pick user space here.
        if !Path::new("/sys/module/wireguard").exists() {
            assert_eq!(select_backend(Path::new("/sys/module")), Backend::Userspace);
        }
    }

    fn cfg() -> WgDeviceConfig {
        WgDeviceConfig {
            interface: "mgw-wg0".into(),
            listen_port: 51820,
            private_key: [7; 32],
            mtu: 1420,
            peers: vec![
                WgPeerConfig {
                    id: "b".into(),
                    public_key: [1; 32],
                    endpoint: None,
                    allowed_ips: vec!["10.2.0.0/16".parse().unwrap()],
                    persistent_keepalive: None,
                },
                WgPeerConfig {
                    id: "c".into(),
                    public_key: [2; 32],
                    endpoint: None,
                    allowed_ips: vec!["10.3.0.0/16".parse().unwrap()],
                    persistent_keepalive: None,
                },
            ],
        }
    }

    #[test]
    fn validation_refuses_shared_keys_and_prefixes() {
        validate(&cfg()).unwrap();
        let mut c = cfg();
        c.peers[1].public_key = [1; 32];
        assert!(validate(&c)
            .unwrap_err()
            .to_string()
            .contains("same public key"));
        let mut c = cfg();
        c.peers[1].allowed_ips = vec!["10.2.0.0/16".parse().unwrap()];
        assert!(validate(&c)
            .unwrap_err()
            .to_string()
            .contains("10.2.0.0/16"));
        let mut c = cfg();
        c.interface = "a-much-too-long-name".into();
        assert!(validate(&c).is_err());
    }

    #[test]
    fn debug_never_shows_the_private_key() {
        let shown = format!("{:?}", cfg());
        assert!(!shown.contains("[7, 7"), "{shown}");
        assert!(shown.contains("public_key"));
    }
}
