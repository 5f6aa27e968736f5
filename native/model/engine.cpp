#include "cpu/quant.h"
#include "model/engine.h"

#include <cstdint>
#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>

#include "core/error.h"
#include "core/json.h"
#include "model/kv_cache.h"
#include "model/sampler.h"

namespace plm {
constexpr int kDefaultCpuSequences = 4;

// "auto" takes the bf16 matrix units where the CPU has them; the fixture tests ask for "f32" explicitly.
constexpr bool kAutoPrefersBf16 = true;

// "f32" asked for (option or PLM_PRECISION) gives the decoder its row-invariant f32 path (reused prefixes equal
// recomputed ones bit for bit); "auto" that settles on f32 keeps the fastest f32 kernels.
static cpu::Precision resolve_precision(std::string p) {
  if (p == "auto") {
    const char* env = std::getenv("PLM_PRECISION");
    if (env && *env) p = env;
  }
  if (p == "f32") return cpu::Precision::kF32RowInvariant;
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
  SchedulerOptions sched;
  sched.max_context = e->max_context_;
  if (options.prefill_chunk > 0) sched.prefill_chunk = options.prefill_chunk;
  if (options.media_cache_bytes > 0) sched.media_cache_bytes = options.media_cache_bytes;
  if (options.sequences < 0) throw Error(ErrorCode::kInvalidArgument, "sequences must be >= 0");
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
    if (q.empty()) {
      const char* env = std::getenv("PLM_QUANTIZE");
      q = env && *env ? env : "none";
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
    const int sequences = options.sequences > 0 ? options.sequences : kDefaultCpuSequences;
    const TextConfig& t = e->model_->config.text;
    const size_t per_token = KvCache::bytes_per_token(t.num_layers, t.num_kv_heads, t.head_dim);
    const size_t kv_bytes = options.kv_cache_bytes > 0 ? options.kv_cache_bytes
                                                       : per_token * static_cast<size_t>(e->max_context_) * sequences;
    e->paged_ = make_cpu_runner(*e->model_, e->pool_.get(), kv_bytes, resolve_precision(options.precision), quant,
                                e->quantized_file_.get());
    if (options.sequences <= 0 && options.kv_cache_bytes > 0) {
      // An explicit budget without a sequence count: as many as fit at the full context, at least one.
      const int64_t fit = static_cast<int64_t>(options.kv_cache_bytes / (per_token * e->max_context_));
      sched.max_sequences = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(fit, 64)));
    } else {
      sched.max_sequences = sequences;
    }
  }
  e->scheduler_ = std::make_unique<Scheduler>(*e->model_, e->paged_.get(), e->runner_.get(), sched);
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
  scheduler_->run_exclusive([&] {
    if (paged_) {
      out.resize(static_cast<size_t>(tiles * model_->config.tokens_per_tile() * model_->config.text.hidden_size));
      paged_->encode_tiles(pixels, tiles, out.data(), cancel, nullptr);
    } else {
      runner_->encode_images(pixels, tiles, &out, cancel);
    }
  });
  return out;
}

void Engine::encode_images_in_backend(const float* pixels, int64_t tiles, const CancelToken* cancel) {
  if (tiles <= 0) throw Error(ErrorCode::kInvalidArgument, "encodeImages needs at least one tile");
  if (paged_) {
    encode_images(pixels, tiles, cancel);
    return;
  }
  scheduler_->run_exclusive([&] { runner_->encode_images(pixels, tiles, nullptr, cancel); });
}

void Engine::forward(const int32_t* ids, int64_t n, const MediaInput* media, int64_t logits_rows, float* logits,
                     const CancelToken* cancel, const DumpFn& dump) {
  validate_prompt(ids, n, media, 0);
  const bool use_media = media && media->tiles > 0;
  scheduler_->run_exclusive([&] {
    if (!paged_) {
      scheduler_->forget_legacy_prefix();
      runner_->set_dump(dump);
      struct ClearDump {
        Runner* r;
        ~ClearDump() { r->set_dump(nullptr); }
      } clear{runner_.get()};
      runner_->truncate(0);
      if (use_media) runner_->encode_images(media->pixels, media->tiles, nullptr, cancel);
      ForwardRequest req;
      req.ids = ids;
      req.n = n;
      req.use_features = use_media;
      req.logits_rows = std::min(logits_rows, n);
      req.logits_out = logits;
      runner_->forward(req, cancel);
      return;
    }
    const ModelConfig& c = model_->config;
    const int64_t H = c.text.hidden_size;
    std::vector<float> features;  // [tiles * tokens_per_tile, H]
    std::vector<const float*> rows(static_cast<size_t>(n), nullptr);
    if (use_media) {
      features.resize(static_cast<size_t>(media->tiles * c.tokens_per_tile() * H));
      // With a dump, all tiles at once (one tensor per stage); otherwise in groups that bound activation memory.
      const int64_t group = dump ? media->tiles : 4, S = c.vision.image_size;
      for (int64_t t0 = 0; t0 < media->tiles; t0 += group)
        paged_->encode_tiles(media->pixels + t0 * 3 * S * S, std::min(group, media->tiles - t0),
                             features.data() + t0 * c.tokens_per_tile() * H, cancel, dump);
      int64_t row = 0;
      for (int64_t i = 0; i < n; ++i)
        if (ids[i] == c.image_token_id || ids[i] == c.video_token_id) rows[i] = features.data() + (row++) * H;
    }
    auto blocks = scheduler_->temp_blocks(n);
    paged_->prefill(ids, rows.data(), n, blocks->table.data(), 0, std::min(logits_rows, n), logits, cancel, dump);
  });
}

GenerateResult Engine::generate(const int32_t* ids, int64_t n, const MediaInput* media, const GenerateOptions& options,
                                const CancelToken* cancel) {
  Scheduler::Request req;
  req.ids.assign(ids, ids + n);
  if (media && media->tiles > 0) {
    MediaItem item;
    const int64_t S = model_->config.vision.present ? model_->config.vision.image_size : 0;
    item.pixels = std::make_shared<std::vector<float>>(media->pixels, media->pixels + media->tiles * 3 * S * S);
    item.tiles = media->tiles;
    req.media.push_back(std::move(item));
  }
  req.options = options;
  // The caller's token outlives this call; the scheduler holds a non-owning alias of it.
  if (cancel) req.cancel = std::shared_ptr<CancelToken>(std::shared_ptr<CancelToken>(), const_cast<CancelToken*>(cancel));
  std::mutex m;
  std::condition_variable cv;
  bool done = false;
  GenerateResult out;
  std::exception_ptr error;
  req.on_done = [&](GenerateResult&& r, std::exception_ptr e) {
    std::lock_guard<std::mutex> lock(m);
    out = std::move(r);
    error = e;
    done = true;
    cv.notify_all();
  };
  scheduler_->submit(std::move(req));
  std::unique_lock<std::mutex> lock(m);
  cv.wait(lock, [&] { return done; });
  if (error) std::rethrow_exception(error);
  return out;
}

}  // namespace plm
