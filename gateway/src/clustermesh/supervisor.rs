//! Runs one client task per configured cluster and keeps each cluster's state and connection
//! status up to date from their events. The daemon owns it and reads the states when it
//! reconciles.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::client::{self, ClientEvent, ClusterEndpoint};
use super::kvstore;
use super::state::{Applied, ClusterState, KvEvent};
use crate::catalog::ServiceName;
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

/// What changed in the clusters' states since the daemon last looked: the services a watch event
/// named, or everything (a list, a node, an ipcache entry or identity, the config or a canary
/// can change any service's import).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dirty {
    /// Anything beyond the services below changed: the whole import must be redone.
    pub all: bool,
    /// Services (namespace/name) whose kvstore entry changed in some cluster.
    pub services: BTreeSet<ServiceName>,
}

impl Dirty {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        !self.all && self.services.is_empty()
    }
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
    /// What changed since [`Supervisor::take_dirty`] was last called.
    dirty: Dirty,
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
            dirty: Dirty::default(),
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
        // Clusters that go or come change what is imported.
        self.dirty.all = true;
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
            } => {
                let changed = state.replace_prefix(&prefix, entries);
                self.dirty.all |= changed;
                changed
            }
            ClientEvent::Put { key, value } => {
                let service = service_of(&key);
                let changed = matches!(state.apply(KvEvent::Put { key, value }), Applied::Changed);
                self.mark(changed, service);
                changed
            }
            ClientEvent::Delete { key } => {
                let service = service_of(&key);
                let changed = matches!(state.apply(KvEvent::Delete { key }), Applied::Changed);
                self.mark(changed, service);
                changed
            }
        }
    }

    fn mark(&mut self, changed: bool, service: Option<ServiceName>) {
        match (changed, service) {
            (false, _) => {}
            (true, Some(s)) => {
                self.dirty.services.insert(s);
            }
            (true, None) => self.dirty.all = true,
        }
    }

    /// What changed since [`Supervisor::take_dirty`] was last called.
    pub fn dirty(&self) -> &Dirty {
        &self.dirty
    }

    /// What changed since the last call (and forgets it).
    pub fn take_dirty(&mut self) -> Dirty {
        std::mem::take(&mut self.dirty)
    }

    /// Stops every client task.
    pub fn shutdown(&mut self) {
        for (_, (_, stop)) in std::mem::take(&mut self.running) {
            let _ = stop.send(true);
        }
    }
}

/// The service a kvstore key is about, if it is a service key.
fn service_of(key: &str) -> Option<ServiceName> {
    match kvstore::parse_key(key) {
        kvstore::KvKey::Service {
            namespace, name, ..
        } => Some(ServiceName {
            namespace: namespace.into(),
            name: name.into(),
        }),
        _ => None,
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

    #[tokio::test]
    async fn events_say_which_services_they_changed() {
        let (tx, _rx) = mpsc::channel(8);
        let mut s = Supervisor::new(tx);
        s.states.insert("c1".into(), ClusterState::new("c1"));
        let svc = |backend: &str| {
            ClientEvent::Put {
            key: "cilium/state/services/v1/c1/default/web".into(),
            value: format!(
                r#"{{"cluster":"c1","namespace":"default","name":"web","frontends":{{"10.96.0.10":{{"http":{{"Protocol":"TCP","Port":80}}}}}},"backends":{{"{backend}":{{"http":{{"Protocol":"TCP","Port":8080}}}}}},"labels":{{}},"selector":{{}},"includeExternal":true,"shared":true,"clusterID":3}}"#
            )
            .into_bytes(),
        }
        };
        let web = ServiceName {
            namespace: "default".into(),
            name: "web".into(),
        };
        assert!(s.handle("c1", svc("10.244.1.10")));
        let d = s.take_dirty();
        assert!(!d.all);
        assert_eq!(d.services, [web.clone()].into());
        assert!(s.take_dirty().is_empty(), "taken");
        // The same value again changes nothing.
        assert!(!s.handle("c1", svc("10.244.1.10")));
        assert!(s.take_dirty().is_empty());
        // A delete names its service too.
        assert!(s.handle(
            "c1",
            ClientEvent::Delete {
                key: "cilium/state/services/v1/c1/default/web".into()
            }
        ));
        assert_eq!(s.take_dirty().services, [web].into());
        // A node can change any service's import.
        assert!(s.handle(
            "c1",
            ClientEvent::Put {
                key: "cilium/state/nodes/v1/c1/n1".into(),
                value: br#"{"Name":"n1","Cluster":"c1","IPAddresses":[{"Type":"InternalIP","IP":"172.18.0.11"}],"IPv4AllocCIDR":"10.244.1.0/24","ClusterID":3}"#.to_vec(),
            }
        ));
        assert!(s.take_dirty().all);
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
