#!/usr/bin/env bash
# `make vmm-stops`: how often a guest dies during boot under eci-vmm and under qemu's microvm on
# the same KVM, booted side by side. A control for the test host's guest stops
# (docs/testhost.md): a stop that comes with qemu as the VMM as well is the host's, not
# eci-vmm's. A measurement, not a test: it prints a table and the traced shutdowns.
#
#   scripts/vmm-stops.sh [--parallel N] [--boots N]
#
# N loops (4) side by side, each of BOOTS (14) back-to-back boots that alternate the two VMMs;
# each boot runs to `eci-agent: ready` (then it is killed), a VMM exit before that (died) or
# 300 s (hung). Same kernel, production initramfs, 1 vCPU and 256 MiB for both, as in
# `make bench-vm`. Where /dev/kvm cannot boot a Linux guest it runs inside scripts/testhost;
# the results live in the shared directory, so a test host that dies leaves them readable.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib.sh
. scripts/lib.sh

parallel=4
boots=14
while [ $# -gt 0 ]; do
	case $1 in
	--parallel) parallel=${2:?--parallel N}; shift 2 ;;
	--boots) boots=${2:?--boots N}; shift 2 ;;
	*) echo "vmm-stops: unknown option $1 (--parallel N, --boots N)" >&2; exit 2 ;;
	esac
done
for n in "$parallel" "$boots"; do
	[[ $n =~ ^[1-9][0-9]*$ ]] || { echo "vmm-stops: --parallel and --boots take a positive number, not '$n'" >&2; exit 2; }
done
vmm=$(realpath "${ECI_VMM_BIN:?ECI_VMM_BIN: the eci-vmm binary to boot}")
build_dir=$(realpath "${ECI_BUILD_DIR:-build}")
kernel=$build_dir/vmlinux
initrd=$build_dir/initramfs.cpio.zst
cmdline="console=ttyS0 reboot=t panic=-1 tsc=reliable no_timer_check quiet"
for f in "$vmm" "$kernel" "$initrd"; do
	[ -f "$f" ] || { echo "vmm-stops: $f missing (make kernel rootfs; the release eci-vmm)" >&2; exit 1; }
done

eci_vmm() { exec_eci_vmm "$vmm" "$kernel" "$initrd" "$cmdline" 256; }
qemu_microvm() { exec_qemu_microvm "$kernel" "$initrd" "$cmdline" 256; }

# boot LOOP N VMM: one boot; appends "VMM LOOP.N ready|died|hung SECONDS" to the results.
boot() {
	local log=$work/$1.$2.$3.log start pid
	start=$(date +%s)
	"$3" </dev/null >"$log" 2>&1 &
	pid=$!
	while ! grep -q "eci-agent: ready" "$log"; do
		if ! kill -0 "$pid" 2>/dev/null; then
			echo "$3 $1.$2 died $(($(date +%s) - start))" >>"$work/results"
			return
		fi
		if [ $(($(date +%s) - start)) -ge 300 ]; then
			kill -9 "$pid" 2>/dev/null || true
			wait "$pid" 2>/dev/null || true
			echo "$3 $1.$2 hung 300" >>"$work/results"
			return
		fi
		sleep 0.2
	done
	echo "$3 $1.$2 ready $(($(date +%s) - start))" >>"$work/results"
	kill -9 "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
}

boot_loops() {
	local t=/sys/kernel/tracing loop n pids=()
	mountpoint -q $t || mount -t tracefs nodev $t 2>/dev/null || true
	trace_guest_shutdowns $t "$work/shutdowns"
	for loop in $(seq "$parallel"); do
		for n in $(seq "$boots"); do
			if [ $(((loop + n) % 2)) = 0 ]; then boot "$loop" "$n" eci_vmm; else boot "$loop" "$n" qemu_microvm; fi
		done &
		pids+=($!)
	done
	wait "${pids[@]}"
	sleep 1 # the last shutdowns reach the file
}

summary() {
	local vmm_name
	echo "vmm-stops: $parallel loops side by side, $boots boots each; 1 vCPU, 256 MiB, same kernel and initramfs"
	printf '%-14s %6s %6s %6s %6s %16s\n' VMM boots ready died hung "ready p50 (s)"
	touch "$work/results"
	for vmm_name in eci_vmm qemu_microvm; do
		sort -k4,4n "$work/results" | awk -v v=$vmm_name '$1 == v { n++; c[$3]++; if ($3 == "ready") r[++k] = $4 }
			END { printf "%-14s %6d %6d %6d %6d %16s\n", v, n, c["ready"], c["died"], c["hung"],
				k ? r[int((k + 1) / 2)] : "-" }'
	done
	echo "traced guest shutdowns (the thread is the VMM's vCPU thread):"
	guest_shutdowns "$work/shutdowns" "$kernel" | sed 's/^/  /'
}

if [ -n "${VMM_STOPS_DIR:-}" ]; then
	work=$VMM_STOPS_DIR
	boot_loops
	exit 0
fi
mkdir -p target
work=$(mktemp -d -p "$PWD/target" vmm-stops.XXXXXX)
kvm_module=$(kvm_module)
if [ $kvm_module = kvm_intel ] || [ $kvm_module = kvm_amd ]; then
	boot_loops
else
	echo "vmm-stops: /dev/kvm here is $kvm_module: booting inside the test host (scripts/testhost)"
	scripts/testhost --timeout 3600 -- env VMM_STOPS_DIR="$work" ECI_VMM_BIN="$vmm" \
		ECI_BUILD_DIR="$build_dir" scripts/vmm-stops.sh --parallel "$parallel" --boots "$boots" ||
		echo "vmm-stops: the test host failed (exit $?); the boots it finished follow"
fi
summary
echo "vmm-stops: logs in $work"
