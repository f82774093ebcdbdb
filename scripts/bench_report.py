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
w(f"{n:,} packets per run, {runs} runs per row; 60-byte UDP frames (IPv4). The kernel times each "
  "call; `net` subtracts the harness floor (the empty XDP program measured the same way). "
  "Mpps/core = 1000 / net ns.\n")
w("| path | ns/packet, per call | net ns/packet | Mpps/core (net) | ns/packet, one call with repeat |")
w("|---|---|---|---|---|")
for r in xdp:
    net = r["net_ns"]
    mpps = f"{1000 / net['median']:.2f}" if net["median"] > 0 else "-"
    if r.get("repeat_ns"):
        rep = mmm(r["repeat_ns"])
    elif r.get("events"):
        rep = "n/a (events read between calls)"
    else:
        rep = "n/a (frame rewritten)"
    w(f"| {r['name']} | {mmm(r['per_call_ns'])} | {mmm(net)} | {mpps} | {rep} |")
est = next((r for r in xdp if r["name"].startswith("VIP hit, established")), None)
if est:
    v = est["net_ns"]["median"]
    verdict = "met" if v < 100 else "**missed**"
    w(f"\nTarget: an established-flow VIP hit under 100 ns per packet: {v:.0f} ns, {verdict}.\n")
w("How it is measured: the kernel does not restore the frame between the repetitions of one "
  "`BPF_PROG_TEST_RUN` call (after a rewrite, repetition 2 sees repetition 1's output, which is "
  "no longer a VIP packet), so every path is timed as N calls of one packet each, and the frames "
  "the program leaves unchanged are also timed as one call with `repeat = N` (last column) — "
  "the two agree once the floor is subtracted. The established flow's tracking entry is created "
  "by one packet before timing; the first-packet row sends every packet from a new source "
  "address and port (with a fresh datapath every 131,072 flows, so the LRU tracking map never "
  "evicts). Every run checks the datapath's counters: each packet took the path the row names. "
  "Rows with flow events on send one ring buffer event per packet (new flow, sample at rate 1, "
  "or policy drop); the harness reads them off the ring between calls (outside the timed "
  "region) and checks there was exactly one per packet; the cost of events is the difference "
  "with the same row without them.\n")

# 2. pps
w("## 2. Packets per second through the gateway namespace (XDP vs kernel path)\n")
w(f"{pps['runs']} runs of {pps['seconds']} s each: trafgen (netsniff-ng) on the legacy host "
  "sends 60-byte UDP frames to the VIP (256 flows) as fast as it can; the packets delivered "
  "to the two mesh nodes' eth0 (VXLAN dropped there by nftables) are counted. Both paths run "
  "in the same lab topology, one after the other. On veth the gateway's receive work runs in "
  "the sender's softirq, on the generator's core: the figures are what one core sustains for "
  "generator, gateway, switch and node together, so they understate the gateway's own "
  "capacity and the ratio is a lower bound.\n")
w("| path | kpps | ratio |")
w("|---|---|---|")
kern = next(r["pps"]["median"] for r in pps["rows"] if r["name"].startswith("kernel"))
for r in pps["rows"]:
    k = {x: r["pps"][x] / 1000 for x in ("median", "min", "max")}
    w(f"| {r['name']} | {mmm(k, '{:.0f}')} | {r['pps']['median'] / kern:.2f} |")
w("")
w(f"Target: at least 3x the kernel path: {pps['ratio']:.2f}x, "
  + ("met" if pps["ratio"] >= 3 else "**missed** (see above: generator-bound on this machine)") + "\n")

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
