#!/usr/bin/env bash
# Cross-builds plm_core and plm_matmul_test for 64-bit ARM Linux and runs the matmul test under qemu
# (the NEON kernels in native/cpu/gemm_neon.cpp, gemm_neonbf16.cpp and gemm_quant_neon.cpp) at every
# PLM_CPU_ISA level the emulated CPU has. Not part of `npm test`. It checks results only: qemu says nothing
# about speed on real ARM hardware.
#
#   scripts/check-arm64.sh            # build in /tmp/build-arm64
#   BUILD_DIR=/tmp/b JOBS=1 scripts/check-arm64.sh
#
# Needs: cmake, g++-aarch64-linux-gnu, qemu-user (or qemu-user-static):
#   apt-get install -y g++-aarch64-linux-gnu qemu-user
# Without the cross compiler it prints SKIPPED and exits 0 (nothing was checked). Without qemu it builds,
# then fails: a build that can't be run is not a pass.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${BUILD_DIR:-/tmp/build-arm64}"
jobs="${JOBS:-$(nproc 2>/dev/null || echo 2)}"
sysroot="/usr/aarch64-linux-gnu"
toolchain="$root/cmake/aarch64-linux-gnu.cmake"

if ! command -v aarch64-linux-gnu-g++ >/dev/null 2>&1; then
  echo "check-arm64: SKIPPED, nothing was built or tested: aarch64-linux-gnu-g++ not found" \
       "(apt-get install -y g++-aarch64-linux-gnu qemu-user)"
  exit 0
fi
if [ ! -f "$toolchain" ]; then
  echo "check-arm64: $toolchain is missing (run this from a git checkout)" >&2
  exit 1
fi

echo "check-arm64: configuring $build_dir"
cmake -S "$root" -B "$build_dir" -DCMAKE_TOOLCHAIN_FILE="$toolchain" -DCMAKE_BUILD_TYPE=Release \
  -DPLM_CUDA=OFF -DPLM_BUILD_TOOLS=ON >/dev/null
echo "check-arm64: building plm_core and plm_matmul_test with -j$jobs"
cmake --build "$build_dir" --target plm_core plm_matmul_test -j "$jobs"

qemu="$(command -v qemu-aarch64 || command -v qemu-aarch64-static || true)"
if [ -z "$qemu" ]; then
  echo "check-arm64: FAILED: built, but qemu-aarch64 was not found to run the test" \
       "(apt-get install -y qemu-user, or qemu-user-static)" >&2
  exit 1
fi

# Every ISA level the emulated CPU has (qemu's default CPU has FEAT_BF16: neon-bf16, neon, portable).
levels="$("$qemu" -L "$sysroot" "$build_dir/plm_matmul_test" --isa-levels)"
for isa in $levels; do
  echo "check-arm64: running plm_matmul_test under $qemu with PLM_CPU_ISA=$isa"
  PLM_CPU_ISA="$isa" "$qemu" -L "$sysroot" "$build_dir/plm_matmul_test"
done
echo "check-arm64: PASSED ($(echo $levels | tr ' ' ','))"
