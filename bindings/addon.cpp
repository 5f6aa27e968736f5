// N-API glue only: argument checks, copies across the boundary, worker threads, token streaming.
// All math lives in native/.
#include <cstdint>
#include <napi.h>

#include <atomic>
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
  Napi::Value Dispose(const Napi::CallbackInfo& info) {
    if (state) {
      state->disposed.store(true);
      // The engine is freed by whichever finishes last: this call or the job still running.
      std::unique_lock<std::mutex> lock(state->job_mutex, std::try_to_lock);
      if (lock.owns_lock()) state->engine.reset();
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

class GenerateWorker : public JobWorker {
 public:
  GenerateWorker(Napi::Env env, std::shared_ptr<ModelState> s, std::vector<int32_t> ids, std::vector<float> pixels,
                 int64_t tiles, plm::GenerateOptions options, Napi::Function on_token,
                 std::shared_ptr<plm::CancelToken> cancel)
      : JobWorker(env), s_(std::move(s)), ids_(std::move(ids)), pixels_(std::move(pixels)), tiles_(tiles),
        options_(std::move(options)), cancel_(std::move(cancel)) {
    if (!on_token.IsEmpty()) on_token_ = Napi::ThreadSafeFunction::New(env, on_token, "plm-token", 0, 1);
  }

 protected:
  void Work() override {
    std::lock_guard<std::mutex> lock(s_->job_mutex);
    if (s_->disposed.load() || !s_->engine) throw plm::Error(plm::ErrorCode::kDisposed, "the model was disposed");
    if (on_token_) {
      options_.on_token = [this](int32_t token) {
        // Blocking call with an unbounded queue never blocks; tokens arrive in order.
        on_token_.BlockingCall(new int32_t(token), [](Napi::Env env, Napi::Function fn, int32_t* t) {
          fn.Call({Napi::Number::New(env, *t)});
          delete t;
        });
        return !cancel_->is_cancelled();
      };
    }
    plm::MediaInput media{pixels_.data(), tiles_};
    result_ = s_->engine->generate(ids_.data(), static_cast<int64_t>(ids_.size()), tiles_ ? &media : nullptr, options_,
                                   cancel_.get());
  }
  Napi::ThreadSafeFunction* CallbackQueue() override { return on_token_ ? &on_token_ : nullptr; }
  void Cleanup() override {
    if (on_token_) on_token_.Release();
  }
  Napi::Value Result(Napi::Env env) override {
    Napi::Object out = Napi::Object::New(env);
    Napi::Int32Array tokens = Napi::Int32Array::New(env, result_.tokens.size());
    for (size_t i = 0; i < result_.tokens.size(); ++i) tokens[i] = result_.tokens[i];
    out.Set("tokens", tokens);
    out.Set("finishReason", result_.finish_reason);
    out.Set("promptTokens", static_cast<double>(result_.prompt_tokens));
    out.Set("visionMs", result_.vision_ms);
    out.Set("prefillMs", result_.prefill_ms);
    out.Set("decodeMs", result_.decode_ms);
    if (!result_.logits.empty()) out.Set("logits", float_array(env, result_.logits.data(), result_.logits.size()));
    return out;
  }

 private:
  std::shared_ptr<ModelState> s_;
  std::vector<int32_t> ids_;
  std::vector<float> pixels_;
  int64_t tiles_;
  plm::GenerateOptions options_;
  std::shared_ptr<plm::CancelToken> cancel_;
  Napi::ThreadSafeFunction on_token_;
  plm::GenerateResult result_;
};

// generate(ids, pixels|null, tiles, opts, onToken, cancel)
Napi::Value NativeModel::Generate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto s = live(env);
  std::vector<int32_t> ids = ids_from(env, info[0]);
  int64_t tiles = tiles_from(env, info[2]);
  std::vector<float> px = pixels_from(env, info[1], tiles, s->engine->model());
  if (tiles > 0 && px.empty()) throw_invalid(env, "numTiles > 0 needs pixelValues");
  if (!info[3].IsObject()) throw_invalid(env, "generate options must be an object");
  Napi::Object o = info[3].As<Napi::Object>();
  plm::GenerateOptions opts;
  opts.max_tokens = static_cast<int>(number_opt(o, "maxTokens", 256));
  opts.sampling.temperature = static_cast<float>(number_opt(o, "temperature", 0));
  opts.sampling.top_k = static_cast<int>(number_opt(o, "topK", 0));
  opts.sampling.top_p = static_cast<float>(number_opt(o, "topP", 1));
  opts.sampling.min_p = static_cast<float>(number_opt(o, "minP", 0));
  opts.sampling.repetition_penalty = static_cast<float>(number_opt(o, "repetitionPenalty", 1));
  opts.sampling.seed = static_cast<uint64_t>(number_opt(o, "seed", 0));
  Napi::Value keep = o.Get("returnLogits");
  opts.keep_logits = keep.IsBoolean() && keep.As<Napi::Boolean>().Value();
  if (opts.max_tokens < 0) throw_invalid(env, "maxTokens must be >= 0");
  if (opts.sampling.repetition_penalty <= 0) throw_invalid(env, "repetitionPenalty must be > 0");
  Napi::Value stop = o.Get("stopIds");
  if (stop.IsArray()) {
    Napi::Array a = stop.As<Napi::Array>();
    for (uint32_t i = 0; i < a.Length(); ++i)
      opts.stop_ids.push_back(static_cast<int32_t>(a.Get(i).As<Napi::Number>().Int32Value()));
  }
  Napi::Function on_token = info[4].IsFunction() ? info[4].As<Napi::Function>() : Napi::Function();
  auto* w = new GenerateWorker(env, s, std::move(ids), std::move(px), tiles, std::move(opts), on_token,
                               cancel_from(info[5]));
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
  NativeModel::Init(env);
  exports.Set("loadModel", Napi::Function::New(env, LoadModel));
  exports.Set("quantizeModel", Napi::Function::New(env, QuantizeModel));
  exports.Set("createCancelToken", Napi::Function::New(env, CreateCancelToken));
  exports.Set("cpuFeatures", Napi::Function::New(env, CpuFeatures));
  exports.Set("cudaStatus", Napi::Function::New(env, CudaStatus));
  RegisterImageProcessor(env, exports);
  RegisterCpuInfo(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(perception_lm, Init)
