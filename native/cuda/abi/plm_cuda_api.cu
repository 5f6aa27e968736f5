// libplm_cuda: the C ABI of plm_cuda_api.h over our kernels (native/cuda/*.cu).
//
// Device layout (bf16 weights, f32 norms/biases/gammas, f32 residual streams):
//   decoder layer l: wqkv bf16 [(nh + 2 nkv) hd, H] (q; k; v rows), wo bf16 [H, nh hd],
//                    wgu bf16 [2 I, H] (gate rows; up rows), wdown bf16 [H, I], ln1/ln2 f32 [H]
//   KV cache: k, v bf16 [layers][max_context][nkv][hd]
//   vision: patch_w bf16 [C, kpad] (conv weight flattened c,ky,kx, zero padded to kpad = roundup8(3 ps^2)),
//           pos f32 [N, C], cls f32 [C], blocks {qkv bf16 [3C, C], proj [C, C], fc1 [Mlp, C], fc2 [C, Mlp]}
//   projector: l1 bf16 [D, C], l2 bf16 [D, D]; features f32 [tiles * tokens_per_tile, D]
// Prefill runs in chunks of up to 4096 tokens (one chunk when dumping); the vision tower in one pass over
// all tiles where memory allows (vision_batch_size; PLM_CUDA_VISION_BATCH sets a size). PLM_CUDA_PROFILE=1
// times each named op of vision and prefill with events and prints the totals when the model is destroyed
// (op_profile.h).
// decode_step is captured into a CUDA graph on its first call; the token, position and sampling parameters
// are read from device memory so the graph is replayed as is.
#include <cstdint>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "core/half.h"
#include "cuda/abi/op_profile.h"
#include "cuda/attention.cuh"
#include "cuda/common.cuh"
#include "cuda/elementwise.cuh"
#include "cuda/gemm.cuh"
#include "cuda/norms.cuh"
#include "cuda/plm_cuda_api.h"
#include "cuda/rope.cuh"
#include "cuda/sampling.cuh"

using namespace plm::cuda;

namespace {

struct ApiError {
  int status;
  std::string msg;
};
[[noreturn]] void fail(int st, const std::string& m) { throw ApiError{st, m}; }

void set_err(char* err, size_t len, const std::string& m) {
  if (err && len) std::snprintf(err, len, "%s", m.c_str());
}

template <typename F>
int32_t guarded(char* err, size_t len, F&& f) {
  try {
    f();
    return PLM_CUDA_OK;
  } catch (const ApiError& e) {
    set_err(err, len, e.msg);
    return e.status;
  } catch (const CudaError& e) {
    set_err(err, len, e.what());
    return e.status == 2 ? PLM_CUDA_ERR_OUT_OF_MEMORY : e.status == 3 ? PLM_CUDA_ERR_INVALID : PLM_CUDA_ERR_CUDA;
  } catch (const std::bad_alloc&) {
    set_err(err, len, "out of host memory");
    return PLM_CUDA_ERR_OUT_OF_MEMORY;
  } catch (const std::exception& e) {
    set_err(err, len, e.what());
    return PLM_CUDA_ERR_CUDA;
  }
}

typedef uint16_t bfh;  // bf16 bits on the host side of device pointers

// Grow-only device scratch buffer.
struct Scratch {
  void* p = nullptr;
  size_t bytes = 0;
  template <typename T>
  T* get(size_t count) {
    const size_t need = count * sizeof(T);
    if (need > bytes) {
      dev_free(p);
      p = nullptr;
      bytes = 0;
      p = dev_alloc(need);
      bytes = need;
    }
    return static_cast<T*>(p);
  }
  void release() {
    dev_free(p);
    p = nullptr;
    bytes = 0;
  }
};

struct TextLayer {
  bfh *wqkv = nullptr, *wo = nullptr, *wgu = nullptr, *wdown = nullptr;
  float *ln1 = nullptr, *ln2 = nullptr;
};
struct VisionBlock {
  float *n1w, *n1b, *n2w, *n2b, *qkv_b, *proj_b, *fc1_b, *fc2_b, *g1, *g2;
  bfh *qkv_w, *proj_w, *fc1_w, *fc2_w;
};

}  // namespace

struct plm_cuda_model {
  int device = 0;
  cudaStream_t stream = nullptr;
  void* st() const { return stream; }
  std::vector<void*> allocations;  // weights and fixed buffers

  // config
  int H, I, L, nh, nkv, hd, V, max_ctx, image_id, video_id;
  float eps;
  int nqkv;
  bool has_vision;
  int C, depth, vheads, vhd, mlp, S, ps, G, P, N, prefix, kpad, pool, tpt;
  bool post_norm;
  float veps;

  // weights
  std::vector<TextLayer> layers;
  bfh *embed = nullptr, *lm_head = nullptr;
  float *final_norm = nullptr, *inv_freq = nullptr;
  bfh *patch_w = nullptr;
  float *cls = nullptr, *pos = nullptr, *pre_w = nullptr, *pre_b = nullptr, *post_w = nullptr, *post_b = nullptr;
  float *vcos = nullptr, *vsin = nullptr;
  std::vector<VisionBlock> vblocks;
  bfh *l1_w = nullptr, *l2_w = nullptr;
  float *l1_b = nullptr, *l2_b = nullptr;

  // state
  bfh *kcache = nullptr, *vcache = nullptr;  // [L][max_ctx][nkv][hd]
  int cache_len = 0;
  Scratch feats;  // f32 [nfeat, H]
  int64_t nfeat = 0, feat_cursor = 0;

  // prefill / vision scratch
  Scratch s_x, s_xn, s_qkv, s_att, s_h, s_ids, s_fidx, s_logits, s_pix, s_patch, s_pe, s_pin, s_l1, s_l2, s_tmp;

  // decode (fixed, graph-captured)
  int32_t* d_state = nullptr;  // [2]: token, position
  SampleParams* d_sp = nullptr;
  int32_t* d_next = nullptr;
  float *dec_x = nullptr, *dec_qkv = nullptr, *dec_q = nullptr, *dec_part = nullptr, *dec_logits = nullptr;
  bfh *dec_xn = nullptr, *dec_att = nullptr, *dec_act = nullptr;
  void* dec_scratch = nullptr;
  int32_t* h_pinned = nullptr;  // [4] token, pos, next, pad
  SampleParams* h_sp = nullptr;
  cudaGraphExec_t graph = nullptr;
  bool graph_failed = false;

  plm_cuda_dump_fn dump_fn = nullptr;
  void* dump_user = nullptr;
  OpProfile prof;  // PLM_CUDA_PROFILE: device time per named op of vision and prefill
  int64_t vision_batch = 0;  // tiles per vision pass (PLM_CUDA_VISION_BATCH); 0: vision_batch_size decides

  template <typename T>
  T* alloc(size_t count) {
    T* p = static_cast<T*>(dev_alloc(count * sizeof(T)));
    allocations.push_back(p);
    return p;
  }
  bfh* kc(int l) { return kcache + size_t(l) * max_ctx * nkv * hd; }
  bfh* vc(int l) { return vcache + size_t(l) * max_ctx * nkv * hd; }

  void dump_f32(const char* name, const float* d, std::vector<int64_t> shape) {
    if (!dump_fn) return;
    size_t n = 1;
    for (auto s : shape) n *= size_t(s);
    std::vector<float> h(n);
    PLM_CU_CHECK(cudaStreamSynchronize(stream));
    PLM_CU_CHECK(cudaMemcpy(h.data(), d, n * 4, cudaMemcpyDeviceToHost));
    dump_fn(dump_user, name, h.data(), shape.data(), int32_t(shape.size()));
  }
  void dump_bf16(const char* name, const bfh* d, std::vector<int64_t> shape) {
    if (!dump_fn) return;
    size_t n = 1;
    for (auto s : shape) n *= size_t(s);
    std::vector<uint16_t> b(n);
    std::vector<float> h(n);
    PLM_CU_CHECK(cudaStreamSynchronize(stream));
    PLM_CU_CHECK(cudaMemcpy(b.data(), d, n * 2, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n; ++i) h[i] = plm::bf16_to_f32(b[i]);
    dump_fn(dump_user, name, h.data(), shape.data(), int32_t(shape.size()));
  }
  ~plm_cuda_model() {
    if (graph) cudaGraphExecDestroy(graph);
    for (void* p : allocations) cudaFree(p);
    for (Scratch* s : {&feats, &s_x, &s_xn, &s_qkv, &s_att, &s_h, &s_ids, &s_fidx, &s_logits, &s_pix, &s_patch, &s_pe,
                       &s_pin, &s_l1, &s_l2, &s_tmp})
      s->release();
    if (h_pinned) cudaFreeHost(h_pinned);
    if (h_sp) cudaFreeHost(h_sp);
    if (stream) cudaStreamDestroy(stream);
  }
};

namespace {

// ---- weight upload ----
struct Uploader {
  std::map<std::string, const plm_cuda_tensor*> by_name;
  plm_cuda_model* m;
  plm_cuda_progress_fn progress;
  void* user;
  double total = 1, done = 0;
  std::vector<uint16_t> staging;

  const plm_cuda_tensor* find(const std::string& n) const {
    auto it = by_name.find(n);
    return it == by_name.end() ? nullptr : it->second;
  }
  static int64_t numel(const plm_cuda_tensor* t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; ++i) n *= t->shape[i];
    return n;
  }
  const plm_cuda_tensor* get(const std::string& n, int64_t expect) const {
    const plm_cuda_tensor* t = find(n);
    if (!t) fail(PLM_CUDA_ERR_INVALID, "missing weight tensor " + n);
    if (numel(t) != expect)
      fail(PLM_CUDA_ERR_INVALID, "weight " + n + " has " + std::to_string(numel(t)) + " elements, expected " +
                                     std::to_string(expect));
    if (t->dtype < 0 || t->dtype > 2) fail(PLM_CUDA_ERR_INVALID, "weight " + n + " has an unsupported dtype");
    return t;
  }
  static float elem(const plm_cuda_tensor* t, int64_t i) {
    switch (t->dtype) {
      case PLM_CUDA_F32: return static_cast<const float*>(t->data)[i];
      case PLM_CUDA_F16: return plm::f16_to_f32(static_cast<const uint16_t*>(t->data)[i]);
      default: return plm::bf16_to_f32(static_cast<const uint16_t*>(t->data)[i]);
    }
  }
  void tick(double bytes) {
    done += bytes;
    if (progress) progress(user, std::min(1.0, done / total));
  }
  // Copies t (any float dtype) as bf16 to dst, in chunks.
  void bf16_to(const plm_cuda_tensor* t, bfh* dst) {
    const int64_t n = numel(t);
    const int64_t chunk = 8 << 20;
    for (int64_t o = 0; o < n; o += chunk) {
      const int64_t c = std::min(chunk, n - o);
      const void* src;
      if (t->dtype == PLM_CUDA_BF16) {
        src = static_cast<const uint16_t*>(t->data) + o;
      } else {
        staging.resize(size_t(c));
        for (int64_t i = 0; i < c; ++i) staging[size_t(i)] = plm::f32_to_bf16(elem(t, o + i));
        src = staging.data();
      }
      PLM_CU_CHECK(cudaMemcpy(dst + o, src, size_t(c) * 2, cudaMemcpyHostToDevice));
      tick(double(c) * 2);
    }
  }
  bfh* bf16(const std::string& name, int64_t expect) {
    const plm_cuda_tensor* t = get(name, expect);
    bfh* d = m->alloc<bfh>(size_t(expect));
    bf16_to(t, d);
    return d;
  }
  // Several tensors stacked along rows into one bf16 matrix.
  bfh* bf16_cat(const std::vector<std::pair<std::string, int64_t>>& parts) {
    int64_t total_n = 0;
    for (auto& p : parts) total_n += p.second;
    bfh* d = m->alloc<bfh>(size_t(total_n));
    int64_t off = 0;
    for (auto& p : parts) {
      bf16_to(get(p.first, p.second), d + off);
      off += p.second;
    }
    return d;
  }
  float* f32(const std::string& name, int64_t expect) {
    const plm_cuda_tensor* t = get(name, expect);
    std::vector<float> h(static_cast<size_t>(expect));
    for (int64_t i = 0; i < expect; ++i) h[size_t(i)] = elem(t, i);
    float* d = m->alloc<float>(size_t(expect));
    PLM_CU_CHECK(cudaMemcpy(d, h.data(), size_t(expect) * 4, cudaMemcpyHostToDevice));
    tick(double(expect) * 2);
    return d;
  }
  float* f32_opt(const std::string& name, int64_t expect) { return find(name) ? f32(name, expect) : nullptr; }
};

int64_t round_up(int64_t a, int64_t b) { return (a + b - 1) / b * b; }

// ---- vision tower + projector for `tb` tiles starting at tile t0; features go to feats rows t0*tpt ----
void run_vision_batch(plm_cuda_model* m, const float* pixels_host, int64_t t0, int64_t tb, int64_t tiles_total) {
  const int64_t C = m->C, T = tb * m->N, D = m->H;
  const bool dump = m->dump_fn != nullptr;
  void* s = m->st();
  float* pix = m->s_pix.get<float>(size_t(tb) * 3 * m->S * m->S);  // [tb, 3, S, S]
  m->prof.mark("vision.upload");
  PLM_CU_CHECK(cudaMemcpyAsync(pix, pixels_host + t0 * 3 * m->S * m->S, size_t(tb) * 3 * m->S * m->S * 4,
                               cudaMemcpyHostToDevice, m->stream));
  bfh* patches = m->s_patch.get<bfh>(size_t(tb) * m->P * m->kpad);  // [tb*P, kpad]
  m->prof.mark("vision.im2col");
  im2col_patches(pix, tb, m->S, m->ps, m->kpad, patches, s);
  float* pe = m->s_pe.get<float>(size_t(tb) * m->P * C);  // [tb*P, C]
  Epilogue ep;
  ep.mode = EpMode::kStoreF32;
  ep.out = pe;
  ep.ldo = C;
  m->prof.mark("vision.patch_gemm");
  gemm_bf16(patches, m->kpad, m->patch_w, m->kpad, tb * m->P, C, m->kpad, ep, s);
  float* x = m->s_x.get<float>(size_t(T) * C);  // [tb, N, C] residual
  m->prof.mark("vision.assemble");
  vision_assemble(pe, m->prefix ? m->cls : nullptr, m->pos, tb, m->P, C, x, s);
  m->dump_f32("vision.embed", x, {tb, m->N, C});
  if (m->pre_w) {
    m->prof.mark("vision.norm_pre");
    layer_norm(x, C, m->pre_w, m->pre_b, m->veps, T, C, nullptr, x, s);
    m->dump_f32("vision.norm_pre", x, {tb, m->N, C});
  }
  bfh* xn = m->s_xn.get<bfh>(size_t(T) * C);         // [T, C]
  bfh* qkv = m->s_qkv.get<bfh>(size_t(T) * 3 * C);   // [T, 3C]
  bfh* att = m->s_att.get<bfh>(size_t(T) * C);       // [T, C]
  bfh* hid = m->s_h.get<bfh>(size_t(T) * m->mlp);    // [T, mlp]
  for (int b = 0; b < m->depth; ++b) {
    const VisionBlock& vb = m->vblocks[size_t(b)];
    m->prof.mark("vision.ln1");
    layer_norm(x, C, vb.n1w, vb.n1b, m->veps, T, C, xn, nullptr, s);
    Epilogue e1;
    e1.mode = EpMode::kStoreBf16;
    e1.bias = vb.qkv_b;
    e1.out = qkv;
    e1.ldo = 3 * C;
    m->prof.mark("vision.qkv");
    gemm_bf16(xn, C, vb.qkv_w, C, T, 3 * C, C, e1, s);
    m->prof.mark("vision.rope");
    rope_2d(qkv, 3 * C, tb, m->N, m->prefix, m->vheads, m->vhd, m->vcos, m->vsin, s);
    FlashParams fp;
    fp.q = qkv;
    fp.k = qkv + C;
    fp.v = qkv + 2 * C;
    fp.o = att;
    fp.q_stride = fp.kv_stride = 3 * C;
    fp.o_stride = C;
    fp.q_batch_stride = fp.kv_batch_stride = int64_t(m->N) * 3 * C;
    fp.o_batch_stride = int64_t(m->N) * C;
    fp.batch = int(tb);
    fp.q_len = fp.kv_len = m->N;
    fp.heads = fp.kv_heads = m->vheads;
    fp.head_dim = m->vhd;
    fp.scale = 1.f / std::sqrt(float(m->vhd));
    fp.causal = false;
    m->prof.mark("vision.attention");
    flash_attention(fp, s);
    Epilogue e2;
    e2.mode = EpMode::kAddF32;
    e2.bias = vb.proj_b;
    e2.scale = vb.g1;
    e2.out = x;
    e2.ldo = C;
    m->prof.mark("vision.proj");
    gemm_bf16(att, C, vb.proj_w, C, T, C, C, e2, s);
    m->prof.mark("vision.ln2");
    layer_norm(x, C, vb.n2w, vb.n2b, m->veps, T, C, xn, nullptr, s);
    Epilogue e3;
    e3.mode = EpMode::kStoreBf16;
    e3.bias = vb.fc1_b;
    e3.gelu = true;
    e3.out = hid;
    e3.ldo = m->mlp;
    m->prof.mark("vision.fc1_gelu");
    gemm_bf16(xn, C, vb.fc1_w, C, T, m->mlp, C, e3, s);
    Epilogue e4;
    e4.mode = EpMode::kAddF32;
    e4.bias = vb.fc2_b;
    e4.scale = vb.g2;
    e4.out = x;
    e4.ldo = C;
    m->prof.mark("vision.fc2");
    gemm_bf16(hid, m->mlp, vb.fc2_w, m->mlp, T, C, m->mlp, e4, s);
    if (dump) m->dump_f32(("vision.blocks." + std::to_string(b)).c_str(), x, {tb, m->N, C});
  }
  m->prof.mark("vision.norm_post");
  if (m->post_norm && m->post_w) layer_norm(x, C, m->post_w, m->post_b, m->veps, T, C, nullptr, x, s);
  const int64_t R = tb * m->P;
  bfh* pin = m->s_pin.get<bfh>(size_t(R) * C);  // [tb*P, C]
  m->prof.mark("projector.drop_prefix");
  drop_prefix_bf16(x, tb, m->N, m->prefix, C, pin, s);
  bfh* l1 = m->s_l1.get<bfh>(size_t(R) * D);  // [tb*P, D]
  Epilogue e5;
  e5.mode = EpMode::kStoreBf16;
  e5.bias = m->l1_b;
  e5.gelu = !dump;
  e5.out = l1;
  e5.ldo = D;
  m->prof.mark("projector.linear_1");
  gemm_bf16(pin, C, m->l1_w, C, R, D, C, e5, s);
  if (dump) {
    m->dump_bf16("projector.linear_1", l1, {tb, m->P, D});
    gelu_inplace(l1, R * D, s);
  }
  float* l2 = m->s_l2.get<float>(size_t(R) * D);  // [tb*P, D]
  Epilogue e6;
  e6.mode = EpMode::kStoreF32;
  e6.bias = m->l2_b;
  e6.out = l2;
  e6.ldo = D;
  m->prof.mark("projector.linear_2");
  gemm_bf16(l1, D, m->l2_w, D, R, D, D, e6, s);
  float* feats = static_cast<float*>(m->feats.p);
  m->prof.mark("projector.pool");
  avg_pool(l2, tb, m->G, m->pool, D, feats + t0 * m->tpt * D, s);
  m->prof.mark(nullptr);
  (void)tiles_total;
}

// Tiles per vision pass: all of them (one pass is faster: the H100 run of 2026-11-27 measured 37 tiles at
// 292.7 tiles/s in one pass vs 272.8 in passes of 8) unless their scratch would take over a quarter of the
// free device memory; PLM_CUDA_VISION_BATCH (m->vision_batch) fixes the size.
int64_t vision_batch_size(plm_cuda_model* m, int64_t tiles) {
  if (m->vision_batch > 0) return m->vision_batch;
  const int64_t C = m->C, N = m->N, P = m->P, D = m->H;
  const int64_t per_tile = N * (4 * C + 2 * C + 6 * C + 2 * C + 2 * int64_t(m->mlp))  // x, xn, qkv, att, hid
                           + 12 * int64_t(m->S) * m->S + P * (2 * m->kpad + 4 * C)   // pixels, patches, pe
                           + P * (2 * C + 2 * D + 4 * D);                              // pin, l1, l2
  size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
    cudaGetLastError();
    return std::min<int64_t>(tiles, 8);
  }
  const int64_t fit = int64_t(free_b / 4) / std::max<int64_t>(per_tile, 1);
  return std::max<int64_t>(1, std::min(tiles, fit));
}

// ---- decoder over m rows already embedded in x (f32 [m, H]) at positions pos0.. ----
void run_decoder_chunk(plm_cuda_model* m, float* x, int64_t rows, int64_t pos0) {
  void* s = m->st();
  const int64_t H = m->H, QD = int64_t(m->nh) * m->hd;
  bfh* xn = m->s_xn.get<bfh>(size_t(rows) * H);           // [rows, H]
  bfh* qkv = m->s_qkv.get<bfh>(size_t(rows) * m->nqkv);   // [rows, nqkv]
  bfh* att = m->s_att.get<bfh>(size_t(rows) * QD);        // [rows, nh*hd]
  bfh* gu = m->s_h.get<bfh>(size_t(rows) * 2 * m->I);     // [rows, 2I]
  bfh* act = m->s_tmp.get<bfh>(size_t(rows) * m->I);      // [rows, I]
  for (int l = 0; l < m->L; ++l) {
    const TextLayer& ly = m->layers[size_t(l)];
    m->prof.mark("prefill.norm1");
    rms_norm(x, H, ly.ln1, m->eps, rows, H, xn, nullptr, s);
    Epilogue e1;
    e1.mode = EpMode::kStoreBf16;
    e1.out = qkv;
    e1.ldo = m->nqkv;
    m->prof.mark("prefill.qkv");
    gemm_bf16(xn, H, ly.wqkv, H, rows, m->nqkv, H, e1, s);
    m->prof.mark("prefill.rope_kv");
    rope_llama_prefill(qkv, m->nqkv, rows, m->nh, m->nkv, m->hd, pos0, m->inv_freq, m->kc(l), m->vc(l), s);
    FlashParams fp;
    fp.q = qkv;
    fp.k = m->kc(l);
    fp.v = m->vc(l);
    fp.o = att;
    fp.q_stride = m->nqkv;
    fp.kv_stride = int64_t(m->nkv) * m->hd;
    fp.o_stride = QD;
    fp.batch = 1;
    fp.q_len = int(rows);
    fp.kv_len = int(pos0 + rows);
    fp.heads = m->nh;
    fp.kv_heads = m->nkv;
    fp.head_dim = m->hd;
    fp.scale = 1.f / std::sqrt(float(m->hd));
    fp.causal = true;
    fp.q_offset = int(pos0);
    m->prof.mark("prefill.attention");
    flash_attention(fp, s);
    Epilogue e2;
    e2.mode = EpMode::kAddF32;
    e2.out = x;
    e2.ldo = H;
    m->prof.mark("prefill.o");
    gemm_bf16(att, QD, ly.wo, QD, rows, H, QD, e2, s);
    m->prof.mark("prefill.norm2");
    rms_norm(x, H, ly.ln2, m->eps, rows, H, xn, nullptr, s);
    Epilogue e3;
    e3.mode = EpMode::kStoreBf16;
    e3.out = gu;
    e3.ldo = 2 * m->I;
    m->prof.mark("prefill.gate_up");
    gemm_bf16(xn, H, ly.wgu, H, rows, 2 * m->I, H, e3, s);
    m->prof.mark("prefill.swiglu");
    swiglu(gu, rows, m->I, act, s);
    Epilogue e4;
    e4.mode = EpMode::kAddF32;
    e4.out = x;
    e4.ldo = H;
    m->prof.mark("prefill.down");
    gemm_bf16(act, m->I, ly.wdown, m->I, rows, H, m->I, e4, s);
    if (m->dump_fn) m->dump_f32(("hidden.layers." + std::to_string(l)).c_str(), x, {rows, H});
  }
  m->prof.mark(nullptr);
}

// logits of rows [r0, r0 + nr) of x (f32 [.., H]) -> host out [nr, V]
void logits_rows_to_host(plm_cuda_model* m, const float* x, int64_t r0, int64_t nr, float* out) {
  void* s = m->st();
  const int64_t H = m->H, V = m->V;
  const int64_t piece = 128;
  for (int64_t o = 0; o < nr; o += piece) {
    const int64_t k = std::min(piece, nr - o);
    bfh* xn = m->s_pin.get<bfh>(size_t(k) * H);            // [k, H]
    float* lg = m->s_logits.get<float>(size_t(k) * V);     // [k, V]
    m->prof.mark("prefill.logits");
    rms_norm(x + (r0 + o) * H, H, m->final_norm, m->eps, k, H, xn, nullptr, s);
    Epilogue ep;
    ep.mode = EpMode::kStoreF32;
    ep.out = lg;
    ep.ldo = V;
    if (k == 1)
      gemv_bf16(xn, m->lm_head, V, H, ep, false, s);
    else
      gemm_bf16(xn, H, m->lm_head, H, k, V, H, ep, s);
    PLM_CU_CHECK(cudaMemcpyAsync(out + o * V, lg, size_t(k) * V * 4, cudaMemcpyDeviceToHost, m->stream));
    m->prof.mark(nullptr);
    PLM_CU_CHECK(cudaStreamSynchronize(m->stream));
  }
}

void record_decode(plm_cuda_model* m) {
  void* s = m->st();
  const int64_t H = m->H, QD = int64_t(m->nh) * m->hd;
  embed_rows(m->d_state, nullptr, m->embed, nullptr, 1, H, m->dec_x, s);
  for (int l = 0; l < m->L; ++l) {
    const TextLayer& ly = m->layers[size_t(l)];
    rms_norm(m->dec_x, H, ly.ln1, m->eps, 1, H, m->dec_xn, nullptr, s);
    Epilogue e1;
    e1.mode = EpMode::kStoreF32;
    e1.out = m->dec_qkv;
    e1.ldo = m->nqkv;
    gemv_bf16(m->dec_xn, ly.wqkv, m->nqkv, H, e1, false, s);
    rope_llama_decode(m->dec_qkv, m->d_state + 1, m->nh, m->nkv, m->hd, m->inv_freq, m->dec_q, m->kc(l), m->vc(l), s);
    decode_attention(m->dec_q, m->kc(l), m->vc(l), m->d_state + 1, m->nh, m->nkv, m->hd,
                     1.f / std::sqrt(float(m->hd)), m->dec_part, m->dec_att, s);
    Epilogue e2;
    e2.mode = EpMode::kAddF32;
    e2.out = m->dec_x;
    e2.ldo = H;
    gemv_bf16(m->dec_att, ly.wo, H, QD, e2, false, s);
    rms_norm(m->dec_x, H, ly.ln2, m->eps, 1, H, m->dec_xn, nullptr, s);
    Epilogue e3;
    e3.mode = EpMode::kStoreBf16;
    e3.out = m->dec_act;
    e3.ldo = m->I;
    gemv_bf16(m->dec_xn, ly.wgu, m->I, H, e3, true, s);
    Epilogue e4;
    e4.mode = EpMode::kAddF32;
    e4.out = m->dec_x;
    e4.ldo = H;
    gemv_bf16(m->dec_act, ly.wdown, H, m->I, e4, false, s);
  }
  rms_norm(m->dec_x, H, m->final_norm, m->eps, 1, H, m->dec_xn, nullptr, s);
  Epilogue e5;
  e5.mode = EpMode::kStoreF32;
  e5.out = m->dec_logits;
  e5.ldo = m->V;
  gemv_bf16(m->dec_xn, m->lm_head, m->V, H, e5, false, s);
  sample(m->dec_logits, m->V, m->d_sp, m->dec_scratch, m->d_next, s);
}

}  // namespace

static int32_t decode_one(plm_cuda_model* m, int32_t token, const plm_cuda_sampling* sampling, float* logits_out);

extern "C" {

PLM_CUDA_EXPORT int32_t plm_cuda_abi_version(void) { return PLM_CUDA_ABI_VERSION; }

PLM_CUDA_EXPORT int32_t plm_cuda_device_info(char* info, size_t info_len) {
  std::string s;
  int n = device_count(&s);
  set_err(info, info_len, s);
  return n;
}

PLM_CUDA_EXPORT int32_t plm_cuda_model_create(const plm_cuda_model_config* cfg, const plm_cuda_tensor* tensors,
                                              int32_t num_tensors, int32_t device, plm_cuda_progress_fn progress,
                                              void* progress_user, plm_cuda_model** out, char* err, size_t err_len) {
  if (out) *out = nullptr;
  plm_cuda_model* m = new (std::nothrow) plm_cuda_model();
  if (!m) {
    set_err(err, err_len, "out of host memory");
    return PLM_CUDA_ERR_OUT_OF_MEMORY;
  }
  int32_t rc = guarded(err, err_len, [&] {
    if (!cfg || !out) fail(PLM_CUDA_ERR_INVALID, "null config or output pointer");
    std::string info;
    const int ndev = device_count(&info);
    if (ndev <= 0) fail(PLM_CUDA_ERR_NO_DEVICE, info);
    if (device < 0 || device >= ndev)
      fail(PLM_CUDA_ERR_NO_DEVICE, "CUDA device " + std::to_string(device) + " does not exist (" +
                                       std::to_string(ndev) + " found)");
    m->device = device;
    set_device(device);
    gemm_wgmma_available();  // probe (a launch and a copy) now, never inside the decode graph's capture
    PLM_CU_CHECK(cudaStreamCreate(&m->stream));
    m->prof.init(m->stream);
    if (const char* vb = std::getenv("PLM_CUDA_VISION_BATCH")) m->vision_batch = std::max(1, std::atoi(vb));
    m->H = cfg->hidden_size;
    m->I = cfg->intermediate_size;
    m->L = cfg->num_layers;
    m->nh = cfg->num_heads;
    m->nkv = cfg->num_kv_heads;
    m->hd = cfg->head_dim;
    m->V = cfg->vocab_size;
    m->eps = cfg->rms_norm_eps;
    m->max_ctx = cfg->max_context;
    m->image_id = cfg->image_token_id;
    m->video_id = cfg->video_token_id;
    m->nqkv = (m->nh + 2 * m->nkv) * m->hd;
    if (m->H <= 0 || m->L <= 0 || m->nh <= 0 || m->nkv <= 0 || m->nh % m->nkv || m->hd <= 0 || m->hd % 8 || m->hd > 256 ||
        m->V <= 0 || m->max_ctx <= 0 || !cfg->rope_inv_freq)
      fail(PLM_CUDA_ERR_INVALID, "invalid decoder configuration");

    Uploader up;
    up.m = m;
    up.progress = progress;
    up.user = progress_user;
    double total = 0;
    for (int i = 0; i < num_tensors; ++i) {
      up.by_name[tensors[i].name] = &tensors[i];
      total += double(Uploader::numel(&tensors[i])) * 2;
    }
    up.total = std::max(1.0, total);
    const std::string lp = "model.language_model.";
    const int64_t H = m->H, QD = int64_t(m->nh) * m->hd, KD = int64_t(m->nkv) * m->hd;
    m->embed = up.bf16(lp + "embed_tokens.weight", int64_t(m->V) * H);
    if (!cfg->tie_word_embeddings && up.find("lm_head.weight"))
      m->lm_head = up.bf16("lm_head.weight", int64_t(m->V) * H);
    else
      m->lm_head = m->embed;
    m->final_norm = up.f32(lp + "norm.weight", H);
    m->layers.resize(size_t(m->L));
    for (int l = 0; l < m->L; ++l) {
      const std::string p = lp + "layers." + std::to_string(l) + ".";
      TextLayer& ly = m->layers[size_t(l)];
      ly.wqkv = up.bf16_cat({{p + "self_attn.q_proj.weight", QD * H},
                             {p + "self_attn.k_proj.weight", KD * H},
                             {p + "self_attn.v_proj.weight", KD * H}});
      ly.wo = up.bf16(p + "self_attn.o_proj.weight", H * QD);
      ly.wgu = up.bf16_cat({{p + "mlp.gate_proj.weight", int64_t(m->I) * H}, {p + "mlp.up_proj.weight", int64_t(m->I) * H}});
      ly.wdown = up.bf16(p + "mlp.down_proj.weight", H * m->I);
      ly.ln1 = up.f32(p + "input_layernorm.weight", H);
      ly.ln2 = up.f32(p + "post_attention_layernorm.weight", H);
    }
    m->inv_freq = m->alloc<float>(size_t(m->hd / 2));
    PLM_CU_CHECK(cudaMemcpy(m->inv_freq, cfg->rope_inv_freq, size_t(m->hd / 2) * 4, cudaMemcpyHostToDevice));

    m->has_vision = cfg->has_vision != 0;
    if (m->has_vision) {
      m->C = cfg->vision_width;
      m->depth = cfg->vision_depth;
      m->vheads = cfg->vision_heads;
      m->vhd = cfg->vision_head_dim;
      m->mlp = cfg->vision_mlp_hidden;
      m->S = cfg->image_size;
      m->ps = cfg->patch_size;
      m->veps = cfg->vision_ln_eps;
      m->post_norm = cfg->vision_post_norm != 0;
      m->prefix = cfg->vision_class_token ? 1 : 0;
      m->pool = std::max(1, int(cfg->pooling_ratio));
      if (m->ps <= 0 || m->S % m->ps || m->vheads <= 0 || m->vhd * m->vheads != m->C || m->vhd % 2 || m->vhd > 256 || !cfg->vision_rope_cos ||
          !cfg->vision_rope_sin)
        fail(PLM_CUDA_ERR_INVALID, "invalid vision configuration");
      m->G = m->S / m->ps;
      if (m->G % m->pool) fail(PLM_CUDA_ERR_INVALID, "patch grid not divisible by the pooling ratio");
      m->P = m->G * m->G;
      m->N = m->P + m->prefix;
      m->tpt = (m->G / m->pool) * (m->G / m->pool);
      const int kreal = 3 * m->ps * m->ps;
      m->kpad = int(round_up(kreal, 8));
      const int64_t C = m->C;
      const std::string vp = "model.vision_tower.timm_model.";
      {
        const plm_cuda_tensor* t = up.get(vp + "patch_embed.proj.weight", C * kreal);
        std::vector<uint16_t> h(size_t(C) * m->kpad, 0);
        for (int64_t r = 0; r < C; ++r)
          for (int k = 0; k < kreal; ++k) h[size_t(r * m->kpad + k)] = plm::f32_to_bf16(Uploader::elem(t, r * kreal + k));
        m->patch_w = m->alloc<bfh>(h.size());
        PLM_CU_CHECK(cudaMemcpy(m->patch_w, h.data(), h.size() * 2, cudaMemcpyHostToDevice));
      }
      if (m->prefix) m->cls = up.f32(vp + "cls_token", C);
      m->pos = up.f32(vp + "pos_embed", int64_t(m->N) * C);
      m->pre_w = up.f32_opt(vp + "norm_pre.weight", C);
      m->pre_b = m->pre_w ? up.f32(vp + "norm_pre.bias", C) : nullptr;
      if (m->post_norm) {
        m->post_w = up.f32_opt(vp + "norm.weight", C);
        m->post_b = m->post_w ? up.f32(vp + "norm.bias", C) : nullptr;
      }
      m->vblocks.resize(size_t(m->depth));
      for (int b = 0; b < m->depth; ++b) {
        const std::string p = vp + "blocks." + std::to_string(b) + ".";
        VisionBlock& vb = m->vblocks[size_t(b)];
        vb.n1w = up.f32(p + "norm1.weight", C);
        vb.n1b = up.f32(p + "norm1.bias", C);
        vb.qkv_w = up.bf16(p + "attn.qkv.weight", 3 * C * C);
        vb.qkv_b = up.f32(p + "attn.qkv.bias", 3 * C);
        vb.proj_w = up.bf16(p + "attn.proj.weight", C * C);
        vb.proj_b = up.f32(p + "attn.proj.bias", C);
        vb.g1 = up.f32_opt(p + "gamma_1", C);
        vb.n2w = up.f32(p + "norm2.weight", C);
        vb.n2b = up.f32(p + "norm2.bias", C);
        vb.fc1_w = up.bf16(p + "mlp.fc1.weight", int64_t(m->mlp) * C);
        vb.fc1_b = up.f32(p + "mlp.fc1.bias", m->mlp);
        vb.fc2_w = up.bf16(p + "mlp.fc2.weight", C * m->mlp);
        vb.fc2_b = up.f32(p + "mlp.fc2.bias", C);
        vb.g2 = up.f32_opt(p + "gamma_2", C);
      }
      const std::string pp = "model.multi_modal_projector.";
      m->l1_w = up.bf16(pp + "linear_1.weight", H * C);
      m->l1_b = up.f32(pp + "linear_1.bias", H);
      m->l2_w = up.bf16(pp + "linear_2.weight", H * H);
      m->l2_b = up.f32(pp + "linear_2.bias", H);
      const size_t tab = size_t(m->P) * (m->vhd / 2);
      m->vcos = m->alloc<float>(tab);
      m->vsin = m->alloc<float>(tab);
      PLM_CU_CHECK(cudaMemcpy(m->vcos, cfg->vision_rope_cos, tab * 4, cudaMemcpyHostToDevice));
      PLM_CU_CHECK(cudaMemcpy(m->vsin, cfg->vision_rope_sin, tab * 4, cudaMemcpyHostToDevice));
    }
    // KV cache
    const size_t kv = size_t(m->L) * m->max_ctx * m->nkv * m->hd;
    try {
      m->kcache = m->alloc<bfh>(kv);
      m->vcache = m->alloc<bfh>(kv);
    } catch (const CudaError& e) {
      if (e.status == 2)
        fail(PLM_CUDA_ERR_OUT_OF_MEMORY, "out of GPU memory for the KV cache (" +
                                             std::to_string(2.0 * kv * 2 / 1073741824.0) +
                                             " GiB): use a shorter max_context, fewer tiles or a quantized model");
      throw;
    }
    // decode buffers
    m->d_state = m->alloc<int32_t>(4);
    m->d_sp = m->alloc<SampleParams>(1);
    m->d_next = m->alloc<int32_t>(1);
    m->dec_x = m->alloc<float>(size_t(H));
    m->dec_xn = m->alloc<bfh>(size_t(std::max<int64_t>(H, QD)));
    m->dec_qkv = m->alloc<float>(size_t(m->nqkv));
    m->dec_q = m->alloc<float>(size_t(QD));
    m->dec_part = m->alloc<float>(size_t(m->nh) * kDecodeSplits * (m->hd + 2));
    m->dec_att = m->alloc<bfh>(size_t(QD));
    m->dec_act = m->alloc<bfh>(size_t(m->I));
    m->dec_logits = m->alloc<float>(size_t(m->V));
    m->dec_scratch = m->alloc<unsigned char>(sample_scratch_bytes());
    PLM_CU_CHECK(cudaMallocHost(&m->h_pinned, 16));
    PLM_CU_CHECK(cudaMallocHost(&m->h_sp, sizeof(SampleParams)));
    PLM_CU_CHECK(cudaDeviceSynchronize());
    if (progress) progress(progress_user, 1.0);
    *out = m;
  });
  if (rc != PLM_CUDA_OK) delete m;
  return rc;
}

PLM_CUDA_EXPORT void plm_cuda_model_destroy(plm_cuda_model* m) {
  if (!m) return;
  cudaSetDevice(m->device);
  cudaStreamSynchronize(m->stream);
  delete m;
}

PLM_CUDA_EXPORT void plm_cuda_set_dump(plm_cuda_model* m, plm_cuda_dump_fn fn, void* user) {
  if (!m) return;
  m->dump_fn = fn;
  m->dump_user = user;
}

PLM_CUDA_EXPORT int32_t plm_cuda_encode_images(plm_cuda_model* m, const float* pixels, int32_t tiles,
                                               float* features_out, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    if (!m || !pixels || tiles <= 0) fail(PLM_CUDA_ERR_INVALID, "encode_images: bad arguments");
    if (!m->has_vision) fail(PLM_CUDA_ERR_INVALID, "this model has no vision tower");
    set_device(m->device);
    const int64_t D = m->H;
    m->feats.get<float>(size_t(tiles) * m->tpt * D);  // [tiles * tpt, D]
    m->nfeat = int64_t(tiles) * m->tpt;
    m->feat_cursor = 0;
    const int64_t batch = m->dump_fn ? tiles : vision_batch_size(m, tiles);
    for (int64_t t0 = 0; t0 < tiles; t0 += batch) run_vision_batch(m, pixels, t0, std::min<int64_t>(batch, tiles - t0), tiles);
    m->dump_f32("projector.out", static_cast<float*>(m->feats.p), {int64_t(tiles) * m->tpt, D});
    if (features_out)
      PLM_CU_CHECK(cudaMemcpyAsync(features_out, m->feats.p, size_t(m->nfeat) * D * 4, cudaMemcpyDeviceToHost,
                                   m->stream));
    PLM_CU_CHECK(cudaStreamSynchronize(m->stream));
    m->prof.flush();
  });
}

PLM_CUDA_EXPORT int32_t plm_cuda_forward(plm_cuda_model* m, const int32_t* ids, int32_t n, int32_t use_features,
                                         int32_t logits_rows, float* logits_out, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    if (!m || !ids || n <= 0) fail(PLM_CUDA_ERR_INVALID, "forward: bad arguments");
    if (logits_rows != 0 && logits_rows != 1 && logits_rows != n)
      fail(PLM_CUDA_ERR_INVALID, "forward: logits_rows must be 0, 1 or n");
    if (logits_rows > 0 && !logits_out) fail(PLM_CUDA_ERR_INVALID, "forward: logits_out is null");
    if (int64_t(m->cache_len) + n > m->max_ctx)
      fail(PLM_CUDA_ERR_INVALID, "context overflow: " + std::to_string(m->cache_len) + " cached + " +
                                     std::to_string(n) + " new tokens > max_context " + std::to_string(m->max_ctx));
    set_device(m->device);
    for (int32_t i = 0; i < n; ++i)
      if (ids[i] < 0 || ids[i] >= m->V) fail(PLM_CUDA_ERR_INVALID, "token id out of range: " + std::to_string(ids[i]));
    std::vector<int32_t> fidx(size_t(n), -1);
    bool any_feat = false;
    if (use_features) {
      for (int32_t i = 0; i < n; ++i)
        if (ids[i] == m->image_id || ids[i] == m->video_id) {
          if (m->feat_cursor >= m->nfeat)
            fail(PLM_CUDA_ERR_INVALID, "more image/video placeholder tokens than encoded feature rows (" +
                                           std::to_string(m->nfeat) + ")");
          fidx[size_t(i)] = int32_t(m->feat_cursor++);
          any_feat = true;
        }
    }
    if (n == 1 && !any_feat && !m->dump_fn) {  // a single decode token: the CUDA-graph path (same math)
      decode_one(m, ids[0], nullptr, logits_rows ? logits_out : nullptr);
      return;
    }
    const int64_t H = m->H;
    const int64_t chunk = m->dump_fn ? n : 4096;
    for (int64_t c0 = 0; c0 < n; c0 += chunk) {
      const int64_t rows = std::min<int64_t>(chunk, n - c0);
      int32_t* d_ids = m->s_ids.get<int32_t>(size_t(rows));   // [rows]
      int32_t* d_fidx = m->s_fidx.get<int32_t>(size_t(rows)); // [rows]
      PLM_CU_CHECK(cudaMemcpyAsync(d_ids, ids + c0, size_t(rows) * 4, cudaMemcpyHostToDevice, m->stream));
      PLM_CU_CHECK(cudaMemcpyAsync(d_fidx, fidx.data() + c0, size_t(rows) * 4, cudaMemcpyHostToDevice, m->stream));
      float* x = m->s_x.get<float>(size_t(rows) * H);  // [rows, H] residual
      m->prof.mark("prefill.embed");
      embed_rows(d_ids, any_feat ? d_fidx : nullptr, m->embed, static_cast<const float*>(m->feats.p), rows, H, x,
                 m->st());
      m->dump_f32("hidden.embed", x, {rows, H});
      run_decoder_chunk(m, x, rows, m->cache_len);
      m->cache_len += int(rows);
      if (m->dump_fn) {
        float* nf = m->s_l2.get<float>(size_t(rows) * H);
        rms_norm(x, H, m->final_norm, m->eps, rows, H, nullptr, nf, m->st());
        m->dump_f32("hidden.norm", nf, {rows, H});
      }
      if (logits_rows == n && n > 1)
        logits_rows_to_host(m, x, 0, rows, logits_out + c0 * m->V);
      else if (logits_rows >= 1 && c0 + rows == n)
        logits_rows_to_host(m, x, rows - 1, 1, logits_out);
    }
    PLM_CU_CHECK(cudaStreamSynchronize(m->stream));
    m->prof.flush();
  });
}

}  // extern "C"

// One token through the decode graph (greedy when sampling is null); returns the sampled id.
static int32_t decode_one(plm_cuda_model* m, int32_t token, const plm_cuda_sampling* sampling, float* logits_out) {
  if (token < 0 || token >= m->V) fail(PLM_CUDA_ERR_INVALID, "token id out of range: " + std::to_string(token));
  if (m->cache_len + 1 > m->max_ctx)
    fail(PLM_CUDA_ERR_INVALID, "context overflow: the KV cache holds max_context = " + std::to_string(m->max_ctx) +
                                   " tokens");
  set_device(m->device);
  m->h_pinned[0] = token;
  m->h_pinned[1] = m->cache_len;
  SampleParams sp{};
  if (sampling) {
    sp.temperature = sampling->temperature;
    sp.top_k = sampling->top_k;
    sp.top_p = sampling->top_p;
    sp.min_p = sampling->min_p;
    sp.seed = sampling->seed;
    sp.step = sampling->step;
  } else {
    sp.temperature = 0.f;
    sp.top_p = 1.f;
  }
  *m->h_sp = sp;
  PLM_CU_CHECK(cudaMemcpyAsync(m->d_state, m->h_pinned, 8, cudaMemcpyHostToDevice, m->stream));
  PLM_CU_CHECK(cudaMemcpyAsync(m->d_sp, m->h_sp, sizeof(SampleParams), cudaMemcpyHostToDevice, m->stream));
  if (!m->graph && !m->graph_failed) {
    cudaGraph_t g = nullptr;
    bool ok = cudaStreamBeginCapture(m->stream, cudaStreamCaptureModeThreadLocal) == cudaSuccess;
    if (ok) {
      try {
        record_decode(m);
      } catch (...) {
        ok = false;
      }
      ok = cudaStreamEndCapture(m->stream, &g) == cudaSuccess && ok;
      if (ok) ok = cudaGraphInstantiate(&m->graph, g, 0) == cudaSuccess;
      if (g) cudaGraphDestroy(g);
    }
    if (!ok) {
      cudaGetLastError();
      m->graph = nullptr;
      m->graph_failed = true;  // run the kernels one by one from now on
    }
  }
  if (m->graph)
    PLM_CU_CHECK(cudaGraphLaunch(m->graph, m->stream));
  else
    record_decode(m);
  PLM_CU_CHECK(cudaMemcpyAsync(m->h_pinned + 2, m->d_next, 4, cudaMemcpyDeviceToHost, m->stream));
  if (logits_out)
    PLM_CU_CHECK(cudaMemcpyAsync(logits_out, m->dec_logits, size_t(m->V) * 4, cudaMemcpyDeviceToHost, m->stream));
  PLM_CU_CHECK(cudaStreamSynchronize(m->stream));
  m->cache_len += 1;
  return m->h_pinned[2];
}

extern "C" {

PLM_CUDA_EXPORT int32_t plm_cuda_decode_step(plm_cuda_model* m, int32_t token, const plm_cuda_sampling* sampling,
                                             int32_t* next_token, float* logits_out, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    if (!m) fail(PLM_CUDA_ERR_INVALID, "decode_step: null model");
    const int32_t next = decode_one(m, token, sampling, logits_out);
    if (next_token) *next_token = next;
  });
}

PLM_CUDA_EXPORT void plm_cuda_truncate(plm_cuda_model* m, int32_t n) {
  if (!m) return;
  m->cache_len = std::max(0, std::min(m->cache_len, n));
}

PLM_CUDA_EXPORT int32_t plm_cuda_cache_length(const plm_cuda_model* m) { return m ? m->cache_len : 0; }

}  // extern "C"
