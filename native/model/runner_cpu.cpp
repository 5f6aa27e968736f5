// The CPU backend: vision encoder, projector and decoder in f32 on the thread pool.
#include <cstdint>
#include <cstring>
#include <memory>

#include "core/error.h"
#include "model/decoder.h"
#include "model/engine.h"
#include "model/projector.h"
#include "model/vision_encoder.h"

namespace plm {
namespace {

class CpuRunner : public Runner {
 public:
  CpuRunner(const LoadedModel& model, ThreadPool* pool, int64_t max_context, cpu::Precision precision,
            cpu::Quant quant, const QuantizedFile* quantized)
      : model_(model), pool_(pool), decoder_(model, pool, max_context) {
    decoder_.set_precision(precision);
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

  void encode_images(const float* pixels, int64_t tiles, std::vector<float>* features_out,
                     const CancelToken* cancel) override {
    if (!vision_) throw Error(ErrorCode::kInvalidArgument, "this checkpoint has no vision tower");
    const VisionConfig& vc = model_.config.vision;
    const int64_t N = vc.tokens(), C = vc.width, P = vc.patches(), prefix = vc.class_token ? 1 : 0;
    const int64_t rows_per_tile = model_.config.tokens_per_tile(), D = model_.config.text.hidden_size;
    features_.assign(static_cast<size_t>(tiles * rows_per_tile * D), 0.f);
    // Tiles go through the tower in small groups to bound activation memory; with a dump all at once.
    const int64_t group = dump_ ? tiles : 4;
    for (int64_t t0 = 0; t0 < tiles; t0 += group) {
      const int64_t n = std::min(group, tiles - t0);
      float* tokens = tokens_.get(static_cast<size_t>(n * N * C));  // [n, N, C]
      vision_->forward(pixels + t0 * 3 * vc.image_size * vc.image_size, n, tokens, cancel, dump_);
      const float* patch_rows = tokens;
      if (prefix) {
        float* patches = patches_.get(static_cast<size_t>(n * P * C));  // [n, P, C]
        for (int64_t t = 0; t < n; ++t)
          std::memcpy(patches + t * P * C, tokens + (t * N + prefix) * C, P * C * sizeof(float));
        patch_rows = patches;
      }
      projector_->forward(patch_rows, n, features_.data() + t0 * rows_per_tile * D, dump_);
    }
    if (features_out) *features_out = features_;
  }

  void forward(const ForwardRequest& req, const CancelToken* cancel) override {
    const int64_t H = model_.config.text.hidden_size;
    float* x = embeds_.get(static_cast<size_t>(req.n * H));  // [n, H]
    decoder_.embed(req.ids, req.n, x);
    if (req.use_features) {
      int64_t row = 0;
      const int64_t available = static_cast<int64_t>(features_.size()) / H;
      for (int64_t i = 0; i < req.n; ++i) {
        if (req.ids[i] != model_.config.image_token_id && req.ids[i] != model_.config.video_token_id) continue;
        if (row >= available)
          throw Error(ErrorCode::kInvalidArgument, "more image/video placeholder tokens than encoded features (" +
                                                       std::to_string(available) + " rows)");
        std::memcpy(x + i * H, features_.data() + row * H, H * sizeof(float));
        ++row;
      }
    }
    const int64_t before = decoder_.cache().length();
    try {
      decoder_.forward(x, req.n, req.logits_rows, req.logits_out, cancel, dump_);
    } catch (...) {
      decoder_.cache().set_length(before);  // a cancelled chunk leaves no half-written entries behind
      throw;
    }
  }

  void truncate(int64_t n) override {
    if (n < decoder_.cache().length()) decoder_.cache().set_length(n);
  }
  int64_t cache_length() const override { return const_cast<Decoder&>(decoder_).cache().length(); }
  void set_dump(DumpFn fn) override { dump_ = std::move(fn); }

 private:
  const LoadedModel& model_;
  ThreadPool* pool_;
  Decoder decoder_;
  std::unique_ptr<VisionEncoder> vision_;
  std::unique_ptr<Projector> projector_;
  std::vector<float> features_;  // [rows, hidden] from the last encode_images
  // Kept between calls (core/scratch.h): a forward's input rows [n, hidden]; a tile group's tower output
  // [group, N, C] and its patch rows without the CLS token [group, P, C].
  Scratch<float> embeds_, tokens_, patches_;
  DumpFn dump_;
};

}  // namespace

std::unique_ptr<Runner> make_cpu_runner(const LoadedModel& model, ThreadPool* pool, int64_t max_context,
                                        cpu::Precision precision, cpu::Quant quant, const QuantizedFile* quantized) {
  return std::make_unique<CpuRunner>(model, pool, max_context, precision, quant, quantized);
}

}  // namespace plm
