// The engine: a loaded model, a runner on the chosen backend, and the generation loop.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/thread_pool.h"
#include "cpu/matmul.h"
#include "model/model.h"
#include "model/quantized_file.h"
#include "model/runner.h"
#include "model/scheduler.h"

namespace plm {

struct EngineOptions {
  std::string backend = "auto";  // "cpu", "cuda", "auto" (cuda when usable, else cpu)
  int threads = 0;               // CPU threads; 0: physical cores
  int max_context = 0;           // KV cache capacity; 0: max_position_embeddings
  int cuda_device = 0;
  // CPU activation precision for prefill, vision and projector matmuls: "f32" (exact to f32 rounding, what the
  // fixture tests check), "bf16" (activations rounded to bf16, f32 accumulation, AMX tiles; several times
  // faster; see benchmarks/RESULTS.md for the measured error), "auto" (see resolve_precision in engine.cpp).
  // Decode (up to 8 rows per matmul) keeps f32 activations with bf16/f32 weights; int8/q4 weights on AVX512-VNNI
  // round them to int8 blocks (cpu/quant.h). The env var PLM_PRECISION overrides "auto".
  std::string precision = "auto";
  // Weight-only quantization of the decoder matrices, converted at load (CPU backend): "none", "int8" (one
  // scale per output row) or "q4" (4-bit, groups of 32 with an f32 scale). Decode reads the quantized bytes;
  // embeddings stay in the checkpoint dtype. "" (not chosen): the env var PLM_QUANTIZE, else "none"; an explicit
  // "none" is never overridden.
  std::string quantize;
  // Where the quantized matrices come from (CPU backend). A plm-quant file (model/quantized_file.h, written by
  // `plm quantize`) is mmap'd with no conversion and computes bit for bit what quantize-at-load computes.
  //   quantized_file "" and find_quantized_file (the default): when quantize is "int8"/"q4" and
  //     <dir>/model.<kind>.plmq.safetensors exists, that file; otherwise quantize at load.
  //   quantized_file set: that file; quantize may be "none" (the file's kind is used) or must equal its kind.
  //   find_quantized_file false (and quantized_file ""): always quantize at load.
  // A file that is damaged, of another format version or made from another checkpoint is an error (never
  // silently skipped): kCorruptFile / kFileRead / kUnsupportedVersion / kStaleFile.
  std::string quantized_file;
  bool find_quantized_file = true;
  // Sequences generating at once (the rest wait); 0: 4 on the CPU. The CUDA backend runs one at a time.
  int sequences = 0;
  // KV cache budget in bytes; 0: max_context x sequences positions. Pages are touched only as used.
  size_t kv_cache_bytes = 0;
  int64_t prefill_chunk = 0;     // prompt positions per prefill step; 0: 256
  size_t media_cache_bytes = 0;  // image features kept for reuse; 0: 256 MiB
};

// How the decoder's matrices are held after load.
struct QuantizationInfo {
  cpu::Quant quant = cpu::Quant::kNone;
  std::string file;  // the plm-quant file they were mapped from; empty when quantized at load (or none)
};

// Pixels of every image and video frame in the prompt, concatenated in prompt order (one media item).
struct MediaInput {
  const float* pixels = nullptr;  // [tiles, 3, S, S]
  int64_t tiles = 0;
};

class Engine {
 public:
  // Throws plm::Error. When backend is "auto" and CUDA is unusable, backend_note() says why.
  static std::unique_ptr<Engine> load(const std::string& dir, const EngineOptions& options, const ProgressFn& progress);
  ~Engine();

  const LoadedModel& model() const { return *model_; }
  std::string backend_name() const { return paged_ ? paged_->backend_name() : runner_->backend_name(); }
  Scheduler& scheduler() { return *scheduler_; }
  int64_t max_context() const { return max_context_; }
  const std::string& backend_note() const { return backend_note_; }
  const QuantizationInfo& quantization() const { return quantization_; }

  // A fresh sequence, alone (between scheduler steps): runs ids (with media merged) in one chunk, writes logits
  // [logits_rows, vocab]; nothing is kept.
  void forward(const int32_t* ids, int64_t n, const MediaInput* media, int64_t logits_rows, float* logits,
               const CancelToken* cancel, const DumpFn& dump = nullptr);

  // Vision tower + projector: [tiles * tokens_per_tile, hidden].
  std::vector<float> encode_images(const float* pixels, int64_t tiles, const CancelToken* cancel);
  // The same work, leaving the features where the backend keeps them for the next forward (GPU memory on
  // CUDA): what generate() does with an image, and what a vision benchmark should time.
  void encode_images_in_backend(const float* pixels, int64_t tiles, const CancelToken* cancel);

  // One request through the scheduler (alongside any others), waiting for its end: prefill then sample until a
  // stop id, max_tokens, on_token() == false or cancel. Throws the request's error.
  GenerateResult generate(const int32_t* ids, int64_t n, const MediaInput* media, const GenerateOptions& options,
                          const CancelToken* cancel);

  // Checks ids/media against the config: placeholder count vs tiles, context length. Throws plm::Error.
  void validate_prompt(const int32_t* ids, int64_t n, const MediaInput* media, int64_t extra_tokens) const;

 private:
  Engine() = default;
  std::unique_ptr<LoadedModel> model_;
  std::unique_ptr<ThreadPool> pool_;
  std::unique_ptr<QuantizedFile> quantized_file_;  // outlives the runners, which read its mapped matrices
  std::unique_ptr<PagedRunner> paged_;             // CPU
  std::unique_ptr<Runner> runner_;                 // CUDA (one sequence at a time)
  std::unique_ptr<Scheduler> scheduler_;           // declared last: stopped first
  std::string backend_note_;
  QuantizationInfo quantization_;
  int64_t max_context_ = 0;
};

// Factories, one per backend (runner_cpu.cpp, runner_cuda.cpp).
std::unique_ptr<PagedRunner> make_cpu_runner(const LoadedModel& model, ThreadPool* pool, size_t kv_cache_bytes,
                                             cpu::Precision precision = cpu::Precision::kF32,
                                             cpu::Quant quant = cpu::Quant::kNone,
                                             const QuantizedFile* quantized = nullptr);
// Returns null and sets *why_not when the CUDA library, driver or device is unavailable.
std::unique_ptr<Runner> make_cuda_runner(const LoadedModel& model, int device, int64_t max_context,
                                         const ProgressFn& progress, std::string* why_not);
// One line for `plm info`: the CUDA library path and device, or why the GPU is not used.
std::string cuda_status();

}  // namespace plm
