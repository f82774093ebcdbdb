#!/usr/bin/env bash
# Installs everything a fresh Debian 12 machine of this kind lacks to build, run and test meshgw.
# Idempotent: every step checks first and does nothing when already satisfied.
set -euo pipefail

log() { printf '[deps] %s\n' "$*"; }
need_root() { [ "$(id -u)" -eq 0 ] || { echo "[deps] must run as root (apt, bpffs, netns)" >&2; exit 1; }; }
need_root

# Debian packages: iproute2/ethtool for the lab, etcd for the Cluster Mesh tests, tcpdump/iperf3/socat
# as real peers in tests, procps (ps) and util-linux (taskset) to pin the pps benchmark's threads,
# bpftool for inspecting pinned programs, protoc and its well-known types for the etcd client's gRPC code,
# dig (dnsutils) as an independent DNS client in tests.
APT_PKGS=(iproute2 ethtool procps util-linux nftables iputils-ping tcpdump socat curl netcat-openbsd iperf3 etcd-server etcd-client bpftool openssl python3 tmux protobuf-compiler libprotobuf-dev dnsutils
  # promtool (`promtool check metrics` in the metrics tests) ships in Debian's prometheus package.
  prometheus)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# etcd-server's package starts a system etcd on 2379; the tests start their own on other ports,
# but a stray default instance is noise, so stop it (harmless when there is no systemd).
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
  systemctl stop etcd || true
  systemctl disable etcd >/dev/null 2>&1 || true
fi

# Rust: stable builds user space; nightly + rust-src builds the eBPF crate (build-std=core).
command -v rustup >/dev/null || { echo "[deps] rustup is required (it ships on this kind of machine)" >&2; exit 1; }
if ! rustup toolchain list | grep -q '^nightly'; then
  log "installing nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then
  log "adding rust-src to nightly"
  rustup component add rust-src --toolchain nightly
fi
for c in rustfmt clippy; do
  rustup component list --installed | grep -q "^$c" || rustup component add "$c"
done

# bpf-linker must use an LLVM of the nightly's major version: link it against the nightly's own
# libLLVM (Debian 12 ships LLVM 19 only, which fails with an undefined LLVMParseIRInContext2).
S="$(rustc +nightly --print sysroot)/lib"
llvm_so="$(cd "$S" && ls libLLVM*.so* 2>/dev/null | head -n1 || true)"
[ -n "$llvm_so" ] || { echo "[deps] no libLLVM in $S: the nightly toolchain is incomplete" >&2; exit 1; }
llvm_lib="${llvm_so#lib}"; llvm_lib="${llvm_lib%%.so*}"
llvm_major="$(echo "$llvm_lib" | sed -n 's/^LLVM-\([0-9][0-9]*\).*/\1/p')"
stamp="$HOME/.cargo/bin/.bpf-linker-built-for"
if ! command -v bpf-linker >/dev/null 2>&1 || [ "$(cat "$stamp" 2>/dev/null)" != "$llvm_so" ] || ! bpf-linker --version >/dev/null 2>&1; then
  log "building bpf-linker against $llvm_so (LLVM $llvm_major)"
  RUSTFLAGS="-C link-arg=-L$S -C link-arg=-l$llvm_lib -C link-arg=-Wl,-rpath,$S" \
    cargo +stable install bpf-linker@0.13.0 --locked --force --no-default-features \
    --features "llvm-$llvm_major,no-llvm-linking"
  echo "$llvm_so" > "$stamp"
fi

# bpffs: the daemon mounts it too when missing; tests expect it.
if ! mountpoint -q /sys/fs/bpf; then
  mount -t bpf bpf /sys/fs/bpf
fi
log "ok"
