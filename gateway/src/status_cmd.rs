//! `meshgw status`: asks the daemon over the control API; when the daemon is not running, says
//! so and falls back to its last published status plus live counters read from the pinned
//! statistics map (the datapath keeps counting even while the daemon is down).

use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::{MapData, PerCpuArray};
use meshgw_common::maps::names;
use meshgw_common::stats::Counter;

use crate::api::client::Client;
use crate::daemon::status::{unix_now, Status};
use crate::daemon::ConfigSource;

fn counters(pin_dir: &Path) -> Result<Vec<(Counter, u64)>> {
    let path = pin_dir.join("maps").join(names::STATS);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let map: PerCpuArray<MapData, u64> = PerCpuArray::try_from(aya::maps::Map::PerCpuArray(data))?;
    let mut out = Vec::new();
    for c in Counter::ALL {
        out.push((c, map.get(&(c as u32), 0)?.iter().sum()));
    }
    Ok(out)
}

/// The configuration `src` names.
pub fn config_of(src: &ConfigSource) -> Result<crate::config::Config> {
    Ok(match src {
        ConfigSource::File(p) => crate::config::load_file(p).map_err(|e| anyhow::anyhow!("{e}"))?,
        ConfigSource::Embedded => {
            crate::config::parse_str(crate::config::DEFAULT_TOML, "<embedded default>")
                .map_err(|e| anyhow::anyhow!("{e}"))?
        }
    })
}

/// Prints the status of the gateway the configuration names.
pub fn show(src: &ConfigSource, json: bool) -> Result<()> {
    let cfg = config_of(src)?;
    let live = Client::connect(&cfg.observe.api_socket).and_then(|mut c| c.status());
    let (st, ctrs, running, snap) = match live {
        Ok(snap) => {
            // Live from the pinned map where it can be read (the snapshot is up to a second
            // old); the snapshot's otherwise.
            let ctrs: Vec<(String, u64)> = match counters(&cfg.gateway.bpf_pin_dir) {
                Ok(c) => c
                    .into_iter()
                    .map(|(c, v)| (c.name().to_string(), v))
                    .collect(),
                Err(_) => snap.counters.clone().into_iter().collect(),
            };
            (snap.status.clone(), ctrs, true, Some(snap))
        }
        Err(e) => {
            eprintln!("meshgw: {e}; showing the last published status");
            let st = Status::load(&cfg.gateway.state_dir).with_context(|| {
                format!(
                    "no status in {} (the daemon is not running and never ran with this state_dir)",
                    cfg.gateway.state_dir.display()
                )
            })?;
            let ctrs = counters(&cfg.gateway.bpf_pin_dir)
                .unwrap_or_default()
                .into_iter()
                .map(|(c, v)| (c.name().to_string(), v))
                .collect();
            // Without the API (e.g. not root) the pid still tells whether a daemon runs.
            let running = cfg.gateway.state_dir.join("ready").exists()
                && Path::new(&format!("/proc/{}", st.pid)).exists();
            (st, ctrs, running, None)
        }
    };
    if json {
        let c: serde_json::Map<String, serde_json::Value> =
            ctrs.iter().map(|(c, v)| (c.clone(), (*v).into())).collect();
        let v = serde_json::json!({
            "running": running,
            "status": st,
            "counters": c,
            "services": snap.as_ref().map(|s| &s.services),
            "nodes": snap.as_ref().map(|s| &s.nodes),
            "vips": snap.as_ref().map(|s| &s.vips),
            "flows": snap.as_ref().map(|s| &s.flows),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "gateway {}  ({}, pid {})",
        st.gateway,
        if running {
            "running"
        } else {
            "daemon NOT running"
        },
        st.pid
    );
    println!("  config       {}", st.config);
    println!("  legacy       {}", st.legacy);
    println!(
        "  mesh         {}  address {}  vtep-mac {}  identity/VNI {}",
        st.mesh, st.mesh_address, st.vtep_mac, st.identity
    );
    println!(
        "  reconciled   {} s ago",
        unix_now().saturating_sub(st.reconciled_at)
    );
    if let Some(e) = &st.reload_error {
        println!("  LAST RELOAD FAILED (old config still serving): {e}");
    }
    if !st.dns.is_empty() {
        println!("  dns          {}", st.dns.join(", "));
    }
    if !st.clusters.is_empty() {
        println!("clusters");
    }
    for c in &st.clusters {
        let age = c
            .last_event_age_s
            .map_or_else(|| "never".to_string(), |a| format!("{a} s ago"));
        println!(
            "  {:<20} {:<12} {:<9} services {:<5} nodes {:<4} ips {:<5} last event {age}",
            c.name,
            if c.connected {
                "connected"
            } else {
                "DISCONNECTED"
            },
            if c.synced { "synced" } else { "syncing" },
            c.services,
            c.nodes,
            c.ips,
        );
        if c.stale > 0 {
            println!(
                "      {} entries kept until the sync canary confirms them",
                c.stale
            );
        }
        if c.skipped > 0 {
            println!(
                "      {} malformed values skipped; last: {}",
                c.skipped,
                c.last_skipped.as_deref().unwrap_or("?")
            );
        }
        if let (false, Some(e)) = (c.connected, &c.last_error) {
            println!("      error: {e}");
        }
    }
    println!("portals");
    for p in st.portals.iter() {
        let p = match p.parse() {
            Ok(p) => p,
            Err(e) => {
                println!("  (a portal the status cannot show: {e})");
                continue;
            }
        };
        let vips: Vec<String> = p.vips.iter().map(|v| v.to_string()).collect();
        println!(
            "  {:<32} {:<28} {}  [{}{}]",
            p.service,
            vips.join(", "),
            p.ports.join(", "),
            p.source,
            if p.draining { ", DRAINING" } else { "" }
        );
        for b in &p.backends {
            println!("      backend {b}");
        }
    }
    if st.policy.enforced || !st.policy.egress.is_empty() {
        println!(
            "policy{}",
            if st.policy.enforced {
                " (enforced)"
            } else {
                ""
            }
        );
        for p in &st.policy.policies {
            println!("  {p}");
        }
        if !st.policy.egress.is_empty() {
            println!("egress");
            for e in &st.policy.egress {
                println!("  {e}");
            }
        }
        println!("identities");
        for i in &st.policy.identities {
            println!("  {i}");
        }
    }
    if let Some(t) = &st.transit {
        print_transit(t);
    }
    println!("nodes");
    for n in &st.nodes {
        println!("  {n}");
    }
    if !st.problems.is_empty() {
        println!("problems");
        for p in &st.problems {
            println!("  {p}");
        }
    }
    if let Some(snap) = &snap {
        println!("traffic");
        for s in snap.services.iter() {
            println!(
                "  {:<32} {}:{}/{}  {} pkts {} B  {} connections",
                s.service, s.vip, s.port, s.proto, s.packets, s.bytes, s.connections
            );
            for b in &s.backends {
                println!(
                    "      backend {:<28} {} pkts {} B  health {} ({} answered, {} unanswered in 60 s)",
                    b.backend,
                    b.packets,
                    b.bytes,
                    b.health.name(),
                    b.answered,
                    b.unanswered
                );
            }
        }
        for n in &snap.nodes {
            println!(
                "  tunnel {:<20} {:<16} {} pkts {} B",
                n.node, n.address, n.packets, n.bytes
            );
        }
        for v in &snap.vips {
            println!(
                "  pings to {:<24} {} pkts {} B",
                v.vip, v.icmp_packets, v.icmp_bytes
            );
        }
    }
    println!("datapath counters");
    for (c, v) in ctrs.iter().filter(|(_, v)| *v > 0) {
        println!("  {c:<20} {v}");
    }
    Ok(())
}

fn print_transit(t: &crate::daemon::transit::TransitStatus) {
    use serde_json::Value;
    let s = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(x) => x.clone(),
        other => other.to_string(),
    };
    println!(
        "transit      {}  ({}, mtu {})  routes {}",
        t.interface,
        t.backend,
        t.mtu,
        if t.routes.is_empty() {
            "none".to_string()
        } else {
            t.routes.join(", ")
        }
    );
    let sessions = t.peering["peers"].as_array().cloned().unwrap_or_default();
    for p in t.wireguard["peers"].as_array().into_iter().flatten() {
        let id = s(&p["id"]);
        let c = &p["counters"];
        let handshake = match p["last_handshake_secs"].as_u64() {
            Some(secs) => format!("{secs} s ago"),
            None => "never".into(),
        };
        let session = sessions.iter().find(|q| q["id"] == p["id"]);
        println!(
            "  peer {:<16} {:<12} endpoint {:<22} handshake {handshake}",
            id,
            session.map_or_else(|| "-".into(), |q| s(&q["state"])),
            s(&p["endpoint"]),
        );
        println!(
            "      rx {} B  tx {} B  tampered {}  dropped {}",
            s(&c["rx_bytes"]),
            s(&c["tx_bytes"]),
            s(&c["tampered"]),
            s(&c["dropped"])
        );
        if let Some(q) = session {
            let list = |v: &Value| {
                v.as_array()
                    .map(|a| a.iter().map(s).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default()
            };
            println!("      prefixes learned: {}", list(&q["prefixes"]));
            println!("      services learned: {}", list(&q["services"]));
            if let Some(e) = q["last_error"].as_str() {
                println!("      last error: {e}");
            }
        }
    }
    for r in t.peering["refusals"].as_array().into_iter().flatten() {
        println!("  refused: {}", s(r));
    }
}
