#!/usr/bin/env python3
"""Writes BENCHMARKS.md (to stdout) from the JSON files scripts/bench.sh collected."""
import argparse
import json
import os
import platform
import subprocess

p = argparse.ArgumentParser()
p.add_argument("--dir", required=True)
p.add_argument("--mode", required=True)
p.add_argument("--seconds", type=int, required=True)
p.add_argument("--xdp-args", required=True)
p.add_argument("--cp-args", required=True)
p.add_argument("--tunnel-args", required=True)
p.add_argument("--pps-args", required=True)
a = p.parse_args()


def load(name):
    with open(os.path.join(a.dir, name)) as f:
        return json.load(f)


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def mem_gib():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    return 0


def mmm(s, fmt="{:.1f}"):
    return f"{fmt.format(s['median'])} [{fmt.format(s['min'])}, {fmt.format(s['max'])}]"


def git_rev():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


xdp = load("xdp.json")
cp = load("controlplane.json")
tun = load("tunnel.json")
pps = load("pps.json")
out = []
w = out.append
w("# meshgw benchmarks\n")
if a.mode != "full":
    w("**Smoke run** (one iteration, tiny sizes): the figures below mean nothing; it only proves "
      "the harnesses work.\n")
w("Written by `make bench` (`scripts/bench.sh full`); rerun it to refresh. Every figure is the "
  "median of the runs with [min, max] beside it. Nothing here is asserted: `make test` runs "
  "`make bench-smoke`, which only checks that every harness still works.\n")
w("## Machine\n")
w(f"- CPU: {cpu_model()}, {os.cpu_count()} cores")
w(f"- Memory: {mem_gib():.1f} GiB")
w(f"- Kernel: {platform.release()}")
w(f"- Commit: {git_rev()}; whole run: {a.seconds} s\n")
w("## Commands\n")
w("```sh")
w("sudo make bench          # = scripts/bench.sh full, writes BENCHMARKS.md")
w(f"target/release/examples/xdp_bench {a.xdp_args} --json target/bench/xdp.json")
w(f"target/release/deps/controlplane-* {a.cp_args} --json target/bench/controlplane.json")
w(f"scripts/bench_pps.sh {a.pps_args} target/bench/pps.json")
w(f"scripts/bench_tunnel.sh {a.tunnel_args} target/bench/tunnel.json")
w("```\n")

# 1. XDP
w("## 1. XDP per-packet cost (BPF_PROG_TEST_RUN)\n")
n = xdp[0]["iterations"]
runs = xdp[0]["runs"]
w(f"{n:,} packets per run, {runs} runs per row; 60-byte UDP frames (IPv4). Two ways, both timed "
  "by the kernel: **cold**, N calls of one packet each (a system call between packets, so the "
  "maps' cache lines and the branch predictors start cold every packet), and **warm**, one call "
  "with `repeat = N` through a replay harness that restores the frame before every repetition "
  "(the caches as a busy interface keeps them). `net` subtracts the floor measured the same way "
  "(the empty XDP program; for warm, the harness tail-calling it). Mpps/core = 1000 / net ns.\n")
w("| path | cold: ns/packet per call | cold: net ns | cold: Mpps/core | warm: ns/packet | warm: net ns | warm: Mpps/core |")
w("|---|---|---|---|---|---|---|")
def mpps(v):
    return f"{1000 / v:.2f}" if v > 0 else "-"
for r in xdp:
    net = r["net_ns"]
    warm, wnet = r.get("warm_ns"), r.get("warm_net_ns")
    if warm and wnet:
        wcols = f"{mmm(warm)} | {mmm(wnet)} | {mpps(wnet['median'])}"
    elif r.get("events"):
        wcols = "n/a (events read between calls) | | "
    else:
        wcols = "n/a (every packet a new flow) | | "
    w(f"| {r['name']} | {mmm(r['per_call_ns'])} | {mmm(net)} | {mpps(net['median'])} | {wcols} |")
est = next((r for r in xdp if r["name"].startswith("VIP hit, established")), None)
if est:
    cold = est["net_ns"]["median"]
    wn = (est.get("warm_net_ns") or {}).get("median")
    def verdict(v):
        return "met" if v < 100 else "**missed**"
    line = f"\nTarget: an established-flow VIP hit under 100 ns per packet: cold {cold:.0f} ns ({verdict(cold)})"
    if wn is not None:
        line += f", warm {wn:.0f} ns ({verdict(wn)})"
    w(line + ".\n")
w("How it is measured: the kernel does not restore the frame between the repetitions of one "
  "`BPF_PROG_TEST_RUN` call (after a rewrite, repetition 2 sees repetition 1's output, which is "
  "no longer a VIP packet). Cold runs every packet as a call of its own. Warm runs "
  "`meshgw_bench_replay` (`datapath-bpf/xdp/src/bin/meshgw-bench.rs`, in the benchmark's own "
  "object) with `repeat = N`: it moves the head back to the frame's length, writes the frame "
  "again and tail-calls the program under test; its floor is the same harness tail-calling the "
  "empty program. The harness calls `bpf_xdp_adjust_head` on every repetition, even when the "
  "head is where it belongs (the floor's case), so that moving the head back costs the floor "
  "what it costs a path that grew it. The established flow's tracking entry is created "
  "by one packet before timing, and its first timed packet fills the per-CPU flow cache the "
  "later ones are sent from (`flow_cache_hit`); the first-packet row sends every packet from a new source "
  "address and port (with a fresh datapath every 131,072 flows, so the LRU tracking map never "
  "evicts), so it runs cold only. Every run checks the datapath's counters: each packet took "
  "the path the row names. "
  "Rows with flow events on send one ring buffer event per packet (new flow, sample at rate 1, "
  "or policy drop); the harness reads them off the ring between calls (outside the timed "
  "region) and checks there was exactly one per packet; the cost of events is the difference "
  "with the same row without them.\n")

# 2. pps
w("## 2. Packets per second through the gateway namespace (XDP vs kernel path)\n")
cpus = pps["cpus"]
w(f"{pps['runs']} runs of {pps['seconds']:g} s per path, in the lab topology, both paths one after "
  "the other in the same run (`scripts/bench_pps.sh`):\n")
w(f"- **Generator** (CPU {cpus['generator']}): `BPF_PROG_TEST_RUN` with live frames "
  "(`BPF_F_TEST_XDP_LIVE_FRAMES`) of a tiny XDP program on the legacy host's `eth0` "
  "(`datapath-bpf/examples/pps.rs`, `datapath-bpf/xdp/src/bin/meshgw-bench.rs`): every 60-byte "
  "UDP frame to the VIP gets the next of 256 source ports (so Maglev and the kernel's jhash "
  "spread the flows over both backends) and leaves by `XDP_TX`, as fast as one core sends "
  "(SCHED_FIFO, below the sink's thread).")
w(f"- **Gateway** (CPU {cpus['gateway']}): the receive of the gateway's `legacy` veth runs in "
  "its own NAPI (the XDP program attached, or GRO for the kernel path), made threaded and "
  "pinned to that core, so everything the gateway does with a packet, up to handing it to "
  "its `mesh` veth, runs there and only there. The figure is what one core of gateway "
  "sustains.")
w(f"- **Sink** (CPU {cpus['sink']}): an XDP program on the switch port facing the gateway "
  "counts per CPU and drops the VXLAN packets that are exactly what a node expects (outer "
  "MAC and address of a node, VNI 2, the node's inner MAC, the backend's address and UDP "
  "port); VXLAN that fails a check fails the benchmark. Its NAPI is threaded on the "
  "generator's core (SCHED_FIFO above the generator, so it keeps up), so the sink costs the "
  "gateway's core nothing. A packet counts once the gateway has handed it to the switch; the "
  "switch and the nodes are not measured.")
w("- **Kernel path**: no meshgw; nftables DNAT (jhash over the two pods) and a kernel VXLAN "
  "device with the pod-CIDR routes (`encap ip id 2`), in a fresh lab with the same generator, "
  "NAPI pinning and sink.\n")
w("*delivered* = packets the sink counted / the generator's sending time. *offered*: what the "
  "generator sent; the rest was refused at the gateway's receive ring (256 frames) when it was "
  "full (the sink's own ring refused " + f"{max(x['refused_out'] for r in pps['rows'] for x in r['runs'])}"
  + " packets at most in a run). *busy*: share of each CPU not idle during the run (`/proc/stat`, "
  "including anything else running on the machine). *NAPI*: CPU time of the gateway's "
  "receive thread per second (SCHED_FIFO, so other load cannot take its core; the kernel's RT "
  "throttling caps it near 95%). *per busy core* = delivered / NAPI: packets per second of "
  "gateway CPU time, what a fully busy core would forward at that per-packet cost. When NAPI "
  "stays well below 95%, the gateway's core had idle time although frames were refused at "
  "other moments: the stream reaching it is bursty (the generator shares its core with the "
  "sink, which preempts it), and *delivered* understates that path.\n")
cpu_ids = sorted(pps["rows"][0]["cpu_busy"])
w("| path | kpps delivered | ratio | kpps offered | " + " | ".join(f"busy CPU {c}" for c in cpu_ids)
  + " | gateway NAPI | kpps per busy core | ratio |")
w("|---|---|---|---|" + "---|" * len(cpu_ids) + "---|---|---|")
kern = next(r for r in pps["rows"] if r["name"].startswith("kernel"))


def kp(s):
    return mmm({x: s[x] / 1000 for x in ("median", "min", "max")}, "{:.0f}")


def pct(s):
    return mmm({x: s[x] * 100 for x in ("median", "min", "max")}, "{:.0f}%")


for r in pps["rows"]:
    busy = " | ".join(pct(r["cpu_busy"][c]) for c in cpu_ids)
    w(f"| {r['name']} | {kp(r['pps'])} | {r['pps']['median'] / kern['pps']['median']:.2f} | "
      f"{kp(r['offered_pps'])} | {busy} | {pct(r['gw_napi_busy'])} | {kp(r['pps_per_core'])} | "
      f"{r['pps_per_core']['median'] / kern['pps_per_core']['median']:.2f} |")
w("")
w(f"Target: at least 3x the kernel path: {pps['ratio']:.2f}x delivered, "
  f"{pps['ratio_per_core']:.2f}x per busy core: "
  + ("met" if pps["ratio"] >= 3 else "**missed** on delivered packets") + ".\n")

# 3. control plane
w("## 3. Control-plane scale (real etcd, Cilium key format, 3 backends per service)\n")
w("Per run the daemon starts on a clean state and pin directory. *Maps programmed*: every "
  "frontend is in the pinned services map with its 3 backends. *Reconciled*: the whole "
  "reconcile is done (status.json lists every portal: VIP addresses, routes). *Change*: one "
  "backend address of one service is put in etcd; timed until the pinned maps (service -> "
  "Maglev table -> backends) show the new address, polled every 0.2 ms; p50/p99 over the "
  "changes of a run. *Peak RSS*: the daemon's VmHWM at the end of the run.\n")
w("| services | maps programmed (s) | reconciled (s) | change p50 (ms) | change p99 (ms) | peak RSS (MiB) |")
w("|---|---|---|---|---|---|")
for r in cp:
    if "error" in r:
        w(f"| {r['services']:,} | failed: {r['error']} | | | | |")
        continue
    runs_note = "" if r.get("runs_done", r["runs"]) == r["runs"] else f" ({r['runs_done']} run)"
    if r.get("change_error"):
        p50 = p99 = f"**missed**: {r['change_error']}"
    else:
        p50, p99 = mmm(r['change_p50_ms']), mmm(r['change_p99_ms'])
    w(f"| {r['services']:,}{runs_note} | {mmm(r['start_to_programmed_s'], '{:.2f}')} | "
      f"{mmm(r['start_to_reconciled_s'], '{:.2f}')} | {p50} | {p99} | {mmm(r['peak_rss_mib'])} |")
sizes = {r["services"]: r for r in cp}
w("")
w("Targets:")
def target(size, what, key, limit, unit):
    r = sizes.get(size)
    if r is None:
        return f"- {what} at {size:,} services: not measured"
    if "error" in r:
        return f"- {what} at {size:,} services: **missed** (the run failed, see the table)"
    if key.startswith("change") and r.get("change_error"):
        return f"- {what} at {size:,} services: **missed** ({r['change_error']})"
    v = r[key]["median"]
    return f"- {what} at {size:,} services: {v:.2f} {unit}, " + ("met" if v < limit else "**missed**")
w(target(10000, "all VIPs programmed in under 5 s", "start_to_programmed_s", 5, "s"))
w(target(max(s for s in sizes), "a change applied in under 100 ms at p99 (largest size measured)",
         "change_p99_ms", 100, "ms"))
w(target(50000, "under 200 MiB RSS", "peak_rss_mib", 200, "MiB"))
w("")

# 4. tunnel
w("## 4. Tunnel throughput (iperf3 TCP between two gateway namespaces)\n")
w(f"{tun['runs']} runs of {tun['seconds']} s each.\n")
w("| path | Gbit/s | ratio to no tunnel |")
w("|---|---|---|")
base = next((r["gbps"]["median"] for r in tun["rows"] if "gbps" in r), None)
for r in tun["rows"]:
    if "gbps" in r:
        ratio = f"{r['gbps']['median'] / base:.2f}" if base else "-"
        w(f"| {r['name']} | {mmm(r['gbps'], '{:.2f}')} | {ratio} |")
    else:
        w(f"| {r['name']} | pending ({r['pending']}) | pending |")
w("")
print("\n".join(out))
