//! Control-plane scale: a real etcd (mutual TLS, as the Cluster Mesh API) holding N global
//! services in Cilium's key format, 3 backends each, spread over 4 nodes; the real daemon imports
//! them. Per size and run: the time from the daemon's start to every VIP programmed in the pinned
//! services map (each frontend with its 3 backends), the time from a backend change put in etcd to
//! the change visible in the pinned maps (service -> Maglev table -> backends), median and p99 over
//! `--changes` changes, and the daemon's peak RSS (VmHWM).
//!
//! `controlplane [--sizes 1,1000,10000,50000] [--runs 5] [--changes 100] [--json PATH]
//!  [--start-timeout-seconds 60] [--keep-going]`. With `--keep-going` a size that fails is
//! recorded as such in the JSON (and larger sizes are not tried); without it, it fails the run. Needs root: it makes its own network namespace (two veth
//! pairs named as the gateway expects), enters it, and runs etcd and the daemon there. Every
//! figure is checked, not only timed: a run where a VIP or a change never shows up fails.

use std::collections::BTreeSet;
use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use aya::maps::{Array, HashMap, Map, MapData};
use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions, Txn, TxnOp};
use futures::StreamExt;
use meshgw_common::maps::{names, v4_mapped, MaglevTable, ServiceKey, ServiceValue, FAMILY_V4};

#[allow(dead_code, clippy::unwrap_used)]
#[path = "../tests/lab/etcd.rs"]
mod etcd_lab;
use etcd_lab::Etcd;

const MESHGW: &str = env!("CARGO_BIN_EXE_meshgw");
const NS: &str = "mgwbench-cp";
const WORK: &str = "/run/meshgw-bench/cp";
const PIN_DIR: &str = "/run/meshgw/bpffs/benchcp";
const CLUSTER: &str = "bench";
const NODES: u32 = 4;
const BACKENDS: u32 = 3;
/// Puts per etcd transaction (etcd's default `--max-txn-ops` is 128) and transactions in flight.
const TXN_OPS: usize = 128;
const IN_FLIGHT: usize = 8;

struct Args {
    sizes: Vec<u32>,
    runs: usize,
    changes: usize,
    json: Option<PathBuf>,
    start_timeout: Duration,
    keep_going: bool,
}

fn args() -> Result<Args> {
    let mut a = Args {
        sizes: vec![1, 1_000, 10_000, 50_000],
        runs: 5,
        changes: 100,
        json: None,
        start_timeout: Duration::from_secs(60),
        keep_going: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--sizes" => {
                a.sizes = v()?
                    .split(',')
                    .map(|s| s.trim().parse().context("--sizes"))
                    .collect::<Result<_>>()?
            }
            "--runs" => a.runs = v()?.parse().context("--runs")?,
            "--changes" => a.changes = v()?.parse().context("--changes")?,
            "--json" => a.json = Some(PathBuf::from(v()?)),
            "--start-timeout-seconds" => {
                a.start_timeout = Duration::from_secs(v()?.parse().context("--start-timeout")?)
            }
            "--keep-going" => a.keep_going = true,
            // cargo bench passes --bench to harness = false targets.
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    if a.runs == 0 || a.changes == 0 || a.sizes.is_empty() || a.sizes.contains(&0) {
        bail!("--runs, --changes and every size must be positive");
    }
    Ok(a)
}

fn sh(cmd: &[&str]) -> Result<()> {
    let out = Command::new(cmd[0])
        .args(&cmd[1..])
        .output()
        .with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// The benchmark's namespace, deleted on drop.
struct Netns;

impl Netns {
    /// Makes the namespace with `legacy` and `mesh` veths and enters it (this thread; call before
    /// any other thread exists, so everything started later lives there too).
    fn enter() -> Result<Netns> {
        // The pins live on the lab's bpffs (`ip netns exec` would hide /sys/fs/bpf).
        fs::create_dir_all("/run/meshgw/bpffs")?;
        if !Command::new("mountpoint")
            .args(["-q", "/run/meshgw/bpffs"])
            .status()?
            .success()
        {
            sh(&["mount", "-t", "bpf", "bpf", "/run/meshgw/bpffs"])?;
        }
        let _ = Command::new("ip")
            .args(["netns", "del", NS])
            .stderr(Stdio::null())
            .status();
        sh(&["ip", "netns", "add", NS])?;
        let ns = Netns;
        for c in [
            &["link", "set", "lo", "up"][..],
            &[
                "link", "add", "legacy", "type", "veth", "peer", "name", "legacyp",
            ],
            &[
                "link", "add", "mesh", "type", "veth", "peer", "name", "meshp",
            ],
            &["addr", "add", "10.100.0.1/24", "dev", "legacy"],
            &["addr", "add", "172.18.0.1/24", "dev", "mesh"],
            &["link", "set", "legacy", "up"],
            &["link", "set", "legacyp", "up"],
            &["link", "set", "mesh", "up"],
            &["link", "set", "meshp", "up"],
        ] {
            let mut v = vec!["ip", "-n", NS];
            v.extend_from_slice(c);
            sh(&v)?;
        }
        let f = fs::File::open(format!("/run/netns/{NS}")).context("open the namespace")?;
        // SAFETY: setns on a valid namespace fd; only this (single) thread is affected.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        sh(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", NS])
            .stderr(Stdio::null())
            .status();
    }
}

/// A child process, killed (by its id) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn connect(etcd: &Etcd) -> Result<Client> {
    let tls = TlsOptions::new()
        .ca_certificate(Certificate::from_pem(fs::read(etcd.file("ca.crt"))?))
        .identity(Identity::from_pem(
            fs::read(etcd.file("remote.crt"))?,
            fs::read(etcd.file("remote.key"))?,
        ));
    let opts = ConnectOptions::new()
        .with_tls(tls)
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(30));
    let t = Instant::now();
    loop {
        let err = match Client::connect([etcd.endpoint.as_str()], Some(opts.clone())).await {
            Ok(mut c) => match c.status().await {
                Ok(_) => return Ok(c),
                Err(e) => e,
            },
            Err(e) => e,
        };
        if t.elapsed() > Duration::from_secs(20) {
            bail!("etcd: {err}; see {}/etcd.log", etcd.dir.display());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Backend `j` of service `s`: its node (1..=4) and address in that node's pod CIDR 10.k.0.0/16.
fn backend_addr(s: u32, j: u32) -> (u32, [u8; 4]) {
    let g = s * BACKENDS + j;
    let k = g % NODES + 1;
    let idx = g / NODES + 1;
    (k, [10, k as u8, (idx >> 8) as u8, (idx & 0xff) as u8])
}

/// A fresh address for change number `seq` on node `k` (third octet 200+: never a seeded one).
fn changed_addr(k: u32, seq: u32) -> [u8; 4] {
    let seq = seq % (50 * 250);
    [10, k as u8, 200 + (seq / 250) as u8, (seq % 250 + 1) as u8]
}

fn ip(a: [u8; 4]) -> String {
    format!("{}.{}.{}.{}", a[0], a[1], a[2], a[3])
}

fn node_kv(k: u32) -> (String, String) {
    let name = format!("node-{k}");
    (
        format!("cilium/state/nodes/v1/{CLUSTER}/{name}"),
        format!(
            r#"{{"Name":"{name}","Cluster":"{CLUSTER}","IPAddresses":[{{"Type":"InternalIP","IP":"172.18.0.{}"}},{{"Type":"CiliumInternalIP","IP":"10.{k}.255.254"}}],"IPv4AllocCIDR":{{"IP":"10.{k}.0.0","Mask":"//8AAA=="}},"IPv4SecondaryAllocCIDRs":null,"IPv4HealthIP":"","IPv4IngressIP":"","ClusterID":1,"Source":"custom-resource","EncryptionKey":0,"Labels":{{}},"Annotations":null,"WireguardPubKey":"","BootID":"b"}}"#,
            10 + k
        ),
    )
}

/// Service `s` in Cilium's format, with `backends` as its 3 addresses.
fn service_kv(s: u32, backends: &[[u8; 4]]) -> (String, String) {
    let bs: Vec<String> = backends
        .iter()
        .map(|b| {
            format!(
                r#""{}":{{"http":{{"Protocol":"TCP","Port":8080}}}}"#,
                ip(*b)
            )
        })
        .collect();
    (
        format!("cilium/state/services/v1/{CLUSTER}/bench/svc-{s}"),
        format!(
            r#"{{"cluster":"{CLUSTER}","namespace":"bench","name":"svc-{s}","frontends":{{"10.96.{}.{}":{{"http":{{"Protocol":"TCP","Port":80}}}}}},"backends":{{{}}},"labels":{{}},"selector":{{"app":"svc-{s}"}},"includeExternal":true,"shared":true,"clusterID":1}}"#,
            (s >> 8) & 0xff,
            s & 0xff,
            bs.join(",")
        ),
    )
}

fn seeded_backends(s: u32) -> Vec<[u8; 4]> {
    (0..BACKENDS).map(|j| backend_addr(s, j).1).collect()
}

/// Puts `kvs` in transactions of [`TXN_OPS`], [`IN_FLIGHT`] at a time.
async fn put_all(client: &Client, kvs: Vec<(String, String)>) -> Result<()> {
    let batches: Vec<Vec<(String, String)>> = kvs.chunks(TXN_OPS).map(<[_]>::to_vec).collect();
    let mut results = futures::stream::iter(batches.into_iter().map(|b| {
        let mut c = client.clone();
        async move {
            let ops: Vec<TxnOp> = b.into_iter().map(|(k, v)| TxnOp::put(k, v, None)).collect();
            c.txn(Txn::new().and_then(ops)).await
        }
    }))
    .buffer_unordered(IN_FLIGHT);
    while let Some(r) = results.next().await {
        r.context("etcd txn")?;
    }
    Ok(())
}

fn config(dir: &Path, etcd: &Etcd) -> String {
    let d = |f: &str| dir.join(f).display().to_string();
    format!(
        r#"[gateway]
name = "benchcp"
identity = 2
state_dir = "{state}"
bpf_pin_dir = "{PIN_DIR}"

[interfaces]
legacy = "legacy"
mesh = "mesh"
xdp_mode = "native"

[mesh]
address = "172.18.0.1"
vxlan_port = 8472
vtep_mac = "02:6d:67:00:00:01"
vxlan_device = "meshgw-vx"

[vips]
pool = ["10.200.0.0/16"]

[[cluster]]
name = "{CLUSTER}"
endpoints = ["{endpoint}"]
trusted_ca_file = "{ca}"
cert_file = "{cert}"
key_file = "{key}"

[[portal]]
namespace = "bench"

[dns]
enabled = false
"#,
        state = d("state"),
        endpoint = etcd.endpoint,
        ca = etcd.file("ca.crt"),
        cert = etcd.file("remote.crt"),
        key = etcd.file("remote.key"),
    )
}

/// The pinned maps the daemon programs.
struct Pinned {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    maglev: HashMap<MapData, u32, MaglevTable>,
    backends: meshgw_datapath::Backends<MapData>,
}

impl Pinned {
    fn open() -> Result<Pinned> {
        let pin = |name: &str| -> Result<MapData> {
            let p = Path::new(PIN_DIR).join("maps").join(name);
            MapData::from_pin(&p).with_context(|| p.display().to_string())
        };
        let open = |name: &str| -> Result<Map> { Ok(Map::HashMap(pin(name)?)) };
        Ok(Pinned {
            services: HashMap::try_from(open(names::SERVICES)?)?,
            maglev: HashMap::try_from(open(names::MAGLEV)?)?,
            backends: meshgw_datapath::Backends::new(Array::try_from(Map::Array(pin(
                names::BACKENDS,
            )?))?),
        })
    }

    /// Whether `n` frontends are programmed, each with all its backends.
    fn all_programmed(&self, n: u32) -> bool {
        // Count keys first (cheap); read the values only once the count is there.
        if self.services.keys().filter(Result::is_ok).count() < n as usize {
            return false;
        }
        self.services
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, v)| v.backend_count == BACKENDS)
            .count()
            >= n as usize
    }

    /// The addresses of the backends in `vip`:80/TCP's Maglev table.
    fn backend_addrs(&self, vip: [u8; 4]) -> Option<BTreeSet<[u8; 16]>> {
        let key = ServiceKey {
            addr: v4_mapped(vip),
            port: 80u16.to_be(),
            proto: 6,
            family: FAMILY_V4,
        };
        let sv = self.services.get(&key, 0).ok()?;
        let table = self.maglev.get(&sv.service_id, 0).ok()?;
        let ids: BTreeSet<u32> = table.slots.iter().copied().filter(|i| *i != 0).collect();
        ids.iter()
            .map(|id| self.backends.get(id, 0).ok().map(|b| b.addr))
            .collect()
    }
}

/// Each service's IPv4 VIP, from the daemon's VIP assignments (`vips.json`, written as soon as
/// an assignment changes; `status.json` is written only after the whole reconcile, addresses
/// included).
fn vips(state: &Path) -> Result<std::collections::HashMap<String, [u8; 4]>> {
    let st: serde_json::Value = serde_json::from_slice(&fs::read(state.join("vips.json"))?)?;
    let mut out = std::collections::HashMap::new();
    let Some(assigned) = st["assigned"].as_object() else {
        return Ok(out);
    };
    for (svc, vips) in assigned {
        for v in vips.as_array().into_iter().flatten() {
            if let Some(Ok(std::net::IpAddr::V4(a))) = v.as_str().map(str::parse) {
                out.insert(svc.clone(), a.octets());
            }
        }
    }
    Ok(out)
}

/// Portals in the daemon's status.json.
fn portals(state: &Path) -> usize {
    fs::read(state.join("status.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|st| st["portals"].as_array().map(Vec::len))
        .unwrap_or(0)
}

/// A cluster's last error while it is disconnected, from the daemon's status.
fn cluster_error(state: &Path) -> Option<String> {
    let st: serde_json::Value =
        serde_json::from_slice(&fs::read(state.join("status.json")).ok()?).ok()?;
    st["clusters"]
        .as_array()?
        .iter()
        .find(|c| c["connected"] == false && !c["last_error"].is_null())
        .map(|c| c["last_error"].to_string())
}

fn vm_hwm_kib(pid: u32) -> Result<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmHWM in /proc/{pid}/status"))
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1]
}

/// One run's figures.
struct RunOut {
    start_s: f64,
    reconciled_s: f64,
    change_p50_ms: f64,
    change_p99_ms: f64,
    rss_mib: f64,
    /// The first change not applied within 10 s (the run stops changing then): the start,
    /// reconcile and memory figures still count, the latencies do not.
    change_error: Option<String>,
}

/// Starts the daemon on a clean state, waits for `n` VIPs, applies `changes` backend changes.
async fn one_run(
    client: &mut Client,
    dir: &Path,
    n: u32,
    changes: usize,
    seq: &mut u32,
    timeout: Duration,
) -> Result<RunOut> {
    let state = dir.join("state");
    let _ = fs::remove_dir_all(&state);
    let _ = fs::remove_dir_all(PIN_DIR);
    // Every run starts from the same kernel state: the previous run's VIP addresses go.
    sh(&[
        "ip",
        "addr",
        "flush",
        "dev",
        "legacy",
        "to",
        "10.200.0.0/16",
    ])?;
    let log = fs::File::create(dir.join("meshgw.log"))?;
    let t0 = Instant::now();
    let daemon = Proc(
        Command::new(MESHGW)
            .args(["run", "--config"])
            .arg(dir.join("gateway.toml"))
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start meshgw")?,
    );
    let pid = daemon.0.id();
    let mut pinned = None;
    let mut last_check = Instant::now();
    let start_s = loop {
        if t0.elapsed() > timeout {
            bail!(
                "{n} services: not all programmed after {timeout:?}; see {}/meshgw.log",
                dir.display()
            );
        }
        if pinned.is_none() {
            pinned = Pinned::open().ok();
        }
        if last_check.elapsed() > Duration::from_secs(1) {
            last_check = Instant::now();
            if let Some(e) = cluster_error(&state) {
                if t0.elapsed() > Duration::from_secs(5) {
                    bail!("the daemon cannot import the cluster: {e}");
                }
            }
        }
        if let Some(p) = &pinned {
            if p.all_programmed(n) {
                break t0.elapsed().as_secs_f64();
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let pinned = pinned.ok_or_else(|| anyhow!("maps not pinned"))?;
    // The maps come first; the daemon's reconcile goes on with the kernel side (VIP addresses,
    // routes) and writes status.json at its end. Changes are measured once it is done.
    let reconciled_s = loop {
        if portals(&state) >= n as usize {
            break t0.elapsed().as_secs_f64();
        }
        if t0.elapsed() > timeout {
            bail!(
                "{n} services: maps programmed after {start_s:.1} s, but the reconcile did not \
                 finish (status.json) within {timeout:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let t = Instant::now();
    let vips = loop {
        let v = vips(&state).unwrap_or_default();
        if v.len() >= n as usize {
            break v;
        }
        if t.elapsed() > Duration::from_secs(30) {
            bail!("vips.json lists {} of {n} services", v.len());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut lat = Vec::with_capacity(changes);
    let mut change_error = None;
    for c in 0..changes {
        let s = ((c as u64 * 7919) % u64::from(n)) as u32;
        let vip = *vips
            .get(&format!("bench/svc-{s}"))
            .ok_or_else(|| anyhow!("svc-{s} has no VIP"))?;
        let mut bs = seeded_backends(s);
        let (k, _) = backend_addr(s, BACKENDS - 1);
        *seq += 1;
        let new = changed_addr(k, *seq);
        bs[BACKENDS as usize - 1] = new;
        let (key, val) = service_kv(s, &bs);
        let want = v4_mapped(new);
        let t = Instant::now();
        client.put(key, val, None).await.context("etcd put")?;
        loop {
            if pinned
                .backend_addrs(vip)
                .is_some_and(|set| set.contains(&want))
            {
                break;
            }
            if t.elapsed() > Duration::from_secs(10) {
                change_error = Some(format!(
                    "change {c} (svc-{s} backend -> {}) not applied after 10 s",
                    ip(new)
                ));
                break;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        if change_error.is_some() {
            break;
        }
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let rss_mib = vm_hwm_kib(pid)? as f64 / 1024.0;
    drop(daemon);
    lat.sort_by(f64::total_cmp);
    let (p50, p99) = if change_error.is_some() || lat.is_empty() {
        (f64::NAN, f64::NAN)
    } else {
        (pct(&lat, 50.0), pct(&lat, 99.0))
    };
    Ok(RunOut {
        start_s,
        reconciled_s,
        change_p50_ms: p50,
        change_p99_ms: p99,
        rss_mib,
        change_error,
    })
}

/// Median, min, max.
fn stat(mut v: Vec<f64>) -> serde_json::Value {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let med = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    serde_json::json!({"median": med, "min": v[0], "max": v[n - 1]})
}

async fn bench(a: &Args) -> Result<Vec<serde_json::Value>> {
    let dir = PathBuf::from(WORK);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    // Room for 50,000 services' keys and their history.
    let etcd = Etcd::start_local_with("bench-cp", &["--quota-backend-bytes", "8589934592"]);
    fs::write(dir.join("gateway.toml"), config(&dir, &etcd))?;
    let mut client = connect(&etcd).await?;
    let mut boot: Vec<(String, String)> = vec![(
        format!("cilium/cluster-config/{CLUSTER}"),
        r#"{"id":1,"capabilities":{"syncedCanaries":true,"cached":false,"maxConnectedClusters":255}}"#.into(),
    )];
    boot.extend((1..=NODES).map(node_kv));
    for prefix in [
        "cilium/state/nodes/v1",
        "cilium/state/services/v1",
        "cilium/state/ip/v1",
        "cilium/state/identities/v1",
    ] {
        boot.push((
            format!("cilium/synced/{CLUSTER}/{prefix}"),
            "2026-11-25T00:00:00Z".into(),
        ));
    }
    put_all(&client, boot).await?;
    let mut seeded = 0u32;
    let mut seq = 0u32;
    let mut rows = Vec::new();
    let mut sizes = a.sizes.clone();
    sizes.sort_unstable();
    for n in sizes {
        let t = Instant::now();
        let kvs: Vec<_> = (seeded..n)
            .map(|s| service_kv(s, &seeded_backends(s)))
            .collect();
        put_all(&client, kvs).await?;
        let seed_s = t.elapsed().as_secs_f64();
        seeded = seeded.max(n);
        let mut outs = Vec::new();
        let mut failure = None;
        for r in 0..a.runs {
            match one_run(&mut client, &dir, n, a.changes, &mut seq, a.start_timeout).await {
                Ok(o) => {
                    eprintln!(
                        "[controlplane] {n} services run {}: programmed in {:.2} s, reconciled in {:.2} s, change p50 {:.1} ms p99 {:.1} ms, peak RSS {:.1} MiB",
                        r + 1,
                        o.start_s,
                        o.reconciled_s,
                        o.change_p50_ms,
                        o.change_p99_ms,
                        o.rss_mib
                    );
                    let missed = o.change_error.clone();
                    outs.push(o);
                    if let Some(e) = missed {
                        // Further runs would miss the same way, each after its 10 s wait.
                        eprintln!("[controlplane] {n} services: {e}; no further runs");
                        break;
                    }
                }
                Err(e) => {
                    let msg = format!("{n} services, run {}: {e:#}", r + 1);
                    if !a.keep_going {
                        bail!(msg);
                    }
                    eprintln!("[controlplane] FAILED {msg}");
                    failure = Some(msg);
                    break;
                }
            }
        }
        if let Some(msg) = failure {
            rows.push(serde_json::json!({"services": n, "error": msg}));
            // A larger size would fail the same way, after the same timeout.
            break;
        }
        println!(
            "{n:>6} services (seeded in {seed_s:.1} s): programmed {:.2} s, change p50 {:.1} ms p99 {:.1} ms, peak RSS {:.1} MiB (medians of {} runs)",
            stat(outs.iter().map(|o| o.start_s).collect())["median"].as_f64().unwrap_or(0.0),
            stat(outs.iter().map(|o| o.change_p50_ms).collect())["median"].as_f64().unwrap_or(0.0),
            stat(outs.iter().map(|o| o.change_p99_ms).collect())["median"].as_f64().unwrap_or(0.0),
            stat(outs.iter().map(|o| o.rss_mib).collect())["median"].as_f64().unwrap_or(0.0),
            a.runs
        );
        rows.push(serde_json::json!({
            "services": n,
            "backends_per_service": BACKENDS,
            "runs": a.runs,
            "changes_per_run": a.changes,
            "seed_seconds": seed_s,
            "start_to_programmed_s": stat(outs.iter().map(|o| o.start_s).collect()),
            "start_to_reconciled_s": stat(outs.iter().map(|o| o.reconciled_s).collect()),
            "change_p50_ms": stat(outs.iter().map(|o| o.change_p50_ms).collect()),
            "change_p99_ms": stat(outs.iter().map(|o| o.change_p99_ms).collect()),
            "peak_rss_mib": stat(outs.iter().map(|o| o.rss_mib).collect()),
            "change_error": outs.iter().find_map(|o| o.change_error.clone()),
            "runs_done": outs.len(),
        }));
    }
    Ok(rows)
}

fn main() -> Result<()> {
    // `cargo test --all-targets` runs bench targets once, without arguments: the full benchmark
    // takes minutes and belongs to `make bench`, and its smoke run to `make bench-smoke`.
    if std::env::args().len() <= 1 {
        println!("controlplane: run by scripts/bench.sh (make bench, make bench-smoke); pass --sizes etc. to run it here");
        return Ok(());
    }
    let a = args()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("needs root (network namespace, etcd, XDP)");
    }
    let _ns = Netns::enter()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let rows = rt.block_on(bench(&a))?;
    let _ = fs::remove_dir_all(PIN_DIR);
    if let Some(p) = &a.json {
        fs::write(p, serde_json::to_string_pretty(&rows)?)
            .with_context(|| p.display().to_string())?;
    }
    Ok(())
}
