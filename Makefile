# meshgw: `make demo` and `make test` each work alone on a fresh machine (both run `deps` first).
# Most targets need root: apt, bpffs, network namespaces, XDP.

# CI runs without a login shell profile: cargo and rustup live in ~/.cargo/bin.
export PATH := $(HOME)/.cargo/bin:$(PATH)

SHELL := /bin/bash
CARGO ?= cargo
LAB_PREFIX ?= mgw
export LAB_PREFIX

.PHONY: all deps build demo test fmt-check clippy cargo-test lab-up lab-down lab-check clean \
	image-deps release-bin image image-check vm-test vm-smoke bench bench-smoke

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

## test: formatting, lints, every test (unit, kernel/XDP, lab end-to-end), then the appliance image
## and its VM suite (make vm-test); needs root
test: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@mkdir -p target
	set -o pipefail; $(CARGO) test --workspace --all-targets 2>&1 | tee target/test.log
	@# One closing line with the totals over every test binary (cargo's own last line is only the last binary's).
	@awk '/^test result:/ { p += $$4; f += $$6 } END { printf "all tests: %d passed, %d failed\n", p, f }' target/test.log
	$(MAKE) bench-smoke
	@# The appliance: image (rebuilt only when stale), OVA checks, and the VM suite under QEMU
	@# (about 5 min under TCG on 2 cores with a cached base tree; bounded by vm-tests/run.sh).
	$(MAKE) --no-print-directory vm-test

## image-deps: QEMU, OVMF, mmdebstrap, GRUB, mtools... for the appliance (not part of plain deps)
image-deps:
	bash appliance-image/deps.sh

release-bin: deps
	$(CARGO) build --release -p meshgw

# The appliance (appliance-image/build.sh): rebuilt only when the daemon or the recipe changed.
IMAGE_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
IMAGE_DIR := appliance-image/out
IMAGE_QCOW2 := $(IMAGE_DIR)/meshgw-$(IMAGE_VERSION).qcow2
IMAGE_INPUTS := target/release/meshgw config/default.toml config/README.md README.md \
	$(wildcard appliance-image/*.sh appliance-image/*.py) $(shell find appliance-image/overlay -type f 2>/dev/null)

$(IMAGE_QCOW2): $(IMAGE_INPUTS)
	bash appliance-image/build.sh

## image: meshgw-<version>.{qcow2,raw,ova} and SHA256SUMS in appliance-image/out/ (needs root)
image: image-deps release-bin
	$(MAKE) --no-print-directory $(IMAGE_QCOW2)

## image-check: the OVA checker's own tests, then the built OVA checked (XML, disk, NICs, digests)
image-check: image
	python3 appliance-image/test_ova.py
	python3 appliance-image/ova.py check $(IMAGE_DIR)/meshgw-$(IMAGE_VERSION).ova \
		--capacity $$(stat -c %s $(IMAGE_DIR)/meshgw-$(IMAGE_VERSION).raw)
	cd $(IMAGE_DIR) && sha256sum -c SHA256SUMS

## vm-test: the appliance under QEMU with taps, a legacy host, a mesh node + pod, a real etcd:
## BIOS boot, traffic through the portal VIP, console, power-down, UEFI boot, same VIP; a boot with
## no seed (the console's configuration notice); a boot from an OpenStack config drive
vm-test: image-check
	bash vm-tests/run.sh

## vm-smoke: the first boot of vm-test only
vm-smoke: image-check
	VMTEST_SMOKE=1 bash vm-tests/run.sh

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
	rm -rf datapath-bpf/xdp/target appliance-image/out vm-tests/out
