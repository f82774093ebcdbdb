//! The path-vector routing table of one gateway, free of I/O (time is passed in).
//!
//! Routes are originated locally (the legacy prefixes behind this gateway, the services it
//! serves) or learned from peers with the path of gateway ids they came through. A learned
//! route whose path holds this gateway's id is a loop and is refused; the best route per key
//! is the local one, else the shortest path, ties to the lowest peer id. Exports follow split
//! horizon (nothing goes back to the peer it came from, nor to a peer already on its path) and
//! prepend this gateway's id. A peer's routes live while it is heard from within the hold
//! time: after its connection drops, or when it falls silent, they are withdrawn once
//! `last heard + hold` passes. A peer that comes back with a new generation (it restarted)
//! replaces everything its previous generation announced.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::proto::{Route, RouteKey, ServiceAttrs};

/// The route chosen for a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Best {
    /// The peer it was learned from; `None` for a route originated here.
    pub via: Option<String>,
    /// Its path as received (empty for a local route).
    pub path: Vec<String>,
    /// For services: where the peer serves it (for a local route, where this gateway does).
    pub service: Option<ServiceAttrs>,
}

/// An update that breaks the protocol.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RibError {
    /// An update for another generation than the peer's hello announced.
    #[error("peer {peer}: update for generation {got}, but its session is generation {want}")]
    Generation {
        /// The peer.
        peer: String,
        /// What the update said.
        got: u64,
        /// What the hello said.
        want: u64,
    },
    /// An update from a peer without a session.
    #[error("peer {0}: update before hello")]
    NoSession(String),
}

#[derive(Debug)]
struct PeerIn {
    generation: u64,
    hold: Duration,
    last_heard: Instant,
    connected: bool,
    routes: BTreeMap<RouteKey, Route>,
}

/// Counters of refused routes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RibCounters {
    /// Routes refused because this gateway is on their path.
    pub loops: u64,
    /// Routes refused because their path is empty or does not start with the sender.
    pub bad_path: u64,
}

/// The table.
#[derive(Debug)]
pub struct Rib {
    id: String,
    local: BTreeMap<RouteKey, Option<ServiceAttrs>>,
    peers: BTreeMap<String, PeerIn>,
    counters: RibCounters,
}

impl Rib {
    /// An empty table for the gateway `id`.
    pub fn new(id: &str) -> Rib {
        Rib {
            id: id.to_owned(),
            local: BTreeMap::new(),
            peers: BTreeMap::new(),
            counters: RibCounters::default(),
        }
    }

    /// This gateway's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Replaces the locally originated routes.
    pub fn set_local(&mut self, routes: BTreeMap<RouteKey, Option<ServiceAttrs>>) {
        self.local = routes;
    }

    /// A session with `peer` is established (its hello arrived). A new generation drops the
    /// routes of the previous one; the same generation (a reconnect of the same process)
    /// keeps them until it re-announces.
    pub fn peer_up(&mut self, peer: &str, generation: u64, hold: Duration, now: Instant) {
        let entry = self.peers.entry(peer.to_owned()).or_insert_with(|| PeerIn {
            generation,
            hold,
            last_heard: now,
            connected: true,
            routes: BTreeMap::new(),
        });
        if entry.generation != generation {
            entry.routes.clear();
            entry.generation = generation;
        }
        entry.hold = hold;
        entry.last_heard = now;
        entry.connected = true;
    }

    /// Anything arrived from `peer` (keepalives included).
    pub fn heard(&mut self, peer: &str, now: Instant) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.last_heard = now;
        }
    }

    /// Applies an update from `peer`. Routes with a loop or a bad path are refused and counted
    /// (the rest of the update still applies).
    pub fn update(
        &mut self,
        peer: &str,
        generation: u64,
        announce: Vec<Route>,
        withdraw: &[RouteKey],
        now: Instant,
    ) -> Result<(), RibError> {
        let Some(p) = self.peers.get_mut(peer) else {
            return Err(RibError::NoSession(peer.to_owned()));
        };
        if p.generation != generation {
            return Err(RibError::Generation {
                peer: peer.to_owned(),
                got: generation,
                want: p.generation,
            });
        }
        p.last_heard = now;
        for k in withdraw {
            p.routes.remove(k);
        }
        for r in announce {
            if r.path.first().map(String::as_str) != Some(peer) {
                self.counters.bad_path += 1;
                p.routes.remove(&r.key);
            } else if r.path.contains(&self.id) {
                self.counters.loops += 1;
                p.routes.remove(&r.key);
            } else {
                p.routes.insert(r.key.clone(), r);
            }
        }
        Ok(())
    }

    /// The connection to `peer` is gone; its routes stay until its hold time runs out.
    pub fn peer_down(&mut self, peer: &str) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.connected = false;
        }
    }

    /// Drops the routes of every peer not heard from within its hold time; returns those
    /// peers (whose routes were withdrawn).
    pub fn expire(&mut self, now: Instant) -> Vec<String> {
        let mut gone = Vec::new();
        for (id, p) in &mut self.peers {
            if now.saturating_duration_since(p.last_heard) >= p.hold && !p.routes.is_empty() {
                p.routes.clear();
                gone.push(id.clone());
            }
        }
        gone
    }

    /// When [`Rib::expire`] may next have something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.peers
            .values()
            .filter(|p| !p.routes.is_empty())
            .map(|p| p.last_heard + p.hold)
            .min()
    }

    /// Whether `peer` has a live connection.
    pub fn is_connected(&self, peer: &str) -> bool {
        self.peers.get(peer).is_some_and(|p| p.connected)
    }

    /// The routes learned from `peer` (for status).
    pub fn learned_from(&self, peer: &str) -> Vec<&Route> {
        self.peers
            .get(peer)
            .map(|p| p.routes.values().collect())
            .unwrap_or_default()
    }

    /// Refused-route counters.
    pub fn counters(&self) -> RibCounters {
        self.counters
    }

    /// The best route for every key.
    pub fn best(&self) -> BTreeMap<RouteKey, Best> {
        let mut best: BTreeMap<RouteKey, Best> = self
            .local
            .iter()
            .map(|(k, s)| {
                (
                    k.clone(),
                    Best {
                        via: None,
                        path: Vec::new(),
                        service: s.clone(),
                    },
                )
            })
            .collect();
        // Peers iterate in id order, so on equal length the lowest id is kept.
        for (id, p) in &self.peers {
            for (k, r) in &p.routes {
                let better = match best.get(k) {
                    None => true,
                    Some(b) => b.via.is_some() && r.path.len() < b.path.len(),
                };
                if better {
                    best.insert(
                        k.clone(),
                        Best {
                            via: Some(id.clone()),
                            path: r.path.clone(),
                            service: r.service.clone(),
                        },
                    );
                }
            }
        }
        best
    }

    /// What to announce to `peer`. `serve` gives this gateway's own service attributes (its
    /// portal VIP) for a learned service; a learned service it cannot serve is not announced.
    pub fn export(
        &self,
        peer: &str,
        serve: impl Fn(&RouteKey) -> Option<ServiceAttrs>,
    ) -> BTreeMap<RouteKey, Route> {
        let mut out = BTreeMap::new();
        for (k, b) in self.best() {
            if b.via.as_deref() == Some(peer) || b.path.iter().any(|g| g == peer) {
                continue;
            }
            let service = match (&k, &b.via) {
                (RouteKey::Prefix { .. }, _) => None,
                (RouteKey::Service { .. }, None) => b.service.clone(),
                (RouteKey::Service { .. }, Some(_)) => match serve(&k) {
                    Some(s) => Some(s),
                    None => continue,
                },
            };
            let mut path = Vec::with_capacity(b.path.len() + 1);
            path.push(self.id.clone());
            path.extend(b.path);
            out.insert(
                k.clone(),
                Route {
                    key: k,
                    path,
                    service,
                },
            );
        }
        out
    }
}

/// The update that turns what a peer was sent (`old`) into `new`: changed or new routes, and
/// withdrawn keys.
pub fn diff(
    old: &BTreeMap<RouteKey, Route>,
    new: &BTreeMap<RouteKey, Route>,
) -> (Vec<Route>, Vec<RouteKey>) {
    let announce = new
        .iter()
        .filter(|(k, r)| old.get(*k) != Some(*r))
        .map(|(_, r)| r.clone())
        .collect();
    let withdraw = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .cloned()
        .collect();
    (announce, withdraw)
}

#[cfg(test)]
mod tests;
