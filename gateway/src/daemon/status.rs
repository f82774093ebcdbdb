//! The status the daemon publishes in `<state_dir>/status.json` after every reconcile, read by
//! `meshgw status` together with the live counters from the pinned statistics map.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// One portal's status held as the JSON object it is written as: one allocation a portal where
/// the structured [`PortalStatus`] takes about ten (its strings and vectors), which at 50,000
/// portals was 29 MB of the daemon's heap. Readers [`PortalJson::parse`] it.
#[derive(Debug, Serialize)]
#[serde(transparent)]
pub struct PortalJson(Box<serde_json::value::RawValue>);

impl<'de> Deserialize<'de> for PortalJson {
    // Through a `Value`: a raw value cannot be read where serde buffers the input first (the
    // API's replies are internally tagged and flattened).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        serde_json::value::RawValue::from_string(v.to_string())
            .map(PortalJson)
            .map_err(serde::de::Error::custom)
    }
}

impl PortalJson {
    /// Renders `p`.
    pub fn render(p: &PortalStatus) -> Self {
        // A struct of strings, numbers and addresses always serializes.
        let text = serde_json::to_string(p).unwrap_or_else(|_| "{}".into());
        PortalJson(
            serde_json::value::RawValue::from_string(text)
                .unwrap_or_else(|_| serde_json::value::RawValue::NULL.to_owned()),
        )
    }

    /// The portal's fields.
    pub fn parse(&self) -> Result<PortalStatus, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }
}

impl Clone for PortalJson {
    fn clone(&self) -> Self {
        PortalJson(self.0.clone())
    }
}

impl PartialEq for PortalJson {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

impl Eq for PortalJson {}

/// One portal as the status shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PortalStatus {
    /// "namespace/name".
    pub service: String,
    /// Its VIPs.
    pub vips: Vec<IpAddr>,
    /// "name port/proto".
    pub ports: Vec<String>,
    /// "addr:port via node".
    pub backends: Vec<String>,
    /// Where it comes from: "config" or the clusters exporting it.
    #[serde(default)]
    pub source: String,
    /// Withdrawn by every cluster; kept until the grace period ends, for flows to drain.
    #[serde(default)]
    pub draining: bool,
}

/// One remote cluster's connection and import.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ClusterStatus {
    /// Cluster name.
    pub name: String,
    /// Whether the etcd connection is up.
    pub connected: bool,
    /// Whether services and nodes are complete (listed, and the sync canaries seen).
    pub synced: bool,
    /// Services the cluster exports (all of them, portals or not).
    pub services: usize,
    /// Nodes.
    pub nodes: usize,
    /// IP identity pairs (ipcache).
    pub ips: usize,
    /// Entries kept only until the sync canary confirms their deletion.
    pub stale: usize,
    /// Malformed values skipped so far.
    pub skipped: u64,
    /// The last skipped key and why.
    pub last_skipped: Option<String>,
    /// Seconds since the last event from this cluster.
    pub last_event_age_s: Option<u64>,
    /// The last connection error.
    pub last_error: Option<String>,
}

/// The whole status file.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Status {
    /// Gateway name.
    pub gateway: String,
    /// Daemon pid.
    pub pid: u32,
    /// Config file in use.
    pub config: String,
    /// Legacy interface.
    pub legacy: String,
    /// Mesh interface.
    pub mesh: String,
    /// Outer VXLAN source.
    pub mesh_address: String,
    /// The MAC to give Cilium as vtep-mac.
    pub vtep_mac: String,
    /// VNI sent.
    pub identity: u32,
    /// Portals, each held as its JSON object ([`PortalJson`]). Shared, entry by entry, with the
    /// daemon's cache and every copy of the status (the API's snapshot, the file writer): at
    /// 50,000 services a deep copy is tens of MB.
    pub portals: Arc<[Arc<PortalJson>]>,
    /// Remote clusters.
    #[serde(default)]
    pub clusters: Vec<ClusterStatus>,
    /// Where the name responder listens (empty when disabled or failed; see problems).
    #[serde(default)]
    pub dns: Vec<String>,
    /// Known nodes.
    pub nodes: Vec<String>,
    /// Problems that leave part of the catalog unserved.
    pub problems: Vec<String>,
    /// Policies, identities and egress rules in force.
    #[serde(default)]
    pub policy: PolicyView,
    /// Unix time of the last reconcile.
    pub reconciled_at: u64,
    /// Unix time the daemon started.
    pub started_at: u64,
    /// The last configuration reload error, if the running config is older than the file.
    pub reload_error: Option<String>,
    /// Gateway-to-gateway transit (WireGuard peers, peering sessions), when configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transit: Option<super::transit::TransitStatus>,
}

/// What the status shows of policy and egress.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct PolicyView {
    /// Whether new flows are checked at all.
    pub enforced: bool,
    /// "name (namespace) ingress/egress from file".
    pub policies: Vec<String>,
    /// "identity labels" for every identity the gateway uses.
    pub identities: Vec<String>,
    /// "name egress_ip -> prefixes (N endpoints)".
    pub egress: Vec<String>,
}

impl PolicyView {
    /// Builds the view from what the reconcile compiled.
    pub fn of(
        policies: &[crate::policy::cnp::Policy],
        compiled: &crate::policy::compile::Compiled,
        rules: &[crate::config::EgressRule],
        egress: &crate::egress::Compiled,
    ) -> PolicyView {
        let dirs = |p: &crate::policy::cnp::Policy| {
            let mut d = Vec::new();
            if p.ingress.is_some() {
                d.push("ingress");
            }
            if p.egress.is_some() {
                d.push("egress");
            }
            d.join("+")
        };
        PolicyView {
            enforced: compiled.enforced,
            policies: policies
                .iter()
                .map(|p| {
                    format!(
                        "{} ({}) {} from {}",
                        p.name,
                        p.namespace.as_deref().unwrap_or("cluster-wide"),
                        dirs(p),
                        p.file.display()
                    )
                })
                .collect(),
            identities: compiled
                .labels
                .iter()
                .map(|(id, l)| {
                    let labels: Vec<String> = l
                        .iter()
                        .map(|(k, v)| {
                            if v.is_empty() {
                                k.clone()
                            } else {
                                format!("{k}={v}")
                            }
                        })
                        .collect();
                    format!("{id} {}", labels.join(","))
                })
                .collect(),
            egress: rules
                .iter()
                .zip(&egress.selected)
                .map(|(r, n)| {
                    let dst: Vec<String> = r
                        .destination_cidrs
                        .iter()
                        .map(ToString::to_string)
                        .collect();
                    format!(
                        "{} {} -> {} ({n} endpoints)",
                        r.name,
                        r.egress_ip,
                        dst.join(",")
                    )
                })
                .collect(),
        }
    }
}

impl Status {
    /// `<state_dir>/status.json`.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("status.json")
    }

    /// Writes atomically.
    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        crate::statefile::save(&Self::path(state_dir), self)
    }

    /// Reads the file.
    pub fn load(state_dir: &Path) -> std::io::Result<Status> {
        let bytes = std::fs::read(Self::path(state_dir))?;
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)
    }
}

/// Writes published statuses to `status.json` on a thread of its own, so that serializing tens
/// of thousands of portals never holds up the daemon's loop. Only the newest pending status is
/// written: one that was superseded before its turn would be stale anyway.
pub struct StatusWriter {
    tx: Option<mpsc::Sender<(PathBuf, Status)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StatusWriter {
    /// Starts the writer thread.
    pub fn spawn() -> std::io::Result<StatusWriter> {
        let (tx, rx) = mpsc::channel::<(PathBuf, Status)>();
        let thread = std::thread::Builder::new()
            .name("meshgw-status".into())
            .spawn(move || {
                while let Ok(mut next) = rx.recv() {
                    while let Ok(newer) = rx.try_recv() {
                        next = newer;
                    }
                    let (dir, st) = next;
                    if let Err(e) = st.save(&dir) {
                        tracing::warn!(error = %e, dir = %dir.display(), "cannot write status");
                    }
                }
            })?;
        Ok(StatusWriter {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues `st` for `<state_dir>/status.json`.
    pub fn write(&self, state_dir: &Path, st: Status) {
        if let Some(tx) = &self.tx {
            // The thread only ends when `tx` is dropped; a failed send means it panicked, and
            // the API's copy of the status still serves.
            let _ = tx.send((state_dir.to_path_buf(), st));
        }
    }

    /// Writes what is pending and stops the thread.
    pub fn finish(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for StatusWriter {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn portal() -> PortalStatus {
        PortalStatus {
            service: "default/echo".into(),
            vips: vec![
                "10.200.0.10".parse().unwrap(),
                "fd00:200::10".parse().unwrap(),
            ],
            ports: vec!["http 80/tcp".into()],
            backends: vec!["10.244.1.10 via c1/n1".into()],
            source: "c1".into(),
            draining: true,
        }
    }

    #[test]
    fn a_portal_held_as_json_reads_back_and_writes_as_the_object() {
        let p = portal();
        let j = PortalJson::render(&p);
        assert_eq!(j.parse().unwrap(), p);
        // Written as the object itself, not as a string holding it.
        let v: serde_json::Value = serde_json::to_value(&j).unwrap();
        assert_eq!(v["service"], "default/echo");
        assert_eq!(v["vips"][1], "fd00:200::10");
        assert_eq!(v["draining"], true);
    }

    #[test]
    fn a_portal_reads_back_where_serde_buffers_the_input() {
        // The API's replies: flattened, internally tagged (serde buffers what it reads).
        #[derive(Serialize, Deserialize)]
        #[serde(tag = "reply")]
        enum Body {
            Portal { portal: PortalJson },
        }
        #[derive(Serialize, Deserialize)]
        struct Reply {
            version: u32,
            #[serde(flatten)]
            body: Body,
        }
        let text = serde_json::to_string(&Reply {
            version: 1,
            body: Body::Portal {
                portal: PortalJson::render(&portal()),
            },
        })
        .unwrap();
        let back: Reply = serde_json::from_str(&text).unwrap();
        let Body::Portal { portal: p } = back.body;
        assert_eq!(p.parse().unwrap(), portal());
    }
}
