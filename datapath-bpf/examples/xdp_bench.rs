//! Per-packet cost of each XDP program path, timed by the kernel with BPF_PROG_TEST_RUN.
//!
//! `xdp_bench [--iterations N] [--runs R] [--json PATH] [--only SUBSTRING]`: every case runs its frame through the
//! loaded program N times per run (the kernel's `repeat`), R runs; the result per case is the
//! median of the runs' average ns per packet with the min and max beside it. After every run the
//! datapath's counters are checked: each of the N packets must have taken the path the case names
//! (a case that silently measured another path fails the benchmark). Needs root.
//!
//! Cases are rows of [`CASES`]; a new datapath path is one more entry.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use meshgw_common::maps::*;
use meshgw_common::stats::Counter;
use meshgw_common::telemetry::{EventsConfig, EVENTS_F_DROPS, EVENTS_F_FLOWS};
use meshgw_datapath::{action, Datapath, Program, Replay};
use support::topology::{self, *};
use support::{ifindex, NetNs};

fn udp4(
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    smac: [u8; 6],
    dmac: [u8; 6],
) -> Vec<u8> {
    topology::udp4(src, sport, dst, dport, smac, dmac, PAYLOAD)
}

fn from_node(inner: &[u8]) -> Vec<u8> {
    topology::from_node(inner, NODE_IP)
}

fn lab() -> NetNs {
    topology::lab("bench")
}

/// UDP payload: the frames are 64 bytes on the wire without FCS (60) -- small packets.
const PAYLOAD: &[u8] = &[0u8; 18];

/// One row of the table.
struct Case {
    /// The row's name.
    name: &'static str,
    /// The program that runs.
    program: Program,
    /// Whether every packet is the first of a new flow (distinct source address and port).
    new_flows: bool,
    /// The action every packet must end with.
    action: u32,
    /// The counter that must grow by one per packet (None: the empty program counts nothing).
    counter: Option<Counter>,
    /// Packets are sent from the flow cache: `flow_cache_hit` must grow by one per packet but
    /// the refreshes (an entry serves a second, then one packet takes the full path).
    cached: bool,
    /// Turns policy enforcement on (with no allow entry: every new flow is denied).
    policy: bool,
    /// Frame for packet `i` (only `i = 0` unless `new_flows`).
    frame: fn(u32) -> Vec<u8>,
    /// Frames run once before timing (e.g. the flow's first packet, so the flow is established).
    warm: fn() -> Vec<(Program, Vec<u8>)>,
    /// Flow events on (after the warm-up): every packet must then send exactly one event, which
    /// is read off the ring buffer between calls (outside the timed region) so that the ring
    /// never fills. Such rows run per call only: a repeated run cannot drain the ring.
    events: Option<EventsConfig>,
}

/// Every new flow and drop reported, and every packet of tracked flows sampled.
const ALL_EVENTS: Option<EventsConfig> = Some(EventsConfig {
    sample_rate: 1,
    flags: EVENTS_F_FLOWS | EVENTS_F_DROPS,
});

fn no_warm() -> Vec<(Program, Vec<u8>)> {
    Vec::new()
}

/// The established flow's client frame.
fn flow_frame(_: u32) -> Vec<u8> {
    udp4(CLIENT4, 40_000, VIP4, 53, CLIENT_MAC, LEGACY_MAC)
}

/// Packet `i` of the first-packet rows: each from its own client address and port.
fn new_flow_frame(i: u32) -> Vec<u8> {
    let [_, a, b, c] = i.to_be_bytes();
    udp4(
        [10, 100 + a, b, c],
        1024 + (i % 60_000) as u16,
        VIP4,
        53,
        CLIENT_MAC,
        LEGACY_MAC,
    )
}

/// The policy-drop rows' frame (no allow entry exists).
fn denied_frame(_: u32) -> Vec<u8> {
    udp4(CLIENT4, 40_001, VIP4, 53, CLIENT_MAC, LEGACY_MAC)
}

/// Establishes the flow of [`flow_frame`]: its first packet creates its tracking entries, its
/// second fills the flow cache (on this CPU: see [`stay_on_this_cpu`]) that the timed packets are
/// sent from.
fn establish() -> Vec<(Program, Vec<u8>)> {
    vec![
        (Program::Legacy, flow_frame(0)),
        (Program::Legacy, flow_frame(0)),
    ]
}

/// Keeps the benchmark on the CPU it runs on: the flow cache is per CPU, and a thread the
/// scheduler moves would find it empty on the new CPU (the established rows check that every
/// packet was served from it).
fn stay_on_this_cpu() -> Result<()> {
    // SAFETY: plain system calls; a zeroed cpu_set_t is a valid empty set.
    unsafe {
        let cpu = libc::sched_getcpu();
        if cpu < 0 {
            return Err(std::io::Error::last_os_error()).context("sched_getcpu");
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
        }
    }
    Ok(())
}

/// The table's rows, in order. Policy drop is a row since issue 4 landed; a new path is one
/// more entry.
const CASES: &[Case] = &[
    Case {
        name: "pass (harness floor: empty XDP program)",
        program: Program::Pass,
        new_flows: false,
        action: action::PASS,
        counter: None,
        cached: false,
        policy: false,
        frame: |_| udp4(CLIENT4, 40_000, GW4, 5000, CLIENT_MAC, LEGACY_MAC),
        warm: no_warm,
        events: None,
    },
    Case {
        name: "pass-through (not a VIP)",
        program: Program::Legacy,
        new_flows: false,
        action: action::PASS,
        counter: Some(Counter::LegacyPass),
        cached: false,
        policy: false,
        frame: |_| udp4(CLIENT4, 40_000, GW4, 5000, CLIENT_MAC, LEGACY_MAC),
        warm: no_warm,
        events: None,
    },
    Case {
        name: "VIP hit, first packet (CT create + DNAT + VXLAN encap)",
        program: Program::Legacy,
        new_flows: true,
        action: action::REDIRECT,
        counter: Some(Counter::CtCreated),
        cached: false,
        policy: false,
        frame: new_flow_frame,
        warm: no_warm,
        events: None,
    },
    Case {
        name: "VIP hit, established flow (DNAT + VXLAN encap)",
        program: Program::Legacy,
        new_flows: false,
        action: action::REDIRECT,
        counter: Some(Counter::VipForwarded),
        cached: true,
        policy: false,
        frame: flow_frame,
        warm: establish,
        events: None,
    },
    Case {
        name: "reply (VXLAN decap + reverse NAT)",
        program: Program::Mesh,
        new_flows: false,
        action: action::REDIRECT,
        counter: Some(Counter::ReplyForwarded),
        cached: false,
        policy: false,
        frame: |_| from_node(&udp4(POD4, 5353, CLIENT4, 40_000, NODE_INNER_MAC, VTEP_MAC)),
        warm: establish,
        events: None,
    },
    Case {
        name: "policy drop (first packet denied)",
        program: Program::Legacy,
        new_flows: false,
        action: action::DROP,
        counter: Some(Counter::DropPolicy),
        cached: false,
        policy: true,
        frame: denied_frame,
        warm: no_warm,
        events: None,
    },
    Case {
        name: "VIP hit, first packet, flow events on (one event a flow)",
        program: Program::Legacy,
        new_flows: true,
        action: action::REDIRECT,
        counter: Some(Counter::CtCreated),
        cached: false,
        policy: false,
        frame: new_flow_frame,
        warm: no_warm,
        events: ALL_EVENTS,
    },
    Case {
        name: "VIP hit, established flow, every packet sampled",
        program: Program::Legacy,
        new_flows: false,
        action: action::REDIRECT,
        counter: Some(Counter::VipForwarded),
        cached: true,
        policy: false,
        frame: flow_frame,
        warm: establish,
        events: ALL_EVENTS,
    },
    Case {
        name: "policy drop, drop events on (one event a packet)",
        program: Program::Legacy,
        new_flows: false,
        action: action::DROP,
        counter: Some(Counter::DropPolicy),
        cached: false,
        policy: true,
        frame: denied_frame,
        warm: no_warm,
        events: ALL_EVENTS,
    },
];

/// Loads a fresh datapath with one UDP service (VIP4:53 -> POD4:5353 on NODE_IP).
fn datapath(policy: bool) -> Result<Datapath> {
    let mut dp = Datapath::load_private().context("load the XDP object")?;
    let (mesh, legacy) = (ifindex("mesh"), ifindex("legacy"));
    dp.set_config(&GatewayConfig {
        mesh_ip: MESH_IP,
        vni: VNI,
        vxlan_port: 8472u16.to_be(),
        flags: CFG_F_ENABLED | if policy { CFG_F_POLICY } else { 0 },
        mesh_ifindex: mesh,
        legacy_ifindex: legacy,
        vtep_mac: VTEP_MAC,
        _pad: [0; 2],
    })?;
    dp.set_devices(mesh, legacy)?;
    let key = ServiceKey {
        addr: v4_mapped(VIP4),
        port: 53u16.to_be(),
        proto: 17,
        family: FAMILY_V4,
    };
    dp.services()?.insert(
        key,
        ServiceValue {
            service_id: 1,
            backend_count: 1,
            ..Default::default()
        },
        0,
    )?;
    dp.maglev()?.insert(1, MaglevTable::filled(1), 0)?;
    dp.backends()?.insert(
        1,
        BackendValue {
            addr: v4_mapped(POD4),
            port: 5353u16.to_be(),
            family: FAMILY_V4,
            node_ip: NODE_IP,
            node_mac: NODE_INNER_MAC,
            identity: 1000,
            ..Default::default()
        },
        0,
    )?;
    dp.nodes()?
        .insert(NodeKey { ip: NODE_IP }, NodeValue::default(), 0)?;
    Ok(dp)
}

/// New flows per fresh datapath: their forward and reverse entries stay below the CT map's
/// capacity, so the first-packet row never measures LRU eviction.
const FLOWS_PER_DATAPATH: u32 = CT_MAX / 4;

/// A datapath with the case's warm-up frames run.
fn prepared(c: &Case) -> Result<Datapath> {
    let mut dp = datapath(c.policy)?;
    for (p, f) in (c.warm)() {
        let r = dp.run(p, &f, 1)?;
        if r.action != action::REDIRECT {
            bail!("{}: warm-up frame ended with action {}", c.name, r.action);
        }
    }
    if let Some(e) = &c.events {
        dp.set_events_config(e)?;
    }
    Ok(dp)
}

/// Checks that `counter` grew by exactly `n` since `before`.
fn check_counter(dp: &Datapath, c: &Case, before: Before, n: u32) -> Result<()> {
    if c.cached {
        let hits = dp.counter(Counter::FlowCacheHit)? - before.cache_hits;
        let refreshes = before.at.elapsed().as_secs() + 1;
        if hits + refreshes < u64::from(n) {
            bail!(
                "{}: {hits} of {n} packets sent from the flow cache (at most {refreshes} \
                 refreshes expected)",
                c.name
            );
        }
    }
    let Some(counter) = c.counter else {
        return Ok(());
    };
    let grew = dp.counter(counter)? - before.count;
    if grew != u64::from(n) {
        let nonzero: Vec<_> = dp
            .counters()?
            .into_iter()
            .filter(|(_, v)| *v > 0)
            .map(|(c, v)| (c.name(), v))
            .collect();
        bail!(
            "{}: counter {} grew by {grew}, want {n}: not every packet took this path \
             (counters: {nonzero:?})",
            c.name,
            counter.name()
        );
    }
    Ok(())
}

/// The counters [`check_counter`] compares with, read before a run.
#[derive(Clone, Copy)]
struct Before {
    count: u64,
    cache_hits: u64,
    at: std::time::Instant,
}

fn count_of(dp: &Datapath, c: &Case) -> Result<Before> {
    Ok(Before {
        count: match c.counter {
            Some(k) => dp.counter(k)?,
            None => 0,
        },
        cache_hits: dp.counter(Counter::FlowCacheHit)?,
        at: std::time::Instant::now(),
    })
}

/// Runs case `c` as `n` test runs of one packet each (`repeat = 1`): the kernel's time per
/// call, averaged. Works for every path, including those that rewrite the frame.
fn per_call(c: &Case, n: u32) -> Result<f64> {
    let mut total = 0u128;
    let mut done = 0u32;
    let fixed = (c.frame)(0);
    while done < n {
        let chunk = if c.new_flows {
            FLOWS_PER_DATAPATH.min(n - done)
        } else {
            n
        };
        let mut dp = prepared(c)?;
        let mut ring = match c.events {
            Some(_) => Some(dp.take_events()?),
            None => None,
        };
        let mut events = 0u32;
        let before = count_of(&dp, c)?;
        let frames: Vec<Vec<u8>> = if c.new_flows {
            (done..done + chunk).map(c.frame).collect()
        } else {
            Vec::new()
        };
        for i in 0..chunk as usize {
            let f = frames.get(i).unwrap_or(&fixed);
            let r = dp.run(c.program, f, 1)?;
            if r.action != c.action {
                bail!("{}: action {} (want {})", c.name, r.action, c.action);
            }
            total += r.duration.as_nanos();
            if let Some(ring) = ring.as_mut() {
                while ring.next().is_some() {
                    events += 1;
                }
            }
        }
        check_counter(&dp, c, before, chunk)?;
        if ring.is_some() && events != chunk {
            bail!("{}: {events} events for {chunk} packets", c.name);
        }
        done += chunk;
    }
    Ok(total as f64 / f64::from(n))
}

/// Runs case `c` as one test run with `repeat = n` through the replay harness, which restores
/// the frame before every repetition (see `meshgw_common::bench::ReplayFrame`): the kernel's
/// average time per repetition, the harness's restore and tail call included. Caches stay warm
/// from one repetition to the next, as they do for a busy interface; only for cases whose every
/// packet is of the same flow and sends no event (a repeated run cannot drain the ring).
fn replayed(replay: &mut Replay, c: &Case, n: u32) -> Result<f64> {
    let dp = prepared(c)?;
    let before = count_of(&dp, c)?;
    let r = dp.run_replayed(replay, c.program, &(c.frame)(0), n)?;
    if r.action != c.action {
        bail!(
            "{} (replayed): action {} (want {})",
            c.name,
            r.action,
            c.action
        );
    }
    check_counter(&dp, c, before, n)?;
    Ok(r.duration.as_nanos() as f64)
}

/// Median, min and max of a set of runs.
#[derive(Clone, Copy, Debug)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

impl Stat {
    fn of(v: &mut [f64]) -> Stat {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Stat {
            median,
            min: v[0],
            max: v[n - 1],
        }
    }

    /// The same less a floor (not below zero).
    fn less(&self, floor: f64) -> Stat {
        Stat {
            median: (self.median - floor).max(0.0),
            min: (self.min - floor).max(0.0),
            max: (self.max - floor).max(0.0),
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({"median": self.median, "min": self.min, "max": self.max})
    }
}

fn main() -> Result<()> {
    let mut iterations: u32 = 1_000_000;
    let mut runs: usize = 5;
    let mut json: Option<PathBuf> = None;
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--iterations" => iterations = val()?.parse().context("--iterations")?,
            "--runs" => runs = val()?.parse().context("--runs")?,
            "--json" => json = Some(PathBuf::from(val()?)),
            "--only" => only = Some(val()?),
            other => bail!("unknown argument {other}"),
        }
    }
    if iterations == 0 || runs == 0 {
        bail!("--iterations and --runs must be positive");
    }
    let ns = lab();
    let rows = ns.run(move || -> Result<Vec<serde_json::Value>> {
        stay_on_this_cpu()?;
        let mut replay = Replay::load()?;
        let mut rows = Vec::new();
        let (mut floor, mut warm_floor) = (0.0, 0.0);
        for c in CASES {
            // The floor row always runs: the net figures need it.
            if let Some(o) = &only {
                if c.program != Program::Pass && !c.name.contains(o.as_str()) {
                    continue;
                }
            }
            let mut calls = Vec::with_capacity(runs);
            let mut warms = Vec::with_capacity(runs);
            for _ in 0..runs {
                calls.push(per_call(c, iterations)?);
                if !c.new_flows && c.events.is_none() {
                    warms.push(replayed(&mut replay, c, iterations)?);
                }
            }
            let call = Stat::of(&mut calls);
            let warm = (!warms.is_empty()).then(|| Stat::of(&mut warms));
            if c.program == Program::Pass {
                floor = call.median;
                warm_floor = warm.map_or(0.0, |w| w.median);
            }
            let net = call.less(floor);
            let warm_net = warm.map(|w| w.less(warm_floor));
            let mpps = |ns: f64| {
                if ns > 0.0 {
                    format!("{:.2}", 1000.0 / ns)
                } else {
                    "-".into()
                }
            };
            println!(
                "{:<58} cold: per call {:7.1} ns [{:.1}, {:.1}] net {:6.1} ns {:>6} Mpps/core  warm: {}",
                c.name,
                call.median,
                call.min,
                call.max,
                net.median,
                mpps(net.median),
                match (warm, warm_net) {
                    (Some(w), Some(n)) => format!(
                        "{:.1} ns [{:.1}, {:.1}] net {:.1} ns {} Mpps/core",
                        w.median,
                        w.min,
                        w.max,
                        n.median,
                        mpps(n.median)
                    ),
                    _ => "-".into(),
                },
            );
            rows.push(serde_json::json!({
                "name": c.name,
                "iterations": iterations,
                "runs": runs,
                "per_call_ns": call.json(),
                "net_ns": net.json(),
                "warm_ns": warm.map(|r| r.json()),
                "warm_net_ns": warm_net.map(|r| r.json()),
                "events": c.events.is_some(),
            }));
        }
        Ok(rows)
    })?;
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}
