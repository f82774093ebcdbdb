//! The peering protocol on QUIC: one bidirectional stream per gateway pair, hello first, then
//! updates and keepalives. Of two configured peers the one with the lower gateway id dials
//! (with backoff) and the other accepts, so a pair never holds two sessions.
//!
//! Liveness: QUIC's idle timeout is the hold time, and keepalives go out every third of it;
//! a peer's routes are withdrawn once it has not been heard for the hold time (see
//! [`super::rib`]), whether its connection broke, timed out, or it fell silent.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ipnet::IpNet;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::pki_types::CertificateDer;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::proto::{self, Message, RouteKey, ServiceAttrs};
use super::rib::{diff, Best, Rib};
use super::tls::{client_config, server_config, Identity, TlsError, Trust};

/// The most refusals kept for the status.
const REFUSALS_KEPT: usize = 32;

/// A configured peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerSpec {
    /// Its gateway id (also the DNS name in its certificate under a CA).
    pub id: String,
    /// Its QUIC address; needed on the side with the lower gateway id, which dials.
    pub endpoint: Option<SocketAddr>,
}

/// What the peering needs.
#[derive(Clone, Debug)]
pub struct PeeringConfig {
    /// This gateway's id.
    pub gateway_id: String,
    /// Where to listen for peers.
    pub listen: SocketAddr,
    /// How long a silent peer's routes are kept.
    pub hold_time: Duration,
    /// This run's generation (increases across restarts, e.g. the start time in ms).
    pub generation: u64,
    /// The peers.
    pub peers: Vec<PeerSpec>,
}

/// A peering that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum PeeringError {
    /// TLS setup.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The QUIC endpoint.
    #[error("QUIC endpoint on {addr}: {reason}")]
    Endpoint {
        /// The listen address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

/// State of the session with one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// No session, none being attempted (this side waits for the peer to dial).
    Idle,
    /// Dialing.
    Connecting,
    /// Hello exchanged.
    Established,
}

/// What `meshgw status` shows of one peering peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeeringPeerStatus {
    /// Gateway id.
    pub id: String,
    /// Session state.
    pub state: SessionState,
    /// Its generation (from its last hello).
    pub generation: Option<u64>,
    /// Sessions established so far.
    pub sessions: u64,
    /// Prefixes learned from it (held ones included).
    pub prefixes: Vec<IpNet>,
    /// Services learned from it, `namespace/name`.
    pub services: Vec<String>,
    /// Why the last session ended or the last attempt failed.
    pub last_error: Option<String>,
}

/// The peering status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PeeringStatus {
    /// This gateway's id.
    pub gateway_id: String,
    /// This run's generation.
    pub generation: u64,
    /// Peers.
    pub peers: Vec<PeeringPeerStatus>,
    /// The latest refused connections, with the reason.
    pub refusals: Vec<String>,
    /// Routes refused because this gateway was on their path.
    pub loops_refused: u64,
}

#[derive(Default)]
struct PeerInfo {
    state: Option<SessionState>,
    generation: Option<u64>,
    sessions: u64,
    last_error: Option<String>,
    /// The current session: its number and connection (a newer session closes the older).
    current: Option<(u64, quinn::Connection)>,
}

struct State {
    rib: Rib,
    served: BTreeMap<RouteKey, ServiceAttrs>,
    peers: BTreeMap<String, PeerInfo>,
    refusals: VecDeque<String>,
    next_session: u64,
}

struct Shared {
    cfg: PeeringConfig,
    trust: Trust,
    state: Mutex<State>,
    changed: watch::Sender<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data; keep serving it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }

    fn refuse(&self, what: String) {
        warn!(gateway = %self.cfg.gateway_id, reason = %what, "peering connection refused");
        let mut st = self.lock();
        if st.refusals.len() == REFUSALS_KEPT {
            st.refusals.pop_front();
        }
        st.refusals.push_back(what);
    }

    fn set_state(&self, peer: &str, state: SessionState, error: Option<String>) {
        let mut st = self.lock();
        let p = st.peers.entry(peer.to_owned()).or_default();
        p.state = Some(state);
        if error.is_some() {
            p.last_error = error;
        }
    }
}

/// A running peering; dropping it stops every task and closes the endpoint.
pub struct Peering {
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Peering {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        self.endpoint.close(0u32.into(), b"shutdown");
    }
}

fn transport(hold: Duration) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(quinn::IdleTimeout::try_from(hold).ok());
    t.keep_alive_interval(Some(hold / 3));
    Arc::new(t)
}

impl Peering {
    /// Binds the QUIC endpoint and starts accepting, dialing and expiring. Must be called
    /// inside a tokio runtime.
    pub fn start(
        cfg: PeeringConfig,
        identity: &Identity,
        trust: Trust,
    ) -> Result<Peering, PeeringError> {
        let endpoint_err = |reason: String| PeeringError::Endpoint {
            addr: cfg.listen,
            reason,
        };
        let server_crypto = QuicServerConfig::try_from(server_config(identity, &trust)?)
            .map_err(|e| endpoint_err(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server.transport_config(transport(cfg.hold_time));
        let client_crypto = QuicClientConfig::try_from(client_config(identity, &trust)?)
            .map_err(|e| endpoint_err(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
        client.transport_config(transport(cfg.hold_time));
        let mut endpoint =
            quinn::Endpoint::server(server, cfg.listen).map_err(|e| endpoint_err(e.to_string()))?;
        endpoint.set_default_client_config(client);

        let (changed, _) = watch::channel(0);
        let peers = cfg
            .peers
            .iter()
            .map(|p| {
                let dials = p.endpoint.is_some() && cfg.gateway_id < p.id;
                let info = PeerInfo {
                    state: Some(if dials {
                        SessionState::Connecting
                    } else {
                        SessionState::Idle
                    }),
                    ..PeerInfo::default()
                };
                (p.id.clone(), info)
            })
            .collect();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rib: Rib::new(&cfg.gateway_id),
                served: BTreeMap::new(),
                peers,
                refusals: VecDeque::new(),
                next_session: 1,
            }),
            trust,
            changed,
            cfg,
        });
        info!(
            gateway = %shared.cfg.gateway_id,
            listen = %shared.cfg.listen,
            generation = shared.cfg.generation,
            hold_secs = shared.cfg.hold_time.as_secs(),
            "peering started"
        );
        let mut tasks = vec![
            tokio::spawn(accept_loop(shared.clone(), endpoint.clone())),
            tokio::spawn(expire_loop(shared.clone())),
        ];
        for p in &shared.cfg.peers {
            if let Some(addr) = p.endpoint.filter(|_| shared.cfg.gateway_id < p.id) {
                tasks.push(tokio::spawn(dial_loop(
                    shared.clone(),
                    endpoint.clone(),
                    p.id.clone(),
                    addr,
                )));
            }
        }
        Ok(Peering {
            shared,
            endpoint,
            tasks,
        })
    }

    /// The address the endpoint listens on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr().ok()
    }

    /// Replaces the routes this gateway originates (its legacy prefixes, its services).
    pub fn set_local(&self, routes: BTreeMap<RouteKey, Option<ServiceAttrs>>) {
        self.shared.lock().rib.set_local(routes);
        self.shared.bump();
    }

    /// Replaces this gateway's own attributes (its portal VIP) for learned services; only
    /// those are passed on to other peers.
    pub fn set_served(&self, served: BTreeMap<RouteKey, ServiceAttrs>) {
        self.shared.lock().served = served;
        self.shared.bump();
    }

    /// A receiver that changes whenever the best routes may have changed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.shared.changed.subscribe()
    }

    /// The best route per key (local routes included, `via: None`).
    pub fn best(&self) -> BTreeMap<RouteKey, Best> {
        self.shared.lock().rib.best()
    }

    /// Sessions, learned routes and refusals.
    pub fn status(&self) -> PeeringStatus {
        let st = self.shared.lock();
        let peers = st
            .peers
            .iter()
            .map(|(id, p)| {
                let mut prefixes = Vec::new();
                let mut services = Vec::new();
                for r in st.rib.learned_from(id) {
                    match &r.key {
                        RouteKey::Prefix { prefix } => prefixes.push(*prefix),
                        RouteKey::Service { namespace, name } => {
                            services.push(format!("{namespace}/{name}"))
                        }
                    }
                }
                PeeringPeerStatus {
                    id: id.clone(),
                    state: p.state.unwrap_or(SessionState::Idle),
                    generation: p.generation,
                    sessions: p.sessions,
                    prefixes,
                    services,
                    last_error: p.last_error.clone(),
                }
            })
            .collect();
        PeeringStatus {
            gateway_id: self.shared.cfg.gateway_id.clone(),
            generation: self.shared.cfg.generation,
            peers,
            refusals: st.refusals.iter().cloned().collect(),
            loops_refused: st.rib.counters().loops,
        }
    }
}

async fn accept_loop(shared: Arc<Shared>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    shared.refuse(format!("connection from {remote}: {e}"));
                    return;
                }
            };
            match conn.accept_bi().await {
                Ok((send, recv)) => {
                    let r = run_session(&shared, conn.clone(), send, recv, None).await;
                    if let Err(e) = r {
                        debug!(%remote, error = %e, "accepted peering session ended");
                    }
                }
                Err(e) => debug!(%remote, error = %e, "no stream on the peering connection"),
            }
        });
    }
}

async fn dial_loop(shared: Arc<Shared>, endpoint: quinn::Endpoint, peer: String, addr: SocketAddr) {
    let min = Duration::from_millis(200);
    let max = (shared.cfg.hold_time / 2).max(min);
    let mut backoff = min;
    loop {
        shared.set_state(&peer, SessionState::Connecting, None);
        let attempt = async {
            let conn = endpoint
                .connect(addr, &peer)
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())?;
            let (send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            Ok::<_, String>((conn, send, recv))
        };
        match attempt.await {
            Ok((conn, send, recv)) => {
                let r = run_session(&shared, conn, send, recv, Some(&peer)).await;
                match r {
                    Ok(true) => backoff = min,
                    Ok(false) => {}
                    Err(e) => {
                        shared.set_state(&peer, SessionState::Connecting, Some(e));
                    }
                }
            }
            Err(e) => {
                let what = format!("dialing {peer} at {addr}: {e}");
                if e.contains("certificate") || e.contains("handshake") || e.contains("alert") {
                    shared.refuse(what.clone());
                } else {
                    debug!(%peer, %addr, error = %e, "peering dial failed");
                }
                shared.set_state(&peer, SessionState::Connecting, Some(what));
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(max);
    }
}

async fn expire_loop(shared: Arc<Shared>) {
    loop {
        let deadline = shared.lock().rib.next_deadline();
        let wake = deadline
            .map(Instant::from_std)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(1))
            .min(Instant::now() + Duration::from_secs(1));
        tokio::time::sleep_until(wake).await;
        let gone = shared.lock().rib.expire(std::time::Instant::now());
        if !gone.is_empty() {
            info!(gateway = %shared.cfg.gateway_id, peers = ?gone, "hold time expired: routes withdrawn");
            shared.bump();
        }
    }
}

async fn send(stream: &mut quinn::SendStream, msg: &Message) -> Result<(), String> {
    stream
        .write_all(&proto::encode(msg))
        .await
        .map_err(|e| e.to_string())
}

async fn read_frames(mut recv: quinn::RecvStream, tx: mpsc::Sender<Result<Message, String>>) {
    loop {
        let mut hdr = [0u8; 4];
        if let Err(e) = recv.read_exact(&mut hdr).await {
            let _ = tx.send(Err(e.to_string())).await;
            return;
        }
        let body = match proto::frame_len(hdr) {
            Ok(n) => {
                let mut body = vec![0; n];
                if let Err(e) = recv.read_exact(&mut body).await {
                    let _ = tx.send(Err(e.to_string())).await;
                    return;
                }
                body
            }
            Err(e) => {
                let _ = tx.send(Err(e.to_string())).await;
                return;
            }
        };
        let msg = proto::decode(&body)
            .map(|(_, m)| m)
            .map_err(|e| e.to_string());
        let stop = msg.is_err();
        if tx.send(msg).await.is_err() || stop {
            return;
        }
    }
}

/// One session, hello to end. `Ok(true)` if it was established, `Ok(false)` if refused.
async fn run_session(
    shared: &Arc<Shared>,
    conn: quinn::Connection,
    mut tx: quinn::SendStream,
    rx: quinn::RecvStream,
    expected: Option<&str>,
) -> Result<bool, String> {
    let cfg = &shared.cfg;
    let remote = conn.remote_address();
    send(
        &mut tx,
        &Message::Hello {
            gateway_id: cfg.gateway_id.clone(),
            generation: cfg.generation,
            hold_time_secs: u32::try_from(cfg.hold_time.as_secs()).unwrap_or(u32::MAX),
        },
    )
    .await?;
    let (ftx, mut frames) = mpsc::channel(64);
    let reader = tokio::spawn(read_frames(rx, ftx));
    let hello = tokio::time::timeout(cfg.hold_time, frames.recv()).await;
    let (peer, generation, hold_secs) = match hello {
        Ok(Some(Ok(Message::Hello {
            gateway_id,
            generation,
            hold_time_secs,
        }))) => (gateway_id, generation, hold_time_secs),
        other => {
            reader.abort();
            let why = match other {
                Err(_) => "no hello within the hold time".to_owned(),
                Ok(Some(Err(e))) => e,
                Ok(None) => "stream closed before hello".to_owned(),
                Ok(Some(Ok(m))) => format!("expected hello, got {m:?}"),
            };
            conn.close(1u32.into(), b"bad hello");
            return Err(format!("{remote}: {why}"));
        }
    };
    let refuse = |why: String| {
        let what = format!("peer {peer:?} at {remote}: {why}");
        conn.close(2u32.into(), b"refused");
        shared.refuse(what);
        Ok(false)
    };
    if expected.is_some_and(|e| e != peer) {
        return refuse(format!("dialed {:?} but it says it is {peer:?}", expected));
    }
    if !cfg.peers.iter().any(|p| p.id == peer) {
        return refuse("not a configured peer".into());
    }
    let certs: Vec<CertificateDer<'static>> = conn
        .peer_identity()
        .and_then(|a| a.downcast::<Vec<CertificateDer<'static>>>().ok())
        .map(|b| *b)
        .unwrap_or_default();
    if let Err(why) = shared.trust.authorize(&peer, &certs) {
        return refuse(why);
    }
    let hold = cfg
        .hold_time
        .min(Duration::from_secs(u64::from(hold_secs.max(1))));
    let session = {
        let mut st = shared.lock();
        st.rib
            .peer_up(&peer, generation, hold, std::time::Instant::now());
        let n = st.next_session;
        st.next_session += 1;
        let p = st.peers.entry(peer.clone()).or_default();
        if let Some((_, old)) = p.current.replace((n, conn.clone())) {
            old.close(3u32.into(), b"replaced by a newer session");
        }
        p.state = Some(SessionState::Established);
        p.generation = Some(generation);
        p.sessions += 1;
        p.last_error = None;
        n
    };
    info!(gateway = %cfg.gateway_id, %peer, %remote, generation, "peering session established");
    shared.bump();

    let result = session_loop(shared, &peer, &mut tx, &mut frames, hold).await;
    reader.abort();
    let reason = match &result {
        Ok(()) => "closed".to_owned(),
        Err(e) => e.clone(),
    };
    conn.close(0u32.into(), b"session ended");
    {
        let mut st = shared.lock();
        let current = st
            .peers
            .get(&peer)
            .and_then(|p| p.current.as_ref())
            .is_some_and(|(n, _)| *n == session);
        if current {
            st.rib.peer_down(&peer);
            if let Some(p) = st.peers.get_mut(&peer) {
                p.current = None;
                p.state = Some(SessionState::Idle);
                p.last_error = Some(reason.clone());
            }
        }
    }
    warn!(gateway = %cfg.gateway_id, %peer, reason = %reason, "peering session ended; routes held for the hold time");
    shared.bump();
    Ok(true)
}

async fn session_loop(
    shared: &Arc<Shared>,
    peer: &str,
    tx: &mut quinn::SendStream,
    frames: &mut mpsc::Receiver<Result<Message, String>>,
    hold: Duration,
) -> Result<(), String> {
    let mut changes = shared.changed.subscribe();
    let mut sent: BTreeMap<RouteKey, proto::Route> = BTreeMap::new();
    let mut keepalive = tokio::time::interval(hold / 3);
    let mut first = true;
    let mut dirty = true;
    loop {
        if dirty {
            dirty = false;
            changes.borrow_and_update();
            let new = {
                let st = shared.lock();
                st.rib.export(peer, |k| st.served.get(k).cloned())
            };
            let (announce, withdraw) = diff(&sent, &new);
            if first || !announce.is_empty() || !withdraw.is_empty() {
                debug!(%peer, announce = announce.len(), withdraw = withdraw.len(), "sending update");
                send(
                    tx,
                    &Message::Update {
                        generation: shared.cfg.generation,
                        announce,
                        withdraw,
                    },
                )
                .await?;
                sent = new;
            }
            first = false;
        }
        tokio::select! {
            m = frames.recv() => match m {
                None => return Err("stream closed".into()),
                Some(Err(e)) => return Err(e),
                Some(Ok(Message::Update { generation: g, announce, withdraw })) => {
                    let r = shared.lock().rib.update(peer, g, announce, &withdraw, std::time::Instant::now());
                    r.map_err(|e| e.to_string())?;
                    shared.bump();
                }
                Some(Ok(Message::Hello { .. })) => return Err("second hello".into()),
                Some(Ok(Message::Keepalive | Message::Unknown)) => {
                    shared.lock().rib.heard(peer, std::time::Instant::now());
                }
            },
            _ = changes.changed() => dirty = true,
            _ = keepalive.tick() => send(tx, &Message::Keepalive).await?,
        }
    }
}
