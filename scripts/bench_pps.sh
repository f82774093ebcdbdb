#!/usr/bin/env bash
# Packets per second through the gateway namespace, XDP against the kernel path, in the lab
# topology, with the gateway's work on a core of its own.
#
#   generator  `pps gen` (datapath-bpf/examples/pps.rs) on the legacy host's eth0:
#              BPF_PROG_TEST_RUN with live frames of a tiny XDP program that gives each 60-byte
#              UDP frame to the VIP (10.200.0.10:53) the next of 256 source ports and returns
#              XDP_TX; one thread pinned to CPU 0, SCHED_FIFO (below the sink's NAPI thread,
#              which preempts it), so other work on the machine does not make the stream bursty.
#   gateway    its legacy veth receives in its own NAPI (XDP attached, or GRO for the kernel
#              path), made threaded and pinned to CPU 1: everything the gateway does with a
#              packet, up to handing it to the mesh veth, runs there, and only there.
#   sink       `pps sink-attach`: an XDP program on the switch port facing the gateway counts
#              (per CPU) and drops the VXLAN packets that are exactly what the node expects
#              (outer MAC and address of a node, VNI 2, the node's inner MAC, the backend's
#              address and port 5353); VXLAN that fails a check is counted as wrong and fails
#              the benchmark. Its NAPI is threaded too, on CPU 0 beside the generator, so CPU 1
#              holds the gateway alone.
#
#   xdp     meshgw run in the lab (native XDP on veth): Maglev + DNAT + VXLAN in XDP, redirect
#   kernel  the same job without meshgw: nftables DNAT (jhash over the two pods) and a kernel
#           VXLAN device with the pod-CIDR routes (encap ip id 2), in a fresh lab
#
# Per run: delivered packets per second (sink count / generator time), what the generator
# offered, the busy share of each CPU (from /proc/stat) and of the gateway's NAPI thread (near
# the RT throttling cap of 95% when the gateway's core is the limit), delivered per busy core of
# that thread, the CPUs the sink counted on, and frames refused for want of ring space.
#
#   scripts/bench_pps.sh RUNS SECONDS OUT.json
# Environment: PPS_GW_CPU (1), PPS_GEN_CPU (0), PPS_SINK_CPU (0) pick the cores.
set -euo pipefail
RUNS="${1:-5}"; SECS="${2:-5}"; OUT="${3:-/dev/stdout}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
BIN="$ROOT/target/release/meshgw"
PPS="$ROOT/target/release/examples/pps"
GW_CPU="${PPS_GW_CPU:-1}"; GEN_CPU="${PPS_GEN_CPU:-0}"; SINK_CPU="${PPS_SINK_CPU:-0}"
export LAB_PREFIX=mgwpps
P=$LAB_PREFIX
WORK="/run/meshgw-bench-pps"
PIN="/run/meshgw/bpffs/$P-sink"
VIP=10.200.0.10
for t in nft taskset chrt ps ethtool python3; do
  command -v "$t" >/dev/null || { echo "bench_pps: $t missing (make deps)" >&2; exit 1; }
done
for b in "$BIN" "$PPS"; do
  [ -x "$b" ] || { echo "bench_pps: no $b (cargo build --release --workspace --bins --examples)" >&2; exit 1; }
done
[ "$(nproc)" -ge 2 ] || { echo "bench_pps: needs 2 CPUs (generator and gateway apart)" >&2; exit 1; }

GW_PID=
cleanup() {
  [ -n "$GW_PID" ] && kill "$GW_PID" 2>/dev/null && wait "$GW_PID" 2>/dev/null || true
  GW_PID=
  if [ -e "/run/netns/$P-gw" ] && [ -f "$WORK/gw.toml" ]; then
    timeout 20 ip netns exec "$P-gw" "$BIN" down --config "$WORK/gw.toml" >/dev/null 2>&1 || true
  fi
  bash "$HERE/lab.sh" down >/dev/null 2>&1 || true
  rm -rf "/run/meshgw/bpffs/$P" "/run/meshgw/$P" "$PIN"
}
trap cleanup EXIT
mkdir -p "$WORK"

mac_of() { ip -n "$1" -j link show dev "$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["address"])'; }

# The kernel threads of DEV's NAPI instances in NS after making them threaded ("napi/DEV-ID";
# the name is not unique across namespaces, so the new ones are told apart by diffing).
napi_threads() {
  local ns="$1" dev="$2" before after
  before=$(ps -e -o pid=,comm= | awk -v p="napi/$dev-" 'index($2, p) == 1 {print $1}' | sort)
  ip netns exec "$ns" sh -c "echo 1 > /sys/class/net/$dev/threaded"
  after=$(ps -e -o pid=,comm= | awk -v p="napi/$dev-" 'index($2, p) == 1 {print $1}' | sort)
  comm -13 <(echo "$before") <(echo "$after") | grep .
}

# Puts DEV's receive in NS on a threaded NAPI pinned to CPU; prints the thread ids. The threads
# run SCHED_FIFO: the machine may be busy with other work (builds), and the figure must be what
# the core gives the gateway, not what the scheduler leaves it (the kernel's RT throttling still
# leaves others 5%). Both paths get the same.
pin_napi() {
  local ns="$1" dev="$2" cpu="$3" tids t
  tids=$(napi_threads "$ns" "$dev") || { echo "bench_pps: no NAPI thread for $ns/$dev" >&2; return 1; }
  for t in $tids; do
    taskset -pc "$cpu" "$t" >/dev/null
    chrt -f -p 50 "$t"
  done
  echo $tids
}

GW_TIDS=
# Sink, threaded NAPIs, and a warm-up (neighbours resolved, flows known) before measuring.
prepare() {
  local n nodes=()
  for n in 1 2; do
    nodes+=(--node "172.18.0.1$n,$(mac_of "$P-node$n" eth0),02:aa:00:00:00:0$n,10.244.$n.10,5353")
  done
  ip netns exec "$P-sw" "$PPS" sink-attach --dev gw --pin "$PIN" "${nodes[@]}" >/dev/null
  GW_TIDS=$(pin_napi "$P-gw" legacy "$GW_CPU")
  pin_napi "$P-sw" gw "$SINK_CPU" >/dev/null
  GMAC=$(mac_of "$P-gw" legacy)
  gen 0.5 >/dev/null
}

gen() {
  ip netns exec "$P-legacy" "$PPS" gen --dev eth0 --dmac "$GMAC" --src 10.100.0.2 --dst "$VIP" \
    --dport 53 --sport 1024 --flows 256 --seconds "$1" --cpu "$GEN_CPU" --batch "${PPS_BATCH:-256}" --fifo
}

sink() { "$PPS" sink-read --pin "$PIN"; }
# Frames refused for want of ring space: into the gateway (by the legacy host's eth0: the
# gateway is saturated, expected) and out of it (by mesh, towards the sink: the sink did not
# keep up, which would undercount), as "in out".
ring_drops() {
  local in out
  in=$(ip netns exec "$P-legacy" ethtool -S eth0 | awk '/xdp_xmit_errors/ {s += $2} END {print s + 0}')
  out=$(ip netns exec "$P-gw" ethtool -S mesh | awk '/xdp_xmit_errors/ {s += $2} END {print s + 0}')
  out=$((out + $(ip -n "$P-gw" -j -s link show dev mesh | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["stats64"]["tx"]["dropped"])')))
  echo "$in $out"
}
# Busy and total jiffies per CPU, and the NAPI threads' CPU time, as JSON.
cpu_snap() {
  python3 - "$@" <<'PY'
import json, sys
cpus = {}
for line in open("/proc/stat"):
    f = line.split()
    if f[0].startswith("cpu") and f[0] != "cpu":
        v = list(map(int, f[1:9]))
        cpus[f[0][3:]] = {"busy": sum(v) - v[3] - v[4], "total": sum(v), "softirq": v[6]}
threads = {}
for tid in sys.argv[1:]:
    st = open(f"/proc/{tid}/stat").read().rsplit(")", 1)[1].split()
    threads[tid] = {"time": int(st[11]) + int(st[12]), "cpu": int(st[36])}
print(json.dumps({"cpus": cpus, "threads": threads}))
PY
}

# One run: the generator for SECS seconds; prints the run's JSON.
run_once() {
  local s0 s1 c0 c1 g d0 d1
  s0=$(sink); c0=$(cpu_snap $GW_TIDS); d0=$(ring_drops)
  g=$(gen "$SECS")
  sleep 0.1
  s1=$(sink); c1=$(cpu_snap $GW_TIDS); d1=$(ring_drops)
  python3 - "$s0" "$s1" "$c0" "$c1" "$g" "$d0" "$d1" <<'PY'
import json, os, sys
s0, s1, c0, c1, g = (json.loads(x) for x in sys.argv[1:6])
d0, d1 = (list(map(int, x.split())) for x in sys.argv[6:8])
hz = os.sysconf("SC_CLK_TCK")
if s1["wrong"] != s0["wrong"]:
    sys.exit(f"bench_pps: {s1['wrong'] - s0['wrong']} VXLAN packets at the sink were not what a node expects")
d = s1["delivered"] - s0["delivered"]
per_cpu = [b - a for a, b in zip(s0["delivered_per_cpu"], s1["delivered_per_cpu"])]
busy = {}
for c, v in c1["cpus"].items():
    t = v["total"] - c0["cpus"][c]["total"]
    busy[c] = {"busy": round((v["busy"] - c0["cpus"][c]["busy"]) / t, 3) if t else 0,
               "softirq": round((v["softirq"] - c0["cpus"][c]["softirq"]) / t, 3) if t else 0}
napi = sum(v["time"] - c0["threads"][k]["time"] for k, v in c1["threads"].items()) / hz / g["seconds"]
print(json.dumps({
    "pps": d / g["seconds"], "offered_pps": g["pps"], "delivered": d,
    "pps_per_core": d / g["seconds"] / napi if napi > 0 else 0,
    "sink_cpus": [i for i, n in enumerate(per_cpu) if n],
    "cpu_busy": busy, "gw_napi_busy": round(napi, 3),
    "gw_napi_cpus": sorted({v["cpu"] for v in c1["threads"].values()}),
    "refused_in": d1[0] - d0[0], "refused_out": d1[1] - d0[1],
}))
PY
}

summary() {
  python3 - "$1" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
busy = ", ".join(f"CPU {c} {v['busy']:.0%}" for c, v in sorted(r["cpu_busy"].items()))
print(f"{r['pps']:.0f} pps delivered ({r['offered_pps']:.0f} offered); busy: {busy}; "
      f"gateway NAPI thread {r['gw_napi_busy']:.0%} on CPU {r['gw_napi_cpus']} "
      f"({r['pps_per_core']:.0f} pps per busy core); "
      f"sink on CPU {r['sink_cpus']}; refused in/out {r['refused_in']}/{r['refused_out']}")
PY
}

runs_json() {
  local path="$1" i r
  : >"$WORK/$path.jsonl"
  for i in $(seq 1 "$RUNS"); do
    r=$(run_once)
    echo "$r" >>"$WORK/$path.jsonl"
    echo "[pps] $path run $i: $(summary "$r")" >&2
  done
}

# --- XDP: the gateway daemon in the lab.
bash "$HERE/lab.sh" up >/dev/null
sed -e "s|^name = \"demo\"|name = \"$P\"|" -e "s|/run/meshgw/demo|/run/meshgw/$P|" \
  -e "s|/run/meshgw/bpffs/demo|/run/meshgw/bpffs/$P|" "$ROOT/config/demo.toml" >"$WORK/gw.toml"
rm -f "/run/meshgw/$P/ready"
ip netns exec "$P-gw" "$BIN" run --config "$WORK/gw.toml" >"$WORK/gw.log" 2>&1 &
GW_PID=$!
for _ in $(seq 1 150); do [ -e "/run/meshgw/$P/ready" ] && break; sleep 0.2; done
[ -e "/run/meshgw/$P/ready" ] || { tail -20 "$WORK/gw.log" >&2; echo "bench_pps: gateway not ready" >&2; exit 1; }
prepare
runs_json xdp
fwd=$(ip netns exec "$P-gw" "$BIN" status --json --config "$WORK/gw.toml" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["counters"]["vip_forwarded"])')
[ "$fwd" -gt 0 ] || { echo "bench_pps: the XDP path forwarded nothing" >&2; exit 1; }
# Every packet the sink counted must be one the XDP program forwarded (not one it passed to the
# kernel, which could reach the nodes through the daemon's VXLAN device).
got=$(sink | python3 -c 'import json,sys; print(json.load(sys.stdin)["delivered"])')
[ "$got" -le "$fwd" ] || { echo "bench_pps: the sink counted $got packets, XDP forwarded $fwd" >&2; exit 1; }
echo "[pps] xdp: the datapath forwarded $fwd packets, the sink counted $got" >&2
cleanup

# --- Kernel: the same lab, the same job done by nftables and the kernel's VXLAN device.
bash "$HERE/lab.sh" up >/dev/null
gw() { ip netns exec "$P-gw" "$@"; }
gw sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
gw ip link add meshgw-vx type vxlan external dstport 8472 local 172.18.0.1 dev mesh
gw ip link set meshgw-vx up
for n in 1 2; do
  gw ip neigh replace "10.244.$n.1" lladdr "02:aa:00:00:00:0$n" dev meshgw-vx nud permanent
  gw ip route replace "10.244.$n.0/24" via "10.244.$n.1" dev meshgw-vx onlink encap ip id 2 dst "172.18.0.1$n"
done
gw nft -f - <<NFT
table ip meshgw_bench {
  chain pre {
    type nat hook prerouting priority dstnat;
    ip daddr $VIP udp dport 53 dnat to jhash ip saddr . udp sport mod 2 map { 0 : 10.244.1.10, 1 : 10.244.2.10 }:5353
  }
}
NFT
prepare
runs_json kernel

python3 - "$OUT" "$RUNS" "$SECS" "$WORK/xdp.jsonl" "$WORK/kernel.jsonl" "$GEN_CPU" "$GW_CPU" "$SINK_CPU" <<'PY'
import json, statistics, sys
out, runs, secs, xp, kp, gen_cpu, gw_cpu, sink_cpu = sys.argv[1:]
def load(p):
    return [json.loads(l) for l in open(p) if l.strip()]
def st(v):
    v = sorted(v)
    return {"median": statistics.median(v), "min": v[0], "max": v[-1]}
def row(name, rs):
    return {
        "name": name,
        "pps": st([r["pps"] for r in rs]),
        "offered_pps": st([r["offered_pps"] for r in rs]),
        "pps_per_core": st([r["pps_per_core"] for r in rs]),
        "cpu_busy": {c: st([r["cpu_busy"][c]["busy"] for r in rs]) for c in rs[0]["cpu_busy"]},
        "gw_napi_busy": st([r["gw_napi_busy"] for r in rs]),
        "gw_napi_cpus": sorted({c for r in rs for c in r["gw_napi_cpus"]}),
        "sink_cpus": sorted({c for r in rs for c in r["sink_cpus"]}),
        "runs": rs,
    }
x = row("meshgw XDP (Maglev, DNAT, VXLAN, redirect)", load(xp))
k = row("kernel: nftables DNAT + VXLAN device", load(kp))
ratio = x["pps"]["median"] / k["pps"]["median"] if k["pps"]["median"] else None
core = k["pps_per_core"]["median"]
ratio_core = x["pps_per_core"]["median"] / core if core else None
json.dump({"runs": int(runs), "seconds": float(secs), "rows": [x, k], "ratio": ratio,
           "ratio_per_core": ratio_core,
           "cpus": {"generator": int(gen_cpu), "gateway": int(gw_cpu), "sink": int(sink_cpu)}},
          open(out, "w"), indent=2)
for r in (x, k):
    if r["pps"]["min"] <= 0:
        sys.exit(f"bench_pps: {r['name']}: a run delivered nothing")
PY
