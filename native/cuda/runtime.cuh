// Plain C++ view of the CUDA runtime pieces the tools need (no CUDA headers): device query, memory,
// copies, streams. Every function throws plm::cuda::CudaError on failure. bf16 buffers are uint16_t*.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>

namespace plm::cuda {

struct CudaError : std::runtime_error {
  CudaError(int status, const std::string& m) : std::runtime_error(m), status(status) {}
  int status;  // plm_cuda_status: 2 = out of memory, 4 = other CUDA failure
};

// Number of devices (0 when none usable), with a description or the reason in *info. *driver_problem (when
// not null) is set when 0 devices are reported although an NVIDIA driver (libcuda.so.1) is installed and
// the runtime failed for another reason than "no device" (e.g. a driver older than the CUDA runtime):
// a GPU machine that cannot run the kernels, not a CPU-only machine.
int device_count(std::string* info, bool* driver_problem = nullptr);
void set_device(int device);
std::string device_name(int device);

void* dev_alloc(size_t bytes);  // throws CudaError(status 2) on out of memory
void dev_free(void* p);
void h2d(void* dst, const void* src, size_t bytes);
void d2h(void* dst, const void* src, size_t bytes);
void dev_memset(void* dst, int value, size_t bytes);
void synchronize();
void check_last(const char* where);  // cudaGetLastError + cudaDeviceSynchronize, throws with `where`

// Median time in ms of `iters` runs of fn (each bracketed by CUDA events on the default stream) after one warm-up.
double time_gpu_ms(const std::function<void()>& fn, int iters);

// f32 <-> bf16 on the device (n elements).
void f32_to_bf16_dev(const float* src, uint16_t* dst, int64_t n, void* stream);
void bf16_to_f32_dev(const uint16_t* src, float* dst, int64_t n, void* stream);

}  // namespace plm::cuda
