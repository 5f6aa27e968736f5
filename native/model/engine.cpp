#include "cpu/quant.h"
#include "model/engine.h"

#include <cstdint>
#include <algorithm>
#include <chrono>
#include <cstdlib>

#include "core/error.h"
#include "core/json.h"
#include "model/sampler.h"

namespace plm {
namespace {

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

// "auto" takes the bf16 matrix units where the CPU has them; the fixture tests ask for "f32" explicitly.
constexpr bool kAutoPrefersBf16 = true;

static cpu::Precision resolve_precision(std::string p) {
  if (p == "auto") {
    const char* env = std::getenv("PLM_PRECISION");
    if (env && *env) p = env;
  }
  if (p == "f32") return cpu::Precision::kF32;
  if (p == "bf16") return cpu::Precision::kBF16;  // falls back to f32 kernels where no bf16 kernel applies
  if (p == "auto") return kAutoPrefersBf16 && cpu::bf16_matmul_available() ? cpu::Precision::kBF16 : cpu::Precision::kF32;
  throw Error(ErrorCode::kInvalidArgument, "precision must be \"auto\", \"f32\" or \"bf16\", got \"" + p + "\"");
}

Engine::~Engine() = default;

std::unique_ptr<Engine> Engine::load(const std::string& dir, const EngineOptions& options, const ProgressFn& progress) {
  std::unique_ptr<Engine> e(new Engine());
  e->model_ = load_model(dir, progress);
  const int64_t ctx_limit = e->model_->config.text.max_position_embeddings;
  e->max_context_ = options.max_context > 0 ? std::min<int64_t>(options.max_context, ctx_limit) : ctx_limit;
  if (options.backend != "cpu" && options.backend != "cuda" && options.backend != "auto")
    throw Error(ErrorCode::kInvalidArgument, "backend must be \"cpu\", \"cuda\" or \"auto\", got \"" +
                                                 options.backend + "\"");
  if (options.backend != "cpu") {
    std::string why;
    e->runner_ = make_cuda_runner(*e->model_, options.cuda_device, e->max_context_, progress, &why);
    if (!e->runner_) {
      if (options.backend == "cuda")
        throw Error(ErrorCode::kBackend, "the CUDA backend is not available: " + why);
      e->backend_note_ = "GPU not used: " + why;
    }
  }
  if (!e->runner_) {
    e->pool_ = std::make_unique<ThreadPool>(options.threads);
    std::string q = options.quantize;
    if (q.empty() || q == "none") {
      const char* env = std::getenv("PLM_QUANTIZE");
      if (env && *env) q = env;
    }
    cpu::Quant quant = cpu::parse_quant(q);
    std::string file = options.quantized_file;
    if (file.empty() && options.find_quantized_file && quant != cpu::Quant::kNone) {
      const std::string def = default_quantized_path(dir, quant);
      if (file_exists(def)) file = def;
    }
    if (!file.empty()) {
      if (progress) progress(0.0, "quantized weights");
      e->quantized_file_ = QuantizedFile::open(file, *e->model_);
      if (quant != cpu::Quant::kNone && quant != e->quantized_file_->quant())
        throw Error(ErrorCode::kInvalidArgument, "quantize is \"" + std::string(cpu::quant_name(quant)) + "\" but " + file +
                                                     " holds " + cpu::quant_name(e->quantized_file_->quant()) +
                                                     " weights: pass the matching quantize, or another file");
      quant = e->quantized_file_->quant();
      e->quantization_.file = file;
      if (progress) progress(1.0, "quantized weights");
    }
    e->quantization_.quant = quant;
    e->runner_ = make_cpu_runner(*e->model_, e->pool_.get(), e->max_context_, resolve_precision(options.precision),
                                 quant, e->quantized_file_.get());
  }
  return e;
}

void Engine::validate_prompt(const int32_t* ids, int64_t n, const MediaInput* media, int64_t extra_tokens) const {
  const ModelConfig& c = model_->config;
  if (n <= 0) throw Error(ErrorCode::kInvalidArgument, "the prompt is empty: pass at least one token");
  if (n + extra_tokens > max_context_)
    throw Error(ErrorCode::kContextOverflow,
                "the prompt has " + std::to_string(n) + " tokens" +
                    (extra_tokens ? " and asks for up to " + std::to_string(extra_tokens) + " more" : std::string()) +
                    ", but the context holds " + std::to_string(max_context_) +
                    ". Shorten the prompt, lower maxTokens, or use fewer image tiles (maxNumTiles) or video frames.");
  int64_t placeholders = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] < 0 || ids[i] >= c.text.vocab_size)
      throw Error(ErrorCode::kInvalidArgument, "token id " + std::to_string(ids[i]) + " at position " +
                                                   std::to_string(i) + " is outside the vocabulary");
    if (ids[i] == c.image_token_id || ids[i] == c.video_token_id) ++placeholders;
  }
  const int64_t tiles = media ? media->tiles : 0;
  if (tiles > 0 && !c.vision.present)
    throw Error(ErrorCode::kInvalidArgument, "this checkpoint has no vision tower, so it cannot take images");
  const int64_t rows = tiles * c.tokens_per_tile();
  if (placeholders != rows)
    throw Error(ErrorCode::kInvalidArgument,
                "the prompt has " + std::to_string(placeholders) + " image/video placeholder tokens but " +
                    std::to_string(tiles) + " tiles give " + std::to_string(rows) + " feature rows (" +
                    std::to_string(c.tokens_per_tile()) + " per tile). Expand each <|image|> to " +
                    std::to_string(c.tokens_per_tile()) + " x tiles placeholders.");
}

std::vector<float> Engine::encode_images(const float* pixels, int64_t tiles, const CancelToken* cancel) {
  if (tiles <= 0) throw Error(ErrorCode::kInvalidArgument, "encodeImages needs at least one tile");
  std::vector<float> out;
  runner_->encode_images(pixels, tiles, &out, cancel);
  return out;
}

void Engine::encode_images_in_backend(const float* pixels, int64_t tiles, const CancelToken* cancel) {
  if (tiles <= 0) throw Error(ErrorCode::kInvalidArgument, "encodeImages needs at least one tile");
  runner_->encode_images(pixels, tiles, nullptr, cancel);
}

void Engine::forward(const int32_t* ids, int64_t n, const MediaInput* media, int64_t logits_rows, float* logits,
                     const CancelToken* cancel, const DumpFn& dump) {
  validate_prompt(ids, n, media, 0);
  runner_->set_dump(dump);
  struct ClearDump {
    Runner* r;
    ~ClearDump() { r->set_dump(nullptr); }
  } clear{runner_.get()};
  runner_->truncate(0);
  const bool use_media = media && media->tiles > 0;
  if (use_media) runner_->encode_images(media->pixels, media->tiles, nullptr, cancel);
  ForwardRequest req;
  req.ids = ids;
  req.n = n;
  req.use_features = use_media;
  req.logits_rows = std::min(logits_rows, n);
  req.logits_out = logits;
  runner_->forward(req, cancel);
}

GenerateResult Engine::generate(const int32_t* ids, int64_t n, const MediaInput* media, const GenerateOptions& options,
                                const CancelToken* cancel) {
  if (options.max_tokens < 0) throw Error(ErrorCode::kInvalidArgument, "maxTokens must be >= 0");
  validate_prompt(ids, n, media, options.max_tokens);
  GenerateResult result;
  result.prompt_tokens = n;
  std::vector<int32_t> stop = options.stop_ids;
  if (stop.empty()) stop = model_->generation.eos_token_ids;
  const int64_t vocab = model_->config.text.vocab_size;
  std::vector<float> logits(static_cast<size_t>(vocab));
  std::vector<int32_t> history(ids, ids + n);
  Sampler sampler(options.sampling);
  const bool simple_sampling = options.sampling.repetition_penalty == 1.f;
  auto cancelled = [&] { return cancel && cancel->is_cancelled(); };

  runner_->truncate(0);
  const bool use_media = media && media->tiles > 0;
  auto t0 = std::chrono::steady_clock::now();
  try {
    if (use_media) {
      runner_->encode_images(media->pixels, media->tiles, nullptr, cancel);
      result.vision_ms = ms_since(t0);
    }
    auto t1 = std::chrono::steady_clock::now();
    ForwardRequest req;
    req.ids = ids;
    req.n = n;
    req.use_features = use_media;
    req.logits_rows = 1;
    req.logits_out = logits.data();
    runner_->forward(req, cancel);
    result.prefill_ms = ms_since(t1);
  } catch (const Error& err) {
    if (err.code() != ErrorCode::kCancelled) throw;
    result.finish_reason = "cancelled";
    return result;
  }

  auto t2 = std::chrono::steady_clock::now();
  result.finish_reason = "length";
  std::vector<float> raw;  // the unmodified row, kept when keep_logits
  auto choose = [&]() {
    if (options.keep_logits) raw = logits;
    int32_t t = sampler.sample(logits.data(), vocab, history);
    if (options.keep_logits) logits.swap(raw);
    return t;
  };
  int32_t token = options.max_tokens > 0 ? choose() : -1;
  for (int step = 0; step < options.max_tokens; ++step) {
    if (cancelled()) {
      result.finish_reason = "cancelled";
      break;
    }
    result.tokens.push_back(token);
    history.push_back(token);
    if (options.keep_logits) result.logits.insert(result.logits.end(), logits.begin(), logits.end());
    const bool is_stop = std::find(stop.begin(), stop.end(), token) != stop.end();
    const bool keep_going = options.on_token ? options.on_token(token) : true;
    if (is_stop) {
      result.finish_reason = "stop";
      break;
    }
    if (!keep_going) {
      result.finish_reason = cancelled() ? "cancelled" : "stop";
      break;
    }
    if (step + 1 == options.max_tokens) break;
    try {
      if (runner_->samples_on_device() && simple_sampling && !options.keep_logits) {
        token = runner_->decode_step(token, options.sampling, static_cast<uint64_t>(step + 1), nullptr);
      } else {
        ForwardRequest req;
        req.ids = &token;
        req.n = 1;
        req.logits_rows = 1;
        req.logits_out = logits.data();
        runner_->forward(req, cancel);
        token = choose();
      }
    } catch (const Error& err) {
      if (err.code() != ErrorCode::kCancelled) throw;
      result.finish_reason = "cancelled";
      break;
    }
  }
  result.decode_ms = ms_since(t2);
  return result;
}

}  // namespace plm
