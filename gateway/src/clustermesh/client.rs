//! The etcd v3 client of one remote cluster's Cluster Mesh API: mutual TLS, a consistent list of
//! every watched prefix at one revision, then watches from the next revision, so no
//! change between list and watch is lost. On any failure it reconnects with backoff and lists
//! again (the state decides, with the sync canaries, what a relist may delete).

use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, EventType, GetOptions, Identity, TlsOptions, WatchOptions,
};
use serde::Deserialize;
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

/// Errors of the client layer; each names the cluster and, for files, the path.
#[derive(Debug, Error)]
pub enum ClientError {
    /// A certificate, key or config file could not be read.
    #[error("cluster {cluster}: cannot read {what} {path}: {source}")]
    File {
        /// Cluster name.
        cluster: String,
        /// Which file (CA, certificate, key, config).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Cilium's clustermesh config file is not valid.
    #[error("cluster {cluster}: {path}: {reason}")]
    Config {
        /// Cluster name.
        cluster: String,
        /// Its path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Connecting, listing or watching failed.
    #[error("cluster {cluster}: {op}: {detail}")]
    Etcd {
        /// Cluster name.
        cluster: String,
        /// What was being done.
        op: &'static str,
        /// The error with its causes (TLS failures are usually in a cause).
        detail: String,
    },
    /// The watch was cancelled by the server because its revision was compacted.
    #[error("cluster {cluster}: watch revision {revision} was compacted; listing again")]
    Compacted {
        /// Cluster name.
        cluster: String,
        /// The oldest revision still available.
        revision: i64,
    },
    /// The server closed the watch stream.
    #[error("cluster {cluster}: the server closed the watch stream")]
    WatchClosed {
        /// Cluster name.
        cluster: String,
    },
}

/// Where one cluster's Cluster Mesh API is and the files that authenticate to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterEndpoint {
    /// The cluster's name.
    pub cluster: String,
    /// `https://host:port` URLs.
    pub endpoints: Vec<String>,
    /// CA that signed the server's certificate.
    pub ca_file: PathBuf,
    /// Client certificate.
    pub cert_file: PathBuf,
    /// Client key.
    pub key_file: PathBuf,
    /// TLS name to verify instead of the dialled host (Cilium's servers present
    /// `*.mesh.cilium.io` names while agents often dial an IP).
    pub server_name: Option<String>,
}

/// Cilium's clustermesh etcd config (`/var/lib/cilium/clustermesh/<cluster>`), the fields that
/// matter; Cilium writes more, which are ignored as Cilium's own reader ignores them.
#[derive(Debug, Deserialize)]
struct CiliumEtcdConfig {
    endpoints: Vec<String>,
    #[serde(rename = "trusted-ca-file")]
    trusted_ca_file: Option<PathBuf>,
    #[serde(rename = "cert-file")]
    cert_file: Option<PathBuf>,
    #[serde(rename = "key-file")]
    key_file: Option<PathBuf>,
}

impl ClusterEndpoint {
    /// Reads Cilium's clustermesh config file. Relative file names are taken from the file's
    /// directory, where Cilium's secret mount puts them.
    pub fn from_cilium_config(cluster: &str, path: &Path) -> Result<ClusterEndpoint, ClientError> {
        let text = std::fs::read_to_string(path).map_err(|source| ClientError::File {
            cluster: cluster.into(),
            what: "clustermesh config",
            path: path.into(),
            source,
        })?;
        let bad = |reason: String| ClientError::Config {
            cluster: cluster.into(),
            path: path.into(),
            reason,
        };
        let c: CiliumEtcdConfig = serde_yaml::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if c.endpoints.is_empty() {
            return Err(bad("`endpoints` is empty".into()));
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        let file = |f: Option<PathBuf>, key: &str| {
            let f = f.ok_or_else(|| {
                bad(format!(
                    "`{key}` is missing (the gateway only connects with mutual TLS)"
                ))
            })?;
            Ok::<_, ClientError>(if f.is_relative() { dir.join(f) } else { f })
        };
        Ok(ClusterEndpoint {
            cluster: cluster.into(),
            endpoints: c.endpoints,
            ca_file: file(c.trusted_ca_file, "trusted-ca-file")?,
            cert_file: file(c.cert_file, "cert-file")?,
            key_file: file(c.key_file, "key-file")?,
            server_name: None,
        })
    }

    fn read(&self, what: &'static str, path: &Path) -> Result<Vec<u8>, ClientError> {
        std::fs::read(path).map_err(|source| ClientError::File {
            cluster: self.cluster.clone(),
            what,
            path: path.into(),
            source,
        })
    }

    /// The TLS settings, read from the files now (so a rotated certificate is picked up at the
    /// next reconnect).
    fn tls(&self) -> Result<TlsOptions, ClientError> {
        let ca = self.read("CA file", &self.ca_file)?;
        let cert = self.read("certificate", &self.cert_file)?;
        let key = self.read("key", &self.key_file)?;
        let mut tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(ca))
            .identity(Identity::from_pem(cert, key));
        if let Some(name) = &self.server_name {
            tls = tls.domain_name(name.clone());
        }
        Ok(tls)
    }
}

/// What the client reports, in order, for one cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// A connection is up; lists follow.
    Connected,
    /// The connection failed or was lost; a reconnect follows after a backoff.
    Disconnected {
        /// Why.
        error: String,
    },
    /// Everything under `prefix` at `revision`.
    Listed {
        /// The listed prefix.
        prefix: String,
        /// Its keys and values.
        entries: Vec<(String, Vec<u8>)>,
        /// The store's revision of the list.
        revision: i64,
    },
    /// A key was written.
    Put {
        /// The key.
        key: String,
        /// Its value.
        value: Vec<u8>,
    },
    /// A key was deleted or its lease expired.
    Delete {
        /// The key.
        key: String,
    },
}

/// An error with its whole cause chain: tonic hides the TLS reason (unknown CA, name mismatch,
/// missing client certificate) several sources deep, and that reason is what an operator needs.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// Reconnect delays: doubling from 250 ms to 30 s, reset by a connection that got as far as a
/// full list.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    const MIN: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(30);

    /// A backoff at its shortest delay.
    pub fn new() -> Self {
        Backoff { next: Self::MIN }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        d
    }

    /// Back to the shortest delay.
    pub fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

type Tx = mpsc::Sender<(String, ClientEvent)>;

/// Keys per list request (small in tests, so that paging is exercised).
const PAGE: i64 = if cfg!(test) { 2 } else { 1000 };

/// The end of the key range holding every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff: to the end of the key space, as etcd spells it.
    vec![0]
}

/// Lists every prefix at one revision, then watches them all from the next one. Returns only on
/// an error (or when the receiver is gone).
async fn session(
    ep: &ClusterEndpoint,
    prefixes: &[String],
    tx: &Tx,
    backoff: &mut Backoff,
) -> Result<(), ClientError> {
    let cluster = ep.cluster.clone();
    let err = |op: &'static str| {
        let cluster = cluster.clone();
        move |e: etcd_client::Error| ClientError::Etcd {
            cluster,
            op,
            detail: chain(&e),
        }
    };
    let opts = ConnectOptions::new()
        .with_tls(ep.tls()?)
        .with_connect_timeout(Duration::from_secs(5))
        // Detects a server that vanished without closing the connection (a crashed VM).
        .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5))
        .with_keep_alive_while_idle(true);
    let mut client = Client::connect(&ep.endpoints, Some(opts))
        .await
        .map_err(err("connect"))?;
    let send = |ev: ClientEvent| {
        let tx = tx.clone();
        let cluster = cluster.clone();
        async move { tx.send((cluster, ev)).await.is_ok() }
    };

    let mut revision = 0;
    let mut connected = false;
    for prefix in prefixes {
        // Paged, all pages at the list's revision: one reply for a large cluster would exceed
        // gRPC's 4 MiB message limit (about 10,000 services).
        let end = prefix_end(prefix.as_bytes());
        let mut from = prefix.as_bytes().to_vec();
        let mut entries = Vec::new();
        loop {
            let mut o = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if revision > 0 {
                o = o.with_revision(revision);
            }
            let mut resp = match client.get(from.clone(), Some(o)).await {
                Ok(r) => r,
                Err(e) if !connected => {
                    let mut detail = chain(&e);
                    // Under TLS 1.3 a server that rejects the client certificate does so after the
                    // handshake: the client sees an alert, a broken pipe or the connection closing,
                    // depending on timing.
                    // Causes the client can tell apart itself are left without the hint.
                    let own = [
                        "invalid peer certificate",
                        "Connection refused",
                        "timed out",
                    ];
                    if !own.iter().any(|m| detail.contains(m)) {
                        detail.push_str(&format!(
                            " (the server ended the connection on the first request: if it \
                             rejected the client certificate, check that {} is signed by the CA \
                             the Cluster Mesh API trusts and has not expired)",
                            ep.cert_file.display()
                        ));
                    }
                    return Err(ClientError::Etcd {
                        cluster: cluster.clone(),
                        op: "list",
                        detail,
                    });
                }
                Err(e) => return Err(err("list")(e)),
            };
            if !connected {
                connected = true;
                info!(cluster = %cluster, endpoints = ?ep.endpoints, "connected to the Cluster Mesh API");
                if !send(ClientEvent::Connected).await {
                    return Ok(());
                }
            }
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            let more = resp.more();
            let kvs = resp.take_kvs();
            let next = kvs.last().map(|kv| {
                let mut k = kv.key().to_vec();
                k.push(0);
                k
            });
            for kv in kvs {
                let (k, v) = kv.into_key_value();
                match String::from_utf8(k) {
                    Ok(k) => entries.push((k, v)),
                    Err(e) => {
                        warn!(cluster = %cluster, key = ?e.as_bytes(), "key is not UTF-8; skipped")
                    }
                }
            }
            match (more, next) {
                (true, Some(n)) => from = n,
                _ => break,
            }
        }
        debug!(cluster = %cluster, prefix, entries = entries.len(), revision, "listed");
        let ev = ClientEvent::Listed {
            prefix: prefix.clone(),
            entries,
            revision,
        };
        if !send(ev).await {
            return Ok(());
        }
    }
    backoff.reset();

    // Every prefix is a watcher on one stream: events name their keys, so which watcher sent
    // them does not matter, and a failure of the stream ends the session.
    let mut stream: Option<etcd_client::WatchStream> = None;
    for prefix in prefixes {
        let o = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        match &mut stream {
            None => {
                stream = Some(
                    client
                        .watch(prefix.as_str(), Some(o))
                        .await
                        .map_err(err("watch"))?,
                )
            }
            Some(s) => s
                .watch(prefix.as_str(), Some(o))
                .await
                .map_err(err("watch"))?,
        }
    }
    let Some(mut stream) = stream else {
        return Err(ClientError::WatchClosed { cluster });
    };
    loop {
        let resp = match stream.message().await {
            Ok(Some(resp)) => resp,
            Ok(None) => return Err(ClientError::WatchClosed { cluster }),
            Err(e) => return Err(err("watch")(e)),
        };
        if resp.canceled() {
            return Err(if resp.compact_revision() > 0 {
                ClientError::Compacted {
                    cluster,
                    revision: resp.compact_revision(),
                }
            } else {
                ClientError::Etcd {
                    cluster,
                    op: "watch",
                    detail: format!("cancelled by the server: {}", resp.cancel_reason()),
                }
            });
        }
        for e in resp.events() {
            let Some(kv) = e.kv() else { continue };
            let Ok(key) = kv.key_str() else { continue };
            let key = key.to_string();
            let ev = match e.event_type() {
                EventType::Put => ClientEvent::Put {
                    key,
                    value: kv.value().to_vec(),
                },
                EventType::Delete => ClientEvent::Delete { key },
            };
            if !send(ev).await {
                return Ok(());
            }
        }
    }
}

/// Keeps one cluster's connection: list, watch, and on failure report, wait and start over,
/// until `stop` turns true or the receiver of `tx` is gone.
pub async fn run_cluster(
    ep: ClusterEndpoint,
    prefixes: Vec<String>,
    tx: Tx,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::new();
    loop {
        if *stop.borrow() {
            return;
        }
        let r = tokio::select! {
            r = session(&ep, &prefixes, &tx, &mut backoff) => r,
            _ = stop.changed() => return,
        };
        let error = match r {
            Ok(()) => return,
            Err(e) => e.to_string(),
        };
        if tx
            .send((ep.cluster.clone(), ClientEvent::Disconnected { error }))
            .await
            .is_err()
        {
            return;
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_ceiling_and_resets() {
        let mut b = Backoff::new();
        let seq: Vec<u64> = (0..10).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(
            seq,
            [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(250));
    }

    #[test]
    fn cilium_config_file_is_read_with_relative_paths_from_its_directory() {
        let dir = std::env::temp_dir().join(format!("meshgw-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cluster1");
        std::fs::write(
            &path,
            "endpoints:\n- https://cluster1.mesh.cilium.io:2379\ntrusted-ca-file: ca.crt\n\
             key-file: /var/lib/cilium/clustermesh/cluster1.key\ncert-file: c.crt\n",
        )
        .unwrap();
        let ep = ClusterEndpoint::from_cilium_config("cluster1", &path).unwrap();
        assert_eq!(ep.endpoints, ["https://cluster1.mesh.cilium.io:2379"]);
        assert_eq!(ep.ca_file, dir.join("ca.crt"));
        assert_eq!(ep.cert_file, dir.join("c.crt"));
        assert_eq!(
            ep.key_file,
            PathBuf::from("/var/lib/cilium/clustermesh/cluster1.key")
        );

        std::fs::write(
            &path,
            "endpoints:\n- https://x:2379\ntrusted-ca-file: ca.crt\n",
        )
        .unwrap();
        let e = ClusterEndpoint::from_cilium_config("cluster1", &path)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cert-file") && e.contains("mutual TLS"), "{e}");
        std::fs::write(&path, "endpoints: []\n").unwrap();
        let e = ClusterEndpoint::from_cilium_config("cluster1", &path)
            .unwrap_err()
            .to_string();
        assert!(e.contains("endpoints") && e.contains("cluster1"), "{e}");
        let e = ClusterEndpoint::from_cilium_config("c9", &dir.join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("c9") && e.contains("missing"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[cfg(test)]
#[allow(dead_code, clippy::unwrap_used)]
#[path = "../../tests/lab/etcd.rs"]
mod etcd_lab;

#[cfg(test)]
#[path = "client_etcd_tests.rs"]
mod etcd_tests;
