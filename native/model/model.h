// A loaded checkpoint: configuration plus the weights mmap'd from its safetensors file(s), validated
// against the shapes the configuration implies.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/safetensors.h"
#include "core/tensor.h"

namespace plm {

using ProgressFn = std::function<void(double fraction, const std::string& stage)>;

struct LoadedModel {
  std::string dir;
  ModelConfig config;
  GenerationConfig generation;
  std::unique_ptr<SafetensorsSet> weights;

  // nullptr when absent.
  const TensorView* find(const std::string& name) const;
  // Throws kShapeMismatch / kCorruptFile naming the tensor when absent.
  const TensorView& get(const std::string& name) const;
  // The LM head: lm_head.weight, or the embedding when tied (or when lm_head is absent).
  const TensorView& lm_head() const;
};

// Reads config.json (+ generation_config.json when present) and the weights of `dir`.
std::unique_ptr<LoadedModel> load_model(const std::string& dir, const ProgressFn& progress);

}  // namespace plm
