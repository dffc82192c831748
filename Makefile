# ECI sandbox runtime. `make demo` builds everything and runs a container in a pod end to end;
# `make test` runs every test tier. Both install what they need first (scripts/install-deps.sh).

CARGO ?= cargo
PREFIX ?= /usr/local
# Build output of the non-cargo artefacts (kernel, initramfs).
BUILD_DIR ?= $(CURDIR)/build

.PHONY: all deps build test demo install clean fmt lint kernel rootfs

all: build

deps:
	@scripts/install-deps.sh

# One build of the whole workspace (debug, all targets) that every test tier reuses.
build: deps
	$(CARGO) build --workspace --all-targets --locked

test: build kernel rootfs
	$(CARGO) test --workspace --locked

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
