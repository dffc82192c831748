#!/usr/bin/env bash
# Installs what building and testing ECI needs on Debian 12: Debian packages and rustup targets.
# Idempotent and quiet when everything is already there.
set -euo pipefail

packages=(
  # build
  build-essential pkg-config protobuf-compiler libseccomp-dev libcap-ng-dev
  # containers and images for the end-to-end tests
  containerd runc umoci skopeo docker-registry apache2-utils busybox-static
  containernetworking-plugins iproute2 kmod
  # mkfs.ext4 for the agent's disk-volume test
  e2fsprogs
  # python venv for the OpenAPI schema checker of eci/tests/openapi.rs
  python3-venv
  # guest kernel, initramfs and the qemu TCG tier
  linux-source-6.12 bc bison flex libelf-dev libssl-dev cpio xz-utils zstd qemu-system-x86
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

targets=(x86_64-unknown-linux-musl x86_64-unknown-none)
installed=$(rustup target list --installed)
for t in "${targets[@]}"; do
  grep -qx "$t" <<<"$installed" || rustup target add "$t"
done

# OpenAPI schema checker (PyPI) for eci/tests/openapi.rs, in a venv of its own.
openapi_venv=/var/cache/eci/openapi-venv
if [ ! -x "$openapi_venv/bin/openapi-spec-validator" ]; then
  mkdir -p "$(dirname "$openapi_venv")"
  /usr/bin/python3 -m venv "$openapi_venv"
  "$openapi_venv/bin/pip" install -q openapi-spec-validator
fi

# virtiofsd (the vhost-user-fs backend of VM pods), pinned, built once per machine.
VIRTIOFSD_VERSION=1.14.0
tools_root=/opt/eci-tools
if [ "$("$tools_root/bin/virtiofsd" --version 2>/dev/null | awk '{print $2}')" != "$VIRTIOFSD_VERSION" ]; then
  echo "install-deps: building virtiofsd $VIRTIOFSD_VERSION (cargo install --locked)"
  CARGO_TARGET_DIR=/var/cache/eci/cargo-install cargo install --quiet --locked --root "$tools_root" \
    virtiofsd --version "$VIRTIOFSD_VERSION"
fi
