// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3"): the counter-based generator of
// token sampling, one definition for the CPU sampler (model/sampler.cpp) and the CUDA one (cuda/sampling.cu),
// so the same (seed, step) gives the same draw on both.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define PLM_HOST_DEVICE __host__ __device__
#else
#define PLM_HOST_DEVICE
#endif

namespace plm {

// The first output word for key `seed` and counter `counter` (the index of the token being drawn).
PLM_HOST_DEVICE inline uint32_t philox4x32_10(uint64_t seed, uint64_t counter) {
  uint32_t c0 = uint32_t(counter), c1 = uint32_t(counter >> 32), c2 = 0, c3 = 0;
  uint32_t k0 = uint32_t(seed), k1 = uint32_t(seed >> 32);
  for (int i = 0; i < 10; ++i) {
    const uint64_t p0 = uint64_t(0xD2511F53u) * c0, p1 = uint64_t(0xCD9E8D57u) * c2;
    const uint32_t hi0 = uint32_t(p0 >> 32), lo0 = uint32_t(p0), hi1 = uint32_t(p1 >> 32), lo1 = uint32_t(p1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c0;
}

// A uniform draw in [0, 1) with 24 bits: the sampler's u for (seed, step).
PLM_HOST_DEVICE inline float philox_uniform(uint64_t seed, uint64_t step) {
  return float(philox4x32_10(seed, step) >> 8) * (1.f / 16777216.f);
}

// Order-preserving map of a float to uint32 (larger float, larger key; -0 < +0), for exact thresholds.
PLM_HOST_DEVICE inline uint32_t float_order_key(uint32_t bits) {
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

}  // namespace plm
