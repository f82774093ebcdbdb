#!/usr/bin/env bash
# Measures the capabilities the daemon needs (what meshgw.service's CapabilityBoundingSet is
# based on): the namespace lab, then the release daemon under a reduced bounding set for each
# candidate set, reporting whether it became ready, forwarded HTTP through the VIP, and what it
# logged as denied. Needs root and the lab's dependencies (make deps).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
P="${CAP_PREFIX:-capt}"
BIN="$ROOT/target/release/meshgw"
CFG="/run/meshgw/$P.toml"
[ -x "$BIN" ] || { echo "no $BIN (cargo build --release -p meshgw)" >&2; exit 1; }
sed -e "s/^name = \"demo\"/name = \"$P\"/" -e "s|/run/meshgw/demo|/run/meshgw/$P|" \
  -e "s|/run/meshgw/bpffs/demo|/run/meshgw/bpffs/$P|" "$ROOT/config/demo.toml" > "$CFG"
trap 'LAB_PREFIX=$P bash "$ROOT/scripts/lab.sh" down >/dev/null; rm -rf "/run/meshgw/$P" "/run/meshgw/$P.log" "$CFG"' EXIT
LAB_PREFIX=$P bash "$ROOT/scripts/lab.sh" up >/dev/null
try() {
  local caps="$1" pid r=no http dns
  ip netns exec "$P-gw" setpriv --bounding-set "-all,$caps" --inh-caps -all "$BIN" run --config "$CFG" \
    >"/run/meshgw/$P.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 40); do
    [ -e "/run/meshgw/$P/ready" ] && { r=yes; break; }
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  sleep 1
  http=$(ip netns exec "$P-legacy" curl -s --max-time 2 http://10.200.0.10/ || true)
  printf '%-62s ready=%-3s http=%-6s denied: %s\n' "$caps" "$r" "${http:-none}" \
    "$(grep -oiE '(cannot listen[^:]*|announcement failed|BPF_PROG_LOAD[^.]*)' "/run/meshgw/$P.log" | sort -u | tr '\n' ';')"
  kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true
  ip netns exec "$P-gw" "$BIN" down --config "$CFG" >/dev/null 2>&1 || true
}
try +bpf,+net_admin,+sys_resource
try +bpf,+net_admin,+sys_resource,+perfmon
try +bpf,+net_admin,+perfmon,+net_raw
try +bpf,+net_admin,+perfmon,+net_raw,+net_bind_service
