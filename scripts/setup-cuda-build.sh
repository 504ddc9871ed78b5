#!/usr/bin/env bash
# Makes `cargo build --release --features cuda` work without access to anything but the Python
# package registry, and `--device cuda` find what it needs at run time.
#
#   scripts/setup-cuda-build.sh            installs into ${XDG_DATA_HOME:-~/.local/share}/pnn-cuda
#   PNN_CUDA_TOOLS=DIR scripts/setup-cuda-build.sh    installs into DIR
#
# What it installs, and why:
# - LLVM 23.1, static libraries with the NVPTX target (the wheels mlc-llvm-static and
#   mlc-llvm-static-extra-targets). burn's CUDA backend compiles kernels to PTX through LLVM;
#   its build script (tracel-llvm-bundler) downloads an LLVM bundle from outside the registries
#   unless `$XDG_DATA_HOME/tracel/tracel-llvm-23.1.0-4/.tracel-llvm-installed` exists, and then
#   asks that folder's `bin/llvm-config` how to link. That folder becomes a link to the wheel's.
# - libdevice (the wheel nvidia-cuda-nvcc-cu12): the NVIDIA math library, which the CUDA
#   backend links into a kernel that calls exp, tanh, erf and the like. It is looked up at run
#   time under `$CUDA_PATH/nvvm/libdevice/`; pnn sets CUDA_PATH to this folder's copy when
#   CUDA_PATH is unset and no CUDA toolkit is installed (src/device.rs).
# Nothing else of CUDA is needed to build: the driver's libraries are loaded when a run starts.
# Run it again at any time: what is there already is kept.
set -euo pipefail

llvm_version=23.1.1.post0
# libdevice comes with the CUDA 12 compiler wheel.
nvcc_version=12.9.86
# The folder name tracel-llvm-bundler 23.1.0-4 (burn 0.22.1's) looks for.
bundle_name=tracel-llvm-23.1.0-4
data_home=${XDG_DATA_HOME:-$HOME/.local/share}
tools=${PNN_CUDA_TOOLS:-$data_home/pnn-cuda}
mkdir -p "$tools"
tools=$(cd "$tools" && pwd)

python=${PYTHON:-python3}
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
if ! "$python" -m pip --version > /dev/null 2>&1; then
  echo "setup-cuda-build: needs Python 3 with pip ($python -m pip did not answer); set PYTHON=... to another one" >&2
  exit 2
fi

llvm_root=$tools/llvm/mlc_llvm_static/static
if [ -x "$llvm_root/bin/llvm-config" ] && "$llvm_root/bin/llvm-config" --targets-built | grep -qw NVPTX; then
  echo "LLVM: $llvm_root is there already ($("$llvm_root/bin/llvm-config" --version))"
else
  echo "LLVM: installing mlc-llvm-static $llvm_version with its NVPTX target into $tools/llvm"
  "$python" -m pip install --quiet --no-deps --upgrade --target "$tools/llvm" \
    "mlc-llvm-static==$llvm_version" "mlc-llvm-static-extra-targets==$llvm_version"
fi
if ! "$llvm_root/bin/llvm-config" --targets-built | grep -qw NVPTX; then
  echo "setup-cuda-build: $llvm_root/bin/llvm-config does not list the NVPTX target; delete $tools and run this again" >&2
  exit 1
fi
# The bundler's sign that its bundle is complete.
touch "$llvm_root/.tracel-llvm-installed"

link=$data_home/tracel/$bundle_name
mkdir -p "$data_home/tracel"
if [ -e "$link" ] && [ ! -L "$link" ]; then
  echo "setup-cuda-build: $link exists and is not a link made by this script (an LLVM bundle downloaded by" \
    "burn's build?); it is kept and will be used. Remove it to use the registry's LLVM instead." >&2
else
  ln -sfn "$llvm_root" "$link"
  echo "LLVM: $link -> $llvm_root"
fi

cuda_root=$tools/cuda/nvidia/cuda_nvcc
if [ -f "$cuda_root/nvvm/libdevice/libdevice.10.bc" ]; then
  echo "libdevice: $cuda_root/nvvm/libdevice is there already"
else
  echo "libdevice: installing nvidia-cuda-nvcc-cu12 $nvcc_version into $tools/cuda"
  "$python" -m pip install --quiet --no-deps --upgrade --target "$tools/cuda" "nvidia-cuda-nvcc-cu12==$nvcc_version"
fi
if [ ! -f "$cuda_root/nvvm/libdevice/libdevice.10.bc" ]; then
  echo "setup-cuda-build: the wheel nvidia-cuda-nvcc-cu12 has no nvvm/libdevice/libdevice.10.bc under $cuda_root" >&2
  exit 1
fi

cat <<EOF

Ready. Build with:
  cargo build --release --features cuda
(18 minutes on 2 cores the first time). pnn finds libdevice in $cuda_root by itself
(where PNN_CUDA_TOOLS chose the folder, keep it set when pnn runs); other programs of burn's
CUDA backend need: export CUDA_PATH=$cuda_root
EOF
