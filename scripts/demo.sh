#!/usr/bin/env bash
# The meshgw demo (`make demo`): builds the namespace lab, runs the gateway in it, and sends HTTP and
# UDP from the legacy host to a portal VIP; the answers come from pods behind the gateway.
#
# Environment:
#   LAB_PREFIX   namespace prefix (default mgw)
#   MESHGW_BIN   gateway binary (default target/release/meshgw)
#   DEMO_HOLD=1  keep the lab and the gateway running until Ctrl-C, to explore by hand
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

export LAB_PREFIX="${LAB_PREFIX:-mgw}"
P="$LAB_PREFIX"
BIN="${MESHGW_BIN:-$ROOT/target/release/meshgw}"
CONFIG="$ROOT/config/demo.toml"
LAB="$ROOT/scripts/lab.sh"
# Must match [gateway] state_dir and bpf_pin_dir in config/demo.toml.
GW_STATE_DIR=/run/meshgw/demo
GW_PIN_DIR=/run/meshgw/bpffs/demo
READY_TIMEOUT=30
LOG_DIR="/run/meshgw-lab/$P"
GW_LOG="$LOG_DIR/meshgw.log"

VIP4=10.200.0.10
VIP6=fd00:200::10

if [ -t 1 ]; then B=$'\e[1m'; G=$'\e[32m'; R=$'\e[31m'; N=$'\e[0m'; else B=; G=; R=; N=; fi
step() { printf '\n%s==> %s%s\n' "$B" "$*" "$N"; }
info() { printf '    %s\n' "$*"; }
fail() { printf '%s    FAILED: %s%s\n' "$R" "$*" "$N"; FAILURES=$((FAILURES + 1)); }
die() { printf '%sdemo: %s%s\n' "$R" "$*" "$N" >&2; exit 1; }
FAILURES=0
GW_PID=

legacy() { ip netns exec "$P-legacy" "$@"; }

stop_gateway() {
  [ -n "$GW_PID" ] || return 0
  if kill -0 "$GW_PID" 2>/dev/null; then
    kill -TERM "$GW_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$GW_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$GW_PID" 2>/dev/null; then
      info "gateway did not stop within 10 s of SIGTERM; killing it"
      kill -KILL "$GW_PID" 2>/dev/null || true
    fi
  fi
  wait "$GW_PID" 2>/dev/null || true
  GW_PID=
}

CLEANED=0
cleanup() {
  local rc=$?
  [ "$CLEANED" -eq 0 ] || return 0
  CLEANED=1
  trap - INT TERM
  step "Cleaning up"
  stop_gateway
  # `meshgw down` removes what the gateway made (pinned programs, devices, routes) when the
  # binary has it; removing the lab below takes the devices anyway.
  if [ -x "$BIN" ] && "$BIN" down --help >/dev/null 2>&1 && [ -e "/run/netns/$P-gw" ]; then
    timeout 20 ip netns exec "$P-gw" "$BIN" down --config "$CONFIG" >>"$GW_LOG" 2>&1 \
      || info "meshgw down failed (see the log); removing the lab anyway"
  fi
  if [ -s "$GW_LOG" ]; then cp "$GW_LOG" "/tmp/meshgw-demo-$P.log" 2>/dev/null || true; info "gateway log kept in /tmp/meshgw-demo-$P.log"; fi
  bash "$LAB" down >/dev/null 2>&1 || true
  # The lab's devices are gone; so is anything the pinned programs were attached to.
  rm -rf "$GW_PIN_DIR" 2>/dev/null || true
  info "lab removed"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

[ "$(id -u)" -eq 0 ] || die "must run as root (network namespaces, XDP); try: sudo make demo"
[ -x "$BIN" ] || die "no gateway binary at $BIN; run: make build"
command -v curl >/dev/null || die "curl is missing; run: make deps"

step "Building the lab: legacy host, gateway, switch, two mesh nodes with one pod each"
bash "$LAB" up
info "legacy host   $P-legacy  10.100.0.2, fd00:100::2 (VIP pool 10.200.0.0/24, fd00:200::/120 on-link)"
info "gateway       $P-gw      legacy 10.100.0.1 | mesh 172.18.0.1 (VXLAN UDP 8472, VNI 2)"
info "node-1/pod-1  $P-node1   172.18.0.11 -> pod 10.244.1.10, fd00:244:1::10"
info "node-2/pod-2  $P-node2   172.18.0.12 -> pod 10.244.2.10, fd00:244:2::10"

step "Starting the gateway in $P-gw"
mkdir -p "$LOG_DIR"
rm -f "$GW_STATE_DIR/ready"
ip netns exec "$P-gw" "$BIN" run --config "$CONFIG" >"$GW_LOG" 2>&1 &
GW_PID=$!
info "pid $GW_PID, config $CONFIG, log $GW_LOG"
start=$EPOCHREALTIME
elapsed() { awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
until [ -e "$GW_STATE_DIR/ready" ]; do
  if ! kill -0 "$GW_PID" 2>/dev/null; then
    GW_PID=
    tail -n 30 "$GW_LOG" | sed 's/^/    | /'
    die "the gateway exited before it was ready (log above)"
  fi
  if awk -v e="$(elapsed)" -v t="$READY_TIMEOUT" 'BEGIN { exit !(e >= t) }'; then
    tail -n 30 "$GW_LOG" | sed 's/^/    | /'
    die "the gateway was not ready after ${READY_TIMEOUT} s ($GW_STATE_DIR/ready missing)"
  fi
  sleep 0.2
done
info "${G}ready${N} after $(elapsed) s"

# http_round LABEL URL: four requests, each on a new connection; prints which pod answered.
http_round() {
  local label="$1" url="$2" i out
  step "HTTP over $label: legacy host -> $url"
  for i in 1 2 3 4; do
    if out="$(legacy curl -s --max-time 5 "$url")" && [ -n "$out" ]; then
      info "request $i answered by ${G}${out}${N}"
    else
      fail "request $i: no answer"
    fi
  done
}

http_round IPv4 "http://$VIP4/"
http_round IPv6 "http://[$VIP6]/"

udp_query() {
  local vip="$1" out
  step "UDP: legacy host -> $vip port 53"
  if out="$(legacy python3 - "$vip" <<'EOF'
import socket, sys
vip = sys.argv[1]
s = socket.socket(socket.AF_INET6 if ":" in vip else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.sendto(b"hello", (vip, 53))
print(s.recv(512).decode().strip())
EOF
)"; then
    info "datagram answered by ${G}${out}${N}"
  else
    fail "no UDP answer from $vip:53"
  fi
}
udp_query "$VIP4"
udp_query "$VIP6"

step "Neighbour entries on the legacy host (the gateway answers ARP/ND for VIPs)"
legacy ip neigh show "$VIP4" | sed 's/^/    /'
legacy ip -6 neigh show "$VIP6" | sed 's/^/    /'
info "gateway legacy MAC: $(ip -n "$P-gw" -br link show legacy | awk '{print $3}')"

if "$BIN" status --help >/dev/null 2>&1; then
  step "Gateway counters (meshgw status)"
  ip netns exec "$P-gw" "$BIN" status --config "$CONFIG" 2>&1 | sed 's/^/    /' || true
fi

if [ "${DEMO_HOLD:-0}" = "1" ]; then
  step "DEMO_HOLD=1: the lab stays up until Ctrl-C. Try:"
  info "ip netns exec $P-legacy curl http://$VIP4/"
  info "ip netns exec $P-legacy curl 'http://[$VIP6]/'"
  info "ip netns exec $P-gw bash     # the gateway's namespace (log: $GW_LOG)"
  info "LAB_PREFIX=$P scripts/lab.sh status"
  while kill -0 "$GW_PID" 2>/dev/null; do sleep 1; done
  fail "the gateway exited while holding"
fi

step "Stopping the gateway (SIGTERM)"
stop_gateway

if [ "$FAILURES" -eq 0 ]; then
  printf '\n%sDemo passed:%s the legacy host reached the pods through the portal VIP.\n' "$G" "$N"
else
  printf '\n%sDemo finished with %d failure(s)%s; the gateway log is kept (see below).\n' "$R" "$FAILURES" "$N"
  exit 1
fi
