#!/usr/bin/env bash
# The meshgw namespace lab: a legacy host, the gateway, an L2 switch and two mesh nodes (kernel VXLAN
# devices in external mode standing in for Cilium nodes in VTEP mode), each with one pod.
#
#   scripts/lab.sh up       build the lab (idempotent: completes a half-built lab, changes nothing
#                           in a complete one) and start the pod servers
#   scripts/lab.sh down     remove everything the lab made, even a half-built lab
#   scripts/lab.sh status   show what exists; exit 0 only when the lab is complete
#   scripts/lab.sh check    sanity pings/connections that need no gateway daemon
#
# Environment: LAB_PREFIX (default mgw) prefixes every namespace, so several labs can coexist.
# The addresses match config/demo.toml; keep the two in step.
#
#   <p>-legacy  eth0    10.100.0.2/24 fd00:100::2/64     (peer: <p>-gw legacy)
#   <p>-gw      legacy  10.100.0.1/24 fd00:100::1/64
#               mesh    172.18.0.1/24                    (peer: <p>-sw gw)
#   <p>-sw      br0     ports gw, node1, node2           (underlay MTU 1600: room for VXLAN)
#   <p>-nodeN   eth0    172.18.0.1N/24                   (peer: <p>-sw nodeN)
#               vxlan0  external, dstport 8472, MAC 02:aa:00:00:00:0N
#               pod     10.244.N.1/24 fd00:244:N::1/64   (peer: <p>-podN eth0)
#   <p>-podN    eth0    10.244.N.10/24 fd00:244:N::10/64, runs podserver.py --name pod-N
#
# The gateway daemon configures everything else in <p>-gw itself (VIPs, its VXLAN device, XDP).
set -euo pipefail

P="${LAB_PREFIX:-mgw}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
STATE_DIR="/run/meshgw-lab/$P"
PYTHON="${PYTHON:-python3}"

NS_LEGACY="$P-legacy"
NS_GW="$P-gw"
NS_SW="$P-sw"
NODES=(1 2)
ALL_NS=("$NS_LEGACY" "$NS_GW" "$NS_SW" "$P-node1" "$P-node2" "$P-pod1" "$P-pod2")

# The underlay (gw mesh, switch, node eth0) carries VXLAN: 50 bytes more than the 1500-byte
# frames of the legacy network and the pods. 1600 stays below veth's XDP limit (about 3.5 KB
# without multi-buffer programs).
UNDERLAY_MTU=1600
GW_MESH_IP=172.18.0.1
VTEP_MAC=02:6d:67:00:00:01
VNI=2

log() { printf '[lab %s] %s\n' "$P" "$*"; }
die() { printf '[lab %s] error: %s\n' "$P" "$*" >&2; exit 1; }

need_root() { [ "$(id -u)" -eq 0 ] || die "must run as root (network namespaces)"; }
need_tools() {
  local t
  for t in ip ethtool "$PYTHON"; do
    command -v "$t" >/dev/null 2>&1 || die "missing tool '$t' (run: make deps)"
  done
}

ns_exists() { [ -e "/run/netns/$1" ]; }
# Runs a command inside a namespace.
nsx() { local ns="$1"; shift; ip netns exec "$ns" "$@"; }
link_exists() { ip -n "$1" link show dev "$2" >/dev/null 2>&1; }
sysctl_set() { nsx "$1" sysctl -qw "$2=$3" >/dev/null; }

ensure_ns() {
  local ns="$1"
  if ! ns_exists "$ns"; then
    ip netns add "$ns"
  fi
  ip -n "$ns" link set lo up
}

# ensure_veth NS_A DEV_A NS_B DEV_B: a veth pair with one end in each namespace, created inside
# the namespaces so that nothing appears in the root namespace, not even for a moment.
ensure_veth() {
  local ns_a="$1" dev_a="$2" ns_b="$3" dev_b="$4"
  if link_exists "$ns_a" "$dev_a"; then
    link_exists "$ns_b" "$dev_b" || die "$ns_a/$dev_a exists but its peer $ns_b/$dev_b does not: run '$0 down' first"
    return 0
  fi
  # A stale end on the other side (from an interrupted run) would make the create fail.
  if link_exists "$ns_b" "$dev_b"; then ip -n "$ns_b" link del "$dev_b"; fi
  ip -n "$ns_a" link add "$dev_a" type veth peer name "$dev_b" netns "$ns_b"
}

# addr NS DEV CIDR [nodad]: idempotent address assignment.
addr() {
  local ns="$1" dev="$2" cidr="$3"; shift 3
  ip -n "$ns" addr replace "$cidr" dev "$dev" "$@"
}

# XDP_REDIRECT into a veth only delivers when the target's peer runs NAPI: GRO on the peer
# provides it (see ../shared/notes/ebpf-toolchain.md). Harmless on the other veths.
gro_on() { nsx "$1" ethtool -K "$2" gro on >/dev/null; }

# A veth hands locally sent TCP/UDP to its peer with a partial checksum (CHECKSUM_PARTIAL: only
# the pseudo-header sum is in the packet; the "hardware" would finish it). The kernel stack keeps
# track of that, but XDP_REDIRECT does not: a partial checksum would reach the far end as a bad
# one and be dropped. Real NICs finish checksums on the wire, so the hosts whose packets cross
# the gateway's XDP programs (the legacy host, the pods, the nodes' VXLAN devices) compute theirs
# in software, as a real sender's wire would show them. This also turns off TSO on them.
tx_csum_off() { nsx "$1" ethtool -K "$2" tx off >/dev/null; }

up_legacy() {
  local ns="$NS_LEGACY"
  ensure_veth "$ns" eth0 "$NS_GW" legacy
  addr "$ns" eth0 10.100.0.2/24
  addr "$ns" eth0 fd00:100::2/64 nodad
  ip -n "$ns" link set eth0 up
  gro_on "$ns" eth0
  tx_csum_off "$ns" eth0
  ip -n "$ns" route replace default via 10.100.0.1 dev eth0
  ip -n "$ns" -6 route replace default via fd00:100::1 dev eth0
  # The VIP pool is on-link: the host resolves VIPs by ARP / neighbour solicitation, and the
  # gateway must answer for them.
  ip -n "$ns" route replace 10.200.0.0/24 dev eth0
  ip -n "$ns" -6 route replace fd00:200::/120 dev eth0
}

up_gw() {
  local ns="$NS_GW"
  sysctl_set "$ns" net.ipv4.ip_forward 1
  sysctl_set "$ns" net.ipv6.conf.all.forwarding 1
  addr "$ns" legacy 10.100.0.1/24
  addr "$ns" legacy fd00:100::1/64 nodad
  ip -n "$ns" link set legacy up
  ensure_veth "$ns" mesh "$NS_SW" gw
  ip -n "$ns" link set mesh mtu "$UNDERLAY_MTU"
  addr "$ns" mesh "$GW_MESH_IP/24"
  ip -n "$ns" link set mesh up
  gro_on "$ns" legacy
  gro_on "$ns" mesh
}

up_switch() {
  local ns="$NS_SW" port
  if ! link_exists "$ns" br0; then
    ip -n "$ns" link add br0 type bridge
  fi
  ip -n "$ns" link set br0 mtu "$UNDERLAY_MTU" up
  for port in gw node1 node2; do
    link_exists "$ns" "$port" || continue
    ip -n "$ns" link set "$port" mtu "$UNDERLAY_MTU" master br0 up
    gro_on "$ns" "$port"
  done
}

up_node() {
  local n="$1" ns="$P-node$1" pod_ns="$P-pod$1" dev
  ensure_veth "$ns" eth0 "$NS_SW" "node$n"
  ip -n "$ns" link set eth0 mtu "$UNDERLAY_MTU"
  addr "$ns" eth0 "172.18.0.1$n/24"
  ip -n "$ns" link set eth0 up
  gro_on "$ns" eth0

  sysctl_set "$ns" net.ipv4.ip_forward 1
  sysctl_set "$ns" net.ipv6.conf.all.forwarding 1
  sysctl_set "$ns" net.ipv4.conf.all.rp_filter 0
  sysctl_set "$ns" net.ipv4.conf.default.rp_filter 0

  if ! link_exists "$ns" vxlan0; then
    ip -n "$ns" link add vxlan0 type vxlan external dstport 8472
  fi
  ip -n "$ns" link set vxlan0 address "02:aa:00:00:00:0$n" mtu 1500 up
  tx_csum_off "$ns" vxlan0

  ensure_veth "$ns" pod "$pod_ns" eth0
  addr "$ns" pod "10.244.$n.1/24"
  addr "$ns" pod "fd00:244:$n::1/64" nodad
  ip -n "$ns" link set pod up
  gro_on "$ns" pod
  for dev in eth0 vxlan0 pod; do
    sysctl_set "$ns" "net.ipv4.conf.$dev.rp_filter" 0
  done

  # Return path to the legacy network, exactly as Cilium's VTEP mode sends it: VXLAN towards the
  # gateway's mesh address with VNI 2 (world) and the gateway's VTEP MAC as inner destination.
  # The neighbour entries must exist before the routes' next hops are used; lo must be up, or
  # the kernel refuses the onlink IPv4 next hop ("Nexthop has invalid gateway").
  ip -n "$ns" neigh replace 169.254.0.1 lladdr "$VTEP_MAC" dev vxlan0 nud permanent
  ip -n "$ns" -6 neigh replace fe80::6d67:1 lladdr "$VTEP_MAC" dev vxlan0 nud permanent
  ip -n "$ns" route replace 10.100.0.0/24 via 169.254.0.1 dev vxlan0 onlink \
    encap ip id "$VNI" dst "$GW_MESH_IP"
  # IPv6 inner over an IPv4 outer: the `encap ip` lwtunnel is accepted on an IPv6 route as is.
  ip -n "$ns" -6 route replace fd00:100::/64 via fe80::6d67:1 dev vxlan0 onlink \
    encap ip id "$VNI" dst "$GW_MESH_IP"
}

up_pod() {
  local n="$1" ns="$P-pod$1"
  addr "$ns" eth0 "10.244.$n.10/24"
  addr "$ns" eth0 "fd00:244:$n::10/64" nodad
  ip -n "$ns" link set eth0 up
  gro_on "$ns" eth0
  tx_csum_off "$ns" eth0
  ip -n "$ns" route replace default via "10.244.$n.1" dev eth0
  ip -n "$ns" -6 route replace default via "fd00:244:$n::1" dev eth0
}

pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

start_podserver() {
  local n="$1" ns="$P-pod$1" pidfile="$STATE_DIR/pod-$1.pid" pid
  pid="$(cat "$pidfile" 2>/dev/null || true)"
  if pid_alive "$pid" && [ "$(ip netns identify "$pid" 2>/dev/null)" = "$ns" ]; then
    return 0
  fi
  # A server from an interrupted run that never wrote its pid file would hold the ports: the pod
  # namespace runs nothing else, so end whatever lives there.
  for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
  rm -f "$pidfile"
  # setsid: the server outlives this script and ignores the caller's terminal signals. It writes
  # its own pid file once its sockets are bound (setsid may fork, so $! is not its id).
  ip netns exec "$ns" setsid "$PYTHON" "$HERE/podserver.py" --name "pod-$n" \
    --log "$STATE_DIR/pod-$n.log" --pidfile "$pidfile" \
    </dev/null >>"$STATE_DIR/pod-$n.out" 2>&1 &
}

# Waits (bounded) until the pod server answers on TCP 8080 from inside its namespace.
wait_podserver() {
  local n="$1" ns="$P-pod$1" i
  for i in $(seq 1 100); do
    if nsx "$ns" "$PYTHON" - "10.244.$n.10" <<'EOF' >/dev/null 2>&1
import socket, sys
s = socket.create_connection((sys.argv[1], 8080), timeout=1)
s.sendall(b"ping\n")
assert s.recv(64).startswith(b"pod-")
EOF
    then return 0; fi
    if [ "$i" -gt 20 ] && ! pid_alive "$(cat "$STATE_DIR/pod-$n.pid" 2>/dev/null || true)"; then
      die "pod server pod-$n is not running; see $STATE_DIR/pod-$n.out"
    fi
    sleep 0.1
  done
  die "pod server pod-$n does not answer after 10 s; see $STATE_DIR/pod-$n.out"
}

# The gateway pins its maps and links on a bpffs mounted here, in the root mount namespace:
# `ip netns exec` remounts /sys, which detaches /sys/fs/bpf, so pins made under /sys/fs/bpf from
# inside a lab namespace would vanish with the process that made them. Shared by all labs.
LAB_BPFFS=/run/meshgw/bpffs

ensure_bpffs() {
  mkdir -p "$LAB_BPFFS"
  mountpoint -q "$LAB_BPFFS" || mount -t bpf bpf "$LAB_BPFFS"
}

cmd_up() {
  need_root; need_tools
  mkdir -p "$STATE_DIR"
  ensure_bpffs
  local ns n
  for ns in "${ALL_NS[@]}"; do ensure_ns "$ns"; done
  up_legacy
  up_gw
  for n in "${NODES[@]}"; do up_node "$n"; up_pod "$n"; done
  up_switch
  for n in "${NODES[@]}"; do start_podserver "$n"; done
  for n in "${NODES[@]}"; do wait_podserver "$n"; done
  log "up (namespaces $P-*, state in $STATE_DIR)"
}

cmd_down() {
  need_root
  local ns f pid
  # The processes the lab started, by their recorded ids.
  for f in "$STATE_DIR"/*.pid; do
    [ -e "$f" ] || continue
    pid="$(cat "$f" 2>/dev/null || true)"
    pid_alive "$pid" && kill "$pid" 2>/dev/null || true
  done
  # Anything else still living in the lab's namespaces (a gateway daemon, a tcpdump) would keep
  # the namespace alive after `ip netns del`: end those processes by id too.
  for ns in "${ALL_NS[@]}"; do
    ns_exists "$ns" || continue
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
  done
  for ns in "${ALL_NS[@]}"; do
    ns_exists "$ns" || continue
    for _ in $(seq 1 20); do
      [ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && break
      sleep 0.1
    done
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    # Deleting the namespace deletes its devices; a veth goes with its peer.
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$STATE_DIR"
  log "down"
}

cmd_status() {
  local ok=0 ns n pid
  for ns in "${ALL_NS[@]}"; do
    if ns_exists "$ns"; then
      printf '%-14s ' "$ns"
      ip -n "$ns" -br addr show | awk '$1 != "lo" {
        a = ""; for (i = 3; i <= NF; i++) if ($i !~ /^fe80:/) a = a " " $i
        printf "%s%s  ", $1, a }'
      echo
    else
      printf '%-14s missing\n' "$ns"; ok=1
    fi
  done
  for n in "${NODES[@]}"; do
    pid="$(cat "$STATE_DIR/pod-$n.pid" 2>/dev/null || true)"
    if pid_alive "$pid"; then echo "pod-$n server: pid $pid"; else echo "pod-$n server: not running"; ok=1; fi
  done
  if [ "$ok" -eq 0 ]; then log "complete"; else log "incomplete or absent"; fi
  return "$ok"
}

# check_step DESCRIPTION NS CMD...: runs one sanity check and reports it.
FAILED=0
check_step() {
  local what="$1"; shift
  if "$@" >/dev/null 2>&1; then
    printf '  ok    %s\n' "$what"
  else
    printf '  FAIL  %s\n' "$what"; FAILED=1
  fi
}
ping1() { nsx "$1" ping -c 1 -W 2 "$2"; }
pod_tcp() { nsx "$1" "$PYTHON" - "$2" "$3" <<'EOF'
import socket, sys
s = socket.create_connection((sys.argv[1], 8080), timeout=2)
s.sendall(b"GET / HTTP/1.0\r\n\r\n")
data = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
assert data.startswith(b"HTTP/1.0 200") and data.endswith(sys.argv[2].encode() + b"\n"), data
EOF
}
pod_udp() { nsx "$1" "$PYTHON" - "$2" "$3" <<'EOF'
import socket, sys
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.settimeout(2)
s.sendto(b"q", (sys.argv[1], 5353))
assert s.recv(64).strip() == sys.argv[2].encode()
EOF
}
has_route() { ip -n "$1" -d "$2" route show "$3" | grep -q "encap ip id $VNI .*dst $GW_MESH_IP"; }

cmd_check() {
  need_root
  cmd_status >/dev/null || die "lab is not complete: run '$0 up'"
  local n
  log "checks that need no gateway daemon:"
  check_step "legacy -> gw legacy 10.100.0.1"          ping1 "$NS_LEGACY" 10.100.0.1
  check_step "legacy -> gw legacy fd00:100::1"         ping1 "$NS_LEGACY" fd00:100::1
  check_step "node1 -> gw mesh $GW_MESH_IP"            ping1 "$P-node1" "$GW_MESH_IP"
  check_step "node1 -> node2 172.18.0.12"              ping1 "$P-node1" 172.18.0.12
  for n in "${NODES[@]}"; do
    check_step "node$n -> pod$n 10.244.$n.10"              ping1 "$P-node$n" "10.244.$n.10"
    check_step "node$n -> pod$n fd00:244:$n::10"           ping1 "$P-node$n" "fd00:244:$n::10"
    check_step "pod-$n HTTP on 10.244.$n.10:8080"          pod_tcp "$P-node$n" "10.244.$n.10" "pod-$n"
    check_step "pod-$n HTTP on [fd00:244:$n::10]:8080"     pod_tcp "$P-node$n" "fd00:244:$n::10" "pod-$n"
    check_step "pod-$n UDP on 10.244.$n.10:5353"           pod_udp "$P-node$n" "10.244.$n.10" "pod-$n"
    check_step "pod-$n UDP on [fd00:244:$n::10]:5353"      pod_udp "$P-node$n" "fd00:244:$n::10" "pod-$n"
    check_step "node$n return route 10.100.0.0/24 (VTEP)"  has_route "$P-node$n" -4 10.100.0.0/24
    check_step "node$n return route fd00:100::/64 (VTEP)"  has_route "$P-node$n" -6 fd00:100::/64
  done
  [ "$FAILED" -eq 0 ] || die "some checks failed"
  log "all checks passed"
}

usage() { echo "usage: LAB_PREFIX=<prefix> $0 up|down|status|check" >&2; exit 2; }

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  check) cmd_check ;;
  *) usage ;;
esac
