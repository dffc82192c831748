#!/usr/bin/env bash
# Builds the guest initramfs images:
#   OUTPUT_DIR/initramfs.cpio.zst           production: the static agent as /init, nothing else
#   OUTPUT_DIR/initramfs-selftest.cpio.zst  the same plus a second segment holding a busybox
#                                           rootfs at /selftest/rootfs, for `eci.selftest=1`
#
# Usage: rootfs/build.sh [OUTPUT_DIR]   (default: build/ at the repository root)
#
# The kernel unpacks concatenated compressed cpio segments in order, so the self-test image is the
# production image with the test segment appended: the production one stays small.
set -euo pipefail

TARGET=x86_64-unknown-linux-musl
BUDGET_BYTES=$((4 * 1024 * 1024))
BUSYBOX=/bin/busybox

script_dir=$(cd "$(dirname "$0")" && pwd)
repo_dir=$(dirname "$script_dir")
out_dir=${1:-$repo_dir/build}
cargo=${CARGO:-cargo}
# The static release build has its own target dir outside the clone, like the kernel cache: CI
# runs from fresh clones and would otherwise rebuild every dependency in release mode each time.
# Clones share it, so a lock is held from the build until the binary is copied out: a concurrent
# build from another clone must not swap in its own binary in between.
target_dir=${ECI_ROOTFS_TARGET_DIR:-/var/cache/eci/rootfs-target}
if ! mkdir -p "$target_dir" 2>/dev/null || [ ! -w "$target_dir" ]; then
	target_dir=${CARGO_TARGET_DIR:-$repo_dir/target}
fi

log() { echo "rootfs: $*" >&2; }
die() {
	echo "rootfs: error: $*" >&2
	exit 1
}

# A static executable has no program interpreter (PT_INTERP).
is_static() { ! readelf -lW "$1" | grep -q "INTERP"; }

for tool in cpio zstd readelf strip flock; do
	command -v "$tool" >/dev/null || die "$tool missing (scripts/install-deps.sh)"
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

log "building eci-agent for $TARGET (release, static)"
exec {lock_fd}>"$target_dir/.eci-rootfs.lock"
flock "$lock_fd"
# Cargo decides a workspace crate is fresh by comparing its sources' mtimes with the time of its
# last build, and every clone's crates share one fingerprint here: a clone whose edits predate
# another clone's build would get that clone's agent. So the agent's sources are hashed, and
# unless the binary is still the one this script built from the same sources, they are touched
# first (only the workspace crates rebuild then).
agent_bin=$target_dir/$TARGET/release/eci-agent
built_from=$target_dir/.eci-rootfs-built-from
sources=$(cd "$repo_dir" && find guest-agent protocol Cargo.lock -name target -prune -o -type f -print0 |
	LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
if [ "$(cat "$built_from" 2>/dev/null)" != "$sources $(stat -c %y "$agent_bin" 2>/dev/null)" ]; then
	find "$repo_dir"/{guest-agent,protocol} -name target -prune -o -type f -print0 | xargs -0 touch
fi
(cd "$repo_dir" && CARGO_TARGET_DIR=$target_dir "$cargo" build --locked --release -p eci-agent --target "$TARGET")
echo "$sources $(stat -c %y "$agent_bin")" >"$built_from"
agent=$work/eci-agent
cp "$target_dir/$TARGET/release/eci-agent" "$agent" || die "eci-agent not built in $target_dir"
flock -u "$lock_fd"
is_static "$agent" || die "$agent is not statically linked"

# pack DIR OUT: a newc cpio of DIR, every file owned by root, compressed with zstd.
pack() {
	(cd "$1" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0 --reproducible) |
		zstd -q -19 -T0 -o "$2" -f
}

# Production segment: /init and the mount points it uses. /dev/console lets the kernel give /init
# its stdio before devtmpfs is mounted; creating the node needs root, and the agent reopens the
# console itself when it is missing.
base=$work/base
mkdir -p "$base"/{dev,proc,sys,run,tmp}
install -m 0755 "$agent" "$base/init"
strip --strip-all "$base/init"
if [ "$(id -u)" -eq 0 ]; then
	mknod -m 0600 "$base/dev/console" c 5 1
else
	log "not root: no /dev/console node in the image (the agent reopens the console itself)"
fi
mkdir -p "$out_dir"
pack "$base" "$work/initramfs.cpio.zst"

size=$(stat -c %s "$work/initramfs.cpio.zst")
log "initramfs.cpio.zst: $size bytes (budget $BUDGET_BYTES)"
[ "$size" -le "$BUDGET_BYTES" ] || die "initramfs is $size bytes, over the budget of $BUDGET_BYTES"

# Self-test segment: a busybox rootfs for the container the self-test runs.
[ -x "$BUSYBOX" ] || die "$BUSYBOX missing: install busybox-static (scripts/install-deps.sh)"
is_static "$BUSYBOX" || die "$BUSYBOX is not static (busybox-static)"
test_root=$work/selftest/selftest/rootfs
mkdir -p "$test_root"/{bin,dev,proc,sys,tmp,etc,data}
install -m 0755 "$BUSYBOX" "$test_root/bin/busybox"
for applet in $("$BUSYBOX" --list); do
	[ "$applet" = busybox ] || ln -s busybox "$test_root/bin/$applet"
done
echo "root:x:0:0:root:/:/bin/sh" >"$test_root/etc/passwd"
echo "root:x:0:" >"$test_root/etc/group"
pack "$work/selftest" "$work/selftest.cpio.zst"
cat "$work/initramfs.cpio.zst" "$work/selftest.cpio.zst" >"$work/initramfs-selftest.cpio.zst"

for f in initramfs.cpio.zst initramfs-selftest.cpio.zst; do
	mv -f "$work/$f" "$out_dir/$f"
done
log "initramfs-selftest.cpio.zst: $(stat -c %s "$out_dir/initramfs-selftest.cpio.zst") bytes -> $out_dir"
