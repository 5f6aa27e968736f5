// plm-quant files: the decoder's weight-only quantized matrices (int8 per row, q4 groups of 32) written once
// by `plm quantize` and mmap'd at load with no conversion. A plm-quant file is a safetensors file whose
// __metadata__ names the format, its version, the quantization and the checkpoint it was made from; the
// tensors hold exactly the bytes and scales cpu::QuantizedMatrix holds, so a model loaded from the file
// computes bit for bit what quantize-at-load computes. Norms, embeddings and the vision tower keep coming
// from the checkpoint. The byte layout and the versioning rules are in docs/quantized-format.md.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/safetensors.h"
#include "core/thread_pool.h"
#include "cpu/quant.h"
#include "model/model.h"
#include "model/runner.h"

namespace plm {

constexpr const char* kQuantFormatName = "plm-quant";
constexpr int kQuantFormatMajor = 1;  // readers reject other majors (ErrorCode::kUnsupportedVersion)
constexpr int kQuantFormatMinor = 0;  // additions older readers may ignore

// The seven projections of each decoder layer, in file order (model.language_model.layers.<l>.<name>).
constexpr const char* kQuantLayerMatrices[7] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                                "mlp.down_proj"};
constexpr const char* kQuantLmHead = "lm_head";  // the LM head's name in the file, tied or not

// "model.language_model.layers.<layer>.<kQuantLayerMatrices[which]>"
std::string quant_layer_matrix_name(int layer, int which);

// <dir>/model.<int8|q4>.plmq.safetensors: where `plm quantize` writes and loadModel looks by default.
std::string default_quantized_path(const std::string& dir, cpu::Quant q);

// One matrix weight-only quantization covers: a layer projection or the LM head.
struct QuantTarget {
  std::string name;          // name in the file, without the .qweight / .scales suffix
  const TensorView* source;  // the checkpoint tensor [rows, cols]
};
// Every layer's seven projections in layer order, then the LM head.
std::vector<QuantTarget> quant_targets(const LoadedModel& model);
// False when `q` cannot hold this matrix (q4 needs cols % 32 == 0); such matrices stay in the checkpoint.
bool quantizable(const TensorView& t, cpu::Quant q);

struct QuantizeFileResult {
  std::string path;
  cpu::Quant quant = cpu::Quant::kNone;
  int64_t quantized = 0;   // matrices written
  int64_t kept = 0;        // matrices left in the checkpoint dtype (not quantizable)
  uint64_t file_bytes = 0;
  uint64_t source_bytes = 0;  // checkpoint bytes of the quantized matrices
};

// Quantizes every target of `model` and writes a plm-quant file at `path` (a temporary file renamed into
// place, so a failed or cancelled run leaves no partial file). progress(fraction, "quantize"). Throws
// plm::Error: kInvalidArgument (quant none), kFileRead (cannot write), kCancelled.
QuantizeFileResult write_quantized_file(const LoadedModel& model, cpu::Quant q, const std::string& path,
                                        ThreadPool* pool, const ProgressFn& progress, const CancelToken* cancel);

// A plm-quant file opened by mmap and checked against the loaded checkpoint.
class QuantizedFile {
 public:
  // Throws plm::Error: kFileNotFound, kFileRead (truncated), kCorruptFile (not a plm-quant file, bad header,
  // tensors that disagree with the checkpoint's shapes), kUnsupportedVersion (another major version, or a
  // quantization this build does not know), kStaleFile (made from another checkpoint).
  static std::unique_ptr<QuantizedFile> open(const std::string& path, const LoadedModel& model);

  cpu::Quant quant() const { return quant_; }
  const std::string& path() const { return file_->path(); }
  // The quantized matrix of a target (views into the mapped file), or nullptr when it stays unquantized.
  const cpu::WeightMatrix* find(const std::string& name) const;
  size_t bytes() const { return file_->file_size(); }

 private:
  QuantizedFile() = default;
  std::unique_ptr<SafetensorsFile> file_;
  cpu::Quant quant_ = cpu::Quant::kNone;
  std::map<std::string, cpu::WeightMatrix> matrices_;
};

}  // namespace plm
