// The CPU backend: vision encoder, projector and decoder on the thread pool, many sequences over one paged KV
// cache.
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>

#include "core/error.h"
#include "model/decoder.h"
#include "model/engine.h"
#include "model/kv_cache.h"
#include "model/projector.h"
#include "model/vision_encoder.h"

namespace plm {
namespace {

class CpuRunner : public PagedRunner {
 public:
  CpuRunner(const LoadedModel& model, ThreadPool* pool, size_t kv_bytes, cpu::Precision precision, cpu::Quant quant,
            const QuantizedFile* quantized)
      : model_(model),
        pool_(pool),
        cache_(model.config.text.num_layers, model.config.text.num_kv_heads, model.config.text.head_dim, kv_bytes),
        decoder_(model, pool, &cache_) {
    decoder_.set_precision(precision);
    // The vision tower and the projector have no cache to stay consistent with: their fastest f32 kernels.
    if (precision == cpu::Precision::kF32RowInvariant) precision = cpu::Precision::kF32;
    if (quantized) decoder_.use_quantized(*quantized);
    else if (quant != cpu::Quant::kNone) decoder_.quantize(quant);
    if (model.config.vision.present) {
      vision_ = std::make_unique<VisionEncoder>(model, pool);
      projector_ = std::make_unique<Projector>(model, pool);
      vision_->set_precision(precision);
      projector_->set_precision(precision);
    }
  }

  std::string backend_name() const override { return "cpu"; }
  KvCache& kv_cache() override { return cache_; }

  void encode_tiles(const float* pixels, int64_t tiles, float* features, const CancelToken* cancel,
                    const DumpFn& dump, const std::function<void()>& interleave) override {
    if (!vision_) throw Error(ErrorCode::kInvalidArgument, "this checkpoint has no vision tower");
    const VisionConfig& vc = model_.config.vision;
    const int64_t N = vc.tokens(), C = vc.width, P = vc.patches(), prefix = vc.class_token ? 1 : 0;
    const int64_t rows_per_tile = model_.config.tokens_per_tile(), D = model_.config.text.hidden_size;
    float* tokens = tokens_.get(static_cast<size_t>(tiles * N * C));  // [tiles, N, C]
    vision_->forward(pixels, tiles, tokens, cancel, dump, interleave);
    const float* patch_rows = tokens;
    if (prefix) {
      float* patches = patches_.get(static_cast<size_t>(tiles * P * C));  // [tiles, P, C]
      for (int64_t t = 0; t < tiles; ++t)
        std::memcpy(patches + t * P * C, tokens + (t * N + prefix) * C, P * C * sizeof(float));
      patch_rows = patches;
    }
    projector_->forward(patch_rows, tiles, features, dump);  // [tiles * rows_per_tile, D]
    (void)rows_per_tile, (void)D;
  }

  void prefill(const int32_t* ids, const float* const* media_rows, int64_t n, const int32_t* table, int64_t pos0,
               int64_t logits_rows, float* logits, const CancelToken* cancel, const DumpFn& dump,
               const std::function<void()>& interleave) override {
    const int64_t H = model_.config.text.hidden_size;
    float* x = embeds_.get(static_cast<size_t>(n * H));  // [n, H]
    embed(ids, media_rows, n, x);
    decoder_.prefill(x, n, table, pos0, logits_rows, logits, cancel, dump, interleave);
  }

  void decode(const int32_t* ids, int64_t R, const int32_t* const* tables, const int64_t* pos, float* logits) override {
    const int64_t H = model_.config.text.hidden_size;
    float* x = decode_embeds_.get(static_cast<size_t>(R * H));  // [R, H] (a decode may run inside a prefill)
    embed(ids, nullptr, R, x);
    decoder_.decode(x, R, tables, pos, logits);
  }

 private:
  void embed(const int32_t* ids, const float* const* media_rows, int64_t n, float* x) {
    const int64_t H = model_.config.text.hidden_size;
    for (int64_t i = 0; i < n; ++i) {
      if (media_rows && media_rows[i]) std::memcpy(x + i * H, media_rows[i], H * sizeof(float));
      else decoder_.embed(ids + i, 1, x + i * H);
    }
  }

  const LoadedModel& model_;
  ThreadPool* pool_;
  KvCache cache_;
  Decoder decoder_;
  std::unique_ptr<VisionEncoder> vision_;
  std::unique_ptr<Projector> projector_;
  // Kept between calls (core/scratch.h): a forward's input rows [n, hidden]; a tile group's tower output
  // [tiles, N, C] and its patch rows without the CLS token [tiles, P, C].
  Scratch<float> embeds_, tokens_, patches_;
  Scratch<float> decode_embeds_;  // [R, hidden]
};

}  // namespace

std::unique_ptr<PagedRunner> make_cpu_runner(const LoadedModel& model, ThreadPool* pool, size_t kv_bytes,
                                             cpu::Precision precision, cpu::Quant quant,
                                             const QuantizedFile* quantized) {
  return std::make_unique<CpuRunner>(model, pool, kv_bytes, precision, quant, quantized);
}

}  // namespace plm
