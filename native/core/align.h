// Cache-line alignment of buffers the SIMD / AMX kernels load whole lines or tiles from.
#pragma once
#include <cstdint>

namespace plm {

// p rounded up to the next multiple of 64 bytes (the buffer needs 63 bytes of slack for it).
template <class T>
T* align64(T* p) {
  return reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(p) + 63) & ~uintptr_t(63));
}

}  // namespace plm
