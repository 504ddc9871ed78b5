#!/usr/bin/env bash
# The GPU tests (tests/gpu.rs) on a machine without a GPU: burn's wgpu backend with WGSL shaders,
# on Mesa's CPU Vulkan driver (lavapipe). The same CubeCL kernels as on a GPU, compiled to WGSL
# instead of SPIR-V (lavapipe crashes on cubecl's SPIR-V: docs/gpu.md), so a kernel change is
# checked here in about a minute without a GPU machine.
#
#   scripts/gpu-tests-lavapipe.sh [extra features, e.g. gpu-fusion] [-- test filter and options]
#
# Installs Debian's mesa-vulkan-drivers and libvulkan1 if the Vulkan loader or lavapipe is
# missing (as root, or through sudo). Exits 3 when it cannot: CI then says so and goes on.
# PROFILE=release builds the release profile (the GPU check's); the default is the test profile,
# which shares its dependencies with `cargo test`.
set -uo pipefail
cd "$(dirname "$0")/.."

features=wgpu
if [[ $# -gt 0 && $1 != "--" ]]; then
  features="wgpu,$1"
  shift
fi
[[ ${1:-} == "--" ]] && shift

have_lavapipe() {
  # (ldconfig is in /sbin, which a user's PATH may not hold.)
  ls /usr/share/vulkan/icd.d/lvp_icd*.json > /dev/null 2>&1 &&
    { ldconfig -p 2> /dev/null || /sbin/ldconfig -p; } | grep -q 'libvulkan\.so\.1'
}

if ! have_lavapipe; then
  sudo=""
  [[ $(id -u) != 0 ]] && sudo="sudo -n"
  packages="mesa-vulkan-drivers libvulkan1"
  echo "installing Mesa's CPU Vulkan driver: $packages"
  # shellcheck disable=SC2086
  $sudo apt-get install -y --no-install-recommends $packages > /tmp/lavapipe-apt.log 2>&1 ||
    { $sudo apt-get update > /tmp/lavapipe-apt.log 2>&1 &&
      $sudo apt-get install -y --no-install-recommends $packages >> /tmp/lavapipe-apt.log 2>&1; }
  if ! have_lavapipe; then
    echo "could not install lavapipe (apt-get's log: /tmp/lavapipe-apt.log); the GPU tests did not run" >&2
    tail -5 /tmp/lavapipe-apt.log >&2
    exit 3
  fi
fi

profile=()
[[ ${PROFILE:-test} == release ]] && profile=(--release)
# wgpu's Vulkan layer looks for a runtime directory; without one it prints an error per device.
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}
# A missing device is a failure here, not a skip: the point is that the kernels ran.
export PNN_REQUIRE_GPU=1 PNN_TEST_DEVICE=wgpu
echo "GPU tests on lavapipe: --features $features"
cargo test --locked "${profile[@]}" --features "$features" --test gpu -- "$@"
