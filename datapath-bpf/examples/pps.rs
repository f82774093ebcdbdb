//! The packets-per-second benchmark's generator and sink (`scripts/bench_pps.sh`), driving the
//! programs of `datapath-bpf/xdp/src/bin/meshgw-bench.rs`. Run each command inside the namespace
//! whose interface it names (`ip netns exec`); needs root.
//!
//! ```text
//! pps sink-attach --dev DEV --pin DIR --node ADDR,OUTER_MAC,INNER_MAC,INNER_DST,INNER_PORT [--node ...] [--vni N]
//!     attach the sink to DEV (native XDP): VXLAN to ADDR is counted when the outer MAC, VNI,
//!     inner MAC, inner IPv4 destination and UDP port are the given ones; the link and the
//!     counters are pinned in DIR (on a bpffs), so the sink outlives this command
//! pps sink-read --pin DIR
//!     print the counters as JSON: delivered, wrong, passed (totals) and delivered per CPU
//! pps gen --dev DEV --dmac MAC --src IP --dst IP [--dport 53] [--sport 1024] [--flows 256]
//!         [--seconds S] [--cpu C] [--threads T] [--batch B (256, the kernel's most)] [--fifo]
//!     send 60-byte UDP frames out of DEV for S seconds with BPF_PROG_TEST_RUN live frames, from
//!     T threads pinned to CPU C (SCHED_FIFO with --fifo); print JSON: frames sent, seconds
//! ```

use std::net::Ipv4Addr;
use std::os::unix::thread::JoinHandleExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use aya::programs::links::FdLink;
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode};
use aya::{Ebpf, EbpfLoader};
use meshgw_common::bench::{
    names, udp4_frame, GenConfig, SinkNode, SINK_DELIVERED, SINK_PASSED, SINK_WRONG,
};
use meshgw_datapath::BENCH_OBJECT;

fn mac(s: &str) -> Result<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad MAC {s}"))?;
    v.try_into()
        .map_err(|_| anyhow::anyhow!("bad MAC {s}: six bytes"))
}

fn ip4(s: &str) -> Result<[u8; 4]> {
    Ok(s.parse::<Ipv4Addr>()
        .with_context(|| format!("bad IPv4 address {s}"))?
        .octets())
}

fn ifindex(dev: &str) -> Result<u32> {
    let name = std::ffi::CString::new(dev).context("interface name")?;
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
    ensure!(i != 0, "no interface {dev} in this namespace");
    Ok(i)
}

fn xdp<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp> {
    let p: &mut Xdp = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the bench object"))?
        .try_into()
        .with_context(|| format!("{name} is not an XDP program"))?;
    p.load().with_context(|| format!("loading {name}"))?;
    Ok(p)
}

/// Command-line options: `--key value` pairs and `--flag`s, keys may repeat.
struct Args(Vec<(String, Option<String>)>);

impl Args {
    fn parse(raw: impl Iterator<Item = String>, flags: &[&str]) -> Result<Self> {
        let mut out = Vec::new();
        let mut raw = raw.peekable();
        while let Some(a) = raw.next() {
            let Some(key) = a.strip_prefix("--") else {
                bail!("unexpected argument {a}")
            };
            if flags.contains(&key) {
                out.push((key.to_string(), None));
            } else {
                let v = raw
                    .next()
                    .with_context(|| format!("--{key} needs a value"))?;
                out.push((key.to_string(), Some(v)));
            }
        }
        Ok(Self(out))
    }
    fn all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .filter_map(|(_, v)| v.as_deref())
            .collect()
    }
    fn get(&self, key: &str) -> Option<&str> {
        self.all(key).last().copied()
    }
    fn req(&self, key: &str) -> Result<&str> {
        self.get(key)
            .with_context(|| format!("--{key} is required"))
    }
    fn num<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T>
    where
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        match self.get(key) {
            Some(v) => v.parse().with_context(|| format!("--{key}")),
            None => Ok(default),
        }
    }
    fn flag(&self, key: &str) -> bool {
        self.0.iter().any(|(k, v)| k == key && v.is_none())
    }
    fn check(&self, known: &[&str]) -> Result<()> {
        for (k, _) in &self.0 {
            ensure!(known.contains(&k.as_str()), "unknown option --{k}");
        }
        Ok(())
    }
}

fn sink_attach(a: &Args) -> Result<()> {
    a.check(&["dev", "pin", "node", "vni"])?;
    let dev = a.req("dev")?;
    let pin = PathBuf::from(a.req("pin")?);
    let vni: u32 = a.num("vni", 2)?;
    let mut nodes = Vec::new();
    for spec in a.all("node") {
        let f: Vec<&str> = spec.split(',').collect();
        ensure!(
            f.len() == 5,
            "--node ADDR,OUTER_MAC,INNER_MAC,INNER_DST,INNER_PORT, got {spec}"
        );
        let port: u16 = f[4].parse().context("inner port")?;
        let node = SinkNode {
            outer_mac: mac(f[1])?,
            inner_mac: mac(f[2])?,
            inner_dst: ip4(f[3])?,
            inner_dport: port.to_be_bytes(),
            pad: [0; 2],
            vni,
        };
        nodes.push((ip4(f[0])?, node));
    }
    ensure!(!nodes.is_empty(), "at least one --node");
    // A fresh start: counters from an earlier run must not add up.
    if pin.exists() {
        std::fs::remove_dir_all(&pin).with_context(|| format!("removing {}", pin.display()))?;
    }
    std::fs::create_dir_all(&pin).with_context(|| format!("creating {}", pin.display()))?;
    let mut ebpf = EbpfLoader::new()
        .load(BENCH_OBJECT)
        .context("loading the bench object")?;
    {
        let mut m: HashMap<_, [u8; 4], SinkNode> = HashMap::try_from(
            ebpf.map_mut(names::SINK_NODES)
                .context("sink nodes map missing")?,
        )?;
        for (addr, node) in &nodes {
            m.insert(addr, node, 0)?;
        }
    }
    ebpf.map(names::SINK_COUNTS)
        .context("sink counters map missing")?
        .pin(pin.join("counts"))
        .context("pinning the sink's counters")?;
    let p = xdp(&mut ebpf, names::SINK)?;
    let id = p
        .attach(dev, XdpMode::Driver)
        .with_context(|| format!("attaching the sink to {dev} (native)"))?;
    let link = FdLink::try_from(p.take_link(id)?).context("the sink needs a bpf_link")?;
    link.pin(pin.join("link"))
        .context("pinning the sink's link")?;
    println!(
        "{}",
        serde_json::json!({"dev": dev, "ifindex": ifindex(dev)?, "nodes": nodes.len()})
    );
    Ok(())
}

fn sink_read(a: &Args) -> Result<()> {
    a.check(&["pin"])?;
    let pin = Path::new(a.req("pin")?);
    let md = MapData::from_pin(pin.join("counts")).context("opening the pinned counters")?;
    let counts: PerCpuArray<_, u64> = PerCpuArray::try_from(Map::PerCpuArray(md))?;
    let slot = |i: u32| -> Result<Vec<u64>> { Ok(counts.get(&i, 0)?.iter().copied().collect()) };
    let delivered = slot(SINK_DELIVERED)?;
    let wrong: u64 = slot(SINK_WRONG)?.iter().sum();
    let passed: u64 = slot(SINK_PASSED)?.iter().sum();
    println!(
        "{}",
        serde_json::json!({
            "delivered": delivered.iter().sum::<u64>(),
            "wrong": wrong,
            "passed": passed,
            "delivered_per_cpu": delivered,
        })
    );
    Ok(())
}

/// Pins the calling thread to `cpu`, optionally with SCHED_FIFO.
fn pin_thread(cpu: usize, fifo: bool) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the libc calls only read what we pass.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
        }
        if fifo {
            let p = libc::sched_param { sched_priority: 1 };
            if libc::sched_setscheduler(0, libc::SCHED_FIFO, &p) != 0 {
                return Err(std::io::Error::last_os_error()).context("SCHED_FIFO");
            }
        }
    }
    Ok(())
}

fn gen(a: &Args) -> Result<()> {
    a.check(&[
        "dev", "dmac", "src", "dst", "dport", "sport", "flows", "seconds", "cpu", "threads",
        "batch", "fifo",
    ])?;
    let dev = a.req("dev")?;
    let ifindex = ifindex(dev)?;
    let smac = mac(
        std::fs::read_to_string(format!("/sys/class/net/{dev}/address"))
            .with_context(|| format!("MAC of {dev}"))?
            .trim(),
    )?;
    let dmac = mac(a.req("dmac")?)?;
    let (src, dst) = (ip4(a.req("src")?)?, ip4(a.req("dst")?)?);
    let dport: u16 = a.num("dport", 53)?;
    let sport: u16 = a.num("sport", 1024)?;
    let flows: u32 = a.num("flows", 256)?;
    let seconds: f64 = a.num("seconds", 5.0)?;
    let cpu: usize = a.num("cpu", 0)?;
    let threads: usize = a.num("threads", 1)?;
    let batch: u32 = a.num("batch", 256)?;
    let fifo = a.flag("fifo");
    ensure!(
        flows > 0 && threads > 0 && seconds > 0.0,
        "flows, threads and seconds must be positive"
    );

    let (frame, partial) = udp4_frame(dmac, smac, src, dst, sport, dport);
    let mut ebpf = EbpfLoader::new()
        .load(BENCH_OBJECT)
        .context("loading the bench object")?;
    {
        let mut cfg: Array<_, GenConfig> = Array::try_from(
            ebpf.map_mut(names::GEN_CONFIG)
                .context("generator config map missing")?,
        )?;
        let c = GenConfig {
            flows,
            sport_base: sport,
            partial,
            frame,
        };
        cfg.set(0, c, 0)?;
    }
    xdp(&mut ebpf, names::GEN)?;
    let ebpf = std::sync::Arc::new(ebpf);
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
    // The ingress interface is the one XDP_TX transmits from.
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    let seq_before = gen_seq(&ebpf)?;
    // One test run per thread for the whole duration, ended by a signal: every call sets up and
    // tears down a page pool (with an RCU grace period), which would leave gaps in the stream.
    install_wakeup_handler()?;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let t0 = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (ebpf, done) = (ebpf.clone(), done.clone());
            std::thread::spawn(move || -> Result<()> {
                pin_thread(cpu, fifo)?;
                let p: &Xdp = ebpf
                    .program(names::GEN)
                    .context("generator missing")?
                    .try_into()?;
                while !done.load(std::sync::atomic::Ordering::Acquire) {
                    let opts = TestRunOptions {
                        data_in: Some(&frame),
                        ctx_in: Some(&ctx),
                        repeat: u32::MAX,
                        attrs: TestRunAttrs::new().xdp_live_frames(batch),
                        ..TestRunOptions::default()
                    };
                    if let Err(e) = p.test_run(opts) {
                        // The signal that ends the run interrupts the call (EINTR).
                        if !done.load(std::sync::atomic::Ordering::Acquire) {
                            return Err(e).context("BPF_PROG_TEST_RUN (live frames)");
                        }
                    }
                }
                Ok(())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    done.store(true, std::sync::atomic::Ordering::Release);
    for w in workers {
        // Signal until the thread has left its test run (a signal that arrives between two
        // calls interrupts nothing; the flag then ends the loop).
        while !w.is_finished() {
            // SAFETY: the thread has not been joined, so its pthread_t is valid.
            unsafe { libc::pthread_kill(w.as_pthread_t(), libc::SIGUSR1) };
            std::thread::sleep(Duration::from_millis(1));
        }
        w.join()
            .map_err(|_| anyhow::anyhow!("generator thread panicked"))??;
    }
    let secs = t0.elapsed().as_secs_f64();
    let sent = gen_seq(&ebpf)?.wrapping_sub(seq_before);
    println!(
        "{}",
        serde_json::json!({"sent": sent, "seconds": secs, "pps": sent as f64 / secs})
    );
    Ok(())
}

/// Frames the generator program has run on so far (its per-CPU sequence numbers, summed).
fn gen_seq(ebpf: &Ebpf) -> Result<u64> {
    let seq: PerCpuArray<_, u32> = PerCpuArray::try_from(
        ebpf.map(names::GEN_SEQ)
            .context("generator sequence map missing")?,
    )?;
    Ok(seq.get(&0, 0)?.iter().map(|&n| u64::from(n)).sum())
}

extern "C" fn wakeup(_: libc::c_int) {}

/// A SIGUSR1 handler that does nothing, installed without SA_RESTART, so the signal makes a
/// blocking test run return.
fn install_wakeup_handler() -> Result<()> {
    // SAFETY: a zeroed sigaction with a valid handler and an empty mask; the handler is
    // async-signal-safe (it does nothing).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = wakeup as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error()).context("sigaction");
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    let mut raw = std::env::args().skip(1);
    let cmd = raw.next().unwrap_or_default();
    let a = Args::parse(raw, &["fifo"])?;
    match cmd.as_str() {
        "sink-attach" => sink_attach(&a),
        "sink-read" => sink_read(&a),
        "gen" => gen(&a),
        _ => bail!("usage: pps sink-attach|sink-read|gen ... (see the source's header)"),
    }
}
