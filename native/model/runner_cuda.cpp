// CUDA runner: loads libplm_cuda.so at run time (only when libcuda.so.1 can be opened) and forwards to it.
// Search order: $PLM_CUDA_LIBRARY, then next to the module holding this code (the addon or the executable),
// its Release/ subfolder, the executable's folder, then the dynamic linker's path.
#include "model/runner_cuda.h"

#include <cstdint>
#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <mutex>
#include <numeric>
#include <random>

#include "core/error.h"
#include "cuda/plm_cuda_api.h"
#include "model/engine.h"
#include "model/rope_tables.h"

namespace plm {
namespace {

struct CudaLib {
  bool ok = false;
  std::string why_not, path;
  void* handle = nullptr;
  int32_t (*abi_version)() = nullptr;
  int32_t (*device_info)(char*, size_t) = nullptr;
  decltype(&plm_cuda_model_create) model_create = nullptr;
  decltype(&plm_cuda_model_destroy) model_destroy = nullptr;
  decltype(&plm_cuda_set_dump) set_dump = nullptr;
  decltype(&plm_cuda_encode_images) encode_images = nullptr;
  decltype(&plm_cuda_forward) forward = nullptr;
  decltype(&plm_cuda_decode_step) decode_step = nullptr;
  decltype(&plm_cuda_truncate) truncate = nullptr;
  decltype(&plm_cuda_cache_length) cache_length = nullptr;
};

std::string dir_of(const std::string& p) {
  const size_t s = p.find_last_of('/');
  return s == std::string::npos ? std::string(".") : p.substr(0, s);
}

void anchor_symbol() {}

std::vector<std::string> candidates() {
  std::vector<std::string> c;
  if (const char* env = std::getenv("PLM_CUDA_LIBRARY"); env && *env) c.push_back(env);
  Dl_info info;
  if (dladdr(reinterpret_cast<void*>(&anchor_symbol), &info) && info.dli_fname) {
    const std::string d = dir_of(info.dli_fname);
    c.push_back(d + "/libplm_cuda.so");
    c.push_back(d + "/Release/libplm_cuda.so");
  }
  char exe[4096];
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) {
    exe[n] = 0;
    const std::string d = dir_of(exe);
    c.push_back(d + "/libplm_cuda.so");
    c.push_back(d + "/Release/libplm_cuda.so");
  }
  c.push_back("libplm_cuda.so");
  return c;
}

template <typename F>
bool sym(void* h, const char* name, F* out) {
  *out = reinterpret_cast<F>(dlsym(h, name));
  return *out != nullptr;
}

CudaLib& lib() {
  static CudaLib L;
  static std::once_flag once;
  std::call_once(once, [] {
    if (!dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL)) {
      L.why_not = "libcuda.so.1 not found: no NVIDIA driver";
      return;
    }
    std::string tried;
    for (const std::string& p : candidates()) {
      if (p.find('/') != std::string::npos && access(p.c_str(), F_OK) != 0) continue;
      void* h = dlopen(p.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (!h) {
        const char* e = dlerror();
        tried += std::string(tried.empty() ? "" : "; ") + (e ? e : p);
        continue;
      }
      L.handle = h;
      L.path = p;
      break;
    }
    if (!L.handle) {
      L.why_not = "libplm_cuda.so not built (or not found next to the addon; set PLM_CUDA_LIBRARY)" +
                  (tried.empty() ? std::string() : ": " + tried);
      return;
    }
    if (!sym(L.handle, "plm_cuda_abi_version", &L.abi_version)) {
      L.why_not = L.path + " is not a perception-lm CUDA library";
      return;
    }
    if (L.abi_version() != PLM_CUDA_ABI_VERSION) {
      L.why_not = L.path + " has ABI version " + std::to_string(L.abi_version()) + ", expected " +
                  std::to_string(PLM_CUDA_ABI_VERSION) + ": rebuild it";
      return;
    }
    bool ok = sym(L.handle, "plm_cuda_device_info", &L.device_info) &&
              sym(L.handle, "plm_cuda_model_create", &L.model_create) &&
              sym(L.handle, "plm_cuda_model_destroy", &L.model_destroy) &&
              sym(L.handle, "plm_cuda_set_dump", &L.set_dump) &&
              sym(L.handle, "plm_cuda_encode_images", &L.encode_images) &&
              sym(L.handle, "plm_cuda_forward", &L.forward) && sym(L.handle, "plm_cuda_decode_step", &L.decode_step) &&
              sym(L.handle, "plm_cuda_truncate", &L.truncate) && sym(L.handle, "plm_cuda_cache_length", &L.cache_length);
    if (!ok) {
      L.why_not = L.path + " lacks a symbol of the CUDA ABI: rebuild it";
      return;
    }
    L.ok = true;
  });
  return L;
}

ErrorCode map_status(int32_t st, const std::string& msg) {
  switch (st) {
    case PLM_CUDA_ERR_OUT_OF_MEMORY: return ErrorCode::kOutOfMemory;
    case PLM_CUDA_ERR_CANCELLED: return ErrorCode::kCancelled;
    case PLM_CUDA_ERR_INVALID:
      return msg.find("context overflow") != std::string::npos ? ErrorCode::kContextOverflow
                                                                : ErrorCode::kInvalidArgument;
    default: return ErrorCode::kBackend;
  }
}

void check(int32_t st, const char* err) {
  if (st == PLM_CUDA_OK) return;
  const std::string msg = std::string("CUDA backend: ") + err;
  throw Error(map_status(st, msg), msg);
}

// Host sampling, used only with a repetition penalty (the device sampler has none).
int32_t host_sample(std::vector<float>& l, const SamplingParams& p, uint64_t step) {
  const int64_t V = int64_t(l.size());
  int64_t best = 0;
  for (int64_t i = 1; i < V; ++i)
    if (l[size_t(i)] > l[size_t(best)]) best = i;
  if (!(p.temperature > 0.f)) return int32_t(best);
  std::vector<int32_t> idx(static_cast<size_t>(V));
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return l[size_t(a)] > l[size_t(b)]; });
  int64_t keep = V;
  if (p.top_k > 0 && p.top_k < V) {
    const float kth = l[size_t(idx[size_t(p.top_k - 1)])];
    keep = p.top_k;
    while (keep < V && l[size_t(idx[size_t(keep)])] >= kth) ++keep;
  }
  const float mx = l[size_t(idx[0])];
  std::vector<double> pr(static_cast<size_t>(keep));
  double z = 0;
  for (int64_t i = 0; i < keep; ++i) z += pr[size_t(i)] = std::exp(double(l[size_t(idx[size_t(i)])] - mx) / p.temperature);
  if (p.top_p < 1.f) {
    double acc = 0;
    int64_t k = 0;
    while (k < keep && acc < p.top_p * z) acc += pr[size_t(k++)];
    keep = std::max<int64_t>(1, k);
  }
  if (p.min_p > 0.f)
    while (keep > 1 && pr[size_t(keep - 1)] < p.min_p * pr[0]) --keep;
  double tot = 0;
  for (int64_t i = 0; i < keep; ++i) tot += pr[size_t(i)];
  std::mt19937_64 rng(p.seed * 0x9E3779B97F4A7C15ull + step);
  double u = std::uniform_real_distribution<double>(0, tot)(rng);
  for (int64_t i = 0; i < keep; ++i) {
    u -= pr[size_t(i)];
    if (u < 0) return idx[size_t(i)];
  }
  return idx[size_t(keep - 1)];
}

class CudaRunner : public Runner {
 public:
  CudaRunner(plm_cuda_model* m, std::string name, int64_t vocab, int64_t hidden, int64_t tpt)
      : m_(m), name_(std::move(name)), vocab_(vocab), hidden_(hidden), tpt_(tpt) {}
  ~CudaRunner() override {
    if (m_) lib().model_destroy(m_);
  }
  std::string backend_name() const override { return name_; }

  void encode_images(const float* pixels, int64_t tiles, std::vector<float>* features_out,
                     const CancelToken* cancel) override {
    if (cancel && cancel->is_cancelled()) throw Error(ErrorCode::kCancelled, "cancelled");
    char err[1024] = {0};
    float* out = nullptr;
    if (features_out) {
      features_out->resize(size_t(tiles * tpt_ * hidden_));
      out = features_out->data();
    }
    check(lib().encode_images(m_, pixels, int32_t(tiles), out, err, sizeof err), err);
  }

  void forward(const ForwardRequest& req, const CancelToken* cancel) override {
    if (cancel && cancel->is_cancelled()) throw Error(ErrorCode::kCancelled, "cancelled");
    char err[1024] = {0};
    check(lib().forward(m_, req.ids, int32_t(req.n), req.use_features ? 1 : 0, int32_t(req.logits_rows),
                        req.logits_out, err, sizeof err),
          err);
    history_.insert(history_.end(), req.ids, req.ids + req.n);
  }

  bool samples_on_device() const override { return true; }

  int32_t decode_step(int32_t token, const SamplingParams& params, uint64_t step, float* logits_out) override {
    char err[1024] = {0};
    plm_cuda_sampling s;
    s.temperature = params.temperature;
    s.top_k = params.top_k;
    s.top_p = params.top_p;
    s.min_p = params.min_p;
    s.seed = params.seed;
    s.step = step;
    int32_t next = -1;
    history_.push_back(token);
    if (params.repetition_penalty != 1.f) {
      // the device sampler has no penalty: sample on the host from the penalized logits
      std::vector<float> l(static_cast<size_t>(vocab_));
      plm_cuda_sampling g = s;
      g.temperature = 0.f;
      check(lib().decode_step(m_, token, &g, &next, l.data(), err, sizeof err), err);
      if (logits_out) std::copy(l.begin(), l.end(), logits_out);
      std::vector<char> seen(size_t(vocab_), 0);
      for (int32_t id : history_)
        if (id >= 0 && id < vocab_ && !seen[size_t(id)]) {
          seen[size_t(id)] = 1;
          float& v = l[size_t(id)];
          v = v > 0 ? v / params.repetition_penalty : v * params.repetition_penalty;
        }
      return host_sample(l, params, step);
    }
    check(lib().decode_step(m_, token, &s, &next, logits_out, err, sizeof err), err);
    return next;
  }

  void truncate(int64_t n) override {
    lib().truncate(m_, int32_t(n));
    if (int64_t(history_.size()) > n) history_.resize(size_t(std::max<int64_t>(0, n)));
  }
  int64_t cache_length() const override { return lib().cache_length(m_); }

  void set_dump(DumpFn fn) override {
    dump_ = std::move(fn);
    if (dump_)
      lib().set_dump(m_, &CudaRunner::trampoline, this);
    else
      lib().set_dump(m_, nullptr, nullptr);
  }

 private:
  static void trampoline(void* user, const char* name, const float* data, const int64_t* shape, int32_t ndim) {
    auto* self = static_cast<CudaRunner*>(user);
    if (self->dump_) self->dump_(name, data, std::vector<int64_t>(shape, shape + ndim));
  }
  plm_cuda_model* m_;
  std::string name_;
  int64_t vocab_, hidden_, tpt_;
  std::vector<int32_t> history_;
  DumpFn dump_;
};

void progress_thunk(void* user, double f) {
  const ProgressFn* p = static_cast<const ProgressFn*>(user);
  if (p && *p) (*p)(f, "upload");
}

int32_t to_dtype(DType t, bool* ok) {
  *ok = true;
  switch (t) {
    case DType::kF32: return PLM_CUDA_F32;
    case DType::kF16: return PLM_CUDA_F16;
    case DType::kBF16: return PLM_CUDA_BF16;
    default: *ok = false; return -1;
  }
}

}  // namespace

std::string cuda_library_path(std::string* why_not) {
  CudaLib& L = lib();
  if (!L.ok) {
    if (why_not) *why_not = L.why_not;
    return std::string();
  }
  return L.path;
}

std::unique_ptr<Runner> make_cuda_runner(const LoadedModel& model, int device, int64_t max_context,
                                         const ProgressFn& progress, std::string* why_not) {
  CudaLib& L = lib();
  if (!L.ok) {
    if (why_not) *why_not = L.why_not;
    return nullptr;
  }
  char info[512] = {0};
  const int32_t ndev = L.device_info(info, sizeof info);
  if (ndev <= 0) {
    if (why_not) *why_not = info[0] ? std::string(info) : std::string("no CUDA device");
    return nullptr;
  }
  const ModelConfig& c = model.config;
  const TextConfig& t = c.text;
  const VisionConfig& v = c.vision;
  std::vector<float> inv_freq = llama_rope_inv_freq(t);
  std::vector<float> vcos, vsin;
  plm_cuda_model_config mc{};
  mc.hidden_size = t.hidden_size;
  mc.intermediate_size = t.intermediate_size;
  mc.num_layers = t.num_layers;
  mc.num_heads = t.num_heads;
  mc.num_kv_heads = t.num_kv_heads;
  mc.head_dim = t.head_dim;
  mc.vocab_size = t.vocab_size;
  mc.rms_norm_eps = t.rms_norm_eps;
  mc.tie_word_embeddings = t.tie_word_embeddings ? 1 : 0;
  mc.rope_inv_freq = inv_freq.data();
  mc.max_context = int32_t(max_context > 0 ? max_context : t.max_position_embeddings);
  mc.image_token_id = c.image_token_id;
  mc.video_token_id = c.video_token_id;
  mc.has_vision = v.present ? 1 : 0;
  if (v.present) {
    pe_rope_tables(v, &vcos, &vsin);
    mc.vision_width = v.width;
    mc.vision_depth = v.depth;
    mc.vision_heads = v.heads;
    mc.vision_head_dim = v.head_dim;
    mc.vision_mlp_hidden = v.mlp_hidden;
    mc.image_size = v.image_size;
    mc.patch_size = v.patch_size;
    mc.vision_class_token = v.class_token ? 1 : 0;
    mc.vision_post_norm = v.post_norm ? 1 : 0;
    mc.vision_ln_eps = v.layer_norm_eps;
    mc.vision_rope_cos = vcos.data();
    mc.vision_rope_sin = vsin.data();
    mc.pooling_ratio = c.projector_pooling_ratio;
  }
  // The library finds optional parts (the ViT's norm_pre and final norm, layer scales) by whether their tensors
  // are given: it gets exactly the ones the config's flags select, so both backends follow the same rule (the
  // config, whose flags model.cpp checked against the weights) even when a checkpoint carries extra tensors.
  const std::string vp = "model.vision_tower.timm_model.";
  auto selected = [&](const std::string& name) {
    if (name.compare(0, vp.size(), vp) != 0) return true;
    const std::string leaf = name.substr(vp.size());
    if (leaf.compare(0, 9, "norm_pre.") == 0) return v.pre_norm;
    if (leaf.compare(0, 5, "norm.") == 0) return v.post_norm;
    if (leaf.find(".gamma_") != std::string::npos) return v.layer_scale;
    return true;
  };
  std::vector<plm_cuda_tensor> tensors;
  for (const auto& kv : model.weights->all()) {
    if (!selected(kv.first)) continue;
    const TensorView* tv = kv.second;
    bool ok;
    plm_cuda_tensor pt{};
    pt.name = kv.first.c_str();
    pt.dtype = to_dtype(tv->dtype, &ok);
    if (!ok || tv->shape.size() > 4) continue;
    pt.ndim = int32_t(tv->shape.size());
    for (size_t i = 0; i < tv->shape.size(); ++i) pt.shape[i] = tv->shape[i];
    pt.data = tv->data;
    tensors.push_back(pt);
  }
  plm_cuda_model* m = nullptr;
  char err[1024] = {0};
  const int32_t st = L.model_create(&mc, tensors.data(), int32_t(tensors.size()), device, &progress_thunk,
                                    const_cast<ProgressFn*>(&progress), &m, err, sizeof err);
  if (st == PLM_CUDA_ERR_NO_DEVICE) {
    if (why_not) *why_not = err;
    return nullptr;
  }
  check(st, err);
  const int64_t tpt = v.present ? int64_t(c.tokens_per_tile()) : 0;
  return std::make_unique<CudaRunner>(m, "cuda:" + std::to_string(device) + " " + info, t.vocab_size, t.hidden_size,
                                      tpt);
}

std::string cuda_status() {
  std::string why;
  const std::string path = cuda_library_path(&why);
  if (path.empty()) return why;
  char info[512] = {0};
  const int32_t n = lib().device_info(info, sizeof info);
  if (n <= 0) return std::string(info[0] ? info : "no CUDA device");
  return "cuda: " + path + ", " + std::to_string(n) + " device(s); device 0: " + info;
}

}  // namespace plm
