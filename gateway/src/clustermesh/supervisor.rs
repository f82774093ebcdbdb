//! Runs one client task per configured cluster and keeps each cluster's state and connection
//! status up to date from their events. The daemon owns it and reads the states when it
//! reconciles.

use std::collections::BTreeMap;
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::client::{self, ClientEvent, ClusterEndpoint};
use super::kvstore;
use super::state::{Applied, ClusterState, KvEvent};
use crate::config::{ClusterSource, ClusterSpec};

/// One cluster's connection as the status shows it.
#[derive(Clone, Debug, Default)]
pub struct Connection {
    /// Whether the client is connected now.
    pub connected: bool,
    /// The last connection error.
    pub last_error: Option<String>,
    /// When the last event arrived.
    pub last_event: Option<Instant>,
}

/// The clusters: their states, connections and client tasks.
pub struct Supervisor {
    /// Each cluster's view of the kvstore.
    pub states: BTreeMap<String, ClusterState>,
    /// Each cluster's connection.
    pub connections: BTreeMap<String, Connection>,
    /// The running clients: each cluster's spec and the switch that stops its task.
    running: BTreeMap<String, (ClusterSpec, watch::Sender<bool>)>,
    tx: mpsc::Sender<(String, ClientEvent)>,
}

/// Builds a client endpoint from the configuration.
pub fn endpoint(spec: &ClusterSpec) -> Result<ClusterEndpoint, client::ClientError> {
    let mut ep = match &spec.source {
        ClusterSource::CiliumConfig(path) => ClusterEndpoint::from_cilium_config(&spec.name, path)?,
        ClusterSource::Inline {
            endpoints,
            ca_file,
            cert_file,
            key_file,
        } => ClusterEndpoint {
            cluster: spec.name.clone(),
            endpoints: endpoints.clone(),
            ca_file: ca_file.clone(),
            cert_file: cert_file.clone(),
            key_file: key_file.clone(),
            server_name: None,
        },
    };
    if spec.server_name.is_some() {
        ep.server_name = spec.server_name.clone();
    }
    Ok(ep)
}

/// The prefixes a read-only peer lists and watches for `cluster`: the config and the sync
/// canaries first (so the data lists that follow may already delete what they lack), then
/// Cilium's own layout and KVStoreMesh's cached one (whichever the server fills).
fn prefixes(cluster: &str) -> Vec<String> {
    let mut p = vec![
        kvstore::cluster_config_key(cluster),
        // `cilium/synced/<cluster>/`
        kvstore::synced_key(cluster, ""),
    ];
    p.extend(kvstore::prefixes(cluster, false));
    p.extend(kvstore::prefixes(cluster, true));
    p
}

impl Supervisor {
    /// A supervisor sending client events to `tx` (the daemon's loop feeds them back to
    /// [`Supervisor::handle`]).
    pub fn new(tx: mpsc::Sender<(String, ClientEvent)>) -> Self {
        Supervisor {
            states: BTreeMap::new(),
            connections: BTreeMap::new(),
            running: BTreeMap::new(),
            tx,
        }
    }

    /// (Re)starts the client tasks when the cluster list changed. States of clusters that stay
    /// are kept; a cluster's state is replaced by its next full list anyway.
    pub fn configure(&mut self, specs: &[ClusterSpec]) {
        // Only the clusters whose spec changed (or that went) are stopped: the others keep
        // their connection and state instead of relisting everything.
        let wanted: BTreeMap<&str, &ClusterSpec> =
            specs.iter().map(|s| (s.name.as_str(), s)).collect();
        self.running.retain(|name, (spec, stop)| {
            let keep = wanted.get(name.as_str()) == Some(&&*spec);
            if !keep {
                info!(cluster = %name, "cluster client stopped (configuration changed)");
                let _ = stop.send(true);
            }
            keep
        });
        self.states
            .retain(|name, _| wanted.contains_key(name.as_str()));
        self.connections
            .retain(|name, _| wanted.contains_key(name.as_str()));
        for spec in specs {
            if self.running.contains_key(&spec.name) {
                continue;
            }
            self.states
                .entry(spec.name.clone())
                .or_insert_with(|| ClusterState::new(&spec.name));
            let conn = self.connections.entry(spec.name.clone()).or_default();
            let (stop_tx, stop_rx) = watch::channel(false);
            match endpoint(spec) {
                Ok(ep) => {
                    info!(cluster = %spec.name, endpoints = ?ep.endpoints, "connecting to the Cluster Mesh API");
                    conn.last_error = None;
                    tokio::spawn(client::run_cluster(
                        ep,
                        prefixes(&spec.name),
                        self.tx.clone(),
                        stop_rx,
                    ));
                }
                Err(e) => {
                    warn!(cluster = %spec.name, error = %e, "cluster not started");
                    conn.last_error = Some(e.to_string());
                }
            }
            self.running
                .insert(spec.name.clone(), (spec.clone(), stop_tx));
        }
    }

    /// Applies one client event; returns whether the catalog may have changed.
    pub fn handle(&mut self, cluster: &str, ev: ClientEvent) -> bool {
        let Some(state) = self.states.get_mut(cluster) else {
            return false;
        };
        let conn = self.connections.entry(cluster.to_string()).or_default();
        conn.last_event = Some(Instant::now());
        match ev {
            ClientEvent::Connected => {
                conn.connected = true;
                conn.last_error = None;
                // Canaries and lists of the previous connection no longer count: a restarted API
                // server's first list may be partial until its canaries are written again.
                state.reconnected();
                false
            }
            ClientEvent::Disconnected { error } => {
                warn!(cluster, error = %error, "Cluster Mesh API connection lost");
                conn.connected = false;
                conn.last_error = Some(error);
                false
            }
            ClientEvent::Listed {
                prefix, entries, ..
            } => state.replace_prefix(&prefix, entries),
            ClientEvent::Put { key, value } => {
                matches!(state.apply(KvEvent::Put { key, value }), Applied::Changed)
            }
            ClientEvent::Delete { key } => {
                matches!(state.apply(KvEvent::Delete { key }), Applied::Changed)
            }
        }
    }

    /// Stops every client task.
    pub fn shutdown(&mut self) {
        for (_, (_, stop)) in std::mem::take(&mut self.running) {
            let _ = stop.send(true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reload_restarts_only_the_clusters_whose_spec_changed() {
        let (tx, _rx) = mpsc::channel(8);
        let mut s = Supervisor::new(tx);
        let spec = |n: &str, file: &str| ClusterSpec {
            name: n.into(),
            source: ClusterSource::CiliumConfig(file.into()),
            server_name: None,
        };
        s.configure(&[spec("a", "/nonexistent/a"), spec("b", "/nonexistent/b")]);
        assert!(
            s.connections["a"].last_error.is_some(),
            "a missing file is said"
        );
        let stop_a = s.running["a"].1.subscribe();
        let stop_b = s.running["b"].1.subscribe();
        s.configure(&[spec("a", "/nonexistent/a"), spec("b", "/nonexistent/b2")]);
        assert!(!*stop_a.borrow(), "a is untouched");
        assert!(*stop_b.borrow(), "b's old client is stopped");
        assert!(!*s.running["b"].1.borrow(), "and a new one runs");
        s.configure(&[spec("b", "/nonexistent/b2")]);
        assert!(*stop_a.borrow(), "a removed: stopped");
        assert!(!s.states.contains_key("a") && !s.connections.contains_key("a"));
        let stop_b2 = s.running["b"].1.subscribe();
        s.shutdown();
        assert!(*stop_b2.borrow());
    }

    #[test]
    fn canaries_are_listed_before_the_data_and_both_layouts_are_watched() {
        let p = super::prefixes("cluster1");
        assert_eq!(p[0], "cilium/cluster-config/cluster1");
        assert_eq!(p[1], "cilium/synced/cluster1/");
        assert!(
            p.contains(&"cilium/state/services/v1/cluster1/".to_string()),
            "{p:?}"
        );
        assert!(
            p.contains(&"cilium/cache/services/v1/cluster1/".to_string()),
            "{p:?}"
        );
        // A cluster's own etcd keeps its ipcache and identities without a cluster segment.
        assert!(
            p.contains(&"cilium/state/ip/v1/default/".to_string()),
            "{p:?}"
        );
        assert!(
            p.contains(&"cilium/cache/ip/v1/cluster1/".to_string()),
            "{p:?}"
        );
    }
}
