#!/usr/bin/env bash
# Tunnel throughput: iperf3 TCP between two gateway namespaces over a veth pair (no tunnel),
# through a kernel VXLAN device between the same two namespaces, and through meshgw's boringtun
# WireGuard tunnel (tunnel/examples/wg_pair.rs: the daemon's user-space device, no daemon).
#
#   scripts/bench_tunnel.sh RUNS SECONDS OUT.json
set -euo pipefail
RUNS="${1:-5}"; SECS="${2:-5}"; OUT="${3:-/dev/stdout}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WG_PAIR="$ROOT/target/release/examples/wg_pair"
[ -x "$WG_PAIR" ] || { echo "no $WG_PAIR (cargo build --release --examples)" >&2; exit 1; }
A=mgwbench-tA; B=mgwbench-tB
command -v iperf3 >/dev/null || { echo "iperf3 missing (make deps)" >&2; exit 1; }
WG_PID=
cleanup() {
  local ns pid
  if [ -n "$WG_PID" ]; then exec 9>&- 2>/dev/null || true; kill "$WG_PID" 2>/dev/null || true; wait "$WG_PID" 2>/dev/null || true; fi
  for ns in "$A" "$B"; do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
  done
}
trap cleanup EXIT
cleanup
ip netns add "$A"; ip netns add "$B"
ip -n "$A" link set lo up; ip -n "$B" link set lo up
ip -n "$A" link add eth0 type veth peer name eth0 netns "$B"
ip -n "$A" addr add 192.168.77.1/24 dev eth0; ip -n "$B" addr add 192.168.77.2/24 dev eth0
ip -n "$A" link set eth0 up; ip -n "$B" link set eth0 up
for ns in "$A" "$B"; do
  n=1; [ "$ns" = "$B" ] && n=2
  ip -n "$ns" link add vx0 type vxlan id 2 dstport 8472 local 192.168.77.$n \
    remote 192.168.77.$((3 - n))
  ip -n "$ns" addr add 192.168.78.$n/24 dev vx0
  ip -n "$ns" link set vx0 up
done
ip netns exec "$B" iperf3 -s -D -1 >/dev/null 2>&1 || true
# The boringtun pair: it runs until its standard input (fd 9 here) closes.
coproc WG { "$WG_PAIR" "$A" "$B" 192.168.77.1 192.168.77.2 2>&1; }
WG_PID=$WG_PID
exec 9>&"${WG[1]}"
read -r -t 20 line <&"${WG[0]}" || true
[ "$line" = ready ] || { echo "wg_pair did not start: $line" >&2; exit 1; }
sleep 0.3

# run_iperf DST: one iperf3 client run from A to DST; prints Gbit/s.
run_iperf() {
  # A fresh one-shot server for every run.
  ip netns exec "$B" iperf3 -s -1 -D >/dev/null 2>&1 || true
  local j
  for _ in $(seq 1 50); do
    if j="$(ip netns exec "$A" iperf3 -c "$1" -t "$SECS" -J 2>/dev/null)"; then
      python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9)' <<<"$j"
      return 0
    fi
    sleep 0.1
  done
  echo "iperf3 to $1 failed" >&2; return 1
}

declare -a plain vxlan wg
for i in $(seq 1 "$RUNS"); do
  plain+=("$(run_iperf 192.168.77.2)")
  vxlan+=("$(run_iperf 192.168.78.2)")
  wg+=("$(run_iperf 10.2.0.1)")
  echo "[tunnel] run $i: no tunnel ${plain[-1]} Gbit/s, VXLAN ${vxlan[-1]} Gbit/s, WireGuard ${wg[-1]} Gbit/s" >&2
done
python3 - "$OUT" "$RUNS" "$SECS" "${plain[*]}" "${vxlan[*]}" "${wg[*]}" <<'PY'
import json, statistics, sys
out, runs, secs, plain, vxlan, wg = sys.argv[1:]
def st(v):
    v = sorted(float(x) for x in v.split())
    return {"median": statistics.median(v), "min": v[0], "max": v[-1]}
rows = [
    {"name": "no tunnel (veth between the two gateway namespaces)", "gbps": st(plain)},
    {"name": "kernel VXLAN (VNI 2, UDP 8472) over the same veth", "gbps": st(vxlan)},
    {"name": "WireGuard, meshgw's boringtun device (user space, one core each side)", "gbps": st(wg)},
]
json.dump({"runs": int(runs), "seconds": int(secs), "rows": rows}, open(out, "w"), indent=2)
PY
