// N-API glue only: argument checks, copies across the boundary, worker threads, token streaming.
// All math lives in native/.
#include <cstdint>
#include <napi.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <thread>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/error.h"
#include "cpu/cpu_features.h"
#include "async_job.h"
#include "cpu_info_binding.h"
#include "image_processor_binding.h"
#include "model/engine.h"
#include "model/quantized_file.h"

namespace {

using plm::Engine;
using plm_napi::coded_error;
using plm_napi::float_array;
using plm_napi::JobWorker;
using plm_napi::ProgressRelay;
using plm_napi::throw_invalid;

class CancelTokenWrap : public Napi::ObjectWrap<CancelTokenWrap> {
 public:
  static Napi::FunctionReference constructor;
  static void Init(Napi::Env env) {
    Napi::Function fn = DefineClass(env, "NativeCancel", {InstanceMethod("cancel", &CancelTokenWrap::Cancel)});
    constructor = Napi::Persistent(fn);
  }
  explicit CancelTokenWrap(const Napi::CallbackInfo& info)
      : Napi::ObjectWrap<CancelTokenWrap>(info), token(std::make_shared<plm::CancelToken>()) {}
  Napi::Value Cancel(const Napi::CallbackInfo& info) {
    token->cancelled.store(true);
    return info.Env().Undefined();
  }
  std::shared_ptr<plm::CancelToken> token;
};
Napi::FunctionReference CancelTokenWrap::constructor;

std::shared_ptr<plm::CancelToken> cancel_from(const Napi::Value& v) {
  if (v.IsObject() && v.As<Napi::Object>().InstanceOf(CancelTokenWrap::constructor.Value()))
    return CancelTokenWrap::Unwrap(v.As<Napi::Object>())->token;
  return std::make_shared<plm::CancelToken>();
}

// A model shared between JS and the worker threads; jobs run one at a time.
struct ModelState {
  std::unique_ptr<Engine> engine;
  std::mutex job_mutex;
  std::atomic<bool> disposed{false};
};

Napi::Object config_to_js(Napi::Env env, const plm::LoadedModel& m) {
  const auto& c = m.config;
  Napi::Object text = Napi::Object::New(env);
  text.Set("hidden_size", c.text.hidden_size);
  text.Set("intermediate_size", c.text.intermediate_size);
  text.Set("num_hidden_layers", c.text.num_layers);
  text.Set("num_attention_heads", c.text.num_heads);
  text.Set("num_key_value_heads", c.text.num_kv_heads);
  text.Set("head_dim", c.text.head_dim);
  text.Set("vocab_size", c.text.vocab_size);
  text.Set("rms_norm_eps", c.text.rms_norm_eps);
  text.Set("max_position_embeddings", c.text.max_position_embeddings);
  text.Set("tie_word_embeddings", c.text.tie_word_embeddings);
  text.Set("rope_theta", c.text.rope.theta);
  text.Set("rope_type", c.text.rope.type == plm::RopeConfig::Type::kLlama3 ? "llama3" : "default");
  Napi::Object vision = Napi::Object::New(env);
  vision.Set("present", c.vision.present);
  if (c.vision.present) {
    vision.Set("architecture", c.vision.architecture);
    vision.Set("width", c.vision.width);
    vision.Set("depth", c.vision.depth);
    vision.Set("heads", c.vision.heads);
    vision.Set("head_dim", c.vision.head_dim);
    vision.Set("mlp_hidden", c.vision.mlp_hidden);
    vision.Set("image_size", c.vision.image_size);
    vision.Set("patch_size", c.vision.patch_size);
    vision.Set("class_token", c.vision.class_token);
  } else {
    vision.Set("image_size", 0);
    vision.Set("patch_size", 0);
  }
  Napi::Object gen = Napi::Object::New(env);
  gen.Set("bos_token_id", m.generation.bos_token_id);
  Napi::Array eos = Napi::Array::New(env, m.generation.eos_token_ids.size());
  for (size_t i = 0; i < m.generation.eos_token_ids.size(); ++i) eos.Set(uint32_t(i), m.generation.eos_token_ids[i]);
  gen.Set("eos_token_ids", eos);
  gen.Set("do_sample", m.generation.do_sample);
  gen.Set("temperature", m.generation.temperature);
  gen.Set("top_p", m.generation.top_p);
  gen.Set("top_k", m.generation.top_k);
  gen.Set("max_new_tokens", m.generation.max_new_tokens);
  Napi::Object out = Napi::Object::New(env);
  out.Set("text", text);
  out.Set("vision", vision);
  out.Set("image_token_id", c.image_token_id);
  out.Set("video_token_id", c.video_token_id);
  out.Set("tokens_per_tile", c.tokens_per_tile());
  out.Set("projector_pooling_ratio", c.projector_pooling_ratio);
  out.Set("dtype", c.dtype);
  out.Set("generation", gen);
  return out;
}

class NativeModel;

class LoadWorker : public JobWorker {
 public:
  LoadWorker(Napi::Env env, std::string dir, plm::EngineOptions options, Napi::Function on_progress)
      : JobWorker(env), dir_(std::move(dir)), options_(std::move(options)),
        progress_(env, on_progress, "plm-load-progress") {}

 protected:
  void Work() override {
    state_ = std::make_shared<ModelState>();
    state_->engine = Engine::load(dir_, options_, progress_.fn());
  }
  Napi::Value Result(Napi::Env env) override;
  void Cleanup() override { progress_.Release(); }
  Napi::ThreadSafeFunction* CallbackQueue() override { return progress_.queue(); }

 private:
  std::string dir_;
  plm::EngineOptions options_;
  ProgressRelay progress_;
  std::shared_ptr<ModelState> state_;
};

// quantizeModel: reads the checkpoint and writes a plm-quant file (model/quantized_file.h).
class QuantizeWorker : public JobWorker {
 public:
  QuantizeWorker(Napi::Env env, std::string dir, plm::cpu::Quant quant, std::string out, int threads,
                 Napi::Function on_progress, std::shared_ptr<plm::CancelToken> cancel)
      : JobWorker(env), dir_(std::move(dir)), quant_(quant), out_(std::move(out)), threads_(threads),
        progress_(env, on_progress, "plm-quantize-progress"), cancel_(std::move(cancel)) {}

 protected:
  void Work() override {
    plm::ProgressFn progress = progress_.fn();
    auto model = plm::load_model(dir_, nullptr);
    if (cancel_->is_cancelled()) throw plm::Error(plm::ErrorCode::kCancelled, "cancelled");
    plm::ThreadPool pool(threads_);
    const std::string path = out_.empty() ? plm::default_quantized_path(dir_, quant_) : out_;
    result_ = plm::write_quantized_file(*model, quant_, path, &pool, progress, cancel_.get());
  }
  Napi::Value Result(Napi::Env env) override {
    Napi::Object out = Napi::Object::New(env);
    out.Set("path", result_.path);
    out.Set("kind", plm::cpu::quant_name(result_.quant));
    out.Set("quantized", static_cast<double>(result_.quantized));
    out.Set("kept", static_cast<double>(result_.kept));
    out.Set("fileBytes", static_cast<double>(result_.file_bytes));
    out.Set("sourceBytes", static_cast<double>(result_.source_bytes));
    return out;
  }
  void Cleanup() override { progress_.Release(); }
  Napi::ThreadSafeFunction* CallbackQueue() override { return progress_.queue(); }

 private:
  std::string dir_;
  plm::cpu::Quant quant_;
  std::string out_;
  int threads_;
  ProgressRelay progress_;
  std::shared_ptr<plm::CancelToken> cancel_;
  plm::QuantizeFileResult result_;
};

class NativeModel : public Napi::ObjectWrap<NativeModel> {
 public:
  static Napi::FunctionReference constructor;
  static void Init(Napi::Env env) {
    Napi::Function fn = DefineClass(env, "NativeModel",
                                    {InstanceMethod("info", &NativeModel::Info),
                                     InstanceMethod("forward", &NativeModel::Forward),
                                     InstanceMethod("encodeImages", &NativeModel::EncodeImages),
                                     InstanceMethod("generate", &NativeModel::Generate),
                                     InstanceMethod("createSession", &NativeModel::CreateSession),
                                     InstanceMethod("stats", &NativeModel::Stats),
                                     InstanceMethod("clearCache", &NativeModel::ClearCache),
                                     InstanceMethod("dispose", &NativeModel::Dispose)});
    constructor = Napi::Persistent(fn);
  }
  explicit NativeModel(const Napi::CallbackInfo& info) : Napi::ObjectWrap<NativeModel>(info) {}
  std::shared_ptr<ModelState> state;

 private:
  std::shared_ptr<ModelState> live(Napi::Env env) {
    if (!state || state->disposed.load())
      throw coded_error(env, "ERR_DISPOSED", "this model has been disposed; load it again with loadModel()");
    return state;
  }
  Napi::Value Info(const Napi::CallbackInfo& info);
  Napi::Value Forward(const Napi::CallbackInfo& info);
  Napi::Value EncodeImages(const Napi::CallbackInfo& info);
  Napi::Value Generate(const Napi::CallbackInfo& info);
  Napi::Value CreateSession(const Napi::CallbackInfo& info);
  Napi::Value Stats(const Napi::CallbackInfo& info);
  Napi::Value ClearCache(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    if (state) {
      state->disposed.store(true);
      // The engine is freed by whichever finishes last: this call or an exclusive job (forward, encodeImages)
      // still running. Generations end with ERR_DISPOSED as the scheduler stops. Freeing joins the engine
      // thread, which may be inside a long step: it happens off the JS thread.
      std::unique_lock<std::mutex> lock(state->job_mutex, std::try_to_lock);
      if (lock.owns_lock() && state->engine) {
        std::thread([engine = std::move(state->engine)]() mutable { engine.reset(); }).detach();
      }
      state.reset();
    }
    return info.Env().Undefined();
  }
};
Napi::FunctionReference NativeModel::constructor;

Napi::Value LoadWorker::Result(Napi::Env env) {
  Napi::Object obj = NativeModel::constructor.New({});
  NativeModel::Unwrap(obj)->state = state_;
  return obj;
}

std::vector<int32_t> ids_from(Napi::Env env, const Napi::Value& v) {
  std::vector<int32_t> ids;
  if (v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == napi_int32_array) {
    Napi::Int32Array a = v.As<Napi::Int32Array>();
    ids.assign(a.Data(), a.Data() + a.ElementLength());
  } else if (v.IsArray()) {
    Napi::Array a = v.As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); ++i) {
      Napi::Value e = a.Get(i);
      if (!e.IsNumber()) throw_invalid(env, "inputIds must hold integers");
      double d = e.As<Napi::Number>().DoubleValue();
      if (d != static_cast<int32_t>(d)) throw_invalid(env, "inputIds must hold integers");
      ids.push_back(static_cast<int32_t>(d));
    }
  } else {
    throw_invalid(env, "inputIds must be an Int32Array or an array of numbers");
  }
  return ids;
}

// Pixels are copied: the JS buffer may be changed or collected while the worker runs.
std::vector<float> pixels_from(Napi::Env env, const Napi::Value& v, int64_t tiles, const plm::LoadedModel& m) {
  std::vector<float> px;
  if (v.IsNull() || v.IsUndefined() || tiles == 0) return px;
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
    throw_invalid(env, "pixelValues must be a Float32Array");
  Napi::Float32Array a = v.As<Napi::Float32Array>();
  if (!m.config.vision.present) throw_invalid(env, "this checkpoint has no vision tower, so it cannot take images");
  const int64_t S = m.config.vision.image_size;
  if (static_cast<int64_t>(a.ElementLength()) != tiles * 3 * S * S)
    throw_invalid(env, "pixelValues has " + std::to_string(a.ElementLength()) + " values but " +
                           std::to_string(tiles) + " tiles of 3x" + std::to_string(S) + "x" + std::to_string(S) +
                           " need " + std::to_string(tiles * 3 * S * S));
  px.assign(a.Data(), a.Data() + a.ElementLength());
  return px;
}

int64_t tiles_from(Napi::Env env, const Napi::Value& v) {
  if (v.IsUndefined() || v.IsNull()) return 0;
  if (!v.IsNumber()) throw_invalid(env, "numTiles must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (d < 0 || d != static_cast<int64_t>(d) || d > 100000) throw_invalid(env, "numTiles must be a non-negative integer");
  return static_cast<int64_t>(d);
}


Napi::Value NativeModel::Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto s = live(env);
  Napi::Object out = Napi::Object::New(env);
  out.Set("config", config_to_js(env, s->engine->model()));
  out.Set("backend", s->engine->backend_name());
  out.Set("backendNote", s->engine->backend_note());
  out.Set("weightBytes", static_cast<double>(s->engine->model().weights->total_bytes()));
  const plm::QuantizationInfo& q = s->engine->quantization();
  out.Set("quantize", plm::cpu::quant_name(q.quant));
  out.Set("quantizedFile", q.file.empty() ? env.Null() : Napi::String::New(env, q.file));
  return out;
}

class ForwardWorker : public JobWorker {
 public:
  ForwardWorker(Napi::Env env, std::shared_ptr<ModelState> s, std::vector<int32_t> ids, std::vector<float> pixels,
                int64_t tiles, int64_t rows, bool dump, std::shared_ptr<plm::CancelToken> cancel)
      : JobWorker(env), s_(std::move(s)), ids_(std::move(ids)), pixels_(std::move(pixels)), tiles_(tiles),
        rows_(rows), dump_(dump), cancel_(std::move(cancel)) {}

 protected:
  void Work() override {
    std::lock_guard<std::mutex> lock(s_->job_mutex);
    if (s_->disposed.load() || !s_->engine) throw plm::Error(plm::ErrorCode::kDisposed, "the model was disposed");
    const int64_t n = static_cast<int64_t>(ids_.size());
    rows_ = rows_ <= 0 || rows_ > n ? n : rows_;
    logits_.resize(static_cast<size_t>(rows_) * s_->engine->model().config.text.vocab_size);
    plm::MediaInput media{pixels_.data(), tiles_};
    plm::DumpFn dump;
    if (dump_)
      dump = [this](const std::string& name, const float* data, const std::vector<int64_t>& shape) {
        int64_t count = 1;
        for (int64_t d : shape) count *= d;
        dumps_.push_back({name, std::vector<float>(data, data + count), shape});
      };
    s_->engine->forward(ids_.data(), n, tiles_ ? &media : nullptr, rows_, logits_.data(), cancel_.get(), dump);
  }
  Napi::Value Result(Napi::Env env) override {
    Napi::Object out = Napi::Object::New(env);
    out.Set("logits", float_array(env, logits_.data(), logits_.size()));
    if (dump_) {
      Napi::Object d = Napi::Object::New(env);
      for (const auto& e : dumps_) {
        Napi::Object entry = Napi::Object::New(env);
        entry.Set("data", float_array(env, e.data.data(), e.data.size()));
        Napi::Array shape = Napi::Array::New(env, e.shape.size());
        for (size_t i = 0; i < e.shape.size(); ++i) shape.Set(uint32_t(i), static_cast<double>(e.shape[i]));
        entry.Set("shape", shape);
        d.Set(e.name, entry);
      }
      out.Set("dumps", d);
    }
    return out;
  }

 private:
  struct Dump {
    std::string name;
    std::vector<float> data;
    std::vector<int64_t> shape;
  };
  std::shared_ptr<ModelState> s_;
  std::vector<int32_t> ids_;
  std::vector<float> pixels_, logits_;
  int64_t tiles_, rows_;
  bool dump_;
  std::shared_ptr<plm::CancelToken> cancel_;
  std::vector<Dump> dumps_;
};

// forward(ids, pixels|null, tiles, logitsRows, dump, cancel|null)
Napi::Value NativeModel::Forward(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto s = live(env);
  std::vector<int32_t> ids = ids_from(env, info[0]);
  int64_t tiles = tiles_from(env, info[2]);
  std::vector<float> px = pixels_from(env, info[1], tiles, s->engine->model());
  if (tiles > 0 && px.empty()) throw_invalid(env, "numTiles > 0 needs pixelValues");
  int64_t rows = info[3].IsNumber() ? static_cast<int64_t>(info[3].As<Napi::Number>().DoubleValue()) : 0;
  bool dump = info[4].IsBoolean() && info[4].As<Napi::Boolean>().Value();
  auto* w = new ForwardWorker(env, s, std::move(ids), std::move(px), tiles, rows, dump, cancel_from(info[5]));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

class EncodeWorker : public JobWorker {
 public:
  EncodeWorker(Napi::Env env, std::shared_ptr<ModelState> s, std::vector<float> pixels, int64_t tiles,
               std::shared_ptr<plm::CancelToken> cancel)
      : JobWorker(env), s_(std::move(s)), pixels_(std::move(pixels)), tiles_(tiles), cancel_(std::move(cancel)) {}

 protected:
  void Work() override {
    std::lock_guard<std::mutex> lock(s_->job_mutex);
    if (s_->disposed.load() || !s_->engine) throw plm::Error(plm::ErrorCode::kDisposed, "the model was disposed");
    features_ = s_->engine->encode_images(pixels_.data(), tiles_, cancel_.get());
  }
  Napi::Value Result(Napi::Env env) override { return float_array(env, features_.data(), features_.size()); }

 private:
  std::shared_ptr<ModelState> s_;
  std::vector<float> pixels_, features_;
  int64_t tiles_;
  std::shared_ptr<plm::CancelToken> cancel_;
};

// encodeImages(pixels, tiles, cancel|null)
Napi::Value NativeModel::EncodeImages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto s = live(env);
  int64_t tiles = tiles_from(env, info[1]);
  if (tiles <= 0) throw_invalid(env, "numTiles must be at least 1");
  std::vector<float> px = pixels_from(env, info[0], tiles, s->engine->model());
  auto* w = new EncodeWorker(env, s, std::move(px), tiles, cancel_from(info[2]));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

double number_opt(const Napi::Object& o, const char* key, double fallback) {
  Napi::Value v = o.Get(key);
  return v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : fallback;
}

// Token masks for constrained decoding, pushed from JS ahead of the engine thread that reads them.
// allowed(step) blocks until the mask of that step arrives (JS computes it from the previous token while the
// next forward pass runs), the queue is closed, or the request is cancelled.
class TokenMaskQueue : public Napi::ObjectWrap<TokenMaskQueue> {
 public:
  static Napi::FunctionReference constructor;
  static void Init(Napi::Env env) {
    Napi::Function fn = DefineClass(env, "NativeTokenMaskQueue",
                                    {InstanceMethod("push", &TokenMaskQueue::Push), InstanceMethod("close", &TokenMaskQueue::Close)});
    constructor = Napi::Persistent(fn);
  }
  struct State {
    std::mutex mutex;
    std::condition_variable ready;
    std::map<int64_t, std::vector<uint8_t>> masks;  // step -> vocab bits (empty: unconstrained)
    std::vector<uint8_t> current;
    bool closed = false;
  };
  explicit TokenMaskQueue(const Napi::CallbackInfo& info)
      : Napi::ObjectWrap<TokenMaskQueue>(info), state(std::make_shared<State>()) {}
  // push(step, Uint8Array | null)
  Napi::Value Push(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!info[0].IsNumber()) throw_invalid(env, "mask step must be a number");
    const int64_t step = static_cast<int64_t>(info[0].As<Napi::Number>().DoubleValue());
    std::vector<uint8_t> bits;
    if (info[1].IsTypedArray() && info[1].As<Napi::TypedArray>().TypedArrayType() == napi_uint8_array) {
      Napi::Uint8Array a = info[1].As<Napi::Uint8Array>();
      bits.assign(a.Data(), a.Data() + a.ElementLength());
    } else if (!info[1].IsNull() && !info[1].IsUndefined()) {
      throw_invalid(env, "a token mask must be a Uint8Array or null");
    }
    {
      std::lock_guard<std::mutex> lock(state->mutex);
      state->masks[step] = std::move(bits);
    }
    state->ready.notify_all();
    return env.Undefined();
  }
  Napi::Value Close(const Napi::CallbackInfo& info) {
    {
      std::lock_guard<std::mutex> lock(state->mutex);
      state->closed = true;
    }
    state->ready.notify_all();
    return info.Env().Undefined();
  }
  std::shared_ptr<State> state;
};
Napi::FunctionReference TokenMaskQueue::constructor;

class SessionWrap : public Napi::ObjectWrap<SessionWrap> {
 public:
  static Napi::FunctionReference constructor;
  static void Init(Napi::Env env) {
    Napi::Function fn = DefineClass(env, "NativeSession",
                                    {InstanceMethod("dispose", &SessionWrap::Dispose),
                                     InstanceMethod("cachedTokens", &SessionWrap::CachedTokens)});
    constructor = Napi::Persistent(fn);
  }
  explicit SessionWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<SessionWrap>(info) {}
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    session.reset();
    return info.Env().Undefined();
  }
  Napi::Value CachedTokens(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), session ? static_cast<double>(session->cached_tokens()) : 0);
  }
  std::shared_ptr<plm::Session> session;
};
Napi::FunctionReference SessionWrap::constructor;

// One generation in flight: its promise and the thread-safe function that carries its tokens and its end to JS,
// in order. Lives until the end reaches JS.
struct GenerateCall {
  Napi::Promise::Deferred deferred;
  Napi::ThreadSafeFunction tsfn;
  explicit GenerateCall(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}
};

struct TokenEvent {
  int32_t token;
  bool has_logprobs = false;
  plm::TokenLogprobs logprobs;
};

struct DoneEvent {
  plm::GenerateResult result;
  plm_napi::Failure failure;
};

Napi::Value logprobs_to_js(Napi::Env env, const plm::TokenLogprobs& lp) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("logprob", lp.logprob);
  Napi::Int32Array ids = Napi::Int32Array::New(env, lp.top.size());
  Napi::Float32Array lps = Napi::Float32Array::New(env, lp.top.size());
  for (size_t i = 0; i < lp.top.size(); ++i) {
    ids[i] = lp.top[i].first;
    lps[i] = lp.top[i].second;
  }
  o.Set("topIds", ids);
  o.Set("topLogprobs", lps);
  return o;
}

Napi::Value result_to_js(Napi::Env env, const plm::GenerateResult& r) {
  Napi::Object out = Napi::Object::New(env);
  Napi::Int32Array tokens = Napi::Int32Array::New(env, r.tokens.size());
  for (size_t i = 0; i < r.tokens.size(); ++i) tokens[i] = r.tokens[i];
  out.Set("tokens", tokens);
  out.Set("finishReason", r.finish_reason);
  out.Set("promptTokens", static_cast<double>(r.prompt_tokens));
  out.Set("cachedTokens", static_cast<double>(r.cached_tokens));
  out.Set("queueMs", r.queue_ms);
  out.Set("visionMs", r.vision_ms);
  out.Set("prefillMs", r.prefill_ms);
  out.Set("firstTokenMs", r.first_token_ms);
  out.Set("decodeMs", r.decode_ms);
  if (!r.logits.empty()) out.Set("logits", float_array(env, r.logits.data(), r.logits.size()));
  if (!r.logprobs.empty()) {
    Napi::Array a = Napi::Array::New(env, r.logprobs.size());
    for (size_t i = 0; i < r.logprobs.size(); ++i) a.Set(uint32_t(i), logprobs_to_js(env, r.logprobs[i]));
    out.Set("logprobs", a);
  }
  return out;
}

// Copies one media item's pixels (the JS buffer may change or be collected while the engine reads them).
plm::MediaItem media_from(Napi::Env env, const Napi::Value& v, int64_t tiles, const plm::LoadedModel& m) {
  plm::MediaItem item;
  item.tiles = tiles;
  item.pixels = std::make_shared<std::vector<float>>(pixels_from(env, v, tiles, m));
  return item;
}

// generate(ids, media: Array<{pixels: Float32Array, tiles}> | null, opts, onToken, cancel, session|null,
//          masks|null) -> Promise<result>
Napi::Value NativeModel::Generate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto s = live(env);
  const plm::LoadedModel& model = s->engine->model();
  plm::Scheduler::Request req;
  req.ids = ids_from(env, info[0]);
  if (info[1].IsArray()) {
    Napi::Array a = info[1].As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); ++i) {
      Napi::Value e = a.Get(i);
      if (!e.IsObject()) throw_invalid(env, "media entries must be {pixels, tiles} objects");
      Napi::Object o = e.As<Napi::Object>();
      const int64_t tiles = tiles_from(env, o.Get("tiles"));
      if (tiles <= 0) throw_invalid(env, "a media entry needs at least one tile");
      req.media.push_back(media_from(env, o.Get("pixels"), tiles, model));
    }
  } else if (!info[1].IsNull() && !info[1].IsUndefined()) {
    throw_invalid(env, "media must be an array or null");
  }
  if (!info[2].IsObject()) throw_invalid(env, "generate options must be an object");
  Napi::Object o = info[2].As<Napi::Object>();
  plm::GenerateOptions& opts = req.options;
  opts.max_tokens = static_cast<int>(number_opt(o, "maxTokens", 256));
  opts.sampling.temperature = static_cast<float>(number_opt(o, "temperature", 0));
  opts.sampling.top_k = static_cast<int>(number_opt(o, "topK", 0));
  opts.sampling.top_p = static_cast<float>(number_opt(o, "topP", 1));
  opts.sampling.min_p = static_cast<float>(number_opt(o, "minP", 0));
  opts.sampling.repetition_penalty = static_cast<float>(number_opt(o, "repetitionPenalty", 1));
  opts.sampling.seed = static_cast<uint64_t>(number_opt(o, "seed", 0));
  opts.top_logprobs = static_cast<int>(number_opt(o, "topLogprobs", -1));
  Napi::Value keep = o.Get("returnLogits");
  opts.keep_logits = keep.IsBoolean() && keep.As<Napi::Boolean>().Value();
  if (opts.max_tokens < 1) throw_invalid(env, "maxTokens must be >= 1");
  if (opts.sampling.repetition_penalty <= 0) throw_invalid(env, "repetitionPenalty must be > 0");
  if (opts.top_logprobs > 20) throw_invalid(env, "topLogprobs must be at most 20");
  Napi::Value stop = o.Get("stopIds");
  if (stop.IsArray()) {
    Napi::Array a = stop.As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); ++i) {
      Napi::Value e = a.Get(i);
      if (!e.IsNumber()) throw_invalid(env, "stopIds must hold integers");
      opts.stop_ids.push_back(e.As<Napi::Number>().Int32Value());
    }
  }
  req.cancel = cancel_from(info[4]);
  if (info[5].IsObject() && info[5].As<Napi::Object>().InstanceOf(SessionWrap::constructor.Value())) {
    req.session = SessionWrap::Unwrap(info[5].As<Napi::Object>())->session;
    if (!req.session) throw coded_error(env, "ERR_DISPOSED", "this chat was disposed; create a new one with createChat()");
  }
  if (info[6].IsObject() && info[6].As<Napi::Object>().InstanceOf(TokenMaskQueue::constructor.Value())) {
    auto masks = TokenMaskQueue::Unwrap(info[6].As<Napi::Object>())->state;
    const size_t bytes = static_cast<size_t>((model.config.text.vocab_size + 7) / 8);
    std::shared_ptr<plm::CancelToken> cancel = req.cancel;
    opts.allowed_tokens = [masks, bytes, cancel](int64_t step) -> const uint8_t* {
      std::unique_lock<std::mutex> lock(masks->mutex);
      // A cancel sets a flag without notifying: look at it every 50 ms, so a cancelled or disposed request never
      // holds the engine thread.
      while (!(masks->closed || cancel->is_cancelled() || masks->masks.count(step)))
        masks->ready.wait_for(lock, std::chrono::milliseconds(50));
      auto it = masks->masks.find(step);
      if (it == masks->masks.end()) return nullptr;
      masks->current = std::move(it->second);
      masks->masks.erase(masks->masks.begin(), std::next(it));
      if (masks->current.empty()) return nullptr;
      if (masks->current.size() < bytes) masks->current.resize(bytes, 0);
      return masks->current.data();
    };
  }

  auto* call = new GenerateCall(env);
  Napi::Function on_token = info[3].IsFunction() ? info[3].As<Napi::Function>() : Napi::Function::New(env, [](const Napi::CallbackInfo&) {});
  call->tsfn = Napi::ThreadSafeFunction::New(env, on_token, "plm-generate", 0, 1, call,
                                             [](Napi::Env, GenerateCall* c) { delete c; });
  std::shared_ptr<plm::CancelToken> cancel = req.cancel;
  opts.on_token = [call, cancel](int32_t token, const plm::TokenLogprobs* lp) {
    auto* ev = new TokenEvent{token, lp != nullptr, lp ? *lp : plm::TokenLogprobs()};
    if (call->tsfn.BlockingCall(ev, [](Napi::Env env, Napi::Function fn, TokenEvent* e) {
          if (e->has_logprobs) fn.Call({Napi::Number::New(env, e->token), logprobs_to_js(env, e->logprobs)});
          else fn.Call({Napi::Number::New(env, e->token)});
          delete e;
        }) != napi_ok)
      delete ev;
    return !cancel->is_cancelled();
  };
  req.on_done = [call](plm::GenerateResult&& r, std::exception_ptr error) {
    auto* ev = new DoneEvent{std::move(r), {}};
    if (error) ev->failure.capture(error);
    auto settle = [](Napi::Env env, Napi::Function, DoneEvent* e, GenerateCall* c) {
      Napi::HandleScope scope(env);
      if (e->failure.failed) c->deferred.Reject(coded_error(env, e->failure.code, e->failure.message).Value());
      else c->deferred.Resolve(result_to_js(env, e->result));
      delete e;
    };
    if (call->tsfn.BlockingCall(ev, [settle, call](Napi::Env env, Napi::Function fn, DoneEvent* e) {
          settle(env, fn, e, call);
        }) != napi_ok)
      delete ev;
    call->tsfn.Release();
  };
  Napi::Promise promise = call->deferred.Promise();
  try {
    s->engine->scheduler().submit(std::move(req));
  } catch (const plm::Error& e) {
    call->tsfn.Release();
    throw coded_error(env, plm::error_code_name(e.code()), e.what());
  }
  return promise;
}

Napi::Value NativeModel::CreateSession(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto s = live(env);
  Napi::Object obj = SessionWrap::constructor.New({});
  SessionWrap::Unwrap(obj)->session = s->engine->scheduler().open_session();
  return obj;
}

Napi::Value NativeModel::Stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto s = live(env);
  const plm::SchedulerStats st = s->engine->scheduler().stats();
  Napi::Object o = Napi::Object::New(env);
  o.Set("activeSequences", static_cast<double>(st.active));
  o.Set("waitingSequences", static_cast<double>(st.waiting));
  o.Set("maxSequences", static_cast<double>(s->engine->scheduler().options().max_sequences));
  o.Set("kvBlocksInUse", static_cast<double>(st.kv_blocks_in_use));
  o.Set("kvBlocksCached", static_cast<double>(st.kv_blocks_cached));
  o.Set("kvBlocksCapacity", static_cast<double>(st.kv_blocks_capacity));
  o.Set("kvBlockBytes", static_cast<double>(st.kv_block_bytes));
  o.Set("kvBytesResident", static_cast<double>(st.kv_bytes_resident));
  o.Set("promptTokens", static_cast<double>(st.prompt_tokens));
  o.Set("cachedPromptTokens", static_cast<double>(st.cached_prompt_tokens));
  o.Set("mediaCacheBytes", static_cast<double>(st.media_cache_bytes));
  o.Set("mediaCacheHits", static_cast<double>(st.media_cache_hits));
  o.Set("mediaEncoded", static_cast<double>(st.media_encoded));
  o.Set("requestsDeferred", static_cast<double>(st.requests_deferred));
  return o;
}

class ClearCacheWorker : public JobWorker {
 public:
  ClearCacheWorker(Napi::Env env, std::shared_ptr<ModelState> s) : JobWorker(env), s_(std::move(s)) {}

 protected:
  void Work() override {
    std::lock_guard<std::mutex> lock(s_->job_mutex);
    if (s_->disposed.load() || !s_->engine) throw plm::Error(plm::ErrorCode::kDisposed, "the model was disposed");
    s_->engine->scheduler().clear_cache();
  }
  Napi::Value Result(Napi::Env env) override { return env.Undefined(); }

 private:
  std::shared_ptr<ModelState> s_;
};

Napi::Value NativeModel::ClearCache(const Napi::CallbackInfo& info) {
  auto* w = new ClearCacheWorker(info.Env(), live(info.Env()));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// loadModel(dir, {backend, threads, maxContext, precision, quantize}, onProgress)
Napi::Value LoadModel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) throw_invalid(env, "loadModel: dir must be a string");
  plm::EngineOptions options;
  if (info[1].IsObject()) {
    Napi::Object o = info[1].As<Napi::Object>();
    Napi::Value b = o.Get("backend");
    if (b.IsString()) options.backend = b.As<Napi::String>().Utf8Value();
    Napi::Value pr = o.Get("precision");
    if (pr.IsString()) options.precision = pr.As<Napi::String>().Utf8Value();
    Napi::Value qz = o.Get("quantize");
    if (qz.IsString()) options.quantize = qz.As<Napi::String>().Utf8Value();
    Napi::Value qf = o.Get("quantizedFile");
    if (qf.IsString()) options.quantized_file = qf.As<Napi::String>().Utf8Value();
    else if (qf.IsBoolean() && !qf.As<Napi::Boolean>().Value()) options.find_quantized_file = false;
    options.threads = static_cast<int>(number_opt(o, "threads", 0));
    options.max_context = static_cast<int>(number_opt(o, "maxContext", 0));
    options.sequences = static_cast<int>(number_opt(o, "sequences", 0));
    options.kv_cache_bytes = static_cast<size_t>(std::max(0.0, number_opt(o, "kvCacheBytes", 0)));
    options.prefill_chunk = static_cast<int64_t>(number_opt(o, "prefillChunk", 0));
  }
  Napi::Function progress = info[2].IsFunction() ? info[2].As<Napi::Function>() : Napi::Function();
  auto* w = new LoadWorker(env, info[0].As<Napi::String>().Utf8Value(), options, progress);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// quantizeModel(dir, {kind, out, threads}, onProgress|null, cancel|null) -> Promise<{path, kind, quantized, kept,
// fileBytes, sourceBytes}>
Napi::Value QuantizeModel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) throw_invalid(env, "quantizeModel: dir must be a string");
  if (!info[1].IsObject()) throw_invalid(env, "quantizeModel: options must be an object");
  Napi::Object o = info[1].As<Napi::Object>();
  Napi::Value kind = o.Get("kind");
  if (!kind.IsString()) throw_invalid(env, "quantizeModel: kind must be \"int8\" or \"q4\"");
  const std::string k = kind.As<Napi::String>().Utf8Value();
  if (k != "int8" && k != "q4") throw_invalid(env, "quantizeModel: kind must be \"int8\" or \"q4\", got \"" + k + "\"");
  Napi::Value outv = o.Get("out");
  std::string out = outv.IsString() ? outv.As<Napi::String>().Utf8Value() : std::string();
  const int threads = static_cast<int>(number_opt(o, "threads", 0));
  Napi::Function progress = info[2].IsFunction() ? info[2].As<Napi::Function>() : Napi::Function();
  auto* w = new QuantizeWorker(env, info[0].As<Napi::String>().Utf8Value(), plm::cpu::parse_quant(k), std::move(out),
                               threads, progress, cancel_from(info[3]));
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

Napi::Value CreateCancelToken(const Napi::CallbackInfo& info) { return CancelTokenWrap::constructor.New({}); }

Napi::Value CpuFeatures(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::vector<std::string> f = plm::cpu::cpu_feature_names();
  Napi::Array a = Napi::Array::New(env, f.size());
  for (size_t i = 0; i < f.size(); ++i) a.Set(uint32_t(i), f[i]);
  return a;
}

Napi::Value CudaStatus(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), plm::cuda_status()); }

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  CancelTokenWrap::Init(env);
  TokenMaskQueue::Init(env);
  SessionWrap::Init(env);
  NativeModel::Init(env);
  exports.Set("loadModel", Napi::Function::New(env, LoadModel));
  exports.Set("quantizeModel", Napi::Function::New(env, QuantizeModel));
  exports.Set("createCancelToken", Napi::Function::New(env, CreateCancelToken));
  exports.Set("createTokenMaskQueue", Napi::Function::New(env, [](const Napi::CallbackInfo& info) -> Napi::Value {
                return TokenMaskQueue::constructor.New({});
              }));
  exports.Set("cpuFeatures", Napi::Function::New(env, CpuFeatures));
  exports.Set("cudaStatus", Napi::Function::New(env, CudaStatus));
  RegisterImageProcessor(env, exports);
  RegisterCpuInfo(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(perception_lm, Init)
