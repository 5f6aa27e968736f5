// CPU matmul micro-benchmark for the shapes that dominate vision and prefill:
//   plm_gemm_bench [--threads 2] [--runs 5] [--m 1025]
// For each (M, K, N) it prints the median time, GFLOP/s and the max relative error of the bf16 path
// against the f32 path (same random bf16 weights), so a kernel change can be checked and timed alone.
//   plm_gemm_bench --decode-rows 1,2,4,8 [--threads 2] [--runs 5]
// One decode step's matmuls of PLM-1B (16 layers of q, k, v, o, gate, up, down and the LM head: 2.4 GB of bf16,
// far beyond the caches) for M rows at precision bf16: ms per step, tokens/s (M per step) and the weight read
// rate, so the batched decode GEMV can be timed without the model around it.
#include <cstdint>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/half.h"
#include "core/thread_pool.h"
#include "cpu/matmul.h"

using namespace plm;

namespace {

int decode_step_bench(const std::vector<int64_t>& rows_list, int runs, ThreadPool* pool) {
  const int64_t H = 2048, I = 8192, KV = 512, V = 128256, layers = 16;
  struct Mat { int64_t N, K; };
  std::vector<Mat> mats;
  for (int64_t l = 0; l < layers; ++l)
    for (const Mat m : {Mat{H, H}, Mat{KV, H}, Mat{KV, H}, Mat{H, H}, Mat{I, H}, Mat{I, H}, Mat{H, I}}) mats.push_back(m);
  mats.push_back({V, H});
  std::vector<std::vector<uint16_t>> w(mats.size());  // each [N, K] bf16
  std::vector<cpu::WeightMatrix> W(mats.size());
  std::mt19937 rng(1);
  double bytes = 0;
  for (size_t i = 0; i < mats.size(); ++i) {
    w[i].resize(static_cast<size_t>(mats[i].N * mats[i].K));
    for (size_t j = 0; j < w[i].size(); ++j) w[i][j] = f32_to_bf16(static_cast<float>(static_cast<int32_t>(rng() % 2001) - 1000) * 1e-4f);
    W[i].dtype = DType::kBF16;
    W[i].data = w[i].data();
    W[i].rows = mats[i].N;
    W[i].cols = mats[i].K;
    bytes += 2.0 * static_cast<double>(w[i].size());
  }
  int64_t max_rows = 1;
  for (int64_t r : rows_list) max_rows = std::max(max_rows, r);
  std::vector<float> x(static_cast<size_t>(max_rows * I)), y(static_cast<size_t>(max_rows * V));  // [M, K], [M, N]
  for (float& v : x) v = static_cast<float>(static_cast<int32_t>(rng() % 2001) - 1000) * 1e-3f;
  std::printf("decode step of PLM-1B's matmuls: %.2f GB of bf16 weights, %s\n", bytes / 1e9,
              cpu::decode_bf16_kernel_name() ? cpu::decode_bf16_kernel_name() : "(no bf16 GEMV)");
  std::printf("%4s %10s %10s %10s\n", "M", "ms/step", "tok/s", "GB/s");
  for (int64_t M : rows_list) {
    std::vector<double> ms;
    for (int r = 0; r < runs + 1; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      for (size_t i = 0; i < W.size(); ++i) cpu::matmul(x.data(), M, W[i], nullptr, y.data(), pool, cpu::Precision::kBF16);
      const auto t1 = std::chrono::steady_clock::now();
      if (r) ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    const double med = ms[ms.size() / 2];
    std::printf("%4lld %10.2f %10.2f %10.2f\n", static_cast<long long>(M), med, 1000.0 * M / med, bytes / med / 1e6);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 2, runs = 5;
  int64_t M = 1025;
  std::vector<int64_t> decode_rows;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--decode-rows")
      for (const char* p = argv[i + 1]; p; p = std::strchr(p, ',') ? std::strchr(p, ',') + 1 : nullptr)
        decode_rows.push_back(std::atoll(p));
    if (a == "--threads") threads = std::atoi(argv[i + 1]);
    else if (a == "--runs") runs = std::atoi(argv[i + 1]);
    else if (a == "--m") M = std::atoll(argv[i + 1]);
  }
  ThreadPool pool(threads);
  if (!decode_rows.empty()) return decode_step_bench(decode_rows, runs, &pool);
  struct Shape { const char* name; int64_t K, N; };
  const Shape shapes[] = {{"vit qkv", 1024, 3072}, {"vit proj", 1024, 1024}, {"vit fc1", 1024, 4096},
                          {"vit fc2", 4096, 1024}, {"llm gate+up", 2048, 8192}, {"llm down", 8192, 2048},
                          {"pe-g fc2", 8960, 1536}, {"odd K", 1056, 96}};
  std::mt19937 rng(1);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::printf("%-12s %6s %6s %6s %10s %9s %10s\n", "shape", "M", "K", "N", "ms", "GFLOP/s", "rel err");
  for (const Shape& s : shapes) {
    std::vector<uint16_t> w(static_cast<size_t>(s.N * s.K));  // [N, K] bf16
    for (auto& v : w) v = f32_to_bf16(nd(rng) * 0.05f);
    std::vector<float> x(static_cast<size_t>(M * s.K)), y(static_cast<size_t>(M * s.N)), yref(y.size());  // [M, K], [M, N]
    for (auto& v : x) v = nd(rng);
    cpu::WeightMatrix W;
    W.dtype = DType::kBF16;
    W.data = w.data();
    W.rows = s.N;
    W.cols = s.K;
    cpu::matmul(x.data(), M, W, nullptr, yref.data(), &pool, cpu::Precision::kF32);
    std::vector<double> ms;
    for (int r = 0; r < runs + 1; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      cpu::matmul(x.data(), M, W, nullptr, y.data(), &pool, cpu::Precision::kBF16);
      const auto t1 = std::chrono::steady_clock::now();
      if (r) ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    double err = 0, scale = 0;
    for (size_t i = 0; i < y.size(); ++i) {
      err = std::max(err, static_cast<double>(std::fabs(y[i] - yref[i])));
      scale = std::max(scale, static_cast<double>(std::fabs(yref[i])));
    }
    const double med = ms[ms.size() / 2];
    std::printf("%-12s %6lld %6lld %6lld %10.2f %9.0f %10.2e\n", s.name, static_cast<long long>(M),
                static_cast<long long>(s.K), static_cast<long long>(s.N), med, 2.0 * M * s.K * s.N / med / 1e6,
                err / scale);
  }
  return 0;
}
