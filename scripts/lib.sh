# Shell helpers shared by scripts/demo.sh and scripts/critest.sh (sourced, not run).

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
