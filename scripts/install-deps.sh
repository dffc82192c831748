#!/usr/bin/env bash
# Installs what building and testing ECI needs on Debian 12: Debian packages and rustup targets,
# then the tools built from source (virtiofsd, the Go tools) and the test host's image.
# Idempotent and quiet when everything is already there.
#
#   scripts/install-deps.sh              everything
#   scripts/install-deps.sh --packages   Debian packages and rustup targets only
set -euo pipefail

packages=(
  # build
  build-essential pkg-config protobuf-compiler libseccomp-dev libcap-ng-dev
  # containers and images for the end-to-end tests
  containerd runc umoci skopeo docker-registry apache2-utils busybox-static
  containernetworking-plugins iproute2 kmod
  # the shim's CRI port-forward redirect in a VM pod's namespace (and CNI's portmap)
  iptables
  # mkfs.ext4 for the agent's disk-volume test
  e2fsprogs
  # python venv for the OpenAPI schema checker of eci/tests/openapi.rs
  python3-venv
  # guest kernel, initramfs and the qemu TCG tier (qemu itself below)
  linux-source-6.12 bc bison flex libelf-dev libssl-dev cpio xz-utils zstd
)

sudo_cmd=()
[ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

# qemu for the test host (scripts/testhost) from Debian's bookworm-backports: its emulation of
# SVM in 10.0 replaces 7.2's, under which the emulated host's kernel crashed or wedged in every
# CI run (docs/testhost.md).
qemu_min=1:10.0
qemu_version=$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)
if [ -z "$qemu_version" ] || dpkg --compare-versions "$qemu_version" lt "$qemu_min"; then
  echo "install-deps: installing qemu-system-x86 >= $qemu_min from bookworm-backports"
  echo 'deb http://deb.debian.org/debian bookworm-backports main' |
    "${sudo_cmd[@]}" tee /etc/apt/sources.list.d/eci-bookworm-backports.list >/dev/null
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends \
    -t bookworm-backports qemu-system-x86 >/dev/null
fi

targets=(x86_64-unknown-linux-musl x86_64-unknown-none)
installed=$(rustup target list --installed)
for t in "${targets[@]}"; do
  grep -qx "$t" <<<"$installed" || rustup target add "$t"
done

[ "${1:-}" != --packages ] || exit 0

# The test host's kernel and initramfs (scripts/testhost), cached under /var/cache/eci/testhost.
"$(dirname "$0")/testhost" --prepare >/dev/null

# OpenAPI schema checker (PyPI) for eci/tests/openapi.rs, in a venv of its own.
openapi_venv=/var/cache/eci/openapi-venv
if [ ! -x "$openapi_venv/bin/openapi-spec-validator" ]; then
  mkdir -p "$(dirname "$openapi_venv")"
  /usr/bin/python3 -m venv "$openapi_venv"
  "$openapi_venv/bin/pip" install -q openapi-spec-validator
fi

# virtiofsd (the vhost-user-fs backend of VM pods), pinned in versions.env, built once per machine.
. "$(dirname "$0")/versions.env"
tools_root=/opt/eci-tools
if [ "$("$tools_root/bin/virtiofsd" --version 2>/dev/null | awk '{print $2}')" != "$VIRTIOFSD_VERSION" ]; then
  echo "install-deps: building virtiofsd $VIRTIOFSD_VERSION (cargo install --locked)"
  CARGO_TARGET_DIR=/var/cache/eci/cargo-install cargo install --quiet --locked --root "$tools_root" \
    virtiofsd --version "$VIRTIOFSD_VERSION"
fi

# Go tools at the versions of scripts/versions.env, built with the machine's Go into
# /opt/eci-tools/bin (module and build caches under /var/cache/eci/go): containerd 2.x for the
# 2.x tier, crictl and critest for `make critest`, nerdctl for its tier. A tool whose binary
# already reports its pinned version is not rebuilt.
# shellcheck source=versions.env
. "$(dirname "$0")/versions.env"
tools_bin=/opt/eci-tools/bin
go_cache=/var/cache/eci/go
export GOPATH=$go_cache GOMODCACHE=$go_cache/mod GOCACHE=$go_cache/build GOBIN=$tools_bin
export GOFLAGS=-buildvcs=false GOTOOLCHAIN=local
command -v go >/dev/null || PATH=$PATH:/usr/local/go/bin
mkdir -p "$tools_bin"

# built BINARY VERSION-ARG... PINNED: whether BINARY reports PINNED (with or without its "v").
built() {
  local bin=$tools_bin/$1 pinned=${*: -1}
  [ -x "$bin" ] && "$bin" "${@:2:$#-2}" 2>/dev/null | grep -qF -- "${pinned#v}"
}
go_step() {
  echo "install-deps: building $1 (go $(go env GOVERSION))"
  local started=$SECONDS
  "${@:2}"
  echo "install-deps: $1 built in $((SECONDS - started)) s"
}

containerd_module=github.com/containerd/containerd/v2
if ! built containerd --version "$CONTAINERD_VERSION" || ! built ctr --version "$CONTAINERD_VERSION" ||
  ! built containerd-shim-runc-v2 -v "$CONTAINERD_VERSION"; then
  # no_btrfs: the btrfs snapshotter needs libbtrfs headers, and no test uses it.
  go_step "containerd $CONTAINERD_VERSION" go install -tags no_btrfs \
    -ldflags "-X $containerd_module/version.Version=$CONTAINERD_VERSION" \
    "$containerd_module/cmd/containerd@$CONTAINERD_VERSION" \
    "$containerd_module/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION" \
    "$containerd_module/cmd/ctr@$CONTAINERD_VERSION"
fi

cri_tools_module=sigs.k8s.io/cri-tools
cri_tools_ldflags="-X $cri_tools_module/pkg/version.Version=$CRI_TOOLS_VERSION"
if ! built crictl --version "$CRI_TOOLS_VERSION"; then
  go_step "crictl $CRI_TOOLS_VERSION" go install -ldflags "$cri_tools_ldflags" \
    "$cri_tools_module/cmd/crictl@$CRI_TOOLS_VERSION"
fi
if ! built critest --version "$CRI_TOOLS_VERSION"; then
  # critest is a Go test binary (`go test -c`), which go install cannot make: build it in the
  # module's own source, as cri-tools' Makefile does, with the module's go.sum.
  go mod download "$cri_tools_module@$CRI_TOOLS_VERSION"
  go_step "critest $CRI_TOOLS_VERSION" go -C "$GOMODCACHE/$cri_tools_module@$CRI_TOOLS_VERSION" \
    test -c -ldflags "$cri_tools_ldflags" -o "$tools_bin/critest" ./cmd/critest
fi

nerdctl_module=github.com/containerd/nerdctl/v2
if ! built nerdctl --version "$NERDCTL_VERSION"; then
  # nerdctl's go.mod replaces its test framework (mod/tigron) with a directory that its module
  # archive leaves out, so `go install ...@version` refuses it. Build a copy of the module
  # instead, without the one test-only helper file of cmd/nerdctl that imports that framework.
  go mod download "$nerdctl_module@$NERDCTL_VERSION"
  nerdctl_src=$go_cache/src/nerdctl-$NERDCTL_VERSION
  rm -rf "$nerdctl_src"
  mkdir -p "$(dirname "$nerdctl_src")"
  cp -r "$GOMODCACHE/$nerdctl_module@$NERDCTL_VERSION" "$nerdctl_src"
  chmod -R u+w "$nerdctl_src"
  rm "$nerdctl_src/cmd/nerdctl/helpers/testing_linux.go"
  CGO_ENABLED=0 go_step "nerdctl $NERDCTL_VERSION" go -C "$nerdctl_src" build \
    -ldflags "-X $nerdctl_module/pkg/version.Version=$NERDCTL_VERSION" \
    -o "$tools_bin/nerdctl" ./cmd/nerdctl
fi
