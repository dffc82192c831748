#!/usr/bin/env bash
# The ECI runtime end to end: a private containerd and an offline busybox image, then ctr.
#
#   scripts/demo.sh [demo]   a container in a pod in its own VM:
#                            `ctr run --rm --runtime io.containerd.eci.v2 IMAGE demo uname -r`
#                            prints the guest kernel's release. Runs directly on a host whose
#                            /dev/kvm is VMX/SVM, otherwise inside scripts/testhost (and says so).
#   scripts/demo.sh bench    `ctr run --rm ... true` latency, eci in local mode vs runc, median
#                            of $RUNS each (interleaved); last line `ratio: X.XX` (eci over runc)
#   scripts/demo.sh bench-vm `ctr run --rm ... true` p50 in VM mode, local mode and runc, then
#                            `pod-pss-mib: X`, the host PSS of an idle VM pod (in the test host
#                            where /dev/kvm cannot boot a Linux guest)
#
# Uses the binaries in $BIN_DIR (default: <cargo target dir>/debug) and the guest images in
# build/ (make kernel rootfs). Everything lives in a temp dir; containerd is stopped and the temp
# dir removed on exit, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib.sh
. scripts/lib.sh

mode=${1:-demo}
runs=${RUNS:-30}
bin_dir=$(realpath "${BIN_DIR:-${CARGO_TARGET_DIR:-target}/debug}")
build_dir=$(realpath "${ECI_BUILD_DIR:-build}")
image=docker.io/library/busybox:latest
vmm_bin=${ECI_VMM_BIN:-$bin_dir/eci-vmm}
for b in "$bin_dir/containerd-shim-eci-v2" "$bin_dir/eci-agent" "$vmm_bin"; do
  [ -x "$b" ] || { echo "demo: $b missing: build first (make build)" >&2; exit 1; }
done
[ "$(id -u)" -eq 0 ] || { echo "demo: containerd needs root" >&2; exit 1; }

kvm_module=$(kvm_module)
if [ "$mode" = bench-vm ] && { [ ! -e /dev/kvm ] || { [ $kvm_module != kvm_intel ] && [ $kvm_module != kvm_amd ]; }; }; then
  echo "== /dev/kvm here is backed by $kvm_module: measuring inside the test host (scripts/testhost)"
  exec scripts/testhost --timeout 3600 -- env BIN_DIR="$bin_dir" ECI_BUILD_DIR="$build_dir" RUNS="$runs" \
    ECI_VMM_BIN="${ECI_VMM_BIN:-}" scripts/demo.sh bench-vm
fi
if [ "$mode" = demo ]; then
  for f in vmlinux initramfs.cpio.zst; do
    [ -f "$build_dir/$f" ] || { echo "demo: $build_dir/$f missing: make kernel rootfs" >&2; exit 1; }
  done
  if [ ! -e /dev/kvm ] || { [ $kvm_module != kvm_intel ] && [ $kvm_module != kvm_amd ]; }; then
    echo "== /dev/kvm here is backed by $kvm_module, which cannot boot a Linux guest:"
    echo "== running the demo inside the test host (scripts/testhost: qemu TCG with SVM, kvm_amd)"
    echo "== host kernel: $(uname -r)"
    exec scripts/testhost --timeout 900 -- env BIN_DIR="$bin_dir" ECI_BUILD_DIR="$build_dir" ECI_DEMO_CMDLINE="${ECI_DEMO_CMDLINE:-}" scripts/demo.sh demo-vm
  fi
  mode=demo-vm
  echo "== /dev/kvm is backed by $kvm_module: running the VM directly"
fi

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

# The shim's configuration for each mode (containerd passes ECI_SHIM_CONFIG on to the shim).
cat >"$work/vm.toml" <<TOML
hypervisor = "eci-vmm"
kernel = "$build_dir/vmlinux"
initrd = "$build_dir/initramfs.cpio.zst"
vmm_path = "$vmm_bin"
agent_timeout_secs = 600
kernel_cmdline = "${ECI_DEMO_CMDLINE:-}"
TOML
printf 'hypervisor = "none"\nagent_path = "%s"\n' "$bin_dir/eci-agent" >"$work/local.toml"

case "$mode" in
demo-vm)
  echo "== host kernel (test host): $(uname -r)"
  echo "== ctr run --rm --runtime io.containerd.eci.v2 $image demo uname -r"
  started=$(date +%s%N)
  release=$(ctr_ run --rm --runtime io.containerd.eci.v2 --runtime-config-path "$work/vm.toml" \
    "$image" demo uname -r)
  echo "$release"
  echo "== guest kernel release: $release (the pod ran in its own VM; $(( ($(date +%s%N) - started) / 1000000 )) ms)"
  [ "$release" != "$(uname -r)" ] || { echo "demo: the container saw the host's kernel" >&2; exit 1; }
  ;;
bench)
  # Warm up both paths (page cache, first snapshot unpack).
  local_config=(--runtime-config-path "$work/local.toml")
  ctr_ run --rm --runtime io.containerd.eci.v2 "${local_config[@]}" "$image" warm-eci true
  ctr_ run --rm --runtime io.containerd.runc.v2 "$image" warm-runc true
  eci=() runc=()
  for i in $(seq "$runs"); do
    for rt in eci runc; do
      runtime=(--runtime "io.containerd.$rt.v2")
      [ "$rt" = runc ] || runtime+=("${local_config[@]}")
      start=$(date +%s%N)
      ctr_ run --rm "${runtime[@]}" "$image" "bench-$rt-$i" true
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
bench-vm)
  # VM mode, local mode and runc, interleaved, then the host memory of one idle VM pod.
  vm_config=(--runtime-config-path "$work/vm.toml")
  local_config=(--runtime-config-path "$work/local.toml")
  ctr_ run --rm --runtime io.containerd.eci.v2 "${vm_config[@]}" "$image" warm-vm true
  ctr_ run --rm --runtime io.containerd.eci.v2 "${local_config[@]}" "$image" warm-local true
  ctr_ run --rm --runtime io.containerd.runc.v2 "$image" warm-runc true
  declare -A times=([vm]="" [local]="" [runc]="")
  for i in $(seq "$runs"); do
    for mode in vm local runc; do
      case $mode in
      vm) runtime=(--runtime io.containerd.eci.v2 "${vm_config[@]}") ;;
      local) runtime=(--runtime io.containerd.eci.v2 "${local_config[@]}") ;;
      runc) runtime=(--runtime io.containerd.runc.v2) ;;
      esac
      start=$(date +%s%N)
      ctr_ run --rm "${runtime[@]}" "$image" "bench-$mode-$i" true
      times[$mode]+="$(( ($(date +%s%N) - start) / 1000000 )) "
    done
  done
  median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
  echo "ctr run --rm $image true, $runs runs each, interleaved (KVM: $kvm_module$([ -e /dev/kvm ] || echo ', none'))"
  printf '%-22s %10s\n' runtime "p50 (ms)"
  for mode in vm local runc; do
    # shellcheck disable=SC2086
    printf '%-22s %10s\n' "$mode" "$(median ${times[$mode]})"
  done
  # An idle pod of the smallest size of the table (the 256 MiB asked for becomes 0.25 vCPU and
  # 512 MiB): PSS of its shim, eci-vmm and virtiofsd processes (guest pages the VMM and
  # virtiofsd map are shared, PSS splits them).
  ctr_ run -d --runtime io.containerd.eci.v2 "${vm_config[@]}" --annotation io.eci.vcpus=0.25 \
    --annotation io.eci.memory-mib=256 "$image" pss-pod sleep 3600 >/dev/null
  sleep 5
  pss_kib=0
  for pid in $(pgrep -f "containerd-shim-eci-v2 .*-id pss-pod") $(pgrep -f "eci-vmm --config /run/eci/") \
    $(pgrep -x virtiofsd); do
    kib=$(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup" 2>/dev/null || echo 0)
    echo "  pid $pid $(tr '\0' ' ' <"/proc/$pid/cmdline" | cut -c1-60): PSS $kib KiB"
    pss_kib=$((pss_kib + kib))
  done
  ctr_ task kill -s SIGKILL pss-pod >/dev/null
  for _ in $(seq 600); do ctr_ task delete pss-pod >/dev/null 2>&1 && break; sleep 0.1; done
  ctr_ container delete pss-pod >/dev/null
  awk -v k="$pss_kib" 'BEGIN { printf "pod-pss-mib: %.1f\n", k / 1024 }'
  ;;
*)
  echo "usage: $0 [demo|bench|bench-vm]" >&2
  exit 2
  ;;
esac
