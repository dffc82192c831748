#!/usr/bin/env bash
# Builds the guest kernel (vmlinux with a PVH note, and bzImage) from Debian's linux-source-6.12
# package: allnoconfig for x86_64 plus the fragments in kernel-config/fragments, no modules.
#
# Usage: kernel-config/build.sh [OUTPUT_DIR]   (default: build/ at the repository root)
#
# The result is cached under $ECI_KERNEL_CACHE (default /var/cache/eci/kernel), keyed by a hash of
# the fragments, the source package version and RECIPE_VERSION, so repeated builds on one machine
# (also from fresh clones, as CI makes them) only copy files. The cache lives outside the clone on
# purpose. A lock serialises concurrent builds. Layout: src-<version>/ (unpacked source, read
# only), obj/ (the kbuild object tree), <key>/ (vmlinux, bzImage, config, done).
set -euo pipefail

# Bump when this script changes how the kernel is built.
RECIPE_VERSION=1
SOURCE_PACKAGE=linux-source-6.12
SOURCE_TARBALL=/usr/src/linux-source-6.12.tar.xz

script_dir=$(cd "$(dirname "$0")" && pwd)
repo_dir=$(dirname "$script_dir")
out_dir=${1:-$repo_dir/build}
cache_root=${ECI_KERNEL_CACHE:-/var/cache/eci/kernel}
fragments=("$script_dir"/fragments/*.config)
jobs=${JOBS:-$(nproc)}

log() { echo "kernel: $*" >&2; }
die() {
	echo "kernel: error: $*" >&2
	exit 1
}

[ -r "$SOURCE_TARBALL" ] || die "$SOURCE_TARBALL missing: install $SOURCE_PACKAGE (scripts/install-deps.sh)"
source_version=$(dpkg-query -W -f='${Version}' "$SOURCE_PACKAGE" 2>/dev/null) ||
	die "cannot read the version of $SOURCE_PACKAGE"

key=$({
	echo "recipe $RECIPE_VERSION"
	echo "source $SOURCE_PACKAGE $source_version"
	for f in "${fragments[@]}"; do
		echo "fragment $(basename "$f")"
		cat "$f"
	done
} | sha256sum | cut -c1-16)
entry=$cache_root/$key

install_outputs() {
	mkdir -p "$out_dir"
	cp -f "$entry/vmlinux" "$out_dir/vmlinux.tmp" && mv -f "$out_dir/vmlinux.tmp" "$out_dir/vmlinux"
	cp -f "$entry/bzImage" "$out_dir/bzImage.tmp" && mv -f "$out_dir/bzImage.tmp" "$out_dir/bzImage"
	cp -f "$entry/config" "$out_dir/kernel.config"
	log "vmlinux $(stat -c %s "$out_dir/vmlinux") bytes, bzImage $(stat -c %s "$out_dir/bzImage") bytes -> $out_dir"
}

if [ -f "$entry/done" ]; then
	log "cached build $key ($entry)"
	install_outputs
	exit 0
fi

mkdir -p "$cache_root"
exec 9>"$cache_root/.lock"
log "waiting for the cache lock" && flock 9
if [ -f "$entry/done" ]; then # built by a concurrent run while we waited
	log "cached build $key ($entry)"
	install_outputs
	exit 0
fi

started=$(date +%s)

# Unpack the source once per package version; the unpacked tree is only read (builds use O=).
src=$cache_root/src-$source_version
if [ ! -f "$src/.unpacked" ]; then
	log "unpacking $SOURCE_TARBALL"
	rm -rf "$src" "$src.tmp"
	mkdir -p "$src.tmp"
	tar -xJf "$SOURCE_TARBALL" -C "$src.tmp" --strip-components=1
	touch "$src.tmp/.unpacked"
	mv "$src.tmp" "$src"
fi

# One object tree serves every key: kbuild rebuilds only what a configuration change touches,
# so a changed fragment costs minutes rather than a cold build, and an interrupted build resumes.
obj=$cache_root/obj
[ -d "$obj" ] && log "reusing the object tree $obj (incremental)"
mkdir -p "$obj" "$entry.tmp"
export ARCH=x86_64

log "configuring: allnoconfig + $(for f in "${fragments[@]}"; do basename "$f" .config; done | tr '\n' ' ')"
(cd "$src" && scripts/kconfig/merge_config.sh -n -O "$obj" "${fragments[@]}") >"$entry.tmp/merge.log" 2>&1 ||
	{
		cat "$entry.tmp/merge.log" >&2
		die "merge_config.sh failed"
	}

# merge_config.sh only warns when Kconfig drops a requested value (unmet dependency, typo):
# fail instead, naming every option that did not end up as requested.
missing=0
while IFS= read -r line; do
	if [[ $line =~ ^(CONFIG_[A-Za-z0-9_]+)=(.*)$ ]]; then
		name=${BASH_REMATCH[1]} want=${BASH_REMATCH[2]}
		got=$(grep -E "^$name=" "$obj/.config" | cut -d= -f2- || true)
		if [ "$got" != "$want" ]; then
			echo "kernel: error: $name requested $want, got ${got:-unset}" >&2
			missing=1
		fi
	elif [[ $line =~ ^#\ (CONFIG_[A-Za-z0-9_]+)\ is\ not\ set$ ]]; then
		name=${BASH_REMATCH[1]}
		if grep -qE "^$name=" "$obj/.config"; then
			echo "kernel: error: $name requested unset, got $(grep -E "^$name=" "$obj/.config")" >&2
			missing=1
		fi
	fi
done < <(cat "${fragments[@]}")
[ "$missing" -eq 0 ] || die "the options above did not end up in the configuration (see $entry.tmp/merge.log)"

log "building vmlinux and bzImage with $jobs jobs (log of every compiled file follows)"
# Number the lines as they come (mawk would buffer them), so progress shows live.
make -C "$src" O="$obj" -j"$jobs" vmlinux bzImage 2>&1 |
	{
		n=0
		while IFS= read -r line; do
			n=$((n + 1))
			printf 'kernel [%5d] %s\n' "$n" "$line"
		done
	}
[ "${PIPESTATUS[0]}" -eq 0 ] || die "kernel build failed"

# A VMM boots the uncompressed vmlinux through its PVH entry point: make sure the note is there.
readelf -n "$obj/vmlinux" | grep -q "Xen" || die "vmlinux has no PVH (Xen ELF) note"

cp "$obj/vmlinux" "$entry.tmp/vmlinux"
cp "$obj/arch/x86/boot/bzImage" "$entry.tmp/bzImage"
cp "$obj/.config" "$entry.tmp/config"
rm -rf "$entry"
mv "$entry.tmp" "$entry"
touch "$entry/done"
log "built $key in $(($(date +%s) - started)) s"
install_outputs
