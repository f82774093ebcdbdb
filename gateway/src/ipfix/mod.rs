//! IPFIX export (NetFlow v10, RFC 7011) of flow records to a collector over UDP: [`encode`] is
//! the pure message encoder, [`Exporter`] sends what the flow table gathered every interval.

pub mod encode;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tracing::{debug, warn};

use crate::flows::FlowTable;
use encode::Encoder;

/// Sends the flow table's deltas to `collector` every `interval` until the task is dropped.
pub struct Exporter {
    /// Where to send.
    pub collector: SocketAddr,
    /// How often.
    pub interval: Duration,
    /// Observation domain id.
    pub domain: u32,
}

impl Exporter {
    /// Runs the export loop.
    pub async fn run(self, table: Arc<Mutex<FlowTable>>) {
        let bind: SocketAddr = if self.collector.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let sock = match UdpSocket::bind(bind).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "IPFIX: cannot open a UDP socket; no export");
                return;
            }
        };
        let mut enc = Encoder::new(self.domain);
        let mut tick = tokio::time::interval(self.interval);
        loop {
            tick.tick().await;
            let records = match table.lock() {
                Ok(mut t) => t.take_deltas(),
                Err(_) => return,
            };
            let now = crate::daemon::status::unix_now() as u32;
            for m in enc.encode(&records, now) {
                if let Err(e) = sock.send_to(&m, self.collector).await {
                    // The collector may come later: the next interval tries again.
                    debug!(error = %e, collector = %self.collector, "IPFIX send failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
