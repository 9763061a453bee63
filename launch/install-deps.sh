#!/usr/bin/env bash
# Installs the Debian packages crl needs to build, test and run.
# Does nothing when they are all present; runs `apt-get update` once
# first when something is missing (a fresh machine's lists are empty).
set -euo pipefail

PKGS=(
  build-essential pkg-config
  libzmq3-dev libprotobuf-c-dev protobuf-c-compiler
  libopenblas-dev libhwloc-dev libcjson-dev libcriterion-dev libstb-dev
  gnuplot-nox
  clang libclang-rt-14-dev
  iproute2
)
# Optional extras: the PyTorch reference used only by `make bench`.
if [ "${CRL_WITH_TORCH:-0}" = 1 ]; then PKGS+=(python3-torch); fi

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "install-deps: installing ${missing[*]}" >&2
SUDO=
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null; then SUDO=sudo; else
    echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
