// CPU matmul micro-benchmark for the shapes that dominate vision and prefill:
//   plm_gemm_bench [--threads 2] [--runs 5] [--m 1025]
// For each (M, K, N) it prints the median time, GFLOP/s and the max relative error of the bf16 path
// against the f32 path (same random bf16 weights), so a kernel change can be checked and timed alone.
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

int main(int argc, char** argv) {
  int threads = 2, runs = 5;
  int64_t M = 1025;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--threads") threads = std::atoi(argv[i + 1]);
    else if (a == "--runs") runs = std::atoi(argv[i + 1]);
    else if (a == "--m") M = std::atoll(argv[i + 1]);
  }
  ThreadPool pool(threads);
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
