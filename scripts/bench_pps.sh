#!/usr/bin/env bash
# Packets per second through the gateway namespace: small UDP packets from trafgen (netsniff-ng)
# on the legacy host to the VIP (10.200.0.10:53, 256 flows), through the gateway, in VXLAN to the
# two mesh nodes, where an nftables netdev-ingress drop of VXLAN at each node's eth0 is the sink
# (ARP still answered). Counted at the nodes' eth0 (packets that made it through), so both paths
# are measured the same way. On veth, the gateway's receive processing runs on the generator's
# CPU (the sender's softirq), so the figure is what one core sustains for generator + gateway +
# switch + node together: a floor for the gateway's own capacity, and the ratio a lower bound.
#
#   xdp     meshgw run in the lab (native XDP on veth): Maglev + DNAT + VXLAN in XDP, redirect
#   kernel  the same job without meshgw: nftables DNAT (jhash over the two pods) and a kernel
#           VXLAN device with the pod-CIDR routes (encap ip id 2), in a fresh lab
#
#   scripts/bench_pps.sh RUNS SECONDS OUT.json
set -euo pipefail
RUNS="${1:-5}"; SECS="${2:-5}"; OUT="${3:-/dev/stdout}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
BIN="$ROOT/target/release/meshgw"
export LAB_PREFIX=mgwpps
P=$LAB_PREFIX
WORK="/run/meshgw-bench-pps"
VIP=10.200.0.10
for t in trafgen nft; do
  command -v "$t" >/dev/null || { echo "bench_pps: $t missing (make deps)" >&2; exit 1; }
done
[ -x "$BIN" ] || { echo "bench_pps: no $BIN (cargo build --release)" >&2; exit 1; }

GW_PID=
cleanup() {
  [ -n "$GW_PID" ] && kill "$GW_PID" 2>/dev/null && wait "$GW_PID" 2>/dev/null || true
  GW_PID=
  if [ -e "/run/netns/$P-gw" ] && [ -f "$WORK/gw.toml" ]; then
    timeout 20 ip netns exec "$P-gw" "$BIN" down --config "$WORK/gw.toml" >/dev/null 2>&1 || true
  fi
  bash "$HERE/lab.sh" down >/dev/null 2>&1 || true
  rm -rf "/run/meshgw/bpffs/$P" "/run/meshgw/$P"
}
trap cleanup EXIT
mkdir -p "$WORK"

mac_of() { ip -n "$1" -j link show dev "$2" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["address"])'; }
hexmac() { echo "$1" | sed 's/^/0x/; s/:/, 0x/g'; }

# The sinks, and the trafgen packet: Ethernet to the gateway, IPv4 10.100.0.2 -> VIP, UDP from
# ports 1024..1279 (256 flows) to 53, 18 bytes of payload (a 60-byte frame).
prepare() {
  local n
  for n in 1 2; do
    ip netns exec "$P-node$n" nft -f - <<'NFT'
table netdev meshgw_sink {
  chain in {
    type filter hook ingress device "eth0" priority 0; policy accept;
    udp dport 8472 drop
  }
}
NFT
  done
  cat >"$WORK/udp.trafgen" <<CONF
{
  $(hexmac "$(mac_of "$P-gw" legacy)"), $(hexmac "$(mac_of "$P-legacy" eth0)"), 0x08, 0x00,
  0x45, 0x00, const16(46), const16(0), 0x40, 0x00, 64, 17, csumip(14, 33),
  10, 100, 0, 2, 10, 200, 0, 10,
  0x04, dinc(0, 255), const16(53), const16(26), csumudp(14, 34),
  0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
}
CONF
}

rx_total() {
  local n s=0 v
  for n in 1 2; do
    v=$(ip -n "$P-node$n" -j -s link show dev eth0 | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["stats64"]["rx"]["packets"])')
    s=$((s + v))
  done
  echo "$s"
}

# One run: trafgen for SECS seconds; prints delivered packets per second.
run_once() {
  local before after t0 t1
  before=$(rx_total); t0=$EPOCHREALTIME
  timeout -s INT "$SECS" ip netns exec "$P-legacy" trafgen --dev eth0 --conf "$WORK/udp.trafgen" \
    --cpus 1 -q >/dev/null 2>&1 || true
  sleep 0.2
  after=$(rx_total); t1=$EPOCHREALTIME
  python3 -c "print(round(($after - $before) / ($t1 - $t0)))"
}

declare -a xdp kernel

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
for i in $(seq 1 "$RUNS"); do
  xdp+=("$(run_once)")
  echo "[pps] xdp run $i: ${xdp[-1]} pps" >&2
done
fwd=$(ip netns exec "$P-gw" "$BIN" status --json --config "$WORK/gw.toml" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["counters"]["vip_forwarded"])')
[ "$fwd" -gt 0 ] || { echo "bench_pps: the XDP path forwarded nothing" >&2; exit 1; }
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
for i in $(seq 1 "$RUNS"); do
  kernel+=("$(run_once)")
  echo "[pps] kernel run $i: ${kernel[-1]} pps" >&2
done

python3 - "$OUT" "$RUNS" "$SECS" "${xdp[*]}" "${kernel[*]}" <<'PY'
import json, statistics, sys
out, runs, secs, xdp, kernel = sys.argv[1:]
def st(v):
    v = sorted(float(x) for x in v.split())
    return {"median": statistics.median(v), "min": v[0], "max": v[-1]}
x, k = st(xdp), st(kernel)
rows = [
    {"name": "meshgw XDP (Maglev, DNAT, VXLAN, redirect)", "pps": x},
    {"name": "kernel: nftables DNAT + VXLAN device", "pps": k},
]
ratio = x["median"] / k["median"] if k["median"] else None
json.dump({"runs": int(runs), "seconds": int(secs), "rows": rows, "ratio": ratio}, open(out, "w"), indent=2)
PY
