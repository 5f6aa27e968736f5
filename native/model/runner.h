// The one interface behind which the CPU and CUDA backends run a loaded PerceptionLM.
// A runner owns the KV cache of one sequence. The engine drives it: encode images, forward a chunk
// of tokens (prefill or one decode token), read logits, sample.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace plm {

// Set from any thread; checked between layers and between tokens.
struct CancelToken {
  std::atomic<bool> cancelled{false};
  bool is_cancelled() const { return cancelled.load(std::memory_order_relaxed); }
};

// Named intermediate (f32) for tests and debugging: "text.layers.3", "vision.blocks.0", ...
using DumpFn = std::function<void(const std::string& name, const float* data, const std::vector<int64_t>& shape)>;

struct SamplingParams {
  float temperature = 0.f;  // <= 0: greedy
  int top_k = 0;            // <= 0: off
  float top_p = 1.f;        // >= 1: off
  float min_p = 0.f;        // <= 0: off
  float repetition_penalty = 1.f;  // 1: off (HF rule: divide positive logits, multiply negative)
  uint64_t seed = 0;
};

struct ForwardRequest {
  const int32_t* ids = nullptr;  // [n]
  int64_t n = 0;
  bool use_features = false;     // rows whose id is the image/video token take the last encoded features
  int64_t logits_rows = 1;       // 0: none, 1: last row, n: all rows
  float* logits_out = nullptr;   // [logits_rows, vocab]
};

class Runner {
 public:
  virtual ~Runner() = default;
  virtual std::string backend_name() const = 0;  // "cpu", "cuda:0 NVIDIA H100 ..."

  // pixels [tiles, 3, S, S] -> projector features [tiles * tokens_per_tile, hidden], kept for the next
  // forward with use_features; copied to features_out when not null.
  virtual void encode_images(const float* pixels, int64_t tiles, std::vector<float>* features_out,
                             const CancelToken* cancel) = 0;

  // Appends req.n tokens to the KV cache (positions cache_length() ...) and computes logits.
  virtual void forward(const ForwardRequest& req, const CancelToken* cancel) = 0;

  // Backends that sample on the device (CUDA) return true and implement decode_step.
  virtual bool samples_on_device() const { return false; }
  virtual int32_t decode_step(int32_t /*token*/, const SamplingParams& /*params*/, uint64_t /*step*/,
                              float* /*logits_out*/) { return -1; }

  virtual void truncate(int64_t n) = 0;  // keep the first n cache entries
  virtual int64_t cache_length() const = 0;
  virtual void set_dump(DumpFn fn) = 0;  // empty fn turns dumping off
};

}  // namespace plm
