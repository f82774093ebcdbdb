//! The daemon's side of the portal name responder: where it listens (the configured addresses,
//! or the legacy interface's own addresses), rebinding only when that changes, and the table of
//! names rebuilt from the catalog after every reconcile.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use tracing::warn;

use crate::catalog::ServiceName;
use crate::config::Config;
use crate::dns::{self, DnsHandle, DnsTable};
use crate::netlink::Netlink;
use crate::vip::Allocation;

/// The running responder and what it was started for.
#[derive(Debug, Default)]
pub struct Names {
    running: Option<(Vec<SocketAddr>, String, DnsHandle)>,
    /// Why the responder is not serving, when it should.
    pub error: Option<String>,
}

impl Names {
    /// Starts, moves or stops the responder to match the configuration.
    pub async fn ensure(&mut self, cfg: &Config, nl: &Netlink, legacy: u32) {
        if !cfg.dns.enabled {
            self.running = None;
            self.error = None;
            return;
        }
        let listen = match &cfg.dns.listen {
            Some(l) => l.clone(),
            None => match nl.ipv4_addrs(legacy).await {
                // The gateway's own addresses, not the VIPs that share the interface.
                Ok(a) => a
                    .into_iter()
                    .filter(|ip| !cfg.vips.pool.iter().any(|n| n.contains(&IpAddr::V4(*ip))))
                    .map(|ip| SocketAddr::new(IpAddr::V4(ip), 53))
                    .collect(),
                Err(e) => {
                    self.error = Some(format!("dns: reading the legacy addresses: {e}"));
                    return;
                }
            },
        };
        if let Some((l, d, _)) = &self.running {
            if *l == listen && *d == cfg.dns.domain {
                return;
            }
        }
        // Drop the old sockets before binding the same addresses again.
        self.running = None;
        if listen.is_empty() {
            self.error = Some(
                "dns: the legacy interface has no IPv4 address to listen on; set [dns].listen"
                    .into(),
            );
            return;
        }
        let table = match DnsTable::new(&cfg.dns.domain) {
            Ok(t) => t,
            Err(e) => {
                self.error = Some(e.to_string());
                return;
            }
        };
        match dns::serve(&listen, table).await {
            Ok(h) => {
                self.running = Some((listen, cfg.dns.domain.clone(), h));
                self.error = None;
            }
            Err(e) => {
                warn!(error = %e, "the portal name responder is not serving");
                self.error = Some(e.to_string());
            }
        }
    }

    /// Serves the names of every portal with a VIP; returns problems with names.
    pub fn update(&self, alloc: &Allocation) -> Vec<String> {
        let Some((_, domain, h)) = &self.running else {
            return Vec::new();
        };
        let mut problems = Vec::new();
        let Ok(mut table) = DnsTable::new(domain) else {
            return problems;
        };
        // Every service with a VIP: the catalog's and those imported from peering gateways.
        let mut by_name: BTreeMap<&ServiceName, Vec<IpAddr>> = BTreeMap::new();
        for ((name, _), vip) in &alloc.vips {
            by_name.entry(name).or_default().push(*vip);
        }
        for (name, vips) in by_name {
            if let Err(e) = table.insert(&name.namespace, &name.name, &vips) {
                problems.push(format!("{name}: no DNS name: {e}"));
            }
        }
        if !table.is_empty() {
            tracing::debug!(names = table.len(), "portal names updated");
        }
        h.set(table);
        problems
    }

    /// The addresses served, for the status.
    pub fn listening(&self) -> Vec<String> {
        self.running
            .as_ref()
            .map(|(_, _, h)| h.addrs.iter().map(ToString::to_string).collect())
            .unwrap_or_default()
    }
}
