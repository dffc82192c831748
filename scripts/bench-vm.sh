#!/usr/bin/env bash
# `make bench-vm`: eci-vmm against qemu's microvm on the same KVM, booting the same guest kernel
# and production initramfs to `eci-agent: ready`. A benchmark, not a test: it prints a table.
#
#   scripts/bench-vm.sh          runs itself inside scripts/testhost unless /dev/kvm is VMX/SVM
#
# Per VMM, p50 over $RUNS boots (default 10), interleaved:
#   - time from spawning the VMM process to the serial line `eci-agent: ready`;
#   - the VMM's own memory at that moment: RssAnon + RssFile of the process. Guest memory is
#     memfd-backed in both (eci-vmm always; qemu with `-object memory-backend-memfd,share=on`),
#     so guest pages are RssShmem and left out.
# Both VMMs get 1 vCPU, 256 MiB, the serial console and no other device (the agent says ready
# after a ping over in-guest vsock loopback). Ends with `ready-ratio`, `rss-ratio` and, last,
# `ratio` (the ready ratio), eci-vmm over qemu. Absolute times under emulation mean nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib.sh
. scripts/lib.sh

runs=${RUNS:-10}
vmm=${ECI_VMM_BIN:?ECI_VMM_BIN: the eci-vmm binary to measure}
build_dir=$(realpath "${ECI_BUILD_DIR:-build}")
kernel=$build_dir/vmlinux
initrd=$build_dir/initramfs.cpio.zst
cmdline="console=ttyS0 reboot=k panic=-1 tsc=reliable no_timer_check quiet"
memory_mib=256
for f in "$vmm" "$kernel" "$initrd"; do
	[ -f "$f" ] || { echo "bench-vm: $f missing (make kernel rootfs; the release eci-vmm)" >&2; exit 1; }
done

kvm_module=$(kvm_module)
if [ $kvm_module != kvm_intel ] && [ $kvm_module != kvm_amd ]; then
	echo "bench-vm: /dev/kvm here is $kvm_module: measuring inside the test host (scripts/testhost)"
	exec scripts/testhost --timeout 3600 -- env RUNS="$runs" ECI_VMM_BIN="$(realpath "$vmm")" \
		ECI_BUILD_DIR="$build_dir" scripts/bench-vm.sh
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# measure NAME COMMAND...: boots once; prints "<ms> <own_kib> <shmem_kib>".
measure() {
	local name=$1 out=$work/$1.out
	shift
	: >"$out"
	local start end pid
	start=$(date +%s%N)
	"$@" </dev/null >"$out" 2>&1 &
	pid=$!
	while ! grep -q "eci-agent: ready" "$out"; do
		if ! kill -0 "$pid" 2>/dev/null || [ $(($(date +%s%N) - start)) -gt 300000000000 ]; then
			echo "bench-vm: $name did not reach eci-agent: ready:" >&2
			tail -20 "$out" >&2
			kill -9 "$pid" 2>/dev/null || true
			exit 1
		fi
		sleep 0.01
	done
	end=$(date +%s%N)
	local anon file shmem
	anon=$(awk '/^RssAnon:/ {print $2}' "/proc/$pid/status")
	file=$(awk '/^RssFile:/ {print $2}' "/proc/$pid/status")
	shmem=$(awk '/^RssShmem:/ {print $2}' "/proc/$pid/status")
	if [ "${shmem:-0}" -eq 0 ]; then
		# Both VMMs' guest memory is a shared memfd: none resident means another process was read.
		echo "bench-vm: $name (pid $pid) shows no shared guest memory: not the VMM's process" >&2
		kill -9 "$pid" 2>/dev/null || true
		exit 1
	fi
	kill -9 "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	echo "$(((end - start) / 1000000)) $((anon + file)) $shmem"
}

# Each VMM execs in the background subshell that `measure` starts, so that `$!` is the VMM's own
# pid (a function left as a subshell would measure that shell's memory).
eci_vmm() { exec_eci_vmm "$vmm" "$kernel" "$initrd" "$cmdline" "$memory_mib"; }
qemu_microvm() { exec_qemu_microvm "$kernel" "$initrd" "$cmdline" "$memory_mib"; }

echo "bench-vm: KVM $kvm_module; $runs boots each, interleaved; 1 vCPU, $memory_mib MiB, same kernel and initramfs"
for i in $(seq "$runs"); do
	measure eci-vmm eci_vmm >>"$work/eci-vmm.results"
	measure qemu qemu_microvm >>"$work/qemu.results"
	echo "  boot $i: eci-vmm $(tail -1 "$work/eci-vmm.results") | qemu $(tail -1 "$work/qemu.results") (ms own-KiB shmem-KiB)"
done

p50() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
for name in eci-vmm qemu; do
	eval "${name//-/_}_ready=\$(cut -d' ' -f1 \"$work/$name.results\" | p50)"
	eval "${name//-/_}_rss=\$(cut -d' ' -f2 \"$work/$name.results\" | p50)"
done
printf '%-10s %16s %22s\n' VMM "ready p50 (ms)" "own RSS p50 (KiB)"
printf '%-10s %16s %22s\n' eci-vmm "$eci_vmm_ready" "$eci_vmm_rss"
printf '%-10s %16s %22s\n' qemu "$qemu_ready" "$qemu_rss"
awk -v er="$eci_vmm_ready" -v qr="$qemu_ready" -v em="$eci_vmm_rss" -v qm="$qemu_rss" 'BEGIN {
	printf "ready-ratio: %.2f\n", er / qr
	printf "rss-ratio: %.2f\n", em / qm
	printf "ratio: %.2f\n", er / qr }'
