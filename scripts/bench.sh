#!/usr/bin/env bash
# `make bench` / `make bench-smoke`: runs every benchmark and writes the report.
#
#   scripts/bench.sh full    BPF_PROG_TEST_RUN x 1,000,000, 5 runs; pps (live-frame generator)
#                            5 runs of 5 s per path; control plane at 1 / 1,000 /
#                            5,000 / 10,000 / 50,000 services; iperf3 5 runs of 5 s;
#                            writes BENCHMARKS.md at the top of the repository
#   scripts/bench.sh smoke   one run of each at tiny sizes, so the harnesses cannot rot; writes
#                            target/bench-smoke/BENCHMARKS.md; fails if any harness fails
#
# Timing is reported, never asserted. Needs root (XDP, namespaces, etcd).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/.." && pwd)"
MODE="${1:-full}"
cd "$ROOT"
export PATH="$HOME/.cargo/bin:$PATH"

case "$MODE" in
  full)
    OUT="$ROOT/target/bench"; REPORT="$ROOT/BENCHMARKS.md"
    XDP_ARGS=(--iterations 1000000 --runs 5)
    CP_ARGS=(--sizes 1,1000,5000,10000,50000 --runs 5 --changes 100 --keep-going)
    TUN_ARGS=(5 5)
    PPS_ARGS=(5 5) ;;
  smoke)
    OUT="$ROOT/target/bench-smoke"; REPORT="$OUT/BENCHMARKS.md"
    XDP_ARGS=(--iterations 1000 --runs 1)
    CP_ARGS=(--sizes 1,50 --runs 1 --changes 3)
    TUN_ARGS=(1 1)
    PPS_ARGS=(1 1) ;;
  *) echo "usage: $0 full|smoke" >&2; exit 2 ;;
esac
mkdir -p "$OUT"
[ "$(id -u)" -eq 0 ] || { echo "bench: needs root" >&2; exit 1; }

step() { printf '\n== %s\n' "$*" >&2; }
START=$(date +%s)

step "build (release)"
cargo build --release --workspace --bins --examples --benches 2>&1 | tail -1 >&2
XDP_BIN="$ROOT/target/release/examples/xdp_bench"
CP_BIN="$(cargo bench -p meshgw --bench controlplane --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "controlplane" and m.get("executable"):
        print(m["executable"])')"
[ -x "$CP_BIN" ] || { echo "bench: controlplane bench binary not found" >&2; exit 1; }

step "1. XDP per-packet cost (BPF_PROG_TEST_RUN)"
"$XDP_BIN" "${XDP_ARGS[@]}" --json "$OUT/xdp.json"

step "2. packets per second through the gateway (XDP vs nftables + kernel VXLAN)"
bash "$HERE/bench_pps.sh" "${PPS_ARGS[@]}" "$OUT/pps.json"

step "3. control-plane scale (etcd + daemon)"
"$CP_BIN" "${CP_ARGS[@]}" --json "$OUT/controlplane.json"

step "4. tunnel throughput (iperf3)"
bash "$HERE/bench_tunnel.sh" "${TUN_ARGS[@]}" "$OUT/tunnel.json"

END=$(date +%s)
step "report"
python3 "$HERE/bench_report.py" --dir "$OUT" --mode "$MODE" --seconds $((END - START)) \
  --xdp-args "${XDP_ARGS[*]}" --cp-args "${CP_ARGS[*]}" --tunnel-args "${TUN_ARGS[*]}" --pps-args "${PPS_ARGS[*]}" \
  > "$REPORT"
echo "bench: wrote $REPORT in $((END - START)) s" >&2
