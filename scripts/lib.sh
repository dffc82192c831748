# Shell helpers shared by scripts/demo.sh, scripts/critest.sh, scripts/vm-tier, scripts/bench-vm.sh
# and scripts/vmm-stops.sh (sourced, not run).

# busybox_rootfs DIR: a root filesystem of Debian's static busybox in DIR, every applet a hard
# link at its usual path (as in the upstream busybox image), the usual empty mount points, and a
# root-only /etc/passwd and /etc/group.
busybox_rootfs() {
  local rootfs=$1 applet
  mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,etc,root,run,var/run}
  chmod 1777 "$rootfs/tmp"
  cp "$(command -v busybox)" "$rootfs/bin/busybox"
  busybox --list-full | while read -r applet; do
    [ "$applet" = bin/busybox ] || [ -e "$rootfs/$applet" ] || ln "$rootfs/bin/busybox" "$rootfs/$applet"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\n' >"$rootfs/etc/passwd"
  printf 'root:x:0:\n' >"$rootfs/etc/group"
}

# containerd_config VERSION WORK SOCKET DISABLED-PLUGIN...: the head of a private containerd's
# config (format VERSION: 2 for 1.6, 3 for 2.x) with root, state and sockets under WORK.
containerd_config() {
  local version=$1 work=$2 sock=$3 plugins='' p
  shift 3
  for p in "$@" io.containerd.snapshotter.v1.btrfs io.containerd.snapshotter.v1.zfs \
    io.containerd.snapshotter.v1.devmapper io.containerd.snapshotter.v1.aufs; do
    plugins+="${plugins:+, }\"$p\""
  done
  cat <<TOML
version = $version
root = "$work/root"
state = "$work/state"
disabled_plugins = [$plugins]
[grpc]
  address = "$sock"
[ttrpc]
  address = "$sock.ttrpc"
[debug]
  address = "$sock.debug"
[plugins."io.containerd.internal.v1.opt"]
  path = "$work/opt"
TOML
  # containerd 2.x (config version 3) starts NRI at /var/run/nri/nri.sock by default; a second
  # instance on the host then fails with "address already in use". Keep it in $work.
  if [ "$version" -ge 3 ]; then
    printf '[plugins."io.containerd.nri.v1.nri"]\n  socket_path = "%s/nri.sock"\n' "$work"
  fi
}

# A guest's triple fault: on SVM, KVM resets the vCPU before its VMM can read where it stood, but
# its exit event still has the guest's rip. trace_guest_shutdowns TRACEFS FILE records them in a
# trace instance of their own and appends them to FILE as they come (in a shared directory, a
# test host that dies cannot take them with it). Best effort: diagnostics.
trace_guest_shutdowns() {
	local i=$1/instances/eci-guest-shutdowns out=$2
	{
		mkdir -p "$i"
		echo '(isa == 2 && exit_reason == 127) || (isa == 1 && exit_reason == 2)' \
			>"$i/events/kvm/kvm_exit/filter"
		echo 1 >"$i/events/kvm/kvm_exit/enable"
		echo 1 >"$i/tracing_on"
		cat "$i/trace_pipe" </dev/null >>"$out" &
	} 2>/dev/null || true
}

# guest_shutdowns FILE VMLINUX: the shutdowns trace_guest_shutdowns recorded in FILE, each with
# the thread that ran the vCPU, the guest kernel's symbol at its rip and the event it was
# delivering. A rip that recurs points at the guest; scattered ones at the host.
guest_shutdowns() {
	[ -s "$1" ] || return 0
	python3 -c '
import bisect, re, subprocess, sys
symbols = []
try:
    out = subprocess.run(["nm", "-n", sys.argv[2]], capture_output=True, text=True).stdout
    symbols = [(int(a, 16), n) for a, _, n in (l.split(None, 2) for l in out.splitlines() if l[:1] != " ")]
except (OSError, ValueError):
    pass
addresses = [a for a, _ in symbols]
pattern = r"^\s*(.+)-\d+ +\[.*?(\d+\.\d+): kvm_exit: vcpu (\d+) .*rip (0x[0-9a-f]+) .*intr_info (0x[0-9a-f]+)"
for line in open(sys.argv[1]):
    m = re.search(pattern, line)
    if not m:
        continue
    thread, time, vcpu, rip, intr_info = m.groups()
    i = bisect.bisect_right(addresses, int(rip, 16)) - 1
    where = f"{symbols[i][1]}+{int(rip, 16) - addresses[i]:#x}" if i >= 0 and symbols[i][0] >= 0xffffffff80000000 else "outside the kernel"
    # The event the vCPU was delivering when it gave up (valid bit 31; the vector in bits 0-7).
    info = int(intr_info, 16)
    event = f", delivering vector {info & 0xff}" if info >> 31 else ""
    print(f"at {time} s: vCPU {vcpu} ({thread}) rip {rip} ({where}){event}")
' "$1" "$2" || true
}

# kvm_module: the module behind /dev/kvm (kvm_pvm, kvm_intel, kvm_amd), or none.
kvm_module() {
	local m
	for m in kvm_pvm kvm_intel kvm_amd; do
		[ -e "/sys/module/$m" ] && { echo "$m"; return; }
	done
	echo none
}

# exec_eci_vmm VMM KERNEL INITRD CMDLINE MIB and exec_qemu_microvm KERNEL INITRD CMDLINE MIB:
# the two VMMs as `make bench-vm` and `make vmm-stops` compare them: 1 vCPU, MIB of memfd guest
# memory, the serial console on stdout, no other device. Each replaces the calling shell.
exec_eci_vmm() {
	exec "$1" --kernel "$2" --initrd "$3" --cmdline "$4" --vcpus 1 --memory-mib "$5" --serial stdout
}

exec_qemu_microvm() {
	exec qemu-system-x86_64 -accel kvm -cpu host -M microvm,acpi=off,rtc=off,memory-backend=mem \
		-object "memory-backend-memfd,id=mem,size=${4}M,share=on" \
		-smp 1 -m "${4}M" -nodefaults -no-user-config -no-reboot -display none \
		-serial stdio -kernel "$1" -initrd "$2" -append "$3"
}
