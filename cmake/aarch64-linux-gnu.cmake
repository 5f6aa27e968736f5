# Cross-compiling to 64-bit ARM Linux from an x86-64 host with Debian/Ubuntu's cross toolchain
# (apt-get install g++-aarch64-linux-gnu). Run the results under qemu-user:
#   qemu-aarch64 -L /usr/aarch64-linux-gnu ./plm_matmul_test
# See native/README.md ("ARM64") and scripts/check-arm64.sh.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(PLM_CROSS_PREFIX "aarch64-linux-gnu-" CACHE STRING "prefix of the cross tools")
set(CMAKE_C_COMPILER ${PLM_CROSS_PREFIX}gcc)
set(CMAKE_CXX_COMPILER ${PLM_CROSS_PREFIX}g++)

# Libraries and headers come from the target sysroot only; programs (cmake's helpers) from the host.
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

