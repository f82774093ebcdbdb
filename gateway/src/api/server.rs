//! The daemon's side of the control API: the shared state the datapath readers fill, and the
//! Unix socket server reading from it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast;
use tracing::{debug, warn};

use super::services::ServiceCounters;
use super::{Reply, ReplyBody, Request, RequestBody, Snapshot, API_VERSION};
use crate::flows::{FlowRecord, FlowTable, Names};

/// What the daemon shares with the API, the metrics endpoint and the IPFIX exporter.
pub struct Shared {
    /// The last snapshot, without its services (see [`Shared::snapshot`]).
    pub snapshot: RwLock<Snapshot>,
    /// What the snapshot's services are rendered from.
    pub services: RwLock<ServiceCounters>,
    /// The flow table.
    pub table: Arc<Mutex<FlowTable>>,
    /// What ids mean.
    pub names: RwLock<Names>,
    /// Flows as events update them, for followers.
    pub flows: broadcast::Sender<FlowRecord>,
}

impl Shared {
    /// Empty state with a table of `max_flows`.
    pub fn new(max_flows: usize) -> Arc<Self> {
        Arc::new(Shared {
            snapshot: RwLock::new(Snapshot::default()),
            services: RwLock::new(ServiceCounters::default()),
            table: Arc::new(Mutex::new(FlowTable::new(max_flows))),
            names: RwLock::new(Names::default()),
            flows: broadcast::channel(4096).0,
        })
    }

    /// A copy of the last snapshot, its services rendered from the counters as last read.
    pub fn snapshot(&self) -> Snapshot {
        // Services first, the order the refresh takes them in: it holds the counters until the
        // snapshot of the same reading is written.
        let counters = self.services.read();
        let mut s = self.snapshot.read().map(|s| s.clone()).unwrap_or_default();
        if let Ok(c) = counters {
            s.services = c.render();
        }
        s
    }
}

/// Binds `path` (replacing a stale socket) with mode 0600.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Serves clients until the task is dropped.
pub async fn serve(listener: UnixListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = client(stream, shared).await {
                        debug!(error = %e, "API client left");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "API accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn send(w: &mut (impl AsyncWriteExt + Unpin), body: ReplyBody) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(&Reply {
        version: API_VERSION,
        body,
    })
    .map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await
}

async fn client(stream: UnixStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        let req: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                let message = format!("bad request: {e}");
                send(&mut w, ReplyBody::Error { message }).await?;
                continue;
            }
        };
        if req.version != API_VERSION {
            let message = format!(
                "protocol version {} is not served (this daemon speaks {API_VERSION})",
                req.version
            );
            send(&mut w, ReplyBody::Error { message }).await?;
            continue;
        }
        match req.body {
            RequestBody::Status => {
                send(&mut w, ReplyBody::Snapshot(Box::new(shared.snapshot()))).await?;
            }
            RequestBody::Flows {
                follow,
                filter,
                limit,
            } => {
                // Subscribe before the listing, so that nothing falls between the two.
                let mut rx = shared.flows.subscribe();
                let listed = shared.table.lock().map(|t| t.records()).unwrap_or_default();
                let listed: Vec<FlowRecord> =
                    listed.into_iter().filter(|r| filter.matches(r)).collect();
                let skip = if limit == 0 {
                    0
                } else {
                    listed.len().saturating_sub(limit)
                };
                for r in listed.into_iter().skip(skip) {
                    send(&mut w, ReplyBody::Flow(Box::new(r))).await?;
                }
                if !follow {
                    send(&mut w, ReplyBody::End).await?;
                    continue;
                }
                loop {
                    match rx.recv().await {
                        Ok(r) if filter.matches(&r) => {
                            send(&mut w, ReplyBody::Flow(Box::new(r))).await?
                        }
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return Ok(()),
                    }
                }
            }
        }
    }
    Ok(())
}
