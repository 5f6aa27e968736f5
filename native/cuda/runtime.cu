// Device query, memory and conversion helpers (see runtime.cuh).
#include <cstdint>
#include <dlfcn.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#include "cuda/common.cuh"

namespace plm::cuda {

void throw_cuda(cudaError_t e, const char* what, const char* file, int line) {
  char buf[512];
  std::snprintf(buf, sizeof buf, "CUDA error %s (%s) in %s at %s:%d", cudaGetErrorName(e), cudaGetErrorString(e),
                what, file, line);
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // clear the sticky-free error
    throw CudaError(2, std::string(buf) +
                           ": out of GPU memory; use fewer image tiles or video frames, a shorter max_context, or a "
                           "quantized model");
  }
  throw CudaError(4, buf);
}

int device_count(std::string* info, bool* driver_problem) {
  if (driver_problem) *driver_problem = false;
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    if (info) *info = std::string("no CUDA device (") + cudaGetErrorString(e) + ")";
    if (driver_problem && e != cudaErrorNoDevice) {
      void* h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
      if (h) {
        *driver_problem = true;
        dlclose(h);
      }
    }
    return 0;
  }
  if (n == 0) {
    if (info) *info = "no CUDA device";
    return 0;
  }
  if (info) {
    cudaDeviceProp p;
    if (cudaGetDeviceProperties(&p, 0) == cudaSuccess) {
      char buf[256];
      std::snprintf(buf, sizeof buf, "%s (sm_%d%d, %.1f GiB, %d SMs)", p.name, p.major, p.minor,
                    p.totalGlobalMem / 1073741824.0, p.multiProcessorCount);
      *info = buf;
    }
  }
  return n;
}

void set_device(int device) { PLM_CU_CHECK(cudaSetDevice(device)); }
std::string device_name(int device) {
  cudaDeviceProp p;
  PLM_CU_CHECK(cudaGetDeviceProperties(&p, device));
  return p.name;
}

void* dev_alloc(size_t bytes) {
  void* p = nullptr;
  PLM_CU_CHECK(cudaMalloc(&p, bytes < 256 ? 256 : bytes));
  return p;
}
void dev_free(void* p) {
  if (p) cudaFree(p);
}
void h2d(void* dst, const void* src, size_t bytes) { PLM_CU_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice)); }
void d2h(void* dst, const void* src, size_t bytes) { PLM_CU_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost)); }
void dev_memset(void* dst, int value, size_t bytes) { PLM_CU_CHECK(cudaMemset(dst, value, bytes)); }
void synchronize() { PLM_CU_CHECK(cudaDeviceSynchronize()); }
void check_last(const char* where) {
  cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) e = cudaDeviceSynchronize();
  if (e != cudaSuccess) throw_cuda(e, where, __FILE__, __LINE__);
}

double time_gpu_ms(const std::function<void()>& fn, int iters) {
  cudaEvent_t a, b;
  PLM_CU_CHECK(cudaEventCreate(&a));
  PLM_CU_CHECK(cudaEventCreate(&b));
  fn();
  PLM_CU_CHECK(cudaDeviceSynchronize());
  std::vector<float> t;
  for (int i = 0; i < std::max(1, iters); ++i) {
    PLM_CU_CHECK(cudaEventRecord(a, 0));
    fn();
    PLM_CU_CHECK(cudaEventRecord(b, 0));
    PLM_CU_CHECK(cudaEventSynchronize(b));
    float ms = 0;
    PLM_CU_CHECK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

__global__ void k_f32_to_bf16(const float* __restrict__ s, bf16* __restrict__ d, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    d[i] = f2bf(s[i]);
}
__global__ void k_bf16_to_f32(const bf16* __restrict__ s, float* __restrict__ d, int64_t n) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
    d[i] = bf2f(s[i]);
}
static int grid_for(int64_t n) { return (int)std::min<int64_t>(ceil_div(n, 256), 65535); }
void f32_to_bf16_dev(const float* src, uint16_t* dst, int64_t n, void* stream) {
  if (n <= 0) return;
  k_f32_to_bf16<<<grid_for(n), 256, 0, as_stream(stream)>>>(src, reinterpret_cast<bf16*>(dst), n);
  PLM_CU_LAUNCH_CHECK();
}
void bf16_to_f32_dev(const uint16_t* src, float* dst, int64_t n, void* stream) {
  if (n <= 0) return;
  k_bf16_to_f32<<<grid_for(n), 256, 0, as_stream(stream)>>>(reinterpret_cast<const bf16*>(src), dst, n);
  PLM_CU_LAUNCH_CHECK();
}

}  // namespace plm::cuda
