// The interfaces behind which the backends run a loaded PerceptionLM, driven by the engine's scheduler
// (model/scheduler.h):
// - PagedRunner (CPU): many sequences over one paged KV cache (model/kv_cache.h): encode image tiles, prefill a
//   chunk of one sequence, decode one token for each of many sequences at once.
// - Runner (CUDA, until its paged path exists): owns the KV cache of one sequence; the scheduler runs one
//   sequence at a time on it and reuses the prompt prefix its cache already holds.
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

class KvCache;

class PagedRunner {
 public:
  virtual ~PagedRunner() = default;
  virtual std::string backend_name() const = 0;
  virtual KvCache& kv_cache() = 0;
  // pixels [tiles, 3, S, S] -> features [tiles * tokens_per_tile, hidden] (f32, host memory).
  // `interleave`, when set, is called between the stages of this long call; it may run decode() (never another
  // encode_tiles or prefill), so other sequences keep streaming.
  virtual void encode_tiles(const float* pixels, int64_t tiles, float* features, const CancelToken* cancel,
                            const DumpFn& dump, const std::function<void()>& interleave = nullptr) = 0;
  // Positions [pos0, pos0 + n) of the sequence with block table `table`: row i is the embedding of ids[i], or
  // the feature row media_rows[i] (hidden floats) where that is not null. Writes their keys and values;
  // logits [logits_rows, vocab] for the last rows. `interleave` as for encode_tiles.
  virtual void prefill(const int32_t* ids, const float* const* media_rows, int64_t n, const int32_t* table,
                       int64_t pos0, int64_t logits_rows, float* logits, const CancelToken* cancel,
                       const DumpFn& dump, const std::function<void()>& interleave = nullptr) = 0;
  // One token for each of R sequences: ids[r] at position pos[r] of the sequence with table tables[r];
  // logits [R, vocab].
  virtual void decode(const int32_t* ids, int64_t R, const int32_t* const* tables, const int64_t* pos,
                      float* logits) = 0;
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
