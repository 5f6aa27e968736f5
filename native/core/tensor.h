// Element types and non-owning views of tensors (mostly weights in an mmap'd safetensors file).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace plm {

enum class DType { kF32, kF16, kBF16, kI32, kI64, kU8, kI8 };

size_t dtype_size(DType t);
const char* dtype_name(DType t);  // "F32", "BF16", ... as written in safetensors headers

struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // points into the mmap; never owned

  int64_t numel() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }
  std::string shape_string() const;  // "[2048, 1024]"
};

// Converts n elements of a float tensor (f32, f16, bf16) to f32.
void to_f32(DType t, const void* src, float* dst, int64_t n);

}  // namespace plm
