// Checks cpu::matmul() against a double-precision reference on random inputs, on whatever kernel this CPU
// dispatches to (AVX-512 / AVX2 on x86, NEON on aarch64, portable elsewhere): every weight dtype (f32, bf16,
// f16, int8, q4), decode shapes M = 1..8 and blocked shapes (M = 9, 37, 300), odd K and N, with and without a
// thread pool and a bias. Needs no model and no Node, so it runs under qemu for cross builds:
//   plm_matmul_test [--threads N]
//   plm_matmul_test --isa-levels          # prints the PLM_CPU_ISA levels this CPU has, best first
//   PLM_CPU_ISA=avx2 plm_matmul_test      # the same checks on a lower ISA's kernels (cpu/cpu_features.h)
//   qemu-aarch64 -L /usr/aarch64-linux-gnu ./plm_matmul_test
// The reference uses exactly the weight values the kernel sees (bf16/f16 widened, q8/q4 dequantized) and
// accumulates in double. Pass criterion per output element:
//   |y - ref| <= 1e-5 * (sum_k |x_k * w_k| + |bias|) + 1e-30
// i.e. about 84 f32 ulps of the magnitude of the terms summed, generous for f32 accumulation of K <= 1000
// terms in any order, and far below the error of a wrong element, row or tail (O(1) relative). Exits 1 on
// any failure; prints the largest absolute and scaled error of each case. Precision::kBF16 (x rounded to bf16)
// has its own bound, stated with its cases below.
#include <cstdint>
#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/half.h"
#include "core/thread_pool.h"
#include "cpu/cpu_features.h"
#include "cpu/gemm_kernels.h"
#include "cpu/activations.h"
#include "cpu/matmul.h"
#include "cpu/norms.h"
#include "cpu/quant.h"
#include "cpu/rope.h"

using namespace plm;
using namespace plm::cpu;

namespace {

constexpr double kTol = 1e-5;

enum class WType { kF32, kBF16, kF16, kQ8, kQ4 };
const char* wtype_name(WType t) {
  switch (t) {
    case WType::kF32: return "f32";
    case WType::kBF16: return "bf16";
    case WType::kF16: return "f16";
    case WType::kQ8: return "int8";
    default: return "q4";
  }
}

// A random f16 with magnitude in about [2^-6, 2^2), a few of them subnormal (exercises the conversion).
uint16_t random_f16(std::mt19937& rng) {
  const uint32_t r = rng();
  const uint16_t sign = static_cast<uint16_t>((r & 1u) << 15);
  const uint16_t mant = static_cast<uint16_t>((r >> 1) & 0x3ffu);
  uint16_t exp = static_cast<uint16_t>(9 + (r >> 11) % 8);  // 2^(exp-15)
  if ((r >> 20) % 64 == 0) exp = 0;                          // subnormal
  return static_cast<uint16_t>(sign | (exp << 10) | mant);
}

struct Case {
  int64_t M, K, N;
};

struct Result {
  double max_abs = 0, max_scaled = 0;  // max |y - ref| and max |y - ref| / (sum |x w| + |b|)
  int64_t bad = 0;
};

// Random weights of type t in their stored form, and wf: the exact values the kernel multiplies by (as double).
struct TestWeights {
  std::vector<float> w32;
  std::vector<uint16_t> w16;
  QuantizedMatrix qm;
  std::vector<double> wf;
  WeightMatrix w;
};

TestWeights make_weights(WType t, int64_t N, int64_t K, std::mt19937& rng) {
  std::uniform_real_distribution<float> uni(-1.f, 1.f);
  TestWeights tw;
  std::vector<float>& w32 = tw.w32;
  std::vector<uint16_t>& w16 = tw.w16;
  std::vector<double>& wf = tw.wf;
  QuantizedMatrix& qm = tw.qm;
  WeightMatrix& w = tw.w;
  wf.resize(static_cast<size_t>(N * K));
  w.rows = N;
  w.cols = K;
  if (t == WType::kF32 || t == WType::kQ8 || t == WType::kQ4) {
    w32.resize(static_cast<size_t>(N * K));
    for (float& v : w32) v = uni(rng);
    w.dtype = DType::kF32;
    w.data = w32.data();
    for (size_t i = 0; i < w32.size(); ++i) wf[i] = w32[i];
    if (t != WType::kF32) {
      qm = quantize_matrix(w, t == WType::kQ8 ? Quant::kQ8 : Quant::kQ4, nullptr);
      w = qm.view();
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k) {
          double q, s;
          if (t == WType::kQ8) {
            q = reinterpret_cast<const int8_t*>(qm.data.data())[n * K + k];
            s = qm.scales[static_cast<size_t>(n)];
          } else {
            const int64_t g = k / kQ4Group, i = k % kQ4Group;
            const uint8_t b = qm.data[static_cast<size_t>((n * K + g * kQ4Group) / 2 + i % 16)];
            q = (i < 16 ? (b & 15) : (b >> 4)) - 8;
            s = qm.scales[static_cast<size_t>(n * (K / kQ4Group) + g)];
          }
          wf[static_cast<size_t>(n * K + k)] = q * s;
        }
    }
  } else {
    w16.resize(static_cast<size_t>(N * K));
    for (size_t i = 0; i < w16.size(); ++i) {
      if (t == WType::kBF16) {
        w16[i] = f32_to_bf16(uni(rng));
        wf[i] = bf16_to_f32(w16[i]);
      } else {
        w16[i] = random_f16(rng);
        wf[i] = f16_to_f32(w16[i]);
      }
    }
    w.dtype = t == WType::kBF16 ? DType::kBF16 : DType::kF16;
    w.data = w16.data();
  }
  return tw;
}

Result run_case(WType t, const Case& c, bool use_bias, ThreadPool* pool, std::mt19937& rng) {
  const int64_t M = c.M, K = c.K, N = c.N;
  std::uniform_real_distribution<float> uni(-1.f, 1.f);
  std::vector<float> x(static_cast<size_t>(M * K)), bias(static_cast<size_t>(N));
  for (float& v : x) v = uni(rng);
  for (float& v : bias) v = uni(rng);

  const TestWeights tw = make_weights(t, N, K, rng);
  const WeightMatrix& w = tw.w;
  const std::vector<double>& wf = tw.wf;

  // Canary after y: a kernel must not write past M*N.
  std::vector<float> y(static_cast<size_t>(M * N + 16), 12345.f);
  matmul(x.data(), M, w, use_bias ? bias.data() : nullptr, y.data(), pool);

  Result r;
  for (int64_t i = M * N; i < M * N + 16; ++i)
    if (y[static_cast<size_t>(i)] != 12345.f) ++r.bad;
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double ref = use_bias ? bias[static_cast<size_t>(n)] : 0.0, mag = std::fabs(ref);
      for (int64_t k = 0; k < K; ++k) {
        const double p = static_cast<double>(x[static_cast<size_t>(m * K + k)]) * wf[static_cast<size_t>(n * K + k)];
        ref += p;
        mag += std::fabs(p);
      }
      const double got = y[static_cast<size_t>(m * N + n)];
      const double err = std::fabs(got - ref);
      const double scaled = err / (mag + 1e-30);
      if (!(err <= kTol * mag + 1e-30)) ++r.bad;  // also catches NaN
      if (!(err <= r.max_abs)) r.max_abs = err;
      if (!(scaled <= r.max_scaled)) r.max_scaled = scaled;
    }
  return r;
}

// A bf16 [rows, cols] matrix with values uniform in [-scale, scale], stored in `storage`.
WeightMatrix random_bf16(std::vector<uint16_t>& storage, int64_t rows, int64_t cols, std::mt19937& rng, float scale = 1.f) {
  std::uniform_real_distribution<float> uni(-scale, scale);
  storage.resize(static_cast<size_t>(rows * cols));
  for (auto& v : storage) v = f32_to_bf16(uni(rng));
  WeightMatrix w;
  w.dtype = DType::kBF16;
  w.data = storage.data();
  w.rows = rows;
  w.cols = cols;
  return w;
}

}  // namespace

#if defined(__x86_64__) || defined(_M_X64)
namespace plm::cpu::kernels {  // quant.cpp's decode kernels (gemm_quant_avx512.cpp), called directly here
bool gemv_vnni(const float* x, int64_t M, const MatmulOut* outs, int count, ThreadPool* pool);
}  // namespace plm::cpu::kernels
#endif
namespace plm::cpu::kernels {  // norms.cpp's portable loops, which norm() on every CPU must reproduce bit for bit
void rms_norm_generic(const float* x, const float* w, float* y, int64_t rows, int64_t dim, float eps);
void layer_norm_generic(const float* x, const float* w, const float* b, float* y, int64_t rows, int64_t dim, float eps);
}  // namespace plm::cpu::kernels

int main(int argc, char** argv) {
  int threads = 2;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--threads" && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else if (a == "--isa-levels") {
      for (const std::string& l : cpu_isa_levels()) std::printf("%s\n", l.c_str());
      return 0;
    } else {
      std::fprintf(stderr, "usage: plm_matmul_test [--threads N] | --isa-levels\n");
      return 2;
    }
  }
  // The default int8 and q4 paths on AVX-512 VNNI CPUs round x to int8 blocks (an approximation by design, see
  // quant.cpp); the cases below check the exact-activation kernels against the tolerance above, and the VNNI
  // kernels are checked against those further down.
  setenv("PLM_Q8_EXACT_X", "1", 1);
  setenv("PLM_Q4_EXACT_X", "1", 1);

  std::string feats;
  for (const std::string& f : cpu_feature_names()) feats += (feats.empty() ? "" : " ") + f;
  std::printf("isa: %s%s%s%s; matmul kernel: %s; cpu features: %s; threads: %d\n", cpu_isa(),
              cpu_isa_request().empty() ? "" : " (PLM_CPU_ISA=", cpu_isa_request().c_str(),
              cpu_isa_request().empty() ? "" : (cpu_isa_note().empty() ? ")" : (": " + cpu_isa_note() + ")").c_str()),
              matmul_kernel_name(), feats.empty() ? "(none)" : feats.c_str(), threads);
  std::printf("tolerance: |y - ref| <= %.0e * (sum|x*w| + |bias|), ref in double\n", kTol);

  ThreadPool pool(threads);
  std::mt19937 rng(20240607);
  // K: not multiples of 16 (1, 3, 13, 67, 300 crosses the 256-deep panels), and multiples of 32 for q4.
  const std::vector<Case> cases = {
      {1, 1, 5},     {1, 3, 7},     {1, 13, 33},   {1, 67, 37},  {1, 1000, 41}, {2, 67, 37},   {3, 67, 37},
      {4, 67, 37},   {5, 67, 37},   {6, 67, 37},   {7, 67, 37},  {8, 67, 37},   {8, 1000, 19}, {9, 13, 17},
      {37, 300, 53}, {37, 67, 16},  {37, 5, 1},    {300, 40, 70}, {1, 64, 9},   {3, 96, 70},   {8, 256, 37},
      {37, 96, 53},  {4, 512, 130}, {300, 288, 33}};
  const WType types[] = {WType::kF32, WType::kBF16, WType::kF16, WType::kQ8, WType::kQ4};

  int failures = 0, total = 0;
  auto record = [&](bool ok) {  // counts one case
    ++total;
    if (!ok) ++failures;
    return ok;
  };
  for (WType t : types) {
    double type_abs = 0, type_scaled = 0;
    for (const Case& c : cases) {
      if (t == WType::kQ4 && c.K % kQ4Group != 0) continue;  // q4 needs K % 32 == 0
      // Twice: with a bias on the thread pool, and without a bias on the calling thread alone.
      const Result a = run_case(t, c, /*use_bias=*/true, &pool, rng);
      const Result b = run_case(t, c, /*use_bias=*/false, nullptr, rng);
      const double abs_err = std::max(a.max_abs, b.max_abs), scaled = std::max(a.max_scaled, b.max_scaled);
      type_abs = std::max(type_abs, abs_err);
      type_scaled = std::max(type_scaled, scaled);
      total += 2;
      const int bad = (a.bad ? 1 : 0) + (b.bad ? 1 : 0);
      failures += bad;
      std::printf("  %-4s M=%-3" PRId64 " K=%-4" PRId64 " N=%-3" PRId64 "  max abs err %.3e  max scaled err %.3e%s\n",
                  wtype_name(t), c.M, c.K, c.N, abs_err, scaled, bad ? "  FAIL" : "");
      if (a.bad) std::printf("    with bias, pool: %" PRId64 " elements out of tolerance or written past y\n", a.bad);
      if (b.bad) std::printf("    no bias, 1 thread: %" PRId64 " elements out of tolerance or written past y\n", b.bad);
    }
    std::printf("%-4s all cases: max abs err %.3e, max scaled err %.3e\n", wtype_name(t), type_abs, type_scaled);
  }
  // Precision::kBF16. Where a bf16 kernel runs (bf16_rounds_activations: AMX or AVX512-BF16 with bf16 weights, K and
  // N multiples of 32; ARM64 BFMMLA with bf16 weights), x is
  // rounded to bf16 (nearest even) and the products are summed in f32. Per output, against double references:
  //   (1) the kernel's own arithmetic: |y - (sum bf16(x_k) w_k + b)| <= 1e-5 * (sum |bf16(x_k) w_k| + |b|), the
  //       f32 tolerance above, so a wrong element, row, slice or tail fails;
  //   (2) the stated error of the bf16 path against the exact (f32 mode) value:
  //       |y - (sum x_k w_k + b)| <= (2^-8 + 1e-5) * (sum |x_k w_k| + |b|)   (bf16's unit roundoff is 2^-8).
  // Elsewhere (other dtypes, shapes, CPUs without a bf16 kernel) kBF16 runs the f32 kernels: (2) holds a fortiori.
  // M from the decode GEMV's 1..8 to a vision tile's 1025, K across the 256-deep slices, N in 32- and 64-column
  // panels (and odd N for the GEMV); with a bias on the pool, and without on the calling thread.
  {
    std::uniform_real_distribution<float> uni1(-1.f, 1.f);
    const Case bf16_cases[] = {{9, 32, 32},    {16, 64, 96},    {31, 288, 64},  {37, 96, 160},  {100, 1056, 64},
                               {300, 512, 224}, {1025, 256, 128}, {12, 2048, 32}, {64, 96, 33},   {40, 100, 64},
                               {1, 2048, 37},  {3, 96, 160},    {5, 1056, 17},  {8, 288, 64},   {8, 100, 64}};
    for (const bool f16 : {false, true}) {
      double worst1 = 0, worst2 = 0;
      for (const Case& c : bf16_cases) {
        if (f16 && c.M > 100) continue;  // the f32 fallback: a few shapes suffice
        for (const bool with_bias : {true, false}) {
          std::vector<uint16_t> w16(static_cast<size_t>(c.N * c.K));
          std::vector<double> wf(w16.size());
          for (size_t i = 0; i < w16.size(); ++i) {
            w16[i] = f16 ? random_f16(rng) : f32_to_bf16(uni1(rng));
            wf[i] = f16 ? f16_to_f32(w16[i]) : bf16_to_f32(w16[i]);
          }
          WeightMatrix w;
          w.dtype = f16 ? DType::kF16 : DType::kBF16;
          w.data = w16.data();
          w.rows = c.N;
          w.cols = c.K;
          std::vector<float> x(static_cast<size_t>(c.M * c.K)), bias(static_cast<size_t>(c.N));
          for (auto& v : x) v = uni1(rng) * (uni1(rng) > 0.9f ? 8.f : 1.f);
          for (auto& v : bias) v = uni1(rng);
          const float* b = with_bias ? bias.data() : nullptr;
          std::vector<float> y(static_cast<size_t>(c.M * c.N + 16), 12345.f);
          const bool kernel = bf16_rounds_activations(c.M, w);
          matmul(x.data(), c.M, w, b, y.data(), with_bias ? &pool : nullptr, Precision::kBF16);
          int64_t bad = 0;
          for (int64_t i = c.M * c.N; i < c.M * c.N + 16; ++i) bad += y[static_cast<size_t>(i)] != 12345.f;
          for (int64_t m = 0; m < c.M; ++m)
            for (int64_t n = 0; n < c.N; ++n) {
              double exact = b ? b[n] : 0.0, rounded = exact, mag = std::fabs(exact), mag_r = mag;
              for (int64_t k = 0; k < c.K; ++k) {
                const float xv = x[static_cast<size_t>(m * c.K + k)];
                const double wv = wf[static_cast<size_t>(n * c.K + k)];
                exact += double(xv) * wv;
                mag += std::fabs(double(xv) * wv);
                const double xr = bf16_to_f32(f32_to_bf16(xv));
                rounded += xr * wv;
                mag_r += std::fabs(xr * wv);
              }
              const double got = y[static_cast<size_t>(m * c.N + n)];
              const double e2 = std::fabs(got - exact) / ((std::ldexp(1.0, -8) + kTol) * mag + 1e-30);
              if (!(e2 <= 1.0)) ++bad;
              worst2 = std::max(worst2, e2);
              if (kernel) {
                const double e1 = std::fabs(got - rounded) / (kTol * mag_r + 1e-30);
                if (!(e1 <= 1.0)) ++bad;
                worst1 = std::max(worst1, e1);
              }
            }
          record(bad == 0);
          std::printf("  bf16 precision, %s weights M=%-4" PRId64 " K=%-4" PRId64 " N=%-3" PRId64 " %-7s %s%s\n",
                      f16 ? "f16 " : "bf16", c.M, c.K, c.N, with_bias ? "bias" : "no bias",
                      kernel ? "bf16 kernel" : "f32 kernels", bad ? "  FAIL" : "");
        }
      }
      std::printf("bf16 precision, %s weights: worst error %.3f of bound (1) (kernel arithmetic), %.3f of bound (2) "
                  "(vs exact)\n", f16 ? "f16 " : "bf16", worst1, worst2);
    }
  }
  // Prepacked bf16 tiles (WeightMatrix::bf16_tiles) must give bit-identical results to the per-call packing
  // of the same AMX kernel, including K split into several 1024 slices and partial row blocks.
  const Case packed_cases[] = {{37, 64, 96}, {300, 1056, 64}, {1025, 2048, 96}, {64, 4096, 32}};
  std::uniform_real_distribution<float> uni(-1.f, 1.f);
  for (const Case& c : packed_cases) {
    std::vector<uint16_t> w16;
    WeightMatrix w = random_bf16(w16, c.N, c.K, rng);
    std::vector<float> x(static_cast<size_t>(c.M * c.K)), bias(static_cast<size_t>(c.N));
    for (auto& v : x) v = uni(rng);
    for (auto& v : bias) v = uni(rng);
    std::vector<float> plain(static_cast<size_t>(c.M * c.N)), packed(plain.size());
    matmul(x.data(), c.M, w, bias.data(), plain.data(), &pool, Precision::kBF16);
    PackedTiles tiles;
    if (!prepack_bf16_tiles(&w, &tiles, &pool)) {
      std::printf("  bf16 prepacked M=%" PRId64 " K=%" PRId64 " N=%" PRId64 ": not run (no bf16 tile kernel here)\n", c.M, c.K, c.N);
      continue;
    }
    matmul(x.data(), c.M, w, bias.data(), packed.data(), &pool, Precision::kBF16);
    const bool same = std::memcmp(plain.data(), packed.data(), plain.size() * sizeof(float)) == 0;
    ++total;
    if (!same) ++failures;
    std::printf("  bf16 prepacked M=%-4" PRId64 " K=%-4" PRId64 " N=%-3" PRId64 "  %s\n", c.M, c.K, c.N,
                same ? "bit-identical to per-call packing" : "DIFFERS from per-call packing  FAIL");
  }
  // matmul_group (q/k/v, gate/up) must equal one matmul per matrix, bit for bit, in both precisions.
  for (Precision prec : {Precision::kF32, Precision::kBF16}) {
    const int64_t M = 77, K = 2048, Ns[3] = {256, 64, 96};
    std::vector<float> x(static_cast<size_t>(M * K));
    for (auto& v : x) v = uni(rng);
    std::vector<uint16_t> w16[3];
    WeightMatrix ws[3];
    std::vector<float> one[3], grouped[3];
    MatmulOut outs[3];
    for (int i = 0; i < 3; ++i) {
      ws[i] = random_bf16(w16[i], Ns[i], K, rng);
      one[i].resize(static_cast<size_t>(M * Ns[i]));
      grouped[i].resize(one[i].size());
      matmul(x.data(), M, ws[i], nullptr, one[i].data(), &pool, prec);
      outs[i] = {&ws[i], nullptr, grouped[i].data()};
    }
    matmul_group(x.data(), M, outs, 3, &pool, prec);
    bool same = true;
    for (int i = 0; i < 3; ++i)
      same = same && std::memcmp(one[i].data(), grouped[i].data(), one[i].size() * sizeof(float)) == 0;
    ++total;
    if (!same) ++failures;
    std::printf("  matmul_group %s, 3 matrices M=%" PRId64 " K=%" PRId64 ": %s\n", prec == Precision::kBF16 ? "bf16" : "f32",
                M, K, same ? "bit-identical to one matmul each" : "DIFFERS from one matmul each  FAIL");
  }
  // The decode kernels that round x to int8 per block of 32 (VNNI, the default on such CPUs: int8 and q4), against
  // the exact-activation result: |y - y_exact| <= sum_k |w_k| * amax(x's block of k) / 254 (x's rounding error)
  // + 1e-5 * sum|x*w|, per output; M 1..8 and K multiples of 128 (the q4 kernel's chunk).
#if defined(__x86_64__) || defined(_M_X64)
  const bool vnni_here = cpu_features().avx512f && cpu_features().avx512bw && cpu_features().avx512dq &&
                         cpu_features().avx512_vnni && cpu_features().avx512vl;
  for (Quant qk : {Quant::kQ8, Quant::kQ4})
    for (const Case& c : {Case{1, 128, 40}, Case{3, 2048, 72}, Case{8, 1024, 67}}) {
      if (!vnni_here) {
        std::printf("  %s x int8 VNNI GEMV: not run (no AVX-512 VNNI here)\n", quant_name(qk));
        break;
      }
      std::vector<float> wf(static_cast<size_t>(c.N * c.K)), x(static_cast<size_t>(c.M * c.K)), bias(static_cast<size_t>(c.N));
      for (auto& v : wf) v = uni(rng);
      for (auto& v : x) v = uni(rng) * (uni(rng) > 0.8f ? 8.f : 1.f);  // a few large values per block
      for (auto& v : bias) v = uni(rng);
      WeightMatrix wsrc;
      wsrc.dtype = DType::kF32;
      wsrc.data = wf.data();
      wsrc.rows = c.N;
      wsrc.cols = c.K;
      const QuantizedMatrix qm = quantize_matrix(wsrc, qk, nullptr);
      const WeightMatrix w = qm.view();
      std::vector<float> exact(static_cast<size_t>(c.M * c.N)), fast(exact.size()), row(static_cast<size_t>(c.K));
      matmul(x.data(), c.M, w, bias.data(), exact.data(), &pool);  // exact-activation kernel (env set above)
      const MatmulOut one{&w, bias.data(), fast.data()};
      const bool ran = kernels::gemv_vnni(x.data(), c.M, &one, 1, &pool);
      int64_t bad = 0;
      double worst = 0;
      for (int64_t n = 0; n < c.N; ++n) {
        dequantize_row(w, n, row.data());
        for (int64_t m = 0; m < c.M; ++m) {
          double bound = 0, mag = 0;
          for (int64_t k = 0; k < c.K; ++k) {
            float amax = 0;
            for (int64_t j = k / 32 * 32; j < k / 32 * 32 + 32; ++j) amax = std::max(amax, std::fabs(x[static_cast<size_t>(m * c.K + j)]));
            bound += std::fabs(row[static_cast<size_t>(k)]) * amax / 254.0;
            mag += std::fabs(row[static_cast<size_t>(k)] * x[static_cast<size_t>(m * c.K + k)]);
          }
          const double err = std::fabs(double(fast[static_cast<size_t>(m * c.N + n)]) - exact[static_cast<size_t>(m * c.N + n)]);
          const double lim = bound * 1.01 + 1e-5 * mag;
          if (!(err <= lim)) ++bad;
          worst = std::max(worst, err / lim);
        }
      }
      ++total;
      if (!ran || bad) ++failures;
      std::printf("  %s x int8 VNNI GEMV M=%" PRId64 " K=%-4" PRId64 " N=%-3" PRId64 ": worst error %.2f of its bound%s\n",
                  quant_name(qk), c.M, c.K, c.N, worst, !ran ? "  NOT RUN  FAIL" : bad ? "  FAIL" : "");
    }
#endif
  // Epilogue::kGeluErf must equal the matmul followed by gelu_erf over y, and kAccumulate the matmul followed by
  // y += scale * v (y += v without scale), bit for bit: in the AMX tile epilogue (bf16, prepacked or not, K in
  // one or several slices, partial row blocks, with and without bias, inside a group next to a plain output),
  // or as the pass afterwards (f32).
  const Case epi_cases[] = {{37, 64, 96}, {300, 1056, 64}, {1025, 1024, 128}, {64, 4096, 32}};
  for (Epilogue epi : {Epilogue::kGeluErf, Epilogue::kAccumulate})
    for (Precision prec : {Precision::kF32, Precision::kBF16})
      for (const Case& c : epi_cases)
        for (int variant = 0; variant < 3; ++variant) {  // 0: bias (+ scale), 1: neither, 2: prepacked, in a group
          std::vector<uint16_t> w16;
          WeightMatrix w = random_bf16(w16, c.N, c.K, rng);
          std::vector<float> x(static_cast<size_t>(c.M * c.K)), bias(static_cast<size_t>(c.N)), scale(bias.size());
          for (auto& v : x) v = uni(rng);
          for (auto& v : bias) v = uni(rng);
          for (auto& v : scale) v = uni(rng) * 0.1f;
          PackedTiles tiles;
          if (variant == 2 && prec == Precision::kBF16) prepack_bf16_tiles(&w, &tiles, &pool);
          const float* b = variant == 1 ? nullptr : bias.data();
          const float* sc = epi == Epilogue::kAccumulate && variant != 1 ? scale.data() : nullptr;
          std::vector<float> start(static_cast<size_t>(c.M * c.N));  // y before an accumulate
          for (auto& v : start) v = uni(rng) * 4.f;
          std::vector<float> ref = start, fused = start, plain(start.size()), plain2(start.size()), v(start.size());
          matmul(x.data(), c.M, w, b, v.data(), &pool, prec);
          if (epi == Epilogue::kGeluErf) {
            ref = v;
            gelu_erf(ref.data(), c.M * c.N, &pool);
          } else {
            for (int64_t r = 0; r < c.M; ++r)
              for (int64_t n = 0; n < c.N; ++n) {
                const size_t i = static_cast<size_t>(r * c.N + n);
                volatile float add = sc ? sc[n] * v[i] : v[i];  // rounded apart from the sum
                ref[i] = ref[i] + add;
              }
          }
          if (variant == 2) {
            MatmulOut outs[2] = {{&w, b, plain.data()}, {&w, b, fused.data(), epi, sc}};
            matmul_group(x.data(), c.M, outs, 2, &pool, prec);
            matmul(x.data(), c.M, w, b, plain2.data(), &pool, prec);
          } else {
            matmul(x.data(), c.M, w, b, fused.data(), &pool, prec, epi, sc);
          }
          bool same = std::memcmp(ref.data(), fused.data(), ref.size() * sizeof(float)) == 0;
          if (variant == 2) same = same && std::memcmp(plain.data(), plain2.data(), plain.size() * sizeof(float)) == 0;
          ++total;
          if (!same) ++failures;
          std::printf("  %s epilogue %s M=%-4" PRId64 " K=%-4" PRId64 " N=%-3" PRId64 " %-17s %s\n",
                      epi == Epilogue::kGeluErf ? "gelu      " : "accumulate", prec == Precision::kBF16 ? "bf16" : "f32 ", c.M,
                      c.K, c.N, variant == 0 ? "bias" : variant == 1 ? "no bias" : "group, prepacked",
                      same ? "bit-identical to matmul, then the pass" : "DIFFERS from matmul, then the pass  FAIL");
        }
  // fc1 (GELU) -> fc2 (accumulate) through bf16 tiles (MatmulOut::tiles, matmul_from_tiles) must equal the same
  // two matmuls through an f32 [M, mlp], bit for bit, where the AMX kernel runs (partial row blocks, sliced K;
  // M > 80: below, AMX CPUs run the GEMV without tile chains).
  for (const Case& c : {Case{101, 64, 96}, Case{1025, 1024, 4096}, Case{300, 2048, 1056}}) {
    const int64_t M = c.M, C = c.K, mlp = c.N;
    std::vector<uint16_t> w1, w2;
    const WeightMatrix fc1 = random_bf16(w1, mlp, C, rng, 0.1f), fc2 = random_bf16(w2, C, mlp, rng, 0.1f);
    if (!tile_chain_available(Precision::kBF16, M, fc1) || !tile_chain_available(Precision::kBF16, M, fc2)) {
      std::printf("  fc1 -> fc2 through bf16 tiles M=%" PRId64 ": not run (no bf16 tile kernel here)\n", M);
      continue;
    }
    std::vector<float> x(static_cast<size_t>(M * C)), b1(static_cast<size_t>(mlp)), b2(static_cast<size_t>(C)), g(b2.size());
    for (auto& v : x) v = uni(rng);
    for (auto& v : b1) v = uni(rng);
    for (auto& v : b2) v = uni(rng);
    for (auto& v : g) v = uni(rng);
    std::vector<float> f(static_cast<size_t>(M * mlp)), ref(x.size()), out(x.size());
    for (size_t i = 0; i < ref.size(); ++i) ref[i] = out[i] = uni(rng);
    matmul(x.data(), M, fc1, b1.data(), f.data(), &pool, Precision::kBF16, Epilogue::kGeluErf);
    matmul(f.data(), M, fc2, b2.data(), ref.data(), &pool, Precision::kBF16, Epilogue::kAccumulate, g.data());
    TileActivations act;
    act.resize(M, mlp);
    uint16_t* tiles = act.data();
    std::fill(tiles, tiles + (M + 31) / 32 * 32 * mlp, uint16_t(0x7fc0));  // NaN: nothing left over may reach a real row
    MatmulOut o1{&fc1, b1.data(), nullptr, Epilogue::kGeluErf};
    o1.tiles = tiles;
    matmul_group(x.data(), M, &o1, 1, &pool, Precision::kBF16);
    const MatmulOut o2{&fc2, b2.data(), out.data(), Epilogue::kAccumulate, g.data()};
    matmul_from_tiles(tiles, M, &o2, 1, &pool);
    const bool same = record(std::memcmp(ref.data(), out.data(), ref.size() * sizeof(float)) == 0);
    std::printf("  fc1 -> fc2 through bf16 tiles M=%-4" PRId64 " C=%-4" PRId64 " mlp=%-4" PRId64 ": %s\n", M, C, mlp,
                same ? "bit-identical to the f32 hand-over" : "DIFFERS from the f32 hand-over  FAIL");
  }
  // SwiGLU -> down through bf16 tiles (silu_mul_to_tiles, matmul_from_tiles) must equal silu_mul and the matmul
  // over the f32 product, bit for bit.
  for (const Case& c : {Case{109, 2048, 256}, Case{512, 8192, 2048}}) {
    const int64_t M = c.M, H = c.N, I = c.K;
    std::vector<uint16_t> wd;
    const WeightMatrix down = random_bf16(wd, H, I, rng, 0.1f);
    if (!tile_chain_available(Precision::kBF16, M, down)) {
      std::printf("  SwiGLU -> down through bf16 tiles M=%" PRId64 ": not run (no bf16 tile kernel here)\n", M);
      continue;
    }
    std::vector<float> gate(static_cast<size_t>(M * I)), up(gate.size()), prod(gate.size());
    for (auto& v : gate) v = uni(rng) * 4.f;
    for (auto& v : up) v = uni(rng) * 4.f;
    std::vector<float> ref(static_cast<size_t>(M * H)), out(ref.size());
    for (size_t i = 0; i < ref.size(); ++i) ref[i] = out[i] = uni(rng);
    silu_mul(gate.data(), up.data(), prod.data(), M * I, &pool);
    matmul(prod.data(), M, down, nullptr, ref.data(), &pool, Precision::kBF16, Epilogue::kAccumulate);
    TileActivations act;
    act.resize(M, I);
    uint16_t* tiles = act.data();
    silu_mul_to_tiles(gate.data(), up.data(), M, I, tiles, &pool);
    const MatmulOut o{&down, nullptr, out.data(), Epilogue::kAccumulate};
    matmul_from_tiles(tiles, M, &o, 1, &pool);
    const bool same = record(std::memcmp(ref.data(), out.data(), ref.size() * sizeof(float)) == 0);
    std::printf("  SwiGLU -> down through bf16 tiles M=%-4" PRId64 " I=%-4" PRId64 " H=%-4" PRId64 ": %s\n", M, I, H,
                same ? "bit-identical to silu_mul, then the matmul" : "DIFFERS from silu_mul, then the matmul  FAIL");
  }
  // gate/up with SwiGLU in the epilogue (Epilogue::kSwiGLU) must write the tiles that matmul_group's two
  // products and silu_mul_to_tiles write, bit for bit: RMSNorm fused or not, K in one or several slices,
  // partial row blocks, weights prepacked or packed per call.
  for (const Case& c : {Case{109, 256, 96}, Case{300, 2048, 512}, Case{96, 1056, 64}})
    for (int variant = 0; variant < 2; ++variant) {  // 0: RMSNorm, per-call packing; 1: no norm, prepacked
      const int64_t M = c.M, H = c.K, I = c.N;
      std::vector<uint16_t> wg, wu;
      WeightMatrix gate = random_bf16(wg, I, H, rng, 0.1f), up = random_bf16(wu, I, H, rng, 0.1f);
      if (!tile_chain_available(Precision::kBF16, M, gate)) {
        std::printf("  gate/up with SwiGLU in the epilogue M=%" PRId64 ": not run (no bf16 tile kernel here)\n", M);
        break;
      }
      PackedTiles pg, pu;
      if (variant == 1) prepack_bf16_tiles(&gate, &pg, &pool), prepack_bf16_tiles(&up, &pu, &pool);
      std::vector<float> x(static_cast<size_t>(M * H)), nw(static_cast<size_t>(H)), normed(x.size());
      for (auto& v : x) v = uni(rng) * 3.f;
      for (auto& v : nw) v = 1.f + uni(rng) * 0.2f;
      const RowNorm norm{RowNorm::kRmsNorm, nw.data(), nullptr, 1e-5f};
      std::vector<float> g(static_cast<size_t>(M * I)), u(g.size());
      const MatmulOut pair[2] = {{&gate, nullptr, g.data()}, {&up, nullptr, u.data()}};
      TileActivations ref, out;
      ref.resize(M, I);
      out.resize(M, I);
      const size_t elems = static_cast<size_t>((M + 31) / 32 * 32 * I);
      std::fill(out.data(), out.data() + elems, uint16_t(0x7fc0));  // NaN: every element must be written
      MatmulOut fused{&gate, nullptr, nullptr, Epilogue::kSwiGLU};
      fused.tiles = out.data();
      fused.w_up = &up;
      if (variant == 0) {
        matmul_group(x.data(), M, pair, 2, &pool, Precision::kBF16, norm, normed.data());
        matmul_group(x.data(), M, &fused, 1, &pool, Precision::kBF16, norm, normed.data());
      } else {
        matmul_group(x.data(), M, pair, 2, &pool, Precision::kBF16);
        matmul_group(x.data(), M, &fused, 1, &pool, Precision::kBF16);
      }
      silu_mul_to_tiles(g.data(), u.data(), M, I, ref.data(), &pool);
      const bool same = record(std::memcmp(ref.data(), out.data(), elems * sizeof(uint16_t)) == 0);
      std::printf("  gate/up with SwiGLU in the epilogue M=%-4" PRId64 " H=%-4" PRId64 " I=%-4" PRId64 " %-20s %s\n", M, H,
                  I, variant == 0 ? "RMSNorm" : "prepacked", same ? "bit-identical to the products, then silu_mul_to_tiles"
                                                                   : "DIFFERS from the products, then silu_mul_to_tiles  FAIL");
    }
  // qkv with RoPE in the epilogue (Epilogue::kRopeInterleaved) must equal the plain matmul followed by
  // rope_interleaved_rows on q and k of each image, bit for bit: in the AMX epilogue (bf16) and as the pass (f32),
  // with and without a CLS row, images not aligned to 16 or 32 rows, a bias.
  for (Precision prec : {Precision::kF32, Precision::kBF16})
    for (const int prefix : {1, 0}) {
      const int heads = 2, hd = 64;
      const int64_t tokens = 37, images = 3, M = tokens * images, C = int64_t(heads) * hd, K = 96, N = 3 * C;
      std::vector<uint16_t> w16;
      const WeightMatrix w = random_bf16(w16, N, K, rng, 0.2f);
      std::vector<float> x(static_cast<size_t>(M * K)), bias(static_cast<size_t>(N));
      std::vector<float> cs(static_cast<size_t>((tokens - prefix) * hd / 2)), sn(cs.size());
      for (auto& v : x) v = uni(rng);
      for (auto& v : bias) v = uni(rng);
      for (size_t i = 0; i < cs.size(); ++i) cs[i] = std::cos(0.37f * float(i)), sn[i] = std::sin(0.37f * float(i));
      std::vector<float> ref(static_cast<size_t>(M * N)), got(ref.size(), NAN);
      const MatmulOut plain{&w, bias.data(), ref.data()};
      matmul_group(x.data(), M, &plain, 1, &pool, prec);
      for (int64_t img = 0; img < images; ++img)
        for (int part = 0; part < 2; ++part)
          rope_interleaved_rows(ref.data() + img * tokens * N + part * C, N, 0, tokens, heads, hd, prefix, cs.data(), sn.data());
      const RopeInterleaved rope{cs.data(), sn.data(), tokens, prefix, hd, 2 * C};
      MatmulOut fused{&w, bias.data(), got.data(), Epilogue::kRopeInterleaved};
      fused.rope = &rope;
      matmul_group(x.data(), M, &fused, 1, &pool, prec);
      const bool same = record(std::memcmp(ref.data(), got.data(), ref.size() * sizeof(float)) == 0);
      std::printf("  qkv with RoPE in the epilogue %s M=%-4" PRId64 " N=%-4" PRId64 " prefix %d: %s\n",
                  prec == Precision::kBF16 ? "bf16" : "f32 ", M, N, prefix,
                  same ? "bit-identical to the matmul, then rope_interleaved_rows" : "DIFFERS from the matmul, then rope_interleaved_rows  FAIL");
    }
#if defined(__x86_64__) || defined(_M_X64)
  // Decode's q/k/v in one region (kernels::gemv_vnni over 3 outputs: x quantized once) must equal one VNNI GEMV per
  // matrix, bit for bit: int8 and q4, M 1 and 3, matrices of different heights, with and without bias.
  if (cpu_features().avx512_vnni && cpu_features().avx512bw && cpu_features().avx512vl)
    for (Quant qk : {Quant::kQ8, Quant::kQ4})
      for (const int64_t M : {int64_t(1), int64_t(3)}) {
        const int64_t K = 256, Ns[3] = {512, 128, 136};
        std::vector<float> x(static_cast<size_t>(M * K)), bias(512);
        for (auto& v : x) v = uni(rng);
        for (auto& v : bias) v = uni(rng);
        QuantizedMatrix qm[3];
        WeightMatrix w[3];
        std::vector<float> ref[3], got[3];
        MatmulOut outs[3];
        bool ran = true;
        for (int i = 0; i < 3; ++i) {
          std::vector<float> wf(static_cast<size_t>(Ns[i] * K));
          for (auto& v : wf) v = uni(rng);
          WeightMatrix src;
          src.dtype = DType::kF32;
          src.data = wf.data();
          src.rows = Ns[i];
          src.cols = K;
          qm[i] = quantize_matrix(src, qk, nullptr);
          w[i] = qm[i].view();
          ref[i].assign(static_cast<size_t>(M * Ns[i]), 0.f);
          got[i].assign(ref[i].size(), NAN);
          const float* b = i == 1 ? nullptr : bias.data();
          const MatmulOut one{&w[i], b, ref[i].data()};
          ran = ran && kernels::gemv_vnni(x.data(), M, &one, 1, &pool);
          outs[i] = MatmulOut{&w[i], b, got[i].data()};
        }
        ran = ran && kernels::gemv_vnni(x.data(), M, outs, 3, &pool);
        bool same = ran;
        for (int i = 0; i < 3; ++i) same = same && std::memcmp(ref[i].data(), got[i].data(), ref[i].size() * sizeof(float)) == 0;
        record(same);
        std::printf("  %s q/k/v-shaped VNNI GEMVs in one region M=%" PRId64 ": %s\n", qk == Quant::kQ8 ? "int8" : "q4  ", M,
                    same ? "bit-identical to one GEMV per matrix" : "DIFFERS from one GEMV per matrix (or did not run)  FAIL");
      }
#endif
  // layer_norm / rms_norm (the AVX-512 rows where the CPU has them) must give the portable loops' bits: odd row
  // counts (rows go in pairs), dims with a tail of 1-15 floats, in place, large offsets (the double sums).
  for (const int64_t dim : {int64_t(1024), int64_t(2048), int64_t(1000), int64_t(7), int64_t(23)})
    for (const bool rms : {false, true}) {
      const int64_t rows = 5;
      std::vector<float> x(static_cast<size_t>(rows * dim)), w(static_cast<size_t>(dim)), b(w.size());
      for (size_t i = 0; i < x.size(); ++i) x[i] = uni(rng) * 3.f + (i % 3 == 0 ? 40.f : 0.f);
      for (auto& v : w) v = 1.f + uni(rng) * 0.3f;
      for (auto& v : b) v = uni(rng) * 0.1f;
      std::vector<float> ref(x.size()), got(x.size()), inplace = x;
      if (rms) {
        kernels::rms_norm_generic(x.data(), w.data(), ref.data(), rows, dim, 1e-5f);
        rms_norm(x.data(), w.data(), got.data(), rows, dim, 1e-5f);
        rms_norm(inplace.data(), w.data(), inplace.data(), rows, dim, 1e-5f);
      } else {
        kernels::layer_norm_generic(x.data(), w.data(), b.data(), ref.data(), rows, dim, 1e-6f);
        layer_norm(x.data(), w.data(), b.data(), got.data(), rows, dim, 1e-6f);
        layer_norm(inplace.data(), w.data(), b.data(), inplace.data(), rows, dim, 1e-6f);
      }
      const bool same = record(std::memcmp(ref.data(), got.data(), ref.size() * sizeof(float)) == 0 &&
                               std::memcmp(ref.data(), inplace.data(), ref.size() * sizeof(float)) == 0);
      std::printf("  %s rows=%" PRId64 " dim=%-4" PRId64 ": %s\n", rms ? "rms_norm  " : "layer_norm", rows, dim,
                  same ? "bit-identical to the portable loop (also in place)" : "DIFFERS from the portable loop  FAIL");
    }
  // matmul_group with a RowNorm must equal norming x first (cpu/norms.h) and then the group, bit for bit: on AMX
  // the rows are normed inside the bf16 conversion, elsewhere into the caller's buffer.
  for (Precision prec : {Precision::kF32, Precision::kBF16})
    for (RowNorm::Kind kind : {RowNorm::kLayerNorm, RowNorm::kRmsNorm}) {
      const int64_t M = 301, K = 1024, Ns[2] = {96, 64};
      std::vector<float> x(static_cast<size_t>(M * K)), nw(static_cast<size_t>(K)), nb(static_cast<size_t>(K));
      for (auto& v : x) v = uni(rng) * 3.f + 0.5f;
      for (auto& v : nw) v = 1.f + uni(rng) * 0.2f;
      for (auto& v : nb) v = uni(rng) * 0.1f;
      std::vector<uint16_t> w16[2];
      WeightMatrix ws[2];
      std::vector<float> ref[2], fused[2], bias(static_cast<size_t>(Ns[0]));
      for (auto& v : bias) v = uni(rng);
      MatmulOut ref_outs[2], fused_outs[2];
      for (int i = 0; i < 2; ++i) {
        ws[i] = random_bf16(w16[i], Ns[i], K, rng);
        ref[i].resize(static_cast<size_t>(M * Ns[i]));
        fused[i].resize(ref[i].size());
        const Epilogue act = i == 0 ? Epilogue::kGeluErf : Epilogue::kStore;
        ref_outs[i] = {&ws[i], i == 0 ? bias.data() : nullptr, ref[i].data(), act};
        fused_outs[i] = {&ws[i], i == 0 ? bias.data() : nullptr, fused[i].data(), act};
      }
      const RowNorm norm{kind, nw.data(), nb.data(), 1e-5f};
      std::vector<float> normed(x.size()), scratch(x.size());
      if (kind == RowNorm::kLayerNorm) layer_norm(x.data(), nw.data(), nb.data(), normed.data(), M, K, 1e-5f, &pool);
      else rms_norm(x.data(), nw.data(), normed.data(), M, K, 1e-5f, &pool);
      matmul_group(normed.data(), M, ref_outs, 2, &pool, prec);
      matmul_group(x.data(), M, fused_outs, 2, &pool, prec, norm, scratch.data());
      bool same = true;
      for (int i = 0; i < 2; ++i)
        same = same && std::memcmp(ref[i].data(), fused[i].data(), ref[i].size() * sizeof(float)) == 0;
      ++total;
      if (!same) ++failures;
      std::printf("  norm+matmul_group %s %-10s M=%" PRId64 " K=%" PRId64 " (gelu output + plain output): %s\n",
                  prec == Precision::kBF16 ? "bf16" : "f32 ", kind == RowNorm::kLayerNorm ? "LayerNorm" : "RMSNorm", M, K,
                  same ? "bit-identical to norm, then matmul_group" : "DIFFERS from norm, then matmul_group  FAIL");
    }
  // Row invariance: a row's result must not depend on the other rows of the call. Batched decode needs it of the
  // GEMV (M = 1..8 at any precision: each row equal to that row alone); the decoder at f32 needs it of every M
  // (Precision::kF32RowInvariant: equal to the GEMV's rows). Bit for bit, every weight type.
  for (WType t : types) {
    for (const int64_t K : {int64_t(64), int64_t(96), int64_t(40), int64_t(1056), int64_t(1152)}) {
      if ((t == WType::kQ4 || t == WType::kQ8) && K % kQ4Group != 0) continue;
      const int64_t N = 45, M = 40;
      const TestWeights tw = make_weights(t, N, K, rng);
      std::vector<float> x(static_cast<size_t>(M * K)), bias(static_cast<size_t>(N));
      for (auto& v : x) v = uni(rng);
      for (auto& v : bias) v = uni(rng);
      std::vector<float> alone(static_cast<size_t>(M * N));  // [M, N] each row computed alone
      for (int64_t m = 0; m < M; ++m)
        matmul(x.data() + m * K, 1, tw.w, bias.data(), alone.data() + m * N, &pool, Precision::kF32);
      bool gemv_same = true;
      for (int64_t g = 2; g <= kGemvRows; ++g)
        for (int64_t m0 = 0; m0 + g <= M; m0 += 7) {
          std::vector<float> y(static_cast<size_t>(g * N));
          matmul(x.data() + m0 * K, g, tw.w, bias.data(), y.data(), &pool, Precision::kF32);
          gemv_same = gemv_same && std::memcmp(y.data(), alone.data() + m0 * N, y.size() * sizeof(float)) == 0;
        }
      // Precision kBF16 (the bf16 decode GEMV where the CPU has AVX512-BF16): the same invariance, and within
      // bf16 rounding of x (|x| < 1, 2^-9 relative each) of the f32 result: |err| <= 2^-8 * sum_k |x_k w_k| + slack.
      if (t == WType::kBF16 || t == WType::kF32 || t == WType::kF16) {
        std::vector<float> alone16(static_cast<size_t>(M * N));
        for (int64_t m = 0; m < M; ++m)
          matmul(x.data() + m * K, 1, tw.w, bias.data(), alone16.data() + m * N, &pool, Precision::kBF16);
        for (int64_t g = 2; g <= kGemvRows; ++g)
          for (int64_t m0 = 0; m0 + g <= M; m0 += 7) {
            std::vector<float> y(static_cast<size_t>(g * N));
            matmul(x.data() + m0 * K, g, tw.w, bias.data(), y.data(), &pool, Precision::kBF16);
            gemv_same = gemv_same && std::memcmp(y.data(), alone16.data() + m0 * N, y.size() * sizeof(float)) == 0;
          }
        double worst = 0;
        for (int64_t m = 0; m < M; ++m)
          for (int64_t n = 0; n < N; ++n) {
            double mag = 0;
            for (int64_t k = 0; k < K; ++k) mag += std::fabs(double(x[size_t(m * K + k)]) * tw.wf[size_t(n * K + k)]);
            const double err = std::fabs(double(alone16[size_t(m * N + n)]) - alone[size_t(m * N + n)]);
            worst = std::max(worst, err / (mag * (1.0 / 256) + 1e-5));
          }
        gemv_same = gemv_same && worst <= 1.0;
      }
      bool rows_same = true;
      for (const int64_t m : {int64_t(9), int64_t(17), M}) {
        std::vector<float> y(static_cast<size_t>(m * N));
        matmul(x.data(), m, tw.w, bias.data(), y.data(), &pool, Precision::kF32RowInvariant);
        rows_same = rows_same && std::memcmp(y.data(), alone.data(), y.size() * sizeof(float)) == 0;
      }
#if defined(__x86_64__) || defined(_M_X64)
      // The default int8 / q4 decode on VNNI CPUs (x rounded to int8 per row block) is row-invariant too.
      if ((t == WType::kQ8 || t == WType::kQ4) && cpu_features().avx512_vnni && K % 128 == 0) {
        std::vector<float> one(static_cast<size_t>(M * N)), many(static_cast<size_t>(kGemvRows * N));
        for (int64_t m = 0; m < M; ++m) {
          const MatmulOut out{&tw.w, bias.data(), one.data() + m * N};
          kernels::gemv_vnni(x.data() + m * K, 1, &out, 1, &pool);
        }
        for (int64_t m0 = 0; m0 + kGemvRows <= M; m0 += kGemvRows) {
          const MatmulOut out{&tw.w, bias.data(), many.data()};
          kernels::gemv_vnni(x.data() + m0 * K, kGemvRows, &out, 1, &pool);
          gemv_same = gemv_same && std::memcmp(many.data(), one.data() + m0 * N, many.size() * sizeof(float)) == 0;
        }
      }
#endif
      record(gemv_same);
      record(rows_same);
      std::printf("  row invariance %-4s K=%-4" PRId64 ": GEMV rows (M = 2..8; f32, and bf16 within its bound) %s; kF32RowInvariant (M = 9, 17, 40) %s\n",
                  wtype_name(t), K, gemv_same ? "equal alone" : "DIFFER  FAIL", rows_same ? "equal alone" : "DIFFER  FAIL");
    }
  }
  // The bf16 decode GEMV at PLM's shapes (N a multiple of 32 for the AMX GEMV; 48 takes the vector GEMV): rows of M = 1 to
  // decode_rows_per_call (what the decoder sends: 80 on AMX, else 8) equal to each row alone, bit for bit, and within bf16 rounding of x of the f32
  // product; on AMX also equal to the prefill kernel's rows (matmul_amx_bf16, M = 40), so that a token computed in
  // a prompt and the same token decoded agree.
  if (const char* gemv = decode_bf16_kernel_name()) {
    const bool amx_cpu = std::string(gemv).rfind("amx", 0) == 0;
    for (const auto& [N, K] : {std::pair<int64_t, int64_t>{32, 32}, {48, 96}, {96, 1056}, {160, 2048}, {512, 64}}) {
      std::vector<uint16_t> w16;
      const WeightMatrix w = random_bf16(w16, N, K, rng);
      const int64_t M = 96;
      std::uniform_real_distribution<float> uni(-1.f, 1.f);
      std::vector<float> x(static_cast<size_t>(M * K)), bias(static_cast<size_t>(N));  // [M, K], [N]
      for (auto& v : x) v = uni(rng);
      for (auto& v : bias) v = uni(rng);
      std::vector<float> alone(static_cast<size_t>(M * N)), exact(alone.size());  // [M, N]
      for (int64_t m = 0; m < M; ++m) {
        matmul(x.data() + m * K, 1, w, bias.data(), alone.data() + m * N, &pool, Precision::kBF16);
        matmul(x.data() + m * K, 1, w, bias.data(), exact.data() + m * N, &pool, Precision::kF32);
      }
      bool same = true;
      for (int64_t g = 2; g <= kAmxGemvRows; ++g)
        for (int64_t m0 = 0; m0 + g <= M; m0 += g < 17 ? 5 : 7) {
          std::vector<float> y(static_cast<size_t>(g * N));
          if (g > decode_rows_per_call(Precision::kBF16, w)) continue;
          matmul(x.data() + m0 * K, g, w, bias.data(), y.data(), &pool, Precision::kBF16);
          same = same && std::memcmp(y.data(), alone.data() + m0 * N, y.size() * sizeof(float)) == 0;
        }
      double worst = 0;
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n) {
          double mag = 0;
          for (int64_t k = 0; k < K; ++k) mag += std::fabs(double(x[size_t(m * K + k)]) * bf16_to_f32(w16[size_t(n * K + k)]));
          worst = std::max(worst, std::fabs(double(alone[size_t(m * N + n)]) - exact[size_t(m * N + n)]) / (mag / 256 + 1e-5));
        }
      const bool amx = amx_cpu && decode_rows_per_call(Precision::kBF16, w) == kAmxGemvRows;
      bool prefill_same = true;
      if (amx) {
        std::vector<float> prefill(alone.size());
        matmul(x.data(), M, w, bias.data(), prefill.data(), &pool, Precision::kBF16);
        prefill_same = std::memcmp(prefill.data(), alone.data(), alone.size() * sizeof(float)) == 0;
      }
      record(same && worst <= 1.0 && prefill_same);
      std::printf("  decode GEMV %s N=%-4" PRId64 " K=%-4" PRId64 ": rows of M = 2..%d %s alone; bf16 error %.2f of its bound%s\n",
                  amx ? "amx   " : "vector", N, K, static_cast<int>(decode_rows_per_call(Precision::kBF16, w)), same ? "equal" : "DIFFER from", worst,
                  !amx ? "" : prefill_same ? "; equal to the prefill kernel's rows" : "; DIFFERS from the prefill kernel's rows  FAIL");
    }
  }
  if (failures) {
    std::printf("FAILED: %d of %d cases\n", failures, total);
    return 1;
  }
  std::printf("OK: %d cases\n", total);
  return 0;
}
