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

# Every tier against Debian's containerd 1.6, then the containerd-dependent tiers again against
# containerd 2.x (ECI_CONTAINERD selects the build; the nerdctl tier always uses 2.x).
CONTAINERD_TIERS := --test shim_ctr --test shim_lifecycle --test shim_cri --test shim_registry \
	--test shim_pod_features --test eci_e2e
# Every tier runs even when an earlier one failed; the target fails if any did. The log goes to
# build/test.log too; the run ends with the tests that skipped (only hardware the machine lacks may
# skip; a missing prerequisite fails under CI=true) and their count, then the VM-tier tests that
# failed and then passed on a rerun (scripts/vm-tier) and their count.
test: SHELL := /bin/bash
test: build kernel rootfs
	@mkdir -p $(BUILD_DIR)
	@set -o pipefail; ( status=0; \
	  ECI_CONTAINERD=1.6 $(CARGO) test --workspace --locked --no-fail-fast || status=1; \
	  ECI_CONTAINERD=2 $(CARGO) test -p eci-tests --locked --no-fail-fast $(CONTAINERD_TIERS) || status=1; \
	  $(MAKE) --no-print-directory test-vm || status=1; \
	  $(MAKE) --no-print-directory test-vfio || status=1; \
	  exit $$status ) 2>&1 | tee $(BUILD_DIR)/test.log; \
	status=$$?; grep -F 'SKIP (' $(BUILD_DIR)/test.log || true; \
	echo "skipped: $$(grep -cF 'SKIP (' $(BUILD_DIR)/test.log)"; \
	grep -F 'vm-tier: FLAKY' $(BUILD_DIR)/test.log || true; \
	echo "flaky (VM tiers): $$(grep -cF 'vm-tier: FLAKY' $(BUILD_DIR)/test.log)"; exit $$status

# The VM tiers, where a Linux guest boots: directly on a VMX/SVM host, else inside the test host
# (scripts/testhost), one boot per line. eci-vmm's own tests (test guests, KVM kind svm there),
# then eci-vmm booting the guest kernel, and pods in VMs through containerd 1.6 and ctr (vm_ctr;
# the shim_ctr and containerd_restart tiers in VM mode), through CRI with the CNI bridge
# (vm_cri_network: the pod IP, DNS, port-forward, ContainerStats), nerdctl on containerd 2.x
# (its createRuntime hook's network), eci serve's groups as VMs (part of eci_e2e) and the VM
# cells of the kill -9 matrix. The soak and the whole matrix with VM pods are `make soak-vm`.
# Linux guests boot one at a time there: two booting at once in the emulated host occasionally
# triple-fault (docs/testhost.md), and on two cores they are no faster.
VM_TIER_TIMEOUT ?= 2400
# The eci end-to-end tests that also run with VM pods (eci serve in VM mode): a group with init
# container, volumes, network, DNS, logs, exec and metrics; probes, hooks and sysctls with a
# liveness restart inside the group's VM; readiness; an update that keeps the VM and the IP.
ECI_E2E_VM_TESTS := group_with_init_container_and_volumes probes_hooks_and_sysctls \
	ready_follows_the_readiness_probe update_changes_the_image_and_keeps_the_pod_ip
# The cells of the kill -9 matrix that only VM pods have (tests/tests/soak.rs): a shim killed
# while it boots the VM, eci-vmm and virtiofsd killed at create and during an exec (vm_ctr kills
# each of a running pod). `make soak-vm` runs the whole matrix.
VM_KILL_CELLS := containerd-shim-eci-v2:at create,eci-vmm:at create,eci-vmm:during exec,virtiofsd:at create,virtiofsd:during exec
.PHONY: test-vm
test-vm: build kernel rootfs
	@status=0; \
	scripts/vm-tier --timeout $(VM_TIER_TIMEOUT) -p eci-vmm --tests || status=1; \
	ECI_TEST_HYPERVISOR=eci-vmm scripts/vm-tier --timeout $(VM_TIER_TIMEOUT) \
		-p eci-tests --test guest_vm --test vm_ctr --test shim_ctr --test containerd_restart \
		--test vm_cri_network --test nerdctl -- --include-ignored --test-threads=1 || status=1; \
	ECI_TEST_HYPERVISOR=eci-vmm ECI_KILL_ONLY="$(VM_KILL_CELLS)" scripts/vm-tier \
		--timeout $(VM_TIER_TIMEOUT) -p eci-tests --test eci_e2e --test soak -- --test-threads=1 \
		$(ECI_E2E_VM_TESTS) kill_matrix || status=1; \
	exit $$status

# The VFIO passthrough tier, inside `scripts/testhost --vfio-test-device` (qemu's edu device
# behind an emulated IOMMU): eci-vmm given the device directly (vm_vfio) and VM pods given it
# through ctr and containerd 1.6 (vm_vfio_ctr). The guest-side test program is static (musl).
.PHONY: test-vfio
test-vfio: build kernel rootfs
	$(CARGO) build --locked -p eci-vfio-edu --target x86_64-unknown-linux-musl
	ECI_CONTAINERD=1.6 scripts/vm-tier --timeout $(VM_TIER_TIMEOUT) --vfio-test-device --memory 4096 \
		-p eci-tests --test vm_vfio --test vm_vfio_ctr -- --ignored --test-threads=1

# The CRI conformance suite (critest) against containerd 2.x with eci as the default runtime,
# offline; fails below CRITEST_MIN_PASSED passing specs (see README, "critest").
CRITEST_MIN_PASSED ?= 92
.PHONY: critest
critest: build
	BIN_DIR=$(TARGET_DIR)/debug CRITEST_MIN_PASSED=$(CRITEST_MIN_PASSED) scripts/critest.sh

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

# eci-vmm against qemu -M microvm on the same KVM (inside the test host on PVM machines): time
# to `eci-agent: ready` and each VMM's own memory at ready, p50 of RUNS (10) boots, interleaved;
# ends with `ratio: X.XX` (ready time, eci-vmm over qemu). The static musl eci-vmm that ships.
.PHONY: bench-vm
bench-vm: deps kernel rootfs
	$(CARGO) build --release --locked -p eci-vmm --target x86_64-unknown-linux-musl
	ECI_VMM_BIN=$(TARGET_DIR)/x86_64-unknown-linux-musl/release/eci-vmm ECI_BUILD_DIR=$(BUILD_DIR) \
		scripts/bench-vm.sh

# Guest deaths during boot under eci-vmm and under qemu's microvm, booted side by side on the
# same KVM (the test host here): the control for the test host's guest stops (docs/testhost.md).
.PHONY: vmm-stops
vmm-stops: deps kernel rootfs
	$(CARGO) build --release --locked -p eci-vmm --target x86_64-unknown-linux-musl
	ECI_VMM_BIN=$(TARGET_DIR)/x86_64-unknown-linux-musl/release/eci-vmm ECI_BUILD_DIR=$(BUILD_DIR) \
		scripts/vmm-stops.sh

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

# The README's first command: deps, build, the guest images, then a private containerd runs
# `ctr run --rm --runtime io.containerd.eci.v2 busybox demo uname -r` in a VM (inside the test
# host where /dev/kvm cannot boot a Linux guest).
demo: build kernel rootfs
	BIN_DIR=$(TARGET_DIR)/debug scripts/demo.sh demo

# `ctr run --rm ... true` latency, eci (local mode) vs runc, release binaries, median of 30 each.
bench-ctr: deps
	$(CARGO) build --release --locked -p containerd-shim-eci-v2 -p eci-agent
	BIN_DIR=$(TARGET_DIR)/release RUNS=$${RUNS:-30} scripts/demo.sh bench

# `ctr run --rm ... true` p50 of RUNS (10) in VM mode, local mode and runc, and the host PSS of
# an idle VM pod (shim + eci-vmm + virtiofsd), `pod-pss-mib: X`; release binaries, the static
# musl eci-vmm; inside the test host where /dev/kvm cannot boot a Linux guest.
.PHONY: bench-vm-ctr
bench-vm-ctr: deps kernel rootfs
	$(CARGO) build --release --locked -p containerd-shim-eci-v2 -p eci-agent
	$(CARGO) build --release --locked -p eci-vmm --target x86_64-unknown-linux-musl
	BIN_DIR=$(TARGET_DIR)/release ECI_BUILD_DIR=$(BUILD_DIR) RUNS=$${RUNS:-10} \
		ECI_VMM_BIN=$(TARGET_DIR)/x86_64-unknown-linux-musl/release/eci-vmm scripts/demo.sh bench-vm

# Installs the runtime's binaries into $(DESTDIR)$(PREFIX)/bin (containerd finds the shim on PATH)
# and the guest kernel and initramfs into $(DESTDIR)$(PREFIX)/share/eci, where the shim looks
# for them by default.
install: deps kernel rootfs
	$(CARGO) build --release --locked --bins
	@for b in containerd-shim-eci-v2 eci-agent eci-vmm eci; do \
	  if [ -x $(TARGET_DIR)/release/$$b ]; then \
	    install -D -m 0755 $(TARGET_DIR)/release/$$b $(DESTDIR)$(PREFIX)/bin/$$b && echo "installed $(DESTDIR)$(PREFIX)/bin/$$b"; \
	  fi; \
	done
	@for f in vmlinux initramfs.cpio.zst; do \
	  install -D -m 0644 $(BUILD_DIR)/$$f $(DESTDIR)$(PREFIX)/share/eci/$$f && echo "installed $(DESTDIR)$(PREFIX)/share/eci/$$f"; \
	done

# Soak and kill -9 matrix (tests/tests/soak.rs): SOAK_CYCLES (1000) `ctr run --rm` cycles,
# SOAK_PARALLEL (4) at a time, then a census of what the runtime holds (cycle p50/p99,
# `leaks: N`), and kill -9 of shim, pod init, agent (eci-vmm, virtiofsd in VM mode) and
# containerd at create, while running and during an exec, as a table. `make test` runs the
# same with 40 cycles. `make soak-vm`: SOAK_VM_CYCLES (50) VM
# pods, SOAK_VM_PARALLEL (4) at a time, inside the test host where /dev/kvm cannot boot a Linux
# guest (four at a time there since the test host runs with kvm_amd.vgif=0; docs/testhost.md).
# A fresh test host after a failed one runs only the cycles left.
.PHONY: soak soak-vm
soak: build
	ECI_SOAK_CYCLES=$${SOAK_CYCLES:-1000} ECI_SOAK_PARALLEL=$${SOAK_PARALLEL:-4} \
		$(CARGO) test --locked -p eci-tests --test soak -- --nocapture --test-threads=1
soak-vm: build kernel rootfs
	ECI_TEST_HYPERVISOR=eci-vmm ECI_SOAK_CYCLES=$${SOAK_VM_CYCLES:-50} ECI_SOAK_PARALLEL=$${SOAK_VM_PARALLEL:-4} \
		scripts/vm-tier --timeout $(VM_TIER_TIMEOUT) -p eci-tests --test soak -- --nocapture --test-threads=1

# --- eci control plane ---
# Create-to-Running latency of a one-container group through `eci serve` vs the same pod straight
# through CRI, release binaries, p50 over BENCH_RUNS (20) runs; ends with `ratio: X.XX`.
.PHONY: bench-api
bench-api: deps
	CARGO="$(CARGO)" scripts/bench-api.sh
