//! The user-space WireGuard packet logic, free of I/O: packets go in, [`Output`]s come out.
//!
//! boringtun's `Tunn` is the Noise state of one peer; this adds what a device does around it:
//! finding the peer of an incoming datagram (by the receiver index, or for a handshake
//! initiation by decrypting the initiator's static key), crypto-key routing of outgoing packets
//! by longest allowed-IP match, the inner-source check, endpoint roaming, counters, and applying
//! a new configuration without disturbing the peers it does not change.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519::{PublicKey, StaticSecret};
use ipnet::IpNet;
use tracing::debug;

use super::{
    keys, validate, DeviceCounters, DeviceStatus, PeerCounters, PeerStatus, WgDeviceConfig,
    WgError, WgPeerConfig,
};

/// Handshake initiations per second before the rate limiter asks for cookies (boringtun's
/// device uses the same figure).
const HANDSHAKE_RATE_LIMIT: u64 = 100;

/// Scratch size: the largest IP packet plus WireGuard's overhead.
const SCRATCH: usize = 65_536 + 64;

/// What the engine wants done with a packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Output {
    /// Send this datagram to this address on the UDP socket.
    Network(SocketAddr, Vec<u8>),
    /// Write this inner IP packet to the TUN device.
    Tun(Vec<u8>),
}

struct Peer {
    config: WgPeerConfig,
    tunn: Tunn,
    index: u32,
    endpoint: Option<SocketAddr>,
    counters: PeerCounters,
}

/// How [`Engine::apply`] treated the peers.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Peers added (new public keys).
    pub added: Vec<String>,
    /// Peers removed (public keys no longer configured).
    pub removed: Vec<String>,
    /// Peers whose session state was rebuilt (their keepalive changed).
    pub rebuilt: Vec<String>,
    /// Peers kept with their sessions.
    pub kept: Vec<String>,
    /// Whether this gateway's own key changed (every session is renegotiated).
    pub own_key_changed: bool,
}

/// The WireGuard state of one interface.
pub struct Engine {
    interface: String,
    secret: StaticSecret,
    public: PublicKey,
    limiter: Arc<RateLimiter>,
    last_limiter_reset: Instant,
    peers: Vec<Peer>,
    next_index: u32,
    counters: DeviceCounters,
    scratch: Vec<u8>,
}

impl Engine {
    /// An engine for this configuration.
    pub fn new(cfg: &WgDeviceConfig) -> Result<Engine, WgError> {
        validate(cfg)?;
        let secret = StaticSecret::from(cfg.private_key);
        let public = keys::public_of(&secret);
        let mut engine = Engine {
            interface: cfg.interface.clone(),
            limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
            secret,
            public,
            last_limiter_reset: Instant::now(),
            peers: Vec::new(),
            next_index: 1,
            counters: DeviceCounters::default(),
            scratch: vec![0; SCRATCH],
        };
        for p in &cfg.peers {
            let peer = engine.new_peer(p.clone())?;
            engine.peers.push(peer);
        }
        Ok(engine)
    }

    fn new_peer(&mut self, config: WgPeerConfig) -> Result<Peer, WgError> {
        // Tunn shifts the index left by 8 for its session ids: it must fit in 24 bits.
        let index = self.next_index;
        self.next_index = (self.next_index % 0x00ff_ffff) + 1;
        let tunn = self.tunn(&config, index)?;
        Ok(Peer {
            endpoint: config.endpoint,
            config,
            tunn,
            index,
            counters: PeerCounters::default(),
        })
    }

    fn tunn(&self, config: &WgPeerConfig, index: u32) -> Result<Tunn, WgError> {
        Tunn::new(
            self.secret.clone(),
            PublicKey::from(config.public_key),
            None,
            config.persistent_keepalive,
            index,
            Some(Arc::clone(&self.limiter)),
        )
        .map_err(|e| WgError::Invalid {
            interface: self.interface.clone(),
            reason: format!("peer {}: {e}", config.id),
        })
    }

    /// Applies a new configuration (a reload). Peers are matched by public key: one whose key
    /// is unchanged keeps its sessions and counters (a changed endpoint is taken, an unchanged
    /// one leaves a roamed endpoint alone); a rotated peer key is a new peer. A new own key
    /// renegotiates every session, as it must, but keeps the peers and their counters.
    pub fn apply(&mut self, cfg: &WgDeviceConfig) -> Result<ApplyReport, WgError> {
        validate(cfg)?;
        let mut report = ApplyReport::default();
        if cfg.private_key != self.secret.to_bytes() {
            let secret = StaticSecret::from(cfg.private_key);
            let public = keys::public_of(&secret);
            let limiter = Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT));
            for p in &mut self.peers {
                p.tunn
                    .set_static_private(secret.clone(), public, Some(Arc::clone(&limiter)))
                    .map_err(|e| WgError::Invalid {
                        interface: self.interface.clone(),
                        reason: format!("peer {}: new private key refused: {e:?}", p.config.id),
                    })?;
            }
            self.secret = secret;
            self.public = public;
            self.limiter = limiter;
            report.own_key_changed = true;
        }
        let mut old: Vec<Peer> = std::mem::take(&mut self.peers);
        for want in &cfg.peers {
            match old
                .iter()
                .position(|p| p.config.public_key == want.public_key)
            {
                Some(i) => {
                    let mut peer = old.swap_remove(i);
                    if peer.config.persistent_keepalive != want.persistent_keepalive {
                        peer.tunn = self.tunn(want, peer.index)?;
                        report.rebuilt.push(want.id.clone());
                    } else {
                        report.kept.push(want.id.clone());
                    }
                    if peer.config.endpoint != want.endpoint {
                        peer.endpoint = want.endpoint;
                    }
                    peer.config = want.clone();
                    self.peers.push(peer);
                }
                None => {
                    let peer = self.new_peer(want.clone())?;
                    report.added.push(want.id.clone());
                    self.peers.push(peer);
                }
            }
        }
        report.removed = old.into_iter().map(|p| p.config.id).collect();
        self.interface.clone_from(&cfg.interface);
        Ok(report)
    }

    /// A packet read from the TUN device: encrypt it for the peer whose allowed IPs cover its
    /// destination (longest prefix), or drop it and count why.
    pub fn from_tun(&mut self, packet: &[u8], out: &mut Vec<Output>) {
        let Some(dst) = Tunn::dst_address(packet) else {
            self.counters.malformed += 1;
            return;
        };
        let Some(i) = self.route(dst) else {
            self.counters.no_route += 1;
            return;
        };
        let peer = &mut self.peers[i];
        peer.counters.tx_bytes += packet.len() as u64;
        peer.counters.tx_packets += 1;
        match peer.tunn.encapsulate(packet, &mut self.scratch) {
            TunnResult::WriteToNetwork(buf) => match peer.endpoint {
                Some(ep) => out.push(Output::Network(ep, buf.to_vec())),
                None => self.counters.no_endpoint += 1,
            },
            TunnResult::Err(e) => {
                debug!(peer = %peer.config.id, error = ?e, "encapsulation failed");
                peer.counters.dropped += 1;
            }
            TunnResult::Done
            | TunnResult::WriteToTunnelV4(..)
            | TunnResult::WriteToTunnelV6(..) => {}
        }
    }

    /// A datagram received on the UDP socket from `src`.
    pub fn from_network(&mut self, src: SocketAddr, datagram: &[u8], out: &mut Vec<Output>) {
        let Some(i) = self.identify(datagram) else {
            return;
        };
        let peer = &mut self.peers[i];
        let mut authenticated = false;
        match peer
            .tunn
            .decapsulate(Some(src.ip()), datagram, &mut self.scratch)
        {
            TunnResult::Done => authenticated = true,
            TunnResult::WriteToNetwork(buf) => {
                out.push(Output::Network(src, buf.to_vec()));
                authenticated = true;
                // Packets queued behind the handshake go out now.
                while let TunnResult::WriteToNetwork(buf) =
                    peer.tunn.decapsulate(None, &[], &mut self.scratch)
                {
                    out.push(Output::Network(src, buf.to_vec()));
                }
            }
            TunnResult::WriteToTunnelV4(buf, ip) => {
                authenticated = true;
                deliver(peer, IpAddr::V4(ip), buf, out);
            }
            TunnResult::WriteToTunnelV6(buf, ip) => {
                authenticated = true;
                deliver(peer, IpAddr::V6(ip), buf, out);
            }
            TunnResult::Err(e) => {
                if is_forgery(&e) {
                    peer.counters.tampered += 1;
                } else {
                    peer.counters.dropped += 1;
                }
                debug!(peer = %peer.config.id, %src, error = ?e, "dropped WireGuard packet");
            }
        }
        if authenticated && peer.endpoint != Some(src) {
            // Roaming: an authenticated packet tells where the peer is now.
            peer.endpoint = Some(src);
        }
    }

    /// Timers: handshake retries, rekeying, keepalives. Call a few times a second.
    pub fn tick(&mut self, out: &mut Vec<Output>) {
        if self.last_limiter_reset.elapsed() >= Duration::from_secs(1) {
            self.limiter.reset_count();
            self.last_limiter_reset = Instant::now();
        }
        for peer in &mut self.peers {
            match peer.tunn.update_timers(&mut self.scratch) {
                TunnResult::WriteToNetwork(buf) => match peer.endpoint {
                    Some(ep) => out.push(Output::Network(ep, buf.to_vec())),
                    None => self.counters.no_endpoint += 1,
                },
                TunnResult::Err(WireGuardError::ConnectionExpired) | TunnResult::Done => {}
                TunnResult::Err(e) => {
                    debug!(peer = %peer.config.id, error = ?e, "timer error");
                }
                TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => {}
            }
        }
    }

    /// The status of every peer and the device counters.
    pub fn status(&self, backend: &str) -> DeviceStatus {
        DeviceStatus {
            backend: backend.to_owned(),
            peers: self
                .peers
                .iter()
                .map(|p| PeerStatus {
                    id: p.config.id.clone(),
                    public_key: keys::encode_key(&p.config.public_key),
                    endpoint: p.endpoint,
                    allowed_ips: p.config.allowed_ips.clone(),
                    last_handshake_secs: p.tunn.time_since_last_handshake().map(|d| d.as_secs()),
                    counters: p.counters.clone(),
                })
                .collect(),
            counters: self.counters.clone(),
        }
    }

    /// This gateway's public key.
    pub fn public_key(&self) -> [u8; 32] {
        *self.public.as_bytes()
    }

    fn route(&self, dst: IpAddr) -> Option<usize> {
        let mut best: Option<(u8, usize)> = None;
        for (i, p) in self.peers.iter().enumerate() {
            for net in &p.config.allowed_ips {
                if net.contains(&dst) && best.is_none_or(|(len, _)| net.prefix_len() > len) {
                    best = Some((net.prefix_len(), i));
                }
            }
        }
        best.map(|(_, i)| i)
    }

    fn identify(&mut self, datagram: &[u8]) -> Option<usize> {
        let packet = match Tunn::parse_incoming_packet(datagram) {
            Ok(p) => p,
            Err(_) => {
                self.counters.malformed += 1;
                return None;
            }
        };
        let found = match packet {
            Packet::HandshakeInit(ref init) => {
                match parse_handshake_anon(&self.secret, &self.public, init) {
                    Ok(half) => self
                        .peers
                        .iter()
                        .position(|p| p.config.public_key == half.peer_static_public),
                    Err(_) => None,
                }
            }
            Packet::HandshakeResponse(r) => self.by_index(r.receiver_idx),
            Packet::PacketCookieReply(c) => self.by_index(c.receiver_idx),
            Packet::PacketData(d) => self.by_index(d.receiver_idx),
        };
        if found.is_none() {
            self.counters.unknown_peer += 1;
        }
        found
    }

    fn by_index(&self, receiver_idx: u32) -> Option<usize> {
        let index = receiver_idx >> 8;
        self.peers.iter().position(|p| p.index == index)
    }
}

fn deliver(peer: &mut Peer, src: IpAddr, buf: &[u8], out: &mut Vec<Output>) {
    if !peer
        .config
        .allowed_ips
        .iter()
        .any(|n: &IpNet| n.contains(&src))
    {
        peer.counters.src_not_allowed += 1;
        debug!(peer = %peer.config.id, %src, "inner source outside the peer's allowed IPs");
        return;
    }
    peer.counters.rx_bytes += buf.len() as u64;
    peer.counters.rx_packets += 1;
    out.push(Output::Tun(buf.to_vec()));
}

/// Errors that mean the packet did not come from the key holder unaltered.
fn is_forgery(e: &WireGuardError) -> bool {
    matches!(
        e,
        WireGuardError::InvalidAeadTag
            | WireGuardError::InvalidMac
            | WireGuardError::WrongKey
            | WireGuardError::InvalidTai64nTimestamp
    )
}

#[cfg(test)]
mod tests;
