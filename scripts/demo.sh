#!/usr/bin/env bash
# The ECI runtime end to end on this machine, in local mode (hypervisor = "none": the agent runs
# on the host; container isolation only, not a VM sandbox).
#
#   scripts/demo.sh [demo]   private containerd + offline busybox image, then
#                            `ctr run --rm --runtime io.containerd.eci.v2 IMAGE demo echo hello`
#   scripts/demo.sh bench    `ctr run --rm ... true` latency, eci vs runc, median of $RUNS each
#                            (interleaved); last line `ratio: X.XX` (eci over runc)
#
# Uses the binaries in $BIN_DIR (default: <cargo target dir>/debug). Everything lives in a temp
# dir; containerd is stopped and the temp dir removed on exit, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib.sh
. scripts/lib.sh

mode=${1:-demo}
runs=${RUNS:-30}
bin_dir=$(realpath "${BIN_DIR:-${CARGO_TARGET_DIR:-target}/debug}")
image=docker.io/library/busybox:latest
for b in containerd-shim-eci-v2 eci-agent; do
  [ -x "$bin_dir/$b" ] || { echo "demo: $bin_dir/$b missing: build first (make build)" >&2; exit 1; }
done
[ "$(id -u)" -eq 0 ] || { echo "demo: containerd needs root" >&2; exit 1; }

work=$(mktemp -d /tmp/eci-demo.XXXXXX)
sock=$work/c.sock
containerd_pid=
cleanup() {
  if [ -n "$containerd_pid" ]; then
    kill "$containerd_pid" 2>/dev/null || true
    wait "$containerd_pid" 2>/dev/null || true
  fi
  # Snapshot mounts containerd may leave under its root.
  { grep -o " $work[^ ]*" /proc/self/mountinfo || true; } | sort -r | while read -r m; do umount -l "$m" || true; done
  rm -rf "$work"
}
trap cleanup EXIT

ctr_() { ctr --address "$sock" --namespace demo "$@"; }

# An OCI image of Debian's static busybox, built offline with umoci.
build_image() {
  local layout=$work/layout bundle=$work/bundle
  umoci init --layout "$layout"
  umoci new --image "$layout:latest"
  umoci unpack --image "$layout:latest" "$bundle" >/dev/null
  busybox_rootfs "$bundle/rootfs"
  umoci repack --image "$layout:latest" "$bundle"
  umoci config --image "$layout:latest" --config.cmd sh --config.env PATH=/usr/sbin:/usr/bin:/sbin:/bin
  umoci gc --layout "$layout"
  tar -C "$layout" -cf "$work/busybox.tar" .
}

start_containerd() {
  containerd_config 2 "$work" "$sock" io.containerd.grpc.v1.cri >"$work/config.toml"
  PATH="$bin_dir:$PATH" containerd --config "$work/config.toml" >"$work/containerd.log" 2>&1 &
  containerd_pid=$!
  for _ in $(seq 200); do
    ctr_ version >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "demo: containerd did not start:" >&2
  tail -20 "$work/containerd.log" >&2
  exit 1
}

echo "== building an offline busybox image (umoci, Debian's busybox-static)"
build_image >/dev/null
echo "== starting a private containerd in $work"
start_containerd
ctr_ images import --base-name docker.io/library/busybox "$work/busybox.tar" >/dev/null

case "$mode" in
demo)
  echo "== ctr run --rm --runtime io.containerd.eci.v2 $image demo echo hello"
  ctr_ run --rm --runtime io.containerd.eci.v2 "$image" demo echo hello
  ;;
bench)
  # Warm up both paths (page cache, first snapshot unpack).
  ctr_ run --rm --runtime io.containerd.eci.v2 "$image" warm-eci true
  ctr_ run --rm --runtime io.containerd.runc.v2 "$image" warm-runc true
  eci=() runc=()
  for i in $(seq "$runs"); do
    for rt in eci runc; do
      runtime=io.containerd.$rt.v2
      start=$(date +%s%N)
      ctr_ run --rm --runtime "$runtime" "$image" "bench-$rt-$i" true
      end=$(date +%s%N)
      ms=$(( (end - start) / 1000 ))
      if [ "$rt" = eci ]; then eci+=("$ms"); else runc+=("$ms"); fi
    done
  done
  median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
  eci_median=$(median "${eci[@]}")
  runc_median=$(median "${runc[@]}")
  echo "runs: $runs each, interleaved; binaries: $bin_dir"
  awk -v e="$eci_median" -v r="$runc_median" 'BEGIN {
    printf "eci (local mode) median: %.1f ms\n", e / 1000
    printf "runc median: %.1f ms\n", r / 1000
    printf "ratio: %.2f\n", e / r }'
  ;;
*)
  echo "usage: $0 [demo|bench]" >&2
  exit 2
  ;;
esac
