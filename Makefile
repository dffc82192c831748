# ECI sandbox runtime. `make demo` builds everything and runs a container in a pod end to end;
# `make test` runs every test tier. Both install what they need first (scripts/install-deps.sh).

CARGO ?= cargo
PREFIX ?= /usr/local
# Build output of the non-cargo artefacts (kernel, initramfs).
BUILD_DIR ?= $(CURDIR)/build

.PHONY: all deps build test demo install clean fmt lint bench-vmm kernel rootfs

all: build

deps:
	@scripts/install-deps.sh

# One build of the whole workspace (debug, all targets) that every test tier reuses.
build: deps
	$(CARGO) build --workspace --all-targets --locked

# The log goes to build/test.log too; the run ends with the tests that skipped (only hardware the
# machine lacks may skip; a missing prerequisite fails under CI=true) and their count.
test: SHELL := /bin/bash
test: build kernel rootfs
	@mkdir -p $(BUILD_DIR)
	@set -o pipefail; $(CARGO) test --workspace --locked --no-fail-fast 2>&1 | tee $(BUILD_DIR)/test.log; \
	status=$$?; grep -F 'SKIP (' $(BUILD_DIR)/test.log || true; \
	echo "skipped: $$(grep -cF 'SKIP (' $(BUILD_DIR)/test.log)"; exit $$status

# Guest kernel (build/vmlinux, build/bzImage), cached outside the clone by kernel-config/build.sh.
kernel: deps
	kernel-config/build.sh $(BUILD_DIR)

# Guest initramfs (build/initramfs.cpio.zst) and the qemu self-test one (build/initramfs-selftest.cpio.zst).
rootfs: deps
	rootfs/build.sh $(BUILD_DIR)

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

clean:
	$(CARGO) clean
	rm -rf $(BUILD_DIR)

# eci-vmm figures (first byte, vsock MB/s, blk IOPS, idle RSS) of the static musl build that
# ships; BENCH_RUNS=N to change the number of runs.
bench-vmm: deps
	$(CARGO) build --release --locked -p eci-vmm --target x86_64-unknown-linux-musl
	ECI_VMM_BIN=$(TARGET_DIR)/x86_64-unknown-linux-musl/release/eci-vmm \
		$(CARGO) bench --locked -p eci-vmm --bench vmm

# Agent create+start+exit(+remove) latency vs `runc run` of the same bundle, p50/p99 over
# BENCH_RUNS (100) runs, with the static musl agent that ships; ends with `ratio: X.XX`.
.PHONY: bench-agent
bench-agent: deps
	$(CARGO) build --release --locked -p eci-agent --target x86_64-unknown-linux-musl
	ECI_AGENT_BIN=$(TARGET_DIR)/x86_64-unknown-linux-musl/release/eci-agent ECI_AGENT_LOG=error \
		$(CARGO) test --locked -p eci-tests --test agent_bench -- --ignored --nocapture

# --- containerd shim (io.containerd.eci.v2) ---
.PHONY: bench-ctr
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),$(CURDIR)/target)

# The README's first command: deps, build, then a private containerd runs
# `ctr run --rm --runtime io.containerd.eci.v2 busybox demo echo hello` (local mode).
demo: build
	BIN_DIR=$(TARGET_DIR)/debug scripts/demo.sh demo

# `ctr run --rm ... true` latency, eci (local mode) vs runc, release binaries, median of 30 each.
bench-ctr: deps
	$(CARGO) build --release --locked -p containerd-shim-eci-v2 -p eci-agent
	BIN_DIR=$(TARGET_DIR)/release RUNS=$${RUNS:-30} scripts/demo.sh bench

# Installs the runtime's binaries into $(DESTDIR)$(PREFIX)/bin (containerd finds the shim on PATH).
install: deps
	$(CARGO) build --release --locked --bins
	@for b in containerd-shim-eci-v2 eci-agent eci-vmm eci; do \
	  if [ -x $(TARGET_DIR)/release/$$b ]; then \
	    install -D -m 0755 $(TARGET_DIR)/release/$$b $(DESTDIR)$(PREFIX)/bin/$$b && echo "installed $(DESTDIR)$(PREFIX)/bin/$$b"; \
	  fi; \
	done

# Soak and kill -9 matrix (tests/tests/soak.rs): SOAK_CYCLES (1000) `ctr run --rm` cycles,
# SOAK_PARALLEL (4) at a time, then a census of what the runtime holds (cycle p50/p99,
# `leaks: N`), and kill -9 of shim, pod init, agent (eci-vmm, virtiofsd in VM mode) and
# containerd at create, while running and during an exec, as a table. `make test` runs the
# same with 40 cycles. SOAK_MODE=vm (hypervisor = "eci-vmm") is for inside scripts/testhost.
.PHONY: soak
soak: build
	ECI_SOAK_CYCLES=$${SOAK_CYCLES:-1000} ECI_SOAK_PARALLEL=$${SOAK_PARALLEL:-4} \
	ECI_SOAK_MODE=$${SOAK_MODE:-local} \
		$(CARGO) test --locked -p eci-tests --test soak -- --nocapture --test-threads=1

# --- eci control plane ---
# Create-to-Running latency of a one-container group through `eci serve` vs the same pod straight
# through CRI, release binaries, p50 over BENCH_RUNS (20) runs; ends with `ratio: X.XX`.
.PHONY: bench-api
bench-api: deps
	CARGO="$(CARGO)" scripts/bench-api.sh
