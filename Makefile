# meshgw: `make demo` and `make test` each work alone on a fresh machine (both run `deps` first).
# Most targets need root: apt, bpffs, network namespaces, XDP.

# CI runs without a login shell profile: cargo and rustup live in ~/.cargo/bin.
export PATH := $(HOME)/.cargo/bin:$(PATH)

SHELL := /bin/bash
CARGO ?= cargo
LAB_PREFIX ?= mgw
export LAB_PREFIX

.PHONY: all deps build demo test fmt-check clippy cargo-test lab-up lab-down lab-check clean bench bench-smoke

all: build

## deps: install Debian packages, the nightly rust-src, bpf-linker; mount bpffs (idempotent)
deps:
	bash scripts/deps.sh

## build: release build of the whole workspace (the XDP object is built by datapath-bpf's build.rs)
build: deps
	$(CARGO) build --release --workspace

## demo: lab + gateway + traffic from the legacy host through the portal VIP, then tear down
demo: build
	bash scripts/demo.sh

## test: formatting, lints, and every test (unit, kernel/XDP and lab end-to-end tests; needs root)
test: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@mkdir -p target
	set -o pipefail; $(CARGO) test --workspace --all-targets 2>&1 | tee target/test.log
	@# One closing line with the totals over every test binary (cargo's own last line is only the last binary's).
	@awk '/^test result:/ { p += $$4; f += $$6 } END { printf "all tests: %d passed, %d failed\n", p, f }' target/test.log
	$(MAKE) bench-smoke

## bench: every benchmark (XDP per-packet cost, control-plane scale, tunnel throughput); writes
## BENCHMARKS.md (about 10 minutes on 2 cores; needs root)
bench: deps
	bash scripts/bench.sh full

## bench-smoke: one iteration of every benchmark at tiny sizes, so the harnesses cannot rot
## (part of `make test`; reports only, asserts no timing)
bench-smoke: deps
	bash scripts/bench.sh smoke

## lab-up / lab-down / lab-check: the namespace lab alone (LAB_PREFIX=... to pick the prefix)
lab-up:
	bash scripts/lab.sh up

lab-down:
	bash scripts/lab.sh down

lab-check:
	bash scripts/lab.sh check

## clean: remove build outputs and a leftover demo lab
clean:
	-bash scripts/lab.sh down
	$(CARGO) clean
	rm -rf datapath-bpf/xdp/target
