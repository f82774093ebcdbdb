#!/usr/bin/env bash
# The appliance under QEMU, end to end (make vm-test):
#
#   <p>-legacy  eth0 10.100.0.2/24 ──┐                                   the VM (appliance qcow2)
#                                    └ <p>-sw: br-l ── tap <p>-tl ══ NIC 1 "legacy" 10.100.0.1/24
#   <p>-node1   eth0 172.18.0.11/24 ─┐           br-m ── tap <p>-tm ══ NIC 2 "mesh"   172.18.0.1/24
#     vxlan0 (VTEP return route),    └──────────/
#     etcd (Cluster Mesh API, mTLS)  pod ── <p>-pod1 eth0 10.244.1.10 (podserver.py, pod-1)
#
# A NoCloud seed carries the gateway's config ([[cluster]] pointing at the etcd, a [[portal]]
# for default/web), its client certificate, and a network config naming the NICs by MAC.
# Boot 1 (SeaBIOS): the legacy host resolves web.default.mesh.local through the VM's DNS, reaches
# pod-1 through the portal VIP; the serial console shows the dashboard with the unit active.
# Then an ACPI power-down and boot 2 (OVMF/UEFI) on the same disk: the same VIP, forwarding again.
# Boot 3: a fresh disk without any seed boots the shipped default config, and the console says
# how to configure the appliance. Boot 4: the same config from an OpenStack config drive, with
# the NICs named by order.
#
# KVM is used when it works (probed with a bounded boot), TCG otherwise; VMTEST_ACCEL=kvm|tcg
# forces one. VMTEST_SMOKE=1 runs boot 1 only. Anything that cannot run fails, never skips.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
P="${VMTEST_PREFIX:-mvt}"
W="${VMTEST_DIR:-$HERE/out/$P}"
IMAGE="${VMTEST_IMAGE:-$ROOT/appliance-image/out/meshgw.qcow2}"
SMOKE="${VMTEST_SMOKE:-0}"
OVMF_CODE=/usr/share/OVMF/OVMF_CODE_4M.fd
OVMF_VARS=/usr/share/OVMF/OVMF_VARS_4M.fd
MAC_LEGACY=52:54:00:6d:67:01
MAC_MESH=52:54:00:6d:67:02
VTEP_MAC=02:6d:67:00:00:01
NS_L="$P-legacy"; NS_SW="$P-sw"; NS_N="$P-node1"; NS_POD="$P-pod1"
ALL_NS=("$NS_L" "$NS_SW" "$NS_N" "$NS_POD")
T_START=$(date +%s)

log() { printf '[vm-test %s +%3ss] %s\n' "$P" "$(( $(date +%s) - T_START ))" "$*"; }
FAILS=0
ok() { log "ok    $*"; }
fail() { log "FAIL  $*"; FAILS=$((FAILS + 1)); }
die() { log "ERROR $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (namespaces, taps)"
for t in qemu-system-x86_64 qemu-img cloud-localds genisoimage etcd etcdctl openssl dig curl python3 ip; do
  command -v "$t" >/dev/null || die "missing $t (run: make image-deps)"
done
[ -s "$IMAGE" ] || die "no image at $IMAGE (run: make image)"
[ -e /dev/net/tun ] || die "no /dev/net/tun"

nsx() { local ns="$1"; shift; ip netns exec "$ns" "$@"; }

QEMU_PID=""; ETCD_PID=""; POD_PID=""
cleanup() {
  set +e
  [ -n "$QEMU_PID" ] && kill "$QEMU_PID" 2>/dev/null
  [ -n "$ETCD_PID" ] && kill "$ETCD_PID" 2>/dev/null
  [ -n "$POD_PID" ] && kill "$POD_PID" 2>/dev/null
  local ns pid
  for ns in "${ALL_NS[@]}"; do
    [ -e "/run/netns/$ns" ] || continue
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null; done
  done
  sleep 0.5
  for ns in "${ALL_NS[@]}"; do
    [ -e "/run/netns/$ns" ] || continue
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null; done
    ip netns del "$ns" 2>/dev/null
  done
}
trap cleanup EXIT
cleanup   # leftovers of an interrupted run
rm -rf "$W"; mkdir -p "$W"

# --- The host side: namespaces, bridges, taps, the node and its pod.
for ns in "${ALL_NS[@]}"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip -n "$NS_SW" link add br-l type bridge
ip -n "$NS_SW" link add br-m type bridge
ip -n "$NS_SW" link set br-l up
ip -n "$NS_SW" link set br-m mtu 1600 up
for t in tl tm; do ip -n "$NS_SW" tuntap add dev "$P-$t" mode tap; done
ip -n "$NS_SW" link set "$P-tl" master br-l up
ip -n "$NS_SW" link set "$P-tm" mtu 1600 master br-m up

ip -n "$NS_L" link add eth0 type veth peer name lg netns "$NS_SW"
ip -n "$NS_SW" link set lg master br-l up
ip -n "$NS_L" addr add 10.100.0.2/24 dev eth0
ip -n "$NS_L" link set eth0 up
ip -n "$NS_L" route add default via 10.100.0.1
ip -n "$NS_L" route add 10.200.0.0/24 dev eth0   # the VIP pool is on-link: the VM answers ARP
# Sources whose packets cross the VM's XDP programs compute their checksums in software (a veth
# would hand partial checksums over; see scripts/lab.sh).
nsx "$NS_L" ethtool -K eth0 tx off >/dev/null

ip -n "$NS_N" link add eth0 type veth peer name n1 netns "$NS_SW"
ip -n "$NS_SW" link set n1 mtu 1600 master br-m up
ip -n "$NS_N" link set eth0 mtu 1600 up
ip -n "$NS_N" addr add 172.18.0.11/24 dev eth0
nsx "$NS_N" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0
ip -n "$NS_N" link add vxlan0 type vxlan external dstport 8472
ip -n "$NS_N" link set vxlan0 address 02:aa:00:00:00:01 mtu 1500 up
nsx "$NS_N" ethtool -K vxlan0 tx off >/dev/null
ip -n "$NS_N" link add pod type veth peer name eth0 netns "$NS_POD"
ip -n "$NS_N" addr add 10.244.1.1/24 dev pod
ip -n "$NS_N" link set pod up
for d in eth0 vxlan0 pod; do nsx "$NS_N" sysctl -qw "net.ipv4.conf.$d.rp_filter=0"; done
# Cilium's VTEP return path: VXLAN to the gateway's mesh address, VNI 2, inner MAC = VTEP MAC.
ip -n "$NS_N" neigh replace 169.254.0.1 lladdr "$VTEP_MAC" dev vxlan0 nud permanent
ip -n "$NS_N" route replace 10.100.0.0/24 via 169.254.0.1 dev vxlan0 onlink encap ip id 2 dst 172.18.0.1
ip -n "$NS_POD" addr add 10.244.1.10/24 dev eth0
ip -n "$NS_POD" link set eth0 up
ip -n "$NS_POD" route add default via 10.244.1.1
nsx "$NS_POD" ethtool -K eth0 tx off >/dev/null
nsx "$NS_POD" python3 "$ROOT/scripts/podserver.py" --name pod-1 --log "$W/pod-1.log" \
  --pidfile "$W/pod-1.pid" </dev/null >"$W/pod-1.out" 2>&1 &
POD_PID=$!

# --- The Cluster Mesh API: etcd with mutual TLS, Cilium's certificate names, in the node.
C="$W/certs"; mkdir -p "$C"
openssl_quiet() { openssl "$@" >/dev/null 2>&1; }
openssl_quiet req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=clustermesh-ca -keyout "$C/ca.key" -out "$C/ca.crt"
leaf() {  # name CN extfile-lines
  local n="$1" cn="$2" ext="$3"
  openssl_quiet req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$cn" \
    -keyout "$C/$n.key" -out "$C/$n.csr"
  printf '%b\n' "$ext" > "$C/$n.ext"
  openssl_quiet x509 -req -in "$C/$n.csr" -CA "$C/ca.crt" -CAkey "$C/ca.key" -CAcreateserial \
    -days 2 -extfile "$C/$n.ext" -out "$C/$n.crt"
}
leaf server clustermesh-apiserver \
  "subjectAltName=DNS:clustermesh-apiserver.cilium.io,DNS:*.mesh.cilium.io,IP:172.18.0.11,IP:127.0.0.1\nextendedKeyUsage=serverAuth"
leaf remote remote "extendedKeyUsage=clientAuth"
[ -s "$C/remote.crt" ] && [ -s "$C/server.crt" ] || die "certificate generation failed"
EP=https://172.18.0.11:2379
nsx "$NS_N" etcd --name cm --data-dir "$W/etcd" --listen-client-urls "$EP" --advertise-client-urls "$EP" \
  --listen-peer-urls http://172.18.0.11:2380 --initial-advertise-peer-urls http://172.18.0.11:2380 \
  --initial-cluster cm=http://172.18.0.11:2380 --client-cert-auth --trusted-ca-file "$C/ca.crt" \
  --cert-file "$C/server.crt" --key-file "$C/server.key" >"$W/etcd.log" 2>&1 &
ETCD_PID=$!
ctl() { nsx "$NS_N" etcdctl --endpoints "$EP" --dial-timeout 2s --cacert "$C/ca.crt" --cert "$C/remote.crt" --key "$C/remote.key" "$@"; }
for i in $(seq 1 100); do ctl endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
ctl endpoint health >/dev/null 2>&1 || die "etcd did not start; see $W/etcd.log"
# Cilium's keys (the formats of gateway/tests/clustermesh_e2e.rs): one node, one global service.
ctl put cilium/cluster-config/cluster1 '{"id":1,"capabilities":{"syncedCanaries":true,"cached":false,"maxConnectedClusters":255}}' >/dev/null
ctl put cilium/state/nodes/v1/cluster1/node-1 '{"Name":"node-1","Cluster":"cluster1","IPAddresses":[{"Type":"InternalIP","IP":"172.18.0.11"},{"Type":"CiliumInternalIP","IP":"10.244.1.1"}],"IPv4AllocCIDR":{"IP":"10.244.1.0","Mask":"////AA=="},"IPv4SecondaryAllocCIDRs":null,"IPv4HealthIP":"","IPv4IngressIP":"","ClusterID":1,"Source":"custom-resource","EncryptionKey":0,"Labels":{},"Annotations":null,"WireguardPubKey":"","BootID":"b"}' >/dev/null
ctl put cilium/state/services/v1/cluster1/default/web '{"cluster":"cluster1","namespace":"default","name":"web","frontends":{"10.96.0.10":{"http":{"Protocol":"TCP","Port":80}}},"backends":{"10.244.1.10":{"http":{"Protocol":"TCP","Port":8080}}},"labels":{},"selector":{"app":"web"},"includeExternal":true,"shared":true,"clusterID":1}' >/dev/null
for prefix in nodes services ip identities; do
  ctl put "cilium/synced/cluster1/cilium/state/$prefix/v1" 2026-11-25T00:00:00Z >/dev/null
done
log "host side up: namespaces $P-*, etcd at $EP, pod-1 at 10.244.1.10"

# --- The NoCloud seed: gateway.toml + certificates (write_files), NICs named by MAC.
indent() { sed 's/^/      /' "$1"; }
cat > "$W/gateway.toml" <<TOML
[gateway]
name = "meshgw"
identity = 2
state_dir = "/var/lib/meshgw"

[interfaces]
legacy = "legacy"
mesh = "mesh"
xdp_mode = "auto"

[mesh]
vtep_mac = "$VTEP_MAC"

[vips]
pool = ["10.200.0.0/24"]
withdraw_grace_seconds = 5

[[cluster]]
name = "cluster1"
endpoints = ["$EP"]
trusted_ca_file = "/etc/meshgw/clustermesh/ca.crt"
cert_file = "/etc/meshgw/clustermesh/remote.crt"
key_file = "/etc/meshgw/clustermesh/remote.key"

[[portal]]
namespace = "default"
name = "web"

# The node's kernel VXLAN device needs its own inner MAC (Cilium nodes ignore it).
[[node]]
name = "node-1"
address = "172.18.0.11"
mac = "02:aa:00:00:00:01"
TOML
mk_user_data() {  # gateway.toml -> cloud-config user data
  cat <<UD
#cloud-config
write_files:
  - path: /etc/meshgw/gateway.toml
    permissions: '0644'
    content: |
$(indent "$1")
  - path: /etc/meshgw/clustermesh/ca.crt
    permissions: '0644'
    content: |
$(indent "$C/ca.crt")
  - path: /etc/meshgw/clustermesh/remote.crt
    permissions: '0644'
    content: |
$(indent "$C/remote.crt")
  - path: /etc/meshgw/clustermesh/remote.key
    permissions: '0600'
    content: |
$(indent "$C/remote.key")
UD
}
mk_user_data "$W/gateway.toml" > "$W/user-data"
printf 'instance-id: meshgw-vmtest-1\nlocal-hostname: meshgw-vmtest\n' > "$W/meta-data"
cat > "$W/network-config" <<NC
version: 2
ethernets:
  legacy:
    match:
      macaddress: "$MAC_LEGACY"
    set-name: legacy
    addresses: [10.100.0.1/24]
  mesh:
    match:
      macaddress: "$MAC_MESH"
    set-name: mesh
    mtu: 1600
    addresses: [172.18.0.1/24]
NC
cloud-localds --network-config="$W/network-config" "$W/seed.img" "$W/user-data" "$W/meta-data"
qemu-img create -q -f qcow2 -F qcow2 -b "$(readlink -f "$IMAGE")" "$W/disk.qcow2"

# --- QEMU.
start_vm() {  # accel firmware(bios|uefi) serial-log
  local accel="$1" fw="$2" serial="$3" fwargs=() cpu=()
  if [ "$fw" = uefi ]; then
    [ -f "$W/OVMF_VARS.fd" ] || cp "$OVMF_VARS" "$W/OVMF_VARS.fd"
    fwargs=(-drive "if=pflash,format=raw,readonly=on,file=$OVMF_CODE" -drive "if=pflash,format=raw,file=$W/OVMF_VARS.fd")
  fi
  rm -f "$W/qmp.sock"
  local seed=(-drive "file=${SEED:-$W/seed.img},if=virtio,format=raw,readonly=on")
  [ "${NO_SEED:-0}" = 1 ] && seed=()
  ip netns exec "$NS_SW" qemu-system-x86_64 -accel "$accel" -m 2048 -smp 2 -display none \
    -monitor none -qmp "unix:$W/qmp.sock,server=on,wait=off" "${fwargs[@]}" \
    -chardev "file,id=ser0,path=$serial" -serial chardev:ser0 \
    -drive "file=$W/disk.qcow2,if=virtio,cache=unsafe,discard=unmap" \
    "${seed[@]}" \
    -netdev "tap,id=n0,ifname=$P-tl,script=no,downscript=no" -device "virtio-net-pci,netdev=n0,mac=$MAC_LEGACY" \
    -netdev "tap,id=n1,ifname=$P-tm,script=no,downscript=no" -device "virtio-net-pci,netdev=n1,mac=$MAC_MESH" \
    </dev/null >>"$W/qemu.out" 2>&1 &
  QEMU_PID=$!
  VM_T0=$(date +%s.%N)
}
stop_vm() { [ -n "$QEMU_PID" ] && kill "$QEMU_PID" 2>/dev/null; wait "$QEMU_PID" 2>/dev/null || true; QEMU_PID=""; }
qmp() {
  python3 - "$W/qmp.sock" "$1" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])
f = s.makefile("rw")
f.readline()
for cmd in ("qmp_capabilities", sys.argv[2]):
    f.write(json.dumps({"execute": cmd}) + "\n"); f.flush()
    while "return" not in (r := json.loads(f.readline())) and "error" not in r:
        pass
    if "error" in r:
        sys.exit(f"qmp {cmd}: {r}")
PY
}
# Waits until FILE contains TEXT; fails after SECS or when QEMU exits.
wait_serial() {
  local file="$1" text="$2" secs="$3" t=0
  while [ "$t" -lt $((secs * 2)) ]; do
    grep -aq -- "$text" "$file" 2>/dev/null && return 0
    kill -0 "$QEMU_PID" 2>/dev/null || return 1
    sleep 0.5; t=$((t + 1))
  done
  return 1
}

# KVM only counts when it boots: /dev/kvm may exist and still not run a guest (nested/paravirtual
# hosts). A bounded boot of the image itself up to its dashboard decides.
ACCEL="${VMTEST_ACCEL:-}"
if [ -z "$ACCEL" ]; then
  ACCEL=tcg
  if [ -w /dev/kvm ]; then
    log "probing KVM (bounded boot, 40 s)"
    cp "$W/disk.qcow2" "$W/disk.pristine"
    start_vm kvm bios "$W/kvm-probe.log"
    if wait_serial "$W/kvm-probe.log" "== meshgw appliance" 40; then ACCEL=kvm; fi
    stop_vm
    mv "$W/disk.pristine" "$W/disk.qcow2"
    rm -f "$W/OVMF_VARS.fd"
  fi
fi
if [ "$ACCEL" = kvm ]; then BOOT_SECS=120; else BOOT_SECS=360; fi
log "accelerator: $ACCEL (boot timeout ${BOOT_SECS}s)"

resolve_vip() { nsx "$NS_L" dig @10.100.0.1 +short +tries=1 +time=1 web.default.mesh.local A 2>/dev/null | grep -E '^[0-9.]+$' | sort | head -n1; }
via_vip() { nsx "$NS_L" curl -s --max-time 2 "http://$1/" 2>/dev/null; }

# One boot: power-on until the legacy host reaches pod-1 through the VIP; sets VIP, FWD_SECS.
boot_and_forward() {
  local fw="$1" serial="$2" reply="" deadline
  VIP=""
  start_vm "$ACCEL" "$fw" "$serial"
  deadline=$(( $(date +%s) + BOOT_SECS ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    kill -0 "$QEMU_PID" 2>/dev/null || { fail "QEMU exited (see $W/qemu.out)"; return 1; }
    [ -n "$VIP" ] || VIP=$(resolve_vip || true)
    if [ -n "$VIP" ]; then
      reply=$(via_vip "$VIP" || true)
      if [ "$reply" = pod-1 ]; then
        FWD_SECS=$(python3 -c "import time; print(f'{time.time() - $VM_T0:.1f}')")
        return 0
      fi
    fi
    sleep 0.5
  done
  fail "[$fw] no forwarding through the portal VIP within ${BOOT_SECS}s (VIP '${VIP}', last reply '${reply}'); serial: $serial"
  return 1
}

check_console() {  # serial fw
  local serial="$1" fw="$2"
  if wait_serial "$serial" "meshgw-dashboard: service active, datapath forwarding" 30; then
    ok "[$fw] serial console shows the dashboard: meshgw.service active, datapath forwarding"
  else
    fail "[$fw] serial console never showed the dashboard with the unit active; tail: $(tail -c 600 "$serial" | tr -d '\033' | tr '\n' '|')"
  fi
  # The dashboard redraws every 2 s: wait for a full screen with the portal rather than grep once.
  if wait_serial "$serial" "default/web" 20; then
    ok "[$fw] the dashboard lists the imported portal default/web"
  else
    fail "[$fw] the dashboard does not show the portal default/web"
  fi
  # tty1 (the VM's screen) runs meshgw top: the serial screen reports what /dev/vcs1 holds.
  if wait_serial "$serial" "tty1 (the VM's screen): meshgw top running, portals: default/web" 30; then
    ok "[$fw] tty1 shows meshgw top with the portal default/web ($(grep -ao "tty1 (the VM's screen): meshgw top running, portals: [^|]*" "$serial" | tail -n1 | cut -c1-120))"
  else
    fail "[$fw] tty1 does not show meshgw top with default/web; serial says: $(grep -ao "tty1 (the VM's screen): [a-z ]*" "$serial" | sort | uniq -c | tr '\n' '|')"
  fi
  if grep -aq "runs the shipped default configuration" "$serial"; then
    fail "[$fw] the dashboard claims the shipped default config although cloud-init wrote one"
  else
    ok "[$fw] the dashboard shows the cloud-init config (no 'shipped default' notice)"
  fi
}

# --- Boot 1: SeaBIOS.
log "boot 1 (BIOS, first boot with cloud-init)"
if boot_and_forward bios "$W/serial-1.log"; then
  VIP1="$VIP"
  ok "[bios] legacy host -> http://$VIP1/ (portal VIP from DNS) answered pod-1; power-on to forwarding ${FWD_SECS}s ($ACCEL)"
  echo "boot1_bios_forwarding_seconds=$FWD_SECS accel=$ACCEL" >> "$W/measurements.txt"
  n=0; for i in $(seq 1 20); do [ "$(via_vip "$VIP1")" = pod-1 ] && n=$((n + 1)); done
  [ "$n" -eq 20 ] && ok "[bios] 20/20 further requests through $VIP1" || fail "[bios] only $n/20 requests through $VIP1"
  check_console "$W/serial-1.log" bios
else
  VIP1=""
fi

if [ "$SMOKE" != 1 ] && [ -n "$VIP1" ]; then
  # --- Reboot: ACPI power button, a clean shutdown, then boot 2 with UEFI on the same disk.
  log "power-down (ACPI) and boot 2 (UEFI)"
  qmp system_powerdown || fail "QMP system_powerdown"
  for i in $(seq 1 $((BOOT_SECS / 2))); do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 1; done
  if kill -0 "$QEMU_PID" 2>/dev/null; then fail "the VM did not power off within $((BOOT_SECS / 2))s"; fi
  stop_vm
  if boot_and_forward uefi "$W/serial-2.log"; then
    ok "[uefi] forwarding again after the reboot; power-on to forwarding ${FWD_SECS}s ($ACCEL)"
    echo "boot2_uefi_forwarding_seconds=$FWD_SECS accel=$ACCEL" >> "$W/measurements.txt"
    if [ "$VIP" = "$VIP1" ]; then ok "[uefi] same portal VIP after the reboot: $VIP"; else fail "VIP changed across the reboot: $VIP1 -> $VIP"; fi
    check_console "$W/serial-2.log" uefi
  fi
fi
stop_vm

if [ "$SMOKE" != 1 ]; then
  # --- Boot 3: a fresh disk and no seed at all: the shipped default config, and the console
  # tells the operator how to configure the appliance.
  log "boot 3 (BIOS, fresh disk, no cloud-init data)"
  qemu-img create -q -f qcow2 -F qcow2 -b "$(readlink -f "$IMAGE")" "$W/disk.qcow2"
  NO_SEED=1 start_vm "$ACCEL" bios "$W/serial-3.log"
  if wait_serial "$W/serial-3.log" "runs the shipped default configuration" "$BOOT_SECS"; then
    secs=$(python3 -c "import time; print(f'{time.time() - $VM_T0:.1f}')")
    echo "boot3_default_config_dashboard_seconds=$secs accel=$ACCEL" >> "$W/measurements.txt"
    ok "[default] the console says the shipped default config runs (${secs}s after power-on)"
    if grep -aq "To configure it, give the VM cloud-init user data" "$W/serial-3.log" \
      && grep -aq "/etc/meshgw/gateway.toml" "$W/serial-3.log"; then
      ok "[default] the console tells the operator how to configure it (cloud-init, /etc/meshgw/gateway.toml)"
    else
      fail "[default] the console lacks the configuration instructions"
    fi
  else
    fail "[default] no 'shipped default configuration' notice on the console within ${BOOT_SECS}s"
  fi
  stop_vm

  # --- Boot 4: the OpenStack config drive datasource (an iso9660 labelled config-2) on a fresh
  # disk; the NICs keep their order names (eth0 legacy, eth1 mesh), addressed by MAC through
  # network_data.json.
  log "boot 4 (BIOS, fresh disk, OpenStack config drive, NICs by order)"
  CD="$W/configdrive/openstack/latest"; mkdir -p "$CD"
  sed -e 's/^legacy = "legacy"/legacy = "eth0"/' -e 's/^mesh = "mesh"/mesh = "eth1"/' "$W/gateway.toml" > "$W/gateway-cd.toml"
  mk_user_data "$W/gateway-cd.toml" > "$CD/user_data"
  printf '{"uuid": "meshgw-vmtest-cd", "hostname": "meshgw-cd", "name": "meshgw-cd"}\n' > "$CD/meta_data.json"
  cat > "$CD/network_data.json" <<ND
{"links": [{"id": "l0", "type": "phy", "ethernet_mac_address": "$MAC_LEGACY", "mtu": 1500},
           {"id": "l1", "type": "phy", "ethernet_mac_address": "$MAC_MESH", "mtu": 1600}],
 "networks": [{"id": "n0", "type": "ipv4", "link": "l0", "ip_address": "10.100.0.1", "netmask": "255.255.255.0", "network_id": "legacy"},
              {"id": "n1", "type": "ipv4", "link": "l1", "ip_address": "172.18.0.1", "netmask": "255.255.255.0", "network_id": "mesh"}],
 "services": []}
ND
  genisoimage -quiet -o "$W/configdrive.iso" -V config-2 -r -J "$W/configdrive"
  qemu-img create -q -f qcow2 -F qcow2 -b "$(readlink -f "$IMAGE")" "$W/disk.qcow2"
  nsx "$NS_L" ip neigh flush dev eth0
  if SEED="$W/configdrive.iso" boot_and_forward bios "$W/serial-4.log"; then
    ok "[configdrive] legacy host -> http://$VIP/ answered pod-1; power-on to forwarding ${FWD_SECS}s ($ACCEL)"
    echo "boot4_configdrive_forwarding_seconds=$FWD_SECS accel=$ACCEL" >> "$W/measurements.txt"
    if wait_serial "$W/serial-4.log" "^ *legacy  *eth0" 30; then ok "[configdrive] the gateway runs on eth0/eth1 (NICs by order)"; else fail "[configdrive] the dashboard does not show legacy on eth0"; fi
  fi
  stop_vm
fi

log "measurements: $(tr '\n' ' ' < "$W/measurements.txt" 2>/dev/null)"
if [ "$FAILS" -ne 0 ]; then
  log "$FAILS check(s) FAILED (logs in $W)"
  exit 1
fi
log "all checks passed"
