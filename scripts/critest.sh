#!/usr/bin/env bash
# `make critest`: the CRI conformance suite (critest, cri-tools) against containerd 2.x whose
# default CRI runtime handler is the eci shim, offline.
#
# critest's test images are rebuilt here from Debian's busybox-static with umoci (busybox; nginx,
# httpd and hostnet-nginx as busybox httpd; nonewprivs as a small setuid program; the tagged and
# user images of cri-tools' images/ directory) and pushed under their own names to a local
# docker-registry, which containerd's registry hosts config makes the server of registry.k8s.io,
# k8s.gcr.io and gcr.io. (critest's --registry-prefix is no help: it drops every tag and digest,
# and specs that create containers from hard-coded image names never see the prefix.)
# containerd, the registry and critest run in a network namespace this script creates (CNI
# bridge and portmap live there); everything is removed on exit, also on failure.
#
# Prints `critest: P passed, F failed, S skipped`, then each failed and skipped spec with its
# reason. Fails when fewer than $CRITEST_MIN_PASSED specs pass (the floor CI holds).
#
#   BIN_DIR=target/debug           where containerd-shim-eci-v2 and eci-agent are
#   ECI_TEST_SHIM_CONFIG=FILE      shim config (default: local mode, hypervisor = "none")
#   CRITEST_FOCUS=REGEX            run only matching specs (ginkgo focus); the floor is then off
#   CRITEST_KEEP=1                 keep the work directory (logs, report) for a look
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib.sh
. scripts/lib.sh

# The number of specs that pass in local mode on containerd 2.x (README: "critest"); a lower
# count fails the run.
min_passed=${CRITEST_MIN_PASSED:-0}
tools=${ECI_TOOLS_BIN:-/opt/eci-tools/bin}
bin_dir=$(realpath "${BIN_DIR:-${CARGO_TARGET_DIR:-target}/debug}")
for b in "$bin_dir/containerd-shim-eci-v2" "$bin_dir/eci-agent" "$tools/containerd" \
  "$tools/critest" "$tools/crictl"; do
  [ -x "$b" ] || { echo "critest: $b missing (make build; scripts/install-deps.sh)" >&2; exit 1; }
done
for t in umoci skopeo docker-registry busybox ip nsenter python3; do
  command -v "$t" >/dev/null || { echo "critest: $t missing (scripts/install-deps.sh)" >&2; exit 1; }
done
[ "$(id -u)" -eq 0 ] || { echo "critest: needs root" >&2; exit 1; }

work=$(mktemp -d /tmp/eci-critest.XXXXXX)
netns=eci-critest-$$
sock=$work/c.sock
registry=127.0.0.1:5000
containerd_pid= registry_pid= cgroup=
in_ns() { nsenter --net="/run/netns/$netns" -- "$@"; }
cleanup() {
  set +e
  if [ -n "$containerd_pid" ]; then
    in_ns "$tools/crictl" --runtime-endpoint "unix://$sock" rmp -fa >/dev/null 2>&1
    kill "$containerd_pid" 2>/dev/null
    wait "$containerd_pid" 2>/dev/null
  fi
  # Shims of this containerd that are still up (their command line names its socket).
  for pid in $(pgrep -f "containerd-shim.*$sock"); do kill -9 "$pid" 2>/dev/null; done
  if [ -n "$cgroup" ]; then
    # Killed processes leave their cgroup a moment after the signal.
    for _ in $(seq 50); do rmdir "$cgroup" 2>/dev/null && break; sleep 0.1; done
  fi
  if [ -n "$registry_pid" ]; then kill "$registry_pid" 2>/dev/null; wait "$registry_pid" 2>/dev/null; fi
  ip netns del "$netns" 2>/dev/null
  { grep -o " $work[^ ]*" /proc/self/mountinfo || true; } | sort -r | while read -r m; do umount -l "$m"; done
  if [ "${CRITEST_KEEP:-}" = 1 ]; then echo "critest: kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

ip netns add "$netns"
in_ns ip link set lo up

# --- images -----------------------------------------------------------------------------------
# A busybox rootfs with the users and groups cri-tools' test images define.
build_rootfs() {
  local rootfs=$1
  busybox_rootfs "$rootfs"
  mkdir -p "$rootfs/www"
  printf '%s\n' root:x:0:0:root:/root:/bin/sh www-data:x:33:33:www-data:/var/www:/bin/false \
    default-user:x:1000:1000::/home/default-user:/bin/sh nobody:x:65534:65534:nobody:/:/bin/false \
    >"$rootfs/etc/passwd"
  printf '%s\n' root:x:0: www-data:x:33: default-user:x:1000: nogroup:x:65534: \
    group-defined-in-image:x:50000:default-user >"$rootfs/etc/group"
  # Debian's busybox-static lacks two applets the upstream busybox image has and specs call.
  cat >"$rootfs/bin/pgrep" <<'SH'
#!/bin/sh
# pgrep PATTERN: pids of the processes whose name contains PATTERN.
found=1
for dir in /proc/[0-9]*; do
  read -r name <"$dir/comm" 2>/dev/null || continue
  case "$name" in *"$1"*) echo "${dir#/proc/}"; found=0 ;; esac
done
exit $found
SH
  cat >"$rootfs/bin/ipcs" <<'SH'
#!/bin/sh
# ipcs -m: the IPC namespace's shared memory segments (key, id, ...), as /proc lists them.
cat /proc/sysvipc/shm
SH
  chmod 755 "$rootfs/bin/pgrep" "$rootfs/bin/ipcs"
  echo '<html><body>eci critest web server</body></html>' >"$rootfs/www/index.html"
}

layout=$work/layout
build_images() {
  umoci init --layout "$layout"
  umoci new --image "$layout:base"
  umoci unpack --image "$layout:base" "$work/bundle" >/dev/null
  build_rootfs "$work/bundle/rootfs"
  umoci repack --image "$layout:base" "$work/bundle"
  rm -rf "$work/bundle"
  umoci config --image "$layout:base" --config.env PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    --config.cmd sh
  umoci config --image "$layout:base" --tag pause --clear=config.cmd \
    --config.cmd sh --config.cmd -c --config.cmd "trap 'exit 0' TERM INT; while :; do sleep 1 & wait \$!; done"
  # The nginx and httpd stand-ins: busybox httpd under a script named nginx that, as nginx,
  # writes /var/run/nginx.pid and has "master process" in its command line, and logs a line
  # naming httpd (what the specs look for).
  mkdir -p "$work/nginx"
  cat >"$work/nginx/nginx" <<'SH'
#!/bin/sh
# nginx stand-in: nginx PORT [ARGS...] serves /www on PORT with busybox httpd.
echo $$ >/var/run/nginx.pid
echo "httpd listening on $1"
trap 'exit 0' TERM INT
httpd -f -p "$1" -h /www &
wait
SH
  chmod 755 "$work/nginx/nginx"
  local port
  for port in 80 12003; do
    umoci config --image "$layout:base" --tag "web-$port" --clear=config.cmd \
      --config.cmd /usr/sbin/nginx --config.cmd "$port" --config.cmd "master process"
    umoci insert --image "$layout:web-$port" "$work/nginx/nginx" /usr/sbin/nginx
  done
  # image-test: busybox plus a file named after the image, so that each is a different image.
  local name
  for name in test-image-latest test-image-tag test-image-1 test-image-2 test-image-3 \
    test-image-tags pause-3.9; do
    echo "$name" >"$work/$name"
    umoci config --image "$layout:base" --tag "$name"
    umoci insert --image "$layout:$name" "$work/$name" "/$name"
  done
  # image-user and image-predefined-group.
  umoci config --image "$layout:base" --tag user-uid --config.user 1002
  umoci config --image "$layout:base" --tag user-username --config.user www-data
  umoci config --image "$layout:base" --tag user-uid-group --config.user 1003:1004
  umoci config --image "$layout:base" --tag user-username-group --config.user www-data:1004
  umoci config --image "$layout:base" --tag predefined-group --config.user 1000
  # nonewprivs: a setuid-root program that prints its effective uid.
  mkdir -p "$work/nnp/usr/local/bin"
  printf '%s\n' '#include <stdio.h>' '#include <unistd.h>' \
    'int main(void) { printf("Effective uid: %d\n", (int)geteuid()); return 0; }' >"$work/nnp.c"
  cc -static -O2 -o "$work/nnp/usr/local/bin/nnp" "$work/nnp.c"
  chmod 4755 "$work/nnp/usr/local/bin/nnp"
  umoci config --image "$layout:base" --tag nonewprivs --clear=config.cmd --config.cmd /usr/local/bin/nnp
  umoci insert --image "$layout:nonewprivs" "$work/nnp/usr/local/bin/nnp" /usr/local/bin/nnp
  umoci gc --layout "$layout"
}

# push TAG REPOSITORY:TAG... : the layout's TAG under each name in the registry.
push() {
  local tag=$1 dest
  shift
  for dest in "$@"; do
    in_ns skopeo copy --quiet --dest-tls-verify=false "oci:$layout:$tag" "docker://$registry/$dest"
  done
}

start_registry() {
  cat >"$work/registry.yml" <<YAML
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: $registry
YAML
  # nsenter execs the program: $! is the registry's pid, for cleanup to kill.
  nsenter --net="/run/netns/$netns" -- docker-registry serve "$work/registry.yml" \
    >"$work/registry.log" 2>&1 &
  registry_pid=$!
  for _ in $(seq 200); do
    in_ns bash -c "exec 3<>/dev/tcp/${registry%:*}/${registry#*:}" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "critest: docker-registry did not start:" >&2
  cat "$work/registry.log" >&2
  exit 1
}

echo "== building critest's test images offline (umoci, busybox-static)"
build_images >/dev/null
start_registry
k8s=e2e-test-images cri=k8s-staging-cri-tools
push base "$k8s/busybox:1.29-2"
push pause-3.9 pause:3.9
push test-image-tags "$cri/test-image-tags:1" "$cri/test-image-tags:2" "$cri/test-image-tags:3"
push pause pause:3.10
push web-80 "$k8s/nginx:1.14-2" "$k8s/httpd:2.4.39-4"
push web-12003 "$cri/hostnet-nginx-amd64:latest"
push nonewprivs "$k8s/nonewprivs:1.3"
push test-image-latest "$cri/test-image-latest:latest"
push test-image-tag "$cri/test-image-tag:test" "$cri/test-image-tag:all"
push test-image-1 "$cri/test-image-1:latest"
push test-image-2 "$cri/test-image-2:latest"
push test-image-3 "$cri/test-image-3:latest"
push user-uid "$cri/test-image-user-uid:latest"
push user-username "$cri/test-image-user-username:latest"
push user-uid-group "$cri/test-image-user-uid-group:latest"
push user-username-group "$cri/test-image-user-username-group:latest"
push predefined-group "$cri/test-image-predefined-group:latest"

# --- containerd 2.x ---------------------------------------------------------------------------
shim_config=${ECI_TEST_SHIM_CONFIG:-$work/shim.toml}
[ -n "${ECI_TEST_SHIM_CONFIG:-}" ] || echo 'hypervisor = "none"' >"$shim_config"
mkdir -p "$work/net.d"
# The local registry is the server of the registries critest names: nothing leaves the machine.
for upstream in registry.k8s.io k8s.gcr.io gcr.io; do
  mkdir -p "$work/certs.d/$upstream"
  printf 'server = "http://%s"\n' "$registry" >"$work/certs.d/$upstream/hosts.toml"
done
cat >"$work/net.d/10-critest.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "eci-critest",
  "plugins": [
    {"type": "bridge", "bridge": "eci-critest0", "isGateway": true, "ipMasq": false,
     "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.89.0.0/16"}]],
              "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$work/ipam"}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
{
  containerd_config 3 "$work" "$sock" io.containerd.tracing.processor.v1.otlp
  cat <<TOML
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "registry.k8s.io/pause:3.10"
[plugins."io.containerd.cri.v1.images".registry]
  config_path = "$work/certs.d"
[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
[plugins."io.containerd.cri.v1.runtime".containerd]
  default_runtime_name = "eci"
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.eci]
  runtime_type = "$bin_dir/containerd-shim-eci-v2"
  pod_annotations = ["io.eci.*"]
  container_annotations = ["io.eci.*"]
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.eci.options]
  ConfigPath = "$shim_config"
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.cri.v1.runtime".cni]
  bin_dirs = ["/usr/lib/cni"]
  conf_dir = "$work/net.d"
TOML
} >"$work/config.toml"
echo "== starting containerd $("$tools/containerd" --version | awk '{print $3}') (default runtime: eci, $(head -1 "$shim_config"))"
# On a cgroup v2 host (the test host) containerd runs in a cgroup of its own with the memory
# controller, as under systemd: in the root cgroup it finds no memory.swap.max, concludes that
# swap cannot be limited, and leaves the swap limit (and its pod metric) out of every spec.
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  cgroup=/sys/fs/cgroup/eci-critest-$$
  echo +memory >/sys/fs/cgroup/cgroup.subtree_control
  mkdir "$cgroup"
fi
(cd "$work" && if [ -n "$cgroup" ]; then echo "$BASHPID" >"$cgroup/cgroup.procs"; fi &&
  PATH="$bin_dir:$tools:$PATH" exec nsenter --net="/run/netns/$netns" -- \
  "$tools/containerd" --config "$work/config.toml" >"$work/containerd.log" 2>&1) &
containerd_pid=$!
for _ in $(seq 600); do
  in_ns "$tools/crictl" --runtime-endpoint "unix://$sock" info >/dev/null 2>&1 && break
  sleep 0.1
done
in_ns "$tools/crictl" --runtime-endpoint "unix://$sock" info >/dev/null 2>&1 || {
  echo "critest: containerd's CRI did not answer:" >&2
  tail -30 "$work/containerd.log" >&2
  exit 1
}

# --- critest ----------------------------------------------------------------------------------
echo "== critest $("$tools/critest" --version 2>/dev/null | awk '/version/ {print $3}')"
focus=()
[ -z "${CRITEST_FOCUS:-}" ] || focus=("-ginkgo.focus=$CRITEST_FOCUS")
started=$SECONDS
set +e
(cd "$work" && in_ns "$tools/critest" --runtime-endpoint "unix://$sock" --image-endpoint "unix://$sock" \
  -ginkgo.no-color -ginkgo.json-report="$work/report.json" \
  "${focus[@]}" >"$work/critest.log" 2>&1)
set -e
echo "critest ran for $((SECONDS - started)) s"
[ -s "$work/report.json" ] || {
  echo "critest: no report; its output:" >&2
  tail -40 "$work/critest.log" >&2
  exit 1
}
python3 - "$work/report.json" "$min_passed" "${CRITEST_FOCUS:-}" <<'PY'
import json, sys

report, floor, focus = sys.argv[1], int(sys.argv[2]), sys.argv[3]
specs = [s for suite in json.load(open(report)) for s in suite.get("SpecReports") or []
         if s.get("LeafNodeType") == "It"]

def name(spec):
    return " ".join([t for t in (spec.get("ContainerHierarchyTexts") or []) if t] + [spec.get("LeafNodeText", "")])

def reason(spec):
    failure = spec.get("Failure") or {}
    text = (failure.get("Message") or "").strip().replace("\n", " ")
    location = failure.get("Location") or {}
    where = f" ({location.get('FileName', '').rsplit('/', 1)[-1]}:{location.get('LineNumber')})" if location else ""
    return (text[:400] + "...") if len(text) > 400 else text, where

passed = [s for s in specs if s["State"] == "passed"]
failed = [s for s in specs if s["State"] in ("failed", "panicked", "timedout", "interrupted", "aborted")]
skipped = [s for s in specs if s["State"] in ("skipped", "pending")]
print(f"critest: {len(passed)} passed, {len(failed)} failed, {len(skipped)} skipped")
for s in failed:
    text, where = reason(s)
    print(f"FAILED: {name(s)}\n    {s['State']}{where}: {text}")
for s in skipped:
    text, _ = reason(s)
    print(f"SKIPPED: {name(s)}\n    {text or 'skipped by critest'}")
if not focus and len(passed) < floor:
    print(f"critest: {len(passed)} passed is below the floor of {floor} (CRITEST_MIN_PASSED)")
    sys.exit(1)
PY
