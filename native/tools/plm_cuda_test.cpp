// Parity test of the CUDA backend, in the style of ggml's test-backend-ops: every CUDA op against the CPU
// op (native/cpu/*) on fresh random inputs, then end to end against the Hugging Face goldens of the fixture
// checkpoints through plm::Engine with backend "cuda".
//
//   plm_cuda_test [--json OUT.json] [--seed N] [--quick] [--gemm-paths mma,wgmma128,...] [FIXTURE_DIR ...]
// --gemm-paths: the GEMM kernels the op tests and timings sweep (default: every kernel the device runs;
// name a new kernel explicitly, in a process of its own, until it has passed once).
//
// Prints one line per check and a last line "N passed, M failed"; exit code 1 on any failure. Without a
// usable GPU it prints "SKIPPED: no CUDA device (reason)" and exits 0: it never reports a pass it did not run.
//
// Error measure: max|gpu - cpu| / max(max|cpu|, 1e-6) over the whole output ("normalized max error").
// Bounds: outputs rounded to bf16 (or computed from bf16 operands with bf16 intermediates): 1e-2 (2e-2 for
// attention, whose P is rounded to bf16 before P·V); f32 outputs from f32 math: 1e-5 (1e-4 where the
// summation order differs over K up to 8192 or angles come from cosf/sinf).
#include <cstdint>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/half.h"
#include "core/json.h"
#include "core/safetensors.h"
#include "core/thread_pool.h"
#include "cpu/activations.h"
#include "cpu/attention.h"
#include "cpu/matmul.h"
#include "cpu/norms.h"
#include "cpu/rope.h"
#include "cuda/attention.cuh"
#include "cuda/elementwise.cuh"
#include "cuda/gemm.cuh"
#include "cuda/norms.cuh"
#include "cuda/rope.cuh"
#include "cuda/runtime.cuh"
#include "cuda/sampling.cuh"
#include "model/engine.h"
#include "model/sampler.h"

using namespace plm;
namespace cu = plm::cuda;

namespace {

struct Result {
  std::string name, detail;
  double err = 0, bound = 0;
  bool pass = false;
  bool info = false;  // informational: does not count
};
std::vector<Result> g_results;
std::mt19937_64 g_rng;

void report(const std::string& name, double err, double bound, const std::string& detail = "", bool info = false) {
  Result r{name, detail, err, bound, std::isfinite(err) && err <= bound, info};
  g_results.push_back(r);
  std::printf("%-6s %-58s err %.3e  bound %.1e  %s\n", info ? "info" : (r.pass ? "ok" : "FAIL"), name.c_str(), err,
              bound, detail.c_str());
  std::fflush(stdout);
}
void report_bool(const std::string& name, bool ok, const std::string& detail) {
  Result r{name, detail, ok ? 0.0 : 1.0, 0.0, ok, false};
  g_results.push_back(r);
  std::printf("%-6s %-58s %s\n", ok ? "ok" : "FAIL", name.c_str(), detail.c_str());
  std::fflush(stdout);
}

double norm_err(const float* a, const float* b, size_t n) {
  double mx = 0, mb = 0;
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(a[i])) return INFINITY;
    mx = std::max(mx, double(std::fabs(a[i] - b[i])));
    mb = std::max(mb, double(std::fabs(b[i])));
  }
  return mx / std::max(mb, 1e-6);
}

// Random values rounded to bf16: bf16 bits and their f32 values.
struct Bf {
  std::vector<uint16_t> h;
  std::vector<float> f;
};
Bf rand_bf16(size_t n, float scale) {
  std::normal_distribution<float> d(0.f, scale);
  Bf r;
  r.h.resize(n);
  r.f.resize(n);
  for (size_t i = 0; i < n; ++i) {
    r.h[i] = f32_to_bf16(d(g_rng));
    r.f[i] = bf16_to_f32(r.h[i]);
  }
  return r;
}
std::vector<float> rand_f32(size_t n, float scale, float mean = 0.f) {
  std::normal_distribution<float> d(mean, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g_rng);
  return v;
}

// RAII device buffer.
struct Dev {
  void* p = nullptr;
  size_t bytes = 0;
  explicit Dev(size_t b) : bytes(b) {
    p = cu::dev_alloc(b);
    cu::dev_memset(p, 0xFF, b);  // poison: NaN for f32 and bf16
  }
  template <typename T>
  Dev(const std::vector<T>& v) : Dev(v.size() * sizeof(T)) {
    cu::h2d(p, v.data(), bytes);
  }
  ~Dev() { cu::dev_free(p); }
  Dev(const Dev&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(p);
  }
  std::vector<float> f32(size_t n) const {
    std::vector<float> v(n);
    cu::d2h(v.data(), p, n * 4);
    return v;
  }
  std::vector<float> bf16(size_t n) const {
    std::vector<uint16_t> h(n);
    cu::d2h(h.data(), p, n * 2);
    std::vector<float> v(n);
    for (size_t i = 0; i < n; ++i) v[i] = bf16_to_f32(h[i]);
    return v;
  }
};

std::string shape_str(std::initializer_list<int64_t> s) {
  std::string r;
  for (auto x : s) r += (r.empty() ? "" : "x") + std::to_string(x);
  return r;
}

// ---------------- op tests ----------------
void test_gemm(ThreadPool* pool, int64_t M, int64_t N, int64_t K, cu::EpMode mode, bool bias, bool gelu, bool scale) {
  Bf A = rand_bf16(size_t(M * K), 1.f), W = rand_bf16(size_t(N * K), 0.05f);
  std::vector<float> b = rand_f32(size_t(N), 0.5f), sc = rand_f32(size_t(N), 0.1f, 0.3f);
  std::vector<float> resid = rand_f32(size_t(M * N), 1.f);
  std::vector<float> ref(static_cast<size_t>(M * N));
  cpu::WeightMatrix wm{DType::kBF16, W.h.data(), N, K};
  cpu::matmul(A.f.data(), M, wm, bias ? b.data() : nullptr, ref.data(), pool);
  if (gelu) cpu::gelu_erf(ref.data(), M * N);
  if (mode == cu::EpMode::kAddF32)
    for (int64_t i = 0; i < M * N; ++i) ref[size_t(i)] = resid[size_t(i)] + (scale ? sc[size_t(i % N)] : 1.f) * ref[size_t(i)];
  Dev dA(A.h), dW(W.h), db(b), dsc(sc);
  Dev dout(mode == cu::EpMode::kStoreBf16 ? size_t(M * N) * 2 : size_t(M * N) * 4);
  if (mode == cu::EpMode::kAddF32) cu::h2d(dout.p, resid.data(), resid.size() * 4);
  cu::Epilogue ep;
  ep.mode = mode;
  ep.bias = bias ? db.as<float>() : nullptr;
  ep.gelu = gelu;
  ep.scale = scale ? dsc.as<float>() : nullptr;
  ep.out = dout.p;
  ep.ldo = N;
  cu::gemm_bf16(dA.as<uint16_t>(), K, dW.as<uint16_t>(), K, M, N, K, ep, nullptr);
  cu::check_last("gemm");
  std::vector<float> got = mode == cu::EpMode::kStoreBf16 ? dout.bf16(size_t(M * N)) : dout.f32(size_t(M * N));
  const char* mn = mode == cu::EpMode::kStoreBf16 ? "bf16" : mode == cu::EpMode::kStoreF32 ? "f32" : "add_f32";
  const double bound = mode == cu::EpMode::kStoreBf16 ? 1e-2 : 1e-4;
  report(std::string("gemm ") + shape_str({M, N, K}) + " " + mn + (bias ? "+bias" : "") + (gelu ? "+gelu" : "") +
             (scale ? "+scale" : "") + (K % 8 ? " (fallback)" : "") + " [" + cu::gemm_path_name(cu::gemm_path()) + "]",
         norm_err(got.data(), ref.data(), ref.size()), bound);
}

void test_gemv(ThreadPool* pool, int64_t N, int64_t K, cu::EpMode mode, bool swiglu) {
  const int64_t rows = swiglu ? 2 * N : N;
  Bf x = rand_bf16(size_t(K), 1.f), W = rand_bf16(size_t(rows * K), 0.05f);
  std::vector<float> full(static_cast<size_t>(rows)), resid = rand_f32(size_t(N), 1.f), ref(static_cast<size_t>(N));
  cpu::WeightMatrix wm{DType::kBF16, W.h.data(), rows, K};
  cpu::matmul(x.f.data(), 1, wm, nullptr, full.data(), pool);
  for (int64_t i = 0; i < N; ++i) {
    if (swiglu) {
      float g = full[size_t(i)];
      cpu::silu_mul(&g, &full[size_t(N + i)], &ref[size_t(i)], 1);
    } else if (mode == cu::EpMode::kAddF32) {
      ref[size_t(i)] = resid[size_t(i)] + full[size_t(i)];
    } else {
      ref[size_t(i)] = full[size_t(i)];
    }
  }
  Dev dx(x.h), dW(W.h);
  Dev dout(size_t(N) * 4);
  if (mode == cu::EpMode::kAddF32) cu::h2d(dout.p, resid.data(), size_t(N) * 4);
  cu::Epilogue ep;
  ep.mode = swiglu ? cu::EpMode::kStoreBf16 : mode;
  ep.out = dout.p;
  ep.ldo = N;
  cu::gemv_bf16(dx.as<uint16_t>(), dW.as<uint16_t>(), N, K, ep, swiglu, nullptr);
  cu::check_last("gemv");
  std::vector<float> got = ep.mode == cu::EpMode::kStoreBf16 ? dout.bf16(size_t(N)) : dout.f32(size_t(N));
  report(std::string("gemv ") + shape_str({N, K}) + (swiglu ? " swiglu" : ep.mode == cu::EpMode::kStoreBf16 ? " bf16" : mode == cu::EpMode::kAddF32 ? " add_f32" : " f32"),
         norm_err(got.data(), ref.data(), ref.size()), ep.mode == cu::EpMode::kStoreBf16 ? 1e-2 : 1e-4);
}

void test_norms(int64_t rows, int64_t dim) {
  std::vector<float> x = rand_f32(size_t(rows * dim), 2.f, 0.5f), w = rand_f32(size_t(dim), 0.2f, 1.f),
                     b = rand_f32(size_t(dim), 0.2f);
  std::vector<float> rr(x.size()), rl(x.size());
  cpu::rms_norm(x.data(), w.data(), rr.data(), rows, dim, 1e-5f);
  cpu::layer_norm(x.data(), w.data(), b.data(), rl.data(), rows, dim, 1e-5f);
  Dev dx(x), dw(w), db(b), of(x.size() * 4), ob(x.size() * 2);
  cu::rms_norm(dx.as<float>(), dim, dw.as<float>(), 1e-5f, rows, dim, ob.as<uint16_t>(), of.as<float>(), nullptr);
  cu::check_last("rms_norm");
  auto gf = of.f32(x.size()), gb = ob.bf16(x.size());
  report("rms_norm " + shape_str({rows, dim}) + " f32", norm_err(gf.data(), rr.data(), rr.size()), 1e-5);
  report("rms_norm " + shape_str({rows, dim}) + " bf16", norm_err(gb.data(), rr.data(), rr.size()), 1e-2);
  cu::layer_norm(dx.as<float>(), dim, dw.as<float>(), db.as<float>(), 1e-5f, rows, dim, ob.as<uint16_t>(),
                 of.as<float>(), nullptr);
  cu::check_last("layer_norm");
  gf = of.f32(x.size());
  gb = ob.bf16(x.size());
  report("layer_norm " + shape_str({rows, dim}) + " f32", norm_err(gf.data(), rl.data(), rl.size()), 1e-5);
  report("layer_norm " + shape_str({rows, dim}) + " bf16", norm_err(gb.data(), rl.data(), rl.size()), 1e-2);
}

void test_flash(ThreadPool* pool, int batch, int q_len, int kv_len, int heads, int kvh, int hd, bool causal,
                int q_offset) {
  const int64_t qs = int64_t(heads) * hd, ks = int64_t(kvh) * hd;
  Bf q = rand_bf16(size_t(batch) * q_len * qs, 1.f), k = rand_bf16(size_t(batch) * kv_len * ks, 1.f),
     v = rand_bf16(size_t(batch) * kv_len * ks, 1.f);
  std::vector<float> ref(static_cast<size_t>(batch) * q_len * qs);
  cpu::AttentionShape sh;
  sh.q_len = q_len;
  sh.kv_len = kv_len;
  sh.heads = heads;
  sh.kv_heads = kvh;
  sh.head_dim = hd;
  sh.q_stride = qs;
  sh.kv_stride = ks;
  sh.scale = 1.f / std::sqrt(float(hd));
  sh.causal = causal;
  sh.q_offset = q_offset;
  for (int b = 0; b < batch; ++b)
    cpu::attention(q.f.data() + size_t(b) * q_len * qs, k.f.data() + size_t(b) * kv_len * ks,
                   v.f.data() + size_t(b) * kv_len * ks, ref.data() + size_t(b) * q_len * qs, sh, pool);
  Dev dq(q.h), dk(k.h), dv(v.h), dout(ref.size() * 2);
  cu::FlashParams p;
  p.q = dq.as<uint16_t>();
  p.k = dk.as<uint16_t>();
  p.v = dv.as<uint16_t>();
  p.o = dout.as<uint16_t>();
  p.q_stride = p.o_stride = qs;
  p.kv_stride = ks;
  p.q_batch_stride = p.o_batch_stride = q_len * qs;
  p.kv_batch_stride = kv_len * ks;
  p.batch = batch;
  p.q_len = q_len;
  p.kv_len = kv_len;
  p.heads = heads;
  p.kv_heads = kvh;
  p.head_dim = hd;
  p.scale = sh.scale;
  p.causal = causal;
  p.q_offset = q_offset;
  auto t0 = std::chrono::steady_clock::now();
  cu::flash_attention(p, nullptr);
  cu::check_last("flash_attention");
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  auto got = dout.bf16(ref.size());
  char d[96];
  std::snprintf(d, sizeof d, "%s%.2f ms (first call)", cu::flash_supported(hd) ? "mma " : "generic ", ms);
  report("attention b" + std::to_string(batch) + " q" + std::to_string(q_len) + " kv" + std::to_string(kv_len) + " h" +
             std::to_string(heads) + "/" + std::to_string(kvh) + " hd" + std::to_string(hd) +
             (causal ? " causal@" + std::to_string(q_offset) : " bidir"),
         norm_err(got.data(), ref.data(), ref.size()), 2e-2, d);
}

void test_decode_attn(ThreadPool* pool, int len, int cap, int heads, int kvh, int hd) {
  const int64_t ks = int64_t(kvh) * hd;
  std::vector<float> q = rand_f32(size_t(heads) * hd, 1.f);
  Bf k = rand_bf16(size_t(cap) * ks, 1.f), v = rand_bf16(size_t(cap) * ks, 1.f);
  std::vector<float> ref(static_cast<size_t>(heads) * hd);
  cpu::AttentionShape sh;
  sh.q_len = 1;
  sh.kv_len = len;
  sh.heads = heads;
  sh.kv_heads = kvh;
  sh.head_dim = hd;
  sh.q_stride = int64_t(heads) * hd;
  sh.kv_stride = ks;
  sh.scale = 1.f / std::sqrt(float(hd));
  cpu::attention(q.data(), k.f.data(), v.f.data(), ref.data(), sh, pool);
  std::vector<int32_t> pos{len - 1};
  Dev dq(q), dk(k.h), dv(v.h), dpos(pos), part(static_cast<size_t>(heads) * cu::kDecodeSplits * (hd + 2) * 4),
      dout(ref.size() * 2);
  cu::decode_attention(dq.as<float>(), dk.as<uint16_t>(), dv.as<uint16_t>(), dpos.as<int32_t>(), heads, kvh, hd,
                       sh.scale, part.as<float>(), dout.as<uint16_t>(), nullptr);
  cu::check_last("decode_attention");
  auto got = dout.bf16(ref.size());
  report("decode_attention len" + std::to_string(len) + " h" + std::to_string(heads) + "/" + std::to_string(kvh) +
             " hd" + std::to_string(hd),
         norm_err(got.data(), ref.data(), ref.size()), 1e-2);
}

void test_rope_llama(int M, int nh, int nkv, int hd, int pos0) {
  const int nqkv = (nh + 2 * nkv) * hd, half = hd / 2;
  std::vector<float> inv(static_cast<size_t>(half));
  for (int i = 0; i < half; ++i) inv[size_t(i)] = float(1.0 / std::pow(500000.0, 2.0 * i / hd));
  Bf x = rand_bf16(size_t(M) * nqkv, 1.f);
  std::vector<float> cs(static_cast<size_t>(M) * half), sn(static_cast<size_t>(M) * half);
  cpu::rope_llama_table(inv.data(), hd, pos0, M, cs.data(), sn.data());
  std::vector<float> q(static_cast<size_t>(M) * nh * hd), k(static_cast<size_t>(M) * nkv * hd), vv(static_cast<size_t>(M) * nkv * hd);
  for (int t = 0; t < M; ++t) {
    std::copy_n(&x.f[size_t(t) * nqkv], nh * hd, &q[size_t(t) * nh * hd]);
    std::copy_n(&x.f[size_t(t) * nqkv + nh * hd], nkv * hd, &k[size_t(t) * nkv * hd]);
    std::copy_n(&x.f[size_t(t) * nqkv + (nh + nkv) * hd], nkv * hd, &vv[size_t(t) * nkv * hd]);
  }
  cpu::rope_rotate_half(q.data(), M, nh, hd, cs.data(), sn.data());
  cpu::rope_rotate_half(k.data(), M, nkv, hd, cs.data(), sn.data());
  const int cap = pos0 + M;
  Dev dx(x.h), dinv(inv), kc(static_cast<size_t>(cap) * nkv * hd * 2), vc(static_cast<size_t>(cap) * nkv * hd * 2);
  cu::rope_llama_prefill(dx.as<uint16_t>(), nqkv, M, nh, nkv, hd, pos0, dinv.as<float>(), kc.as<uint16_t>(),
                         vc.as<uint16_t>(), nullptr);
  cu::check_last("rope_llama_prefill");
  auto gx = dx.bf16(x.h.size());
  std::vector<float> gq(q.size());
  for (int t = 0; t < M; ++t) std::copy_n(&gx[size_t(t) * nqkv], nh * hd, &gq[size_t(t) * nh * hd]);
  auto gk = kc.bf16(size_t(cap) * nkv * hd), gv = vc.bf16(size_t(cap) * nkv * hd);
  const std::string tag = " " + shape_str({M, nh, nkv, hd}) + " pos0 " + std::to_string(pos0);
  report("rope_llama_prefill q" + tag, norm_err(gq.data(), q.data(), q.size()), 1e-2);
  report("rope_llama_prefill k->cache" + tag, norm_err(gk.data() + size_t(pos0) * nkv * hd, k.data(), k.size()), 1e-2);
  report("rope_llama_prefill v->cache" + tag, norm_err(gv.data() + size_t(pos0) * nkv * hd, vv.data(), vv.size()), 0);
  // decode variant (f32 in, f32 q out)
  std::vector<float> xf = rand_f32(size_t(nqkv), 1.f);
  std::vector<float> c1(static_cast<size_t>(half)), s1(static_cast<size_t>(half));
  cpu::rope_llama_table(inv.data(), hd, pos0, 1, c1.data(), s1.data());
  std::vector<float> q1(xf.begin(), xf.begin() + nh * hd);
  cpu::rope_rotate_half(q1.data(), 1, nh, hd, c1.data(), s1.data());
  std::vector<int32_t> pos{pos0};
  Dev dxf(xf), dpos(pos), dq(q1.size() * 4);
  cu::rope_llama_decode(dxf.as<float>(), dpos.as<int32_t>(), nh, nkv, hd, dinv.as<float>(), dq.as<float>(),
                        kc.as<uint16_t>(), vc.as<uint16_t>(), nullptr);
  cu::check_last("rope_llama_decode");
  auto g1 = dq.f32(q1.size());
  report("rope_llama_decode q f32" + tag, norm_err(g1.data(), q1.data(), q1.size()), 1e-4);
}

void test_rope_2d(int tiles, int P, int prefix, int heads, int hd) {
  const int N = P + prefix, C = heads * hd, half = hd / 2;
  Bf x = rand_bf16(size_t(tiles) * N * 3 * C, 1.f);
  std::vector<float> ang = rand_f32(size_t(P) * half, 3.f), cs(ang.size()), sn(ang.size());
  for (size_t i = 0; i < ang.size(); ++i) {
    cs[i] = std::cos(ang[i]);
    sn[i] = std::sin(ang[i]);
  }
  std::vector<float> ref = x.f;
  std::vector<float> part(static_cast<size_t>(N) * C);
  for (int t = 0; t < tiles; ++t)
    for (int w = 0; w < 2; ++w) {
      for (int r = 0; r < N; ++r) std::copy_n(&ref[(size_t(t) * N + r) * 3 * C + w * C], C, &part[size_t(r) * C]);
      cpu::rope_interleaved(part.data(), N, heads, hd, prefix, cs.data(), sn.data());
      for (int r = 0; r < N; ++r) std::copy_n(&part[size_t(r) * C], C, &ref[(size_t(t) * N + r) * 3 * C + w * C]);
    }
  Dev dx(x.h), dc(cs), ds(sn);
  cu::rope_2d(dx.as<uint16_t>(), 3 * C, tiles, N, prefix, heads, hd, dc.as<float>(), ds.as<float>(), nullptr);
  cu::check_last("rope_2d");
  auto got = dx.bf16(x.h.size());
  report("rope_2d " + shape_str({tiles, N, heads, hd}) + " prefix " + std::to_string(prefix),
         norm_err(got.data(), ref.data(), ref.size()), 1e-2);
}

void test_elementwise() {
  {  // swiglu
    const int64_t M = 37, I = 1000;
    Bf gu = rand_bf16(size_t(M * 2 * I), 2.f);
    std::vector<float> ref(static_cast<size_t>(M * I));
    for (int64_t r = 0; r < M; ++r) cpu::silu_mul(&gu.f[size_t(r * 2 * I)], &gu.f[size_t(r * 2 * I + I)], &ref[size_t(r * I)], I);
    Dev d(gu.h), o(ref.size() * 2);
    cu::swiglu(d.as<uint16_t>(), M, I, o.as<uint16_t>(), nullptr);
    cu::check_last("swiglu");
    auto g = o.bf16(ref.size());
    report("swiglu 37x1000", norm_err(g.data(), ref.data(), ref.size()), 1e-2);
  }
  {  // gelu
    Bf x = rand_bf16(12345, 3.f);
    std::vector<float> ref = x.f;
    cpu::gelu_erf(ref.data(), int64_t(ref.size()));
    Dev d(x.h);
    cu::gelu_inplace(d.as<uint16_t>(), int64_t(x.h.size()), nullptr);
    cu::check_last("gelu");
    auto g = d.bf16(ref.size());
    report("gelu_erf 12345", norm_err(g.data(), ref.data(), ref.size()), 1e-2);
  }
  {  // im2col + vision_assemble + drop_prefix + avg_pool + embed_rows: exact data movement
    const int tiles = 2, S = 56, ps = 14, G = S / ps, P = G * G, kpad = 592, C = 24, D = 40, r = 2;
    std::vector<float> px = rand_f32(size_t(tiles) * 3 * S * S, 1.f);
    Dev dpx(px), dcol(static_cast<size_t>(tiles) * P * kpad * 2);
    cu::im2col_patches(dpx.as<float>(), tiles, S, ps, kpad, dcol.as<uint16_t>(), nullptr);
    cu::check_last("im2col");
    auto gc = dcol.bf16(size_t(tiles) * P * kpad);
    std::vector<float> rc(gc.size(), 0.f);
    for (int t = 0; t < tiles; ++t)
      for (int p = 0; p < P; ++p)
        for (int c = 0; c < 3; ++c)
          for (int ky = 0; ky < ps; ++ky)
            for (int kx = 0; kx < ps; ++kx)
              rc[(size_t(t) * P + p) * kpad + c * ps * ps + ky * ps + kx] = bf16_to_f32(f32_to_bf16(
                  px[((size_t(t) * 3 + c) * S + (p / G) * ps + ky) * S + (p % G) * ps + kx]));
    report("im2col_patches 2x3x56x56 ps14 kpad592", norm_err(gc.data(), rc.data(), rc.size()), 0);
    std::vector<float> patch = rand_f32(size_t(tiles) * P * C, 1.f), cls = rand_f32(size_t(C), 1.f),
                       pos = rand_f32(size_t(P + 1) * C, 1.f);
    Dev dp(patch), dcls(cls), dpos(pos), dx(static_cast<size_t>(tiles) * (P + 1) * C * 4);
    cu::vision_assemble(dp.as<float>(), dcls.as<float>(), dpos.as<float>(), tiles, P, C, dx.as<float>(), nullptr);
    cu::check_last("vision_assemble");
    auto gx = dx.f32(size_t(tiles) * (P + 1) * C);
    std::vector<float> rx(gx.size());
    for (int t = 0; t < tiles; ++t)
      for (int i = 0; i <= P; ++i)
        for (int c = 0; c < C; ++c)
          rx[(size_t(t) * (P + 1) + i) * C + c] =
              (i == 0 ? cls[size_t(c)] : patch[(size_t(t) * P + i - 1) * C + c]) + pos[size_t(i) * C + c];
    report("vision_assemble cls", norm_err(gx.data(), rx.data(), rx.size()), 1e-6);
    Dev dd(size_t(tiles) * P * C * 2);
    cu::drop_prefix_bf16(dx.as<float>(), tiles, P + 1, 1, C, dd.as<uint16_t>(), nullptr);
    cu::check_last("drop_prefix");
    auto gd = dd.bf16(size_t(tiles) * P * C);
    std::vector<float> rd(gd.size());
    for (int t = 0; t < tiles; ++t)
      for (int i = 0; i < P; ++i)
        for (int c = 0; c < C; ++c)
          rd[(size_t(t) * P + i) * C + c] = bf16_to_f32(f32_to_bf16(rx[(size_t(t) * (P + 1) + i + 1) * C + c]));
    report("drop_prefix_bf16", norm_err(gd.data(), rd.data(), rd.size()), 0);
    std::vector<float> f = rand_f32(size_t(tiles) * P * D, 1.f);
    const int Go = G / r;
    Dev df(f), dpo(static_cast<size_t>(tiles) * Go * Go * D * 4);
    cu::avg_pool(df.as<float>(), tiles, G, r, D, dpo.as<float>(), nullptr);
    cu::check_last("avg_pool");
    auto gp = dpo.f32(size_t(tiles) * Go * Go * D);
    std::vector<float> rp(gp.size());
    for (int t = 0; t < tiles; ++t)
      for (int oy = 0; oy < Go; ++oy)
        for (int ox = 0; ox < Go; ++ox)
          for (int d = 0; d < D; ++d) {
            float s = 0;
            for (int dy = 0; dy < r; ++dy)
              for (int dx2 = 0; dx2 < r; ++dx2) s += f[(size_t(t) * P + (oy * r + dy) * G + ox * r + dx2) * D + d];
            rp[(size_t(t) * Go * Go + oy * Go + ox) * D + d] = s / float(r * r);
          }
    report("avg_pool 2x2", norm_err(gp.data(), rp.data(), rp.size()), 1e-6);
    // embedding + placeholder scatter
    const int V = 50, H = 16, n = 9;
    Bf emb = rand_bf16(size_t(V) * H, 1.f);
    std::vector<float> feats = rand_f32(size_t(4) * H, 1.f);
    std::vector<int32_t> ids{3, 7, 49, 2, 2, 2, 0, 2, 11}, fidx{-1, -1, -1, 0, 1, 2, -1, 3, -1};
    Dev de(emb.h), dfe(feats), di(ids), dfi(fidx), dout(static_cast<size_t>(n) * H * 4);
    cu::embed_rows(di.as<int32_t>(), dfi.as<int32_t>(), de.as<uint16_t>(), dfe.as<float>(), n, H, dout.as<float>(),
                   nullptr);
    cu::check_last("embed_rows");
    auto ge = dout.f32(size_t(n) * H);
    std::vector<float> re(ge.size());
    for (int i = 0; i < n; ++i)
      for (int c = 0; c < H; ++c)
        re[size_t(i) * H + c] = fidx[size_t(i)] >= 0 ? feats[size_t(fidx[size_t(i)]) * H + c] : emb.f[size_t(ids[size_t(i)]) * H + c];
    report("embed_rows + placeholder scatter", norm_err(ge.data(), re.data(), re.size()), 0);
  }
}

void test_sampling() {
  const int64_t V = 128256;
  std::vector<float> l = rand_f32(size_t(V), 2.f);
  const int64_t a = 70001, b = 90000;
  l[size_t(a)] = l[size_t(b)] = 40.f;  // tie: the first index must win
  Dev dl(l), scratch(cu::sample_scratch_bytes()), dout(4), dp(sizeof(cu::SampleParams));
  auto run = [&](cu::SampleParams sp) {
    cu::h2d(dp.p, &sp, sizeof sp);
    cu::sample(dl.as<float>(), V, dp.as<cu::SampleParams>(), scratch.p, dout.as<int32_t>(), nullptr);
    cu::check_last("sample");
    int32_t r;
    cu::d2h(&r, dout.p, 4);
    return r;
  };
  cu::SampleParams g{0.f, 0, 1.f, 0.f, 1, 0};
  int32_t r = run(g);
  report_bool("sample greedy (tie -> first index)", r == a, "got " + std::to_string(r) + " want " + std::to_string(a));
  cu::SampleParams k1{1.f, 1, 1.f, 0.f, 7, 3};
  r = run(k1);
  report_bool("sample top_k=1 (ties kept: either max)", r == a || r == b, "got " + std::to_string(r));
  l[size_t(b)] = 39.f;
  cu::h2d(dl.p, l.data(), l.size() * 4);
  cu::SampleParams tp{1.f, 0, 1e-4f, 0.f, 7, 4};
  r = run(tp);
  report_bool("sample top_p=1e-4 -> argmax", r == a, "got " + std::to_string(r));
  cu::SampleParams mp{1.f, 0, 1.f, 0.9f, 7, 5};
  r = run(mp);
  report_bool("sample min_p=0.9 -> argmax", r == a, "got " + std::to_string(r));
  // distribution over 4 tokens
  std::vector<float> s4 = {1.f, 2.f, 0.5f, -1.f};
  std::vector<float> big(static_cast<size_t>(V), -1e30f);
  std::copy(s4.begin(), s4.end(), big.begin());
  cu::h2d(dl.p, big.data(), big.size() * 4);
  std::vector<int> cnt(4, 0);
  const int draws = 3000;
  for (int i = 0; i < draws; ++i) {
    cu::SampleParams sp{0.7f, 0, 1.f, 0.f, 12345, uint64_t(i)};
    int32_t t = run(sp);
    if (t >= 0 && t < 4) cnt[size_t(t)]++;
  }
  double z = 0, maxdev = 0;
  for (float v : s4) z += std::exp(v / 0.7);
  for (int i = 0; i < 4; ++i) maxdev = std::max(maxdev, std::fabs(cnt[size_t(i)] / double(draws) - std::exp(s4[size_t(i)] / 0.7) / z));
  report("sample T=0.7 frequencies vs softmax (3000 draws)", maxdev, 0.04);
  // top_k=2 on the same: only tokens 0 and 1
  std::fill(cnt.begin(), cnt.end(), 0);
  for (int i = 0; i < 500; ++i) {
    cu::SampleParams sp{1.f, 2, 1.f, 0.f, 99, uint64_t(i)};
    int32_t t = run(sp);
    if (t >= 0 && t < 4) cnt[size_t(t)]++;
  }
  report_bool("sample top_k=2 keeps only the top 2", cnt[2] == 0 && cnt[3] == 0 && cnt[0] + cnt[1] == 500,
              std::to_string(cnt[0]) + "/" + std::to_string(cnt[1]) + "/" + std::to_string(cnt[2]) + "/" + std::to_string(cnt[3]));
  // One sampler definition: the GPU and the CPU sampler (model/sampler.h) draw the same token for the same
  // (seed, step) from the same logits, but where the f32 sums that decide a cut or the draw round differently.
  std::mt19937 rng(77);
  std::normal_distribution<float> nd(0.f, 3.f);
  int same = 0;
  const int trials = 300;
  const std::vector<int32_t> none;
  for (int i = 0; i < trials; ++i) {
    for (auto& v : l) v = nd(rng);
    cu::h2d(dl.p, l.data(), l.size() * 4);
    cu::SampleParams sp{0.3f + 0.01f * float(i % 150), i % 3 == 0 ? 0 : 5 + i % 50, i % 2 ? 0.9f : 1.f,
                        i % 7 == 0 ? 0.02f : 0.f, uint64_t(1000 + i), uint64_t(i * 13)};
    const int32_t gpu = run(sp);
    SamplingParams p;
    p.temperature = sp.temperature;
    p.top_k = sp.top_k;
    p.top_p = sp.top_p;
    p.min_p = sp.min_p;
    p.seed = sp.seed;
    std::vector<float> c = l;
    same += Sampler(p).sample(c.data(), V, none, sp.step) == gpu;
  }
  report("sample: GPU and CPU sampler disagree (fraction of 300 random draws)", 1.0 - double(same) / trials, 0.01);
}

// ---------------- end to end ----------------
const TensorView* gt(const SafetensorsFile& f, const std::string& n) {
  auto it = f.tensors().find(n);
  return it == f.tensors().end() ? nullptr : &it->second;
}
std::vector<float> as_f32(const TensorView* t) {
  std::vector<float> v(static_cast<size_t>(t->numel()));
  to_f32(t->dtype, t->data, v.data(), t->numel());
  return v;
}

void test_fixture(const std::string& dir) {
  const std::string tag = dir.substr(dir.find_last_of('/', dir.size() - 2) + 1);
  std::unique_ptr<SafetensorsFile> gold;
  try {
    gold = std::make_unique<SafetensorsFile>(dir + "/golden.safetensors");
  } catch (const std::exception& e) {
    report_bool("e2e " + tag, false, std::string("cannot read golden: ") + e.what());
    return;
  }
  const TensorView* ids_t = gt(*gold, "input_ids");
  const TensorView* lr_t = gt(*gold, "logits_rows");
  const TensorView* lg_t = gt(*gold, "logits");
  if (!ids_t || !lr_t || !lg_t) {
    report_bool("e2e " + tag, false, "golden lacks input_ids/logits_rows/logits");
    return;
  }
  std::vector<int32_t> ids(static_cast<const int32_t*>(ids_t->data), static_cast<const int32_t*>(ids_t->data) + ids_t->numel());
  std::vector<int32_t> rows(static_cast<const int32_t*>(lr_t->data), static_cast<const int32_t*>(lr_t->data) + lr_t->numel());
  std::vector<float> glog = as_f32(lg_t);
  std::vector<float> pixels;
  MediaInput media;
  // Images: pixel_values [tiles, 3, S, S]; video: pixel_values_videos [1, frames, 3, S, S], one tile per frame.
  const TensorView* pv = gt(*gold, "pixel_values");
  if (!pv) pv = gt(*gold, "pixel_values_videos");
  if (pv) {
    pixels = as_f32(pv);
    media.pixels = pixels.data();
    const size_t nd = pv->shape.size();
    media.tiles = pv->numel() / (3 * pv->shape[nd - 1] * pv->shape[nd - 2]);
  }
  EngineOptions opt;
  opt.backend = "cuda";
  std::unique_ptr<Engine> eng;
  try {
    eng = Engine::load(dir, opt, nullptr);
  } catch (const std::exception& e) {
    report_bool("e2e " + tag + " load", false, e.what());
    return;
  }
  const int64_t T = int64_t(ids.size()), V = eng->model().config.text.vocab_size;
  std::vector<float> logits(static_cast<size_t>(T * V));
  std::map<std::string, std::pair<std::vector<float>, std::vector<int64_t>>> dumps;
  DumpFn dump = [&](const std::string& name, const float* d, const std::vector<int64_t>& shape) {
    size_t n = 1;
    for (auto s : shape) n *= size_t(s);
    dumps[name] = {std::vector<float>(d, d + n), shape};
  };
  try {
    eng->forward(ids.data(), T, media.tiles ? &media : nullptr, T, logits.data(), nullptr, dump);
  } catch (const std::exception& e) {
    report_bool("e2e " + tag + " forward", false, e.what());
    return;
  }
  // intermediates (informational)
  for (auto& kv : dumps) {
    const TensorView* g = gt(*gold, kv.first);
    if (!g || size_t(g->numel()) != kv.second.first.size()) continue;
    auto gv = as_f32(g);
    report("e2e " + tag + " " + kv.first, norm_err(kv.second.first.data(), gv.data(), gv.size()), 5e-2, "", true);
  }
  double maxabs = 0, scale = 0;
  for (size_t r = 0; r < rows.size(); ++r)
    for (int64_t v = 0; v < V; ++v) {
      const float a = logits[size_t(rows[r]) * V + v], b = glog[r * V + v];
      maxabs = std::max(maxabs, double(std::fabs(a - b)));
      scale = std::max(scale, double(std::fabs(b)));
      if (!std::isfinite(a)) maxabs = INFINITY;
    }
  // Relative to max(1, max|logit|): bf16 weights/activations vs the f32 golden. The bound is 5e-2, or 1.5x
  // what torch's own bf16 forward gives on this fixture where that is larger (bf16_reference.json, written
  // by reference/bf16_reference_error.py): random-weight fixtures differ in how much they amplify rounding.
  double torch_bf16 = -1;
  if (file_exists(dir + "/bf16_reference.json")) {
    const Json j = Json::parse(read_text_file(dir + "/bf16_reference.json"), dir + "/bf16_reference.json");
    if (const Json* e = j.find("torch_bf16")) torch_bf16 = e->number();
  }
  const double bound = std::max(5e-2, 1.5 * torch_bf16);
  const double rel = maxabs / std::max(1.0, scale);
  char d[160];
  std::snprintf(d, sizeof d, "max abs %.4g, logit scale %.3g, torch bf16 %.3g", maxabs, scale, torch_bf16);
  report("e2e " + tag + " prefill logits", rel, bound, d);
  // greedy
  const TensorView* gi = gt(*gold, "greedy.ids");
  const TensorView* gl = gt(*gold, "greedy.logits");
  if (!gi || !gl) return;
  std::vector<int32_t> want(static_cast<const int32_t*>(gi->data), static_cast<const int32_t*>(gi->data) + gi->numel());
  std::vector<float> wl = as_f32(gl);
  GenerateOptions go;
  go.max_tokens = int(want.size());
  go.stop_ids = {-1};
  GenerateResult res;
  try {
    res = eng->generate(ids.data(), T, media.tiles ? &media : nullptr, go, nullptr);
  } catch (const std::exception& e) {
    report_bool("e2e " + tag + " greedy", false, e.what());
    return;
  }
  bool ok = res.tokens.size() == want.size();
  std::string why = "identical " + std::to_string(want.size()) + " ids";
  for (size_t s = 0; ok && s < want.size(); ++s) {
    if (res.tokens[s] == want[s]) continue;
    // margin of the golden at this step
    const float* row = wl.data() + s * V;
    float m1 = -INFINITY, m2 = -INFINITY;
    for (int64_t v = 0; v < V; ++v) {
      if (row[v] > m1) {
        m2 = m1;
        m1 = row[v];
      } else if (row[v] > m2) {
        m2 = row[v];
      }
    }
    const double margin = m1 - m2, allowed = bound * std::max(1.0, scale);
    if (margin > allowed) {
      ok = false;
      why = "step " + std::to_string(s) + ": got " + std::to_string(res.tokens[s]) + " want " + std::to_string(want[s]) +
            " with golden margin " + std::to_string(margin) + " > " + std::to_string(allowed);
    } else {
      why = "diverged at step " + std::to_string(s) + " where the golden margin " + std::to_string(margin) +
            " is within the bound (accepted)";
    }
    break;
  }
  if (res.tokens.size() != want.size()) why = "generated " + std::to_string(res.tokens.size()) + " tokens";
  report_bool("e2e " + tag + " greedy ids (decode graph)", ok, why);
}


// ---------------- kernel timings (informational) ----------------
void perf_report(const std::string& name, double ms, double value, const char* unit) {
  char d[128];
  std::snprintf(d, sizeof d, "%.4f ms, %.1f %s", ms, value, unit);
  Result r{name, d, value, 0, true, true};
  g_results.push_back(r);
  std::printf("perf   %-58s %s\n", name.c_str(), d);
  std::fflush(stdout);
}

// The epilogues the vision tower uses: plain bf16 store; bias + GELU (fc1); bias + layer scale added into
// the f32 residual (proj, fc2).
enum class PerfEp { kPlain, kBiasGelu, kAddScaled };

void perf_gemm(int64_t M, int64_t N, int64_t K, PerfEp kind = PerfEp::kPlain) {
  Bf A = rand_bf16(size_t(M * K), 1.f), W = rand_bf16(size_t(N * K), 0.05f);
  Dev dA(A.h), dW(W.h), dout(size_t(M * N) * 4);
  std::vector<float> vec = rand_f32(size_t(N), 0.5f);
  Dev dbias(vec), dscale(vec);
  cu::Epilogue ep;
  ep.out = dout.p;
  ep.ldo = N;
  const char* tag = "";
  if (kind == PerfEp::kBiasGelu) {
    ep.bias = dbias.as<float>();
    ep.gelu = true;
    tag = " bias+gelu";
  } else if (kind == PerfEp::kAddScaled) {
    ep.mode = cu::EpMode::kAddF32;
    ep.bias = dbias.as<float>();
    ep.scale = dscale.as<float>();
    tag = " +=f32*scale";
  }
  const uint64_t before = cu::gemm_launch_count(cu::gemm_path());
  const double ms = cu::time_gpu_ms([&] { cu::gemm_bf16(dA.as<uint16_t>(), K, dW.as<uint16_t>(), K, M, N, K, ep, nullptr); }, 10);
  const bool ran = cu::gemm_launch_count(cu::gemm_path()) > before;
  perf_report("gemm bf16 " + shape_str({M, N, K}) + tag + " [" + cu::gemm_path_name(cu::gemm_path()) +
                  (ran ? "" : ", fell back") + "]",
              ms, 2.0 * M * N * K / (ms * 1e9), "TFLOP/s");
}

void perf_gemv(int64_t N, int64_t K) {
  Bf x = rand_bf16(size_t(K), 1.f), W = rand_bf16(size_t(N * K), 0.05f);
  Dev dx(x.h), dW(W.h), dout(size_t(N) * 4);
  cu::Epilogue ep;
  ep.mode = cu::EpMode::kStoreF32;
  ep.out = dout.p;
  ep.ldo = N;
  const double ms = cu::time_gpu_ms([&] { cu::gemv_bf16(dx.as<uint16_t>(), dW.as<uint16_t>(), N, K, ep, false, nullptr); }, 20);
  perf_report("gemv bf16 " + shape_str({N, K}), ms, 2.0 * N * K / (ms * 1e6), "GB/s of weights");
}

void perf_flash(int batch, int T, int heads, int kvh, int hd, bool causal) {
  const int64_t qs = int64_t(heads) * hd, ks = int64_t(kvh) * hd;
  Bf q = rand_bf16(size_t(batch) * T * qs, 1.f), k = rand_bf16(size_t(batch) * T * ks, 1.f);
  Dev dq(q.h), dk(k.h), dv(k.h), dout(q.h.size() * 2);
  cu::FlashParams p;
  p.q = dq.as<uint16_t>();
  p.k = dk.as<uint16_t>();
  p.v = dv.as<uint16_t>();
  p.o = dout.as<uint16_t>();
  p.q_stride = p.o_stride = qs;
  p.kv_stride = ks;
  p.q_batch_stride = p.o_batch_stride = T * qs;
  p.kv_batch_stride = T * ks;
  p.batch = batch;
  p.q_len = p.kv_len = T;
  p.heads = heads;
  p.kv_heads = kvh;
  p.head_dim = hd;
  p.scale = 1.f / std::sqrt(float(hd));
  p.causal = causal;
  const double ms = cu::time_gpu_ms([&] { cu::flash_attention(p, nullptr); }, 10);
  const double flops = 4.0 * batch * heads * double(T) * T * hd * (causal ? 0.5 : 1.0);
  perf_report("flash " + shape_str({batch, T, heads, hd}) + (causal ? " causal" : " bidir"), ms, flops / (ms * 1e9),
              "TFLOP/s");
}

std::string json_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    if (c == '\n') {
      o += "\\n";
      continue;
    }
    o += c;
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  std::string gemm_paths_arg;
  std::string json_path;
  uint64_t seed = uint64_t(std::chrono::steady_clock::now().time_since_epoch().count());
  bool quick = false;
  std::vector<std::string> fixtures;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--json" && i + 1 < argc) json_path = argv[++i];
    else if (a == "--seed" && i + 1 < argc) seed = std::stoull(argv[++i]);
    else if (a == "--quick") quick = true;
    else if (a == "--gemm-paths" && i + 1 < argc) gemm_paths_arg = argv[++i];
    else fixtures.push_back(a);
  }
  g_rng.seed(seed);
  std::string info;
  bool driver_problem = false;
  const int ndev = cu::device_count(&info, &driver_problem);
  if (ndev <= 0 && driver_problem) {
    // A driver is installed but the runtime cannot use it (typically older than the CUDA runtime we link):
    // nothing ran, and that is a failure on a GPU machine, not a skip.
    std::printf("FAIL   %-58s %s\n", "cuda runtime", info.c_str());
    if (!json_path.empty()) {
      FILE* f = std::fopen(json_path.c_str(), "w");
      if (f) {
        std::fprintf(f,
                     "{\"device\": \"%s\", \"passed\": 0, \"failed\": 1, \"results\": [\n  {\"name\": \"cuda "
                     "runtime\", \"pass\": false, \"info\": false, \"err\": 1, \"bound\": 0, \"detail\": \"%s\"}\n]}\n",
                     json_escape(info).c_str(), json_escape(info).c_str());
        std::fclose(f);
      }
    }
    std::printf("0 passed, 1 failed\n");
    return 1;
  }
  if (ndev <= 0) {
    std::printf("SKIPPED: %s\n", info.c_str());
    if (!json_path.empty()) {
      FILE* f = std::fopen(json_path.c_str(), "w");
      if (f) {
        std::fprintf(f, "{\"skipped\": true, \"reason\": \"%s\"}\n", json_escape(info).c_str());
        std::fclose(f);
      }
    }
    return 0;
  }
  std::printf("device: %s\nseed: %llu\n", info.c_str(), (unsigned long long)seed);
  ThreadPool pool(0);
  auto guard = [&](const std::string& name, const std::function<void()>& fn) {
    try {
      fn();
    } catch (const std::exception& e) {
      report_bool(name, false, std::string("exception: ") + e.what());
    }
  };
  using M = cu::EpMode;
  // Every GEMM kernel this device can run, on the same cases (the engine's default is the first, auto).
  std::vector<cu::GemmPath> gemm_paths;
  if (gemm_paths_arg.empty()) {
    gemm_paths.push_back(cu::GemmPath::kMma);
    if (cu::gemm_wgmma_available())
      for (cu::GemmPath gp : {cu::GemmPath::kWgmma128, cu::GemmPath::kWgmma256, cu::GemmPath::kTma128,
                              cu::GemmPath::kTma256, cu::GemmPath::kTma128p})
        gemm_paths.push_back(gp);
  } else {
    size_t pos = 0;
    while (pos <= gemm_paths_arg.size()) {
      const size_t end = std::min(gemm_paths_arg.find(',', pos), gemm_paths_arg.size());
      const std::string name = gemm_paths_arg.substr(pos, end - pos);
      cu::GemmPath gp;
      if (cu::gemm_path_from_name(name.c_str(), &gp)) {
        gemm_paths.push_back(gp);
      } else {
        std::fprintf(stderr, "unknown GEMM path '%s' (mma, wgmma128, wgmma256, tma128, tma256, tma128p)\n", name.c_str());
        return 2;
      }
      pos = end + 1;
    }
  }
  const cu::GemmPath default_path = cu::gemm_path();
  for (cu::GemmPath gp : gemm_paths)
  guard(std::string("gemm ") + cu::gemm_path_name(gp), [&] {
    cu::set_gemm_path(gp);
    const uint64_t launches_before = cu::gemm_launch_count(gp);
    test_gemm(&pool, 1, 64, 64, M::kStoreBf16, false, false, false);
    test_gemm(&pool, 7, 40, 24, M::kStoreF32, true, false, false);
    test_gemm(&pool, 33, 100, 72, M::kStoreBf16, true, true, false);
    test_gemm(&pool, 130, 260, 200, M::kAddF32, true, false, true);
    test_gemm(&pool, 257, 129, 48, M::kStoreF32, false, false, false);
    test_gemm(&pool, 100, 300, 588, M::kStoreF32, false, false, false);
    test_gemm(&pool, 50, 70, 30, M::kStoreF32, true, false, false);  // K % 8 != 0: fallback
    test_gemm(&pool, 1025, 3072, 1024, M::kStoreBf16, true, false, false);  // PE-L qkv
    test_gemm(&pool, 1025, 1024, 4096, M::kAddF32, true, false, true);      // PE-L fc2 + layer scale
    if (!quick) {
      test_gemm(&pool, 1024, 8960, 1536, M::kStoreBf16, true, true, false);  // PE-G fc1 + gelu
      test_gemm(&pool, 512, 2048, 8192, M::kAddF32, false, false, false);    // PLM-1B down_proj
      test_gemm(&pool, 300, 16384, 2048, M::kStoreBf16, false, false, false);  // PLM-1B gate_up
    }
    test_gemm(&pool, 64, 72, 8, M::kStoreBf16, false, false, false);      // K < one 64-wide k tile
    test_gemm(&pool, 200, 264, 136, M::kAddF32, true, true, true);        // ragged M, N and K tails
    const uint64_t ran = cu::gemm_launch_count(gp) - launches_before;
    report_bool(std::string("gemm kernel ") + cu::gemm_path_name(gp) + " actually ran", ran > 0,
                std::to_string(ran) + " launches");
  });
  cu::set_gemm_path(default_path);
  guard("gemv", [&] {
    test_gemv(&pool, 64, 64, M::kStoreF32, false);
    test_gemv(&pool, 300, 72, M::kStoreF32, false);
    test_gemv(&pool, 1000, 100, M::kStoreF32, false);  // K % 8 != 0
    test_gemv(&pool, 3072, 2048, M::kStoreF32, false);
    test_gemv(&pool, 2048, 2048, M::kAddF32, false);
    test_gemv(&pool, 2048, 8192, M::kAddF32, false);
    test_gemv(&pool, 8192, 2048, M::kStoreBf16, true);
    test_gemv(&pool, 100, 48, M::kStoreBf16, true);
    if (!quick) test_gemv(&pool, 128256, 2048, M::kStoreF32, false);
  });
  guard("norms", [&] {
    test_norms(5, 2048);
    test_norms(1025, 1024);
    test_norms(3, 4096);
    test_norms(2, 100);
  });
  guard("attention", [&] {
    test_flash(&pool, 2, 1025, 1025, 16, 16, 64, false, 0);  // PE-L, 2 tiles
    test_flash(&pool, 1, 1024, 1024, 16, 16, 96, false, 0);  // PE-G
    test_flash(&pool, 2, 65, 65, 2, 2, 48, false, 0);
    test_flash(&pool, 3, 65, 65, 2, 2, 32, false, 0);
    test_flash(&pool, 1, 130, 130, 8, 2, 64, true, 0);       // causal GQA
    test_flash(&pool, 1, 77, 177, 4, 1, 128, true, 100);     // chunk after a cached prefix
    test_flash(&pool, 1, 500, 500, 32, 8, 64, true, 0);      // PLM-1B prefill
    test_flash(&pool, 1, 100, 100, 4, 2, 16, true, 0);
    test_flash(&pool, 1, 70, 90, 4, 2, 32, true, 20);
    test_flash(&pool, 1, 33, 33, 4, 4, 24, true, 0);         // generic kernel
    test_flash(&pool, 1, 17, 17, 2, 1, 8, true, 0);          // generic kernel
    test_flash(&pool, 2, 65, 65, 2, 2, 48, false, 0);
  });
  guard("decode_attention", [&] {
    test_decode_attn(&pool, 1, 64, 32, 8, 64);
    test_decode_attn(&pool, 31, 64, 32, 8, 64);
    test_decode_attn(&pool, 33, 64, 4, 2, 16);
    test_decode_attn(&pool, 1000, 1024, 32, 8, 64);
    test_decode_attn(&pool, 4097, 5000, 24, 8, 128);
    test_decode_attn(&pool, 700, 700, 4, 4, 24);
    test_decode_attn(&pool, 50, 64, 2, 1, 8);
  });
  guard("rope", [&] {
    test_rope_llama(9, 4, 2, 16, 0);
    test_rope_llama(64, 32, 8, 64, 37);
    test_rope_llama(5, 24, 8, 128, 3);
    test_rope_2d(2, 1024, 1, 16, 64);
    test_rope_2d(1, 1024, 0, 16, 96);
    test_rope_2d(3, 64, 1, 2, 32);
  });
  guard("elementwise", [&] { test_elementwise(); });
  guard("sampling", [&] { test_sampling(); });
  for (const std::string& d : fixtures) guard("e2e " + d, [&] { test_fixture(d); });
  if (!quick)
    guard("perf", [&] {
      for (cu::GemmPath gp : gemm_paths) {
        cu::set_gemm_path(gp);
        perf_gemm(8192, 8192, 8192);
        perf_gemm(8200, 3072, 1024);   // PE-L qkv, 8 tiles
        perf_gemm(8200, 4096, 1024);   // PE-L fc1
        perf_gemm(8200, 1024, 4096);   // PE-L fc2
        perf_gemm(4096, 16384, 2048);  // PLM-1B gate_up prefill
        perf_gemm(512, 2048, 2048);    // PLM-1B o_proj, 512-token prefill
        perf_gemm(8200, 4096, 1024, PerfEp::kBiasGelu);     // PE-L fc1 as the tower runs it
        perf_gemm(8200, 1024, 4096, PerfEp::kAddScaled);    // PE-L fc2 into the residual
        perf_gemm(8200, 1024, 1024, PerfEp::kAddScaled);    // PE-L proj into the residual
        perf_gemm(37925, 4096, 1024, PerfEp::kBiasGelu);    // fc1 for 37 tiles in one pass
      }
      cu::set_gemm_path(default_path);
      perf_gemv(16384, 2048);        // PLM-1B gate_up decode
      perf_gemv(2048, 8192);         // PLM-1B down decode
      perf_gemv(128256, 2048);       // PLM-1B lm_head
      perf_flash(8, 1025, 16, 16, 64, false);
      perf_flash(8, 1024, 16, 16, 96, false);
      perf_flash(1, 4096, 32, 8, 64, true);
      perf_flash(1, 4096, 24, 8, 128, true);
    });

  int passed = 0, failed = 0;
  for (auto& r : g_results) {
    if (r.info) continue;
    (r.pass ? passed : failed)++;  // perf lines are info
  }
  if (!json_path.empty()) {
    FILE* f = std::fopen(json_path.c_str(), "w");
    if (f) {
      std::fprintf(f, "{\"device\": \"%s\", \"seed\": %llu, \"passed\": %d, \"failed\": %d, \"results\": [\n",
                   json_escape(info).c_str(), (unsigned long long)seed, passed, failed);
      for (size_t i = 0; i < g_results.size(); ++i) {
        const Result& r = g_results[i];
        std::fprintf(f, "  {\"name\": \"%s\", \"pass\": %s, \"info\": %s, \"err\": %.6g, \"bound\": %.3g, \"detail\": \"%s\"}%s\n",
                     json_escape(r.name).c_str(), r.pass ? "true" : "false", r.info ? "true" : "false",
                     std::isfinite(r.err) ? r.err : 1e30, r.bound, json_escape(r.detail).c_str(),
                     i + 1 < g_results.size() ? "," : "");
      }
      std::fprintf(f, "]}\n");
      std::fclose(f);
    }
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}
