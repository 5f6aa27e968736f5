#include "model/model.h"

#include "core/error.h"
#include "core/json.h"
#include <cstdint>

namespace plm {
namespace {

std::string join(const std::string& dir, const std::string& name) {
  return (!dir.empty() && dir.back() == '/') ? dir + name : dir + "/" + name;
}

const char* kText = "model.language_model.";
const char* kVision = "model.vision_tower.timm_model.";
const char* kProjector = "model.multi_modal_projector.";

void expect_shape(const LoadedModel& m, const std::string& name, std::vector<int64_t> shape) {
  const TensorView* t = m.find(name);
  if (!t)
    throw Error(ErrorCode::kShapeMismatch, "weight '" + name + "' is missing from " + m.dir +
                                               " but config.json implies it. Is the checkpoint complete?");
  if (t->shape != shape) {
    TensorView want;
    want.shape = shape;
    throw Error(ErrorCode::kShapeMismatch, "weight '" + name + "' has shape " + t->shape_string() +
                                               " but config.json implies " + want.shape_string());
  }
  if (t->dtype != DType::kF32 && t->dtype != DType::kBF16 && t->dtype != DType::kF16)
    throw Error(ErrorCode::kUnsupportedDtype, "weight '" + name + "' has dtype " + dtype_name(t->dtype) +
                                                  "; weights must be F32, F16 or BF16");
}

void validate(LoadedModel& m) {
  const TextConfig& t = m.config.text;
  const int64_t H = t.hidden_size, q = int64_t(t.num_heads) * t.head_dim, kv = int64_t(t.num_kv_heads) * t.head_dim;
  const std::string p = kText;
  expect_shape(m, p + "embed_tokens.weight", {t.vocab_size, H});
  for (int l = 0; l < t.num_layers; ++l) {
    std::string L = p + "layers." + std::to_string(l) + ".";
    expect_shape(m, L + "input_layernorm.weight", {H});
    expect_shape(m, L + "self_attn.q_proj.weight", {q, H});
    expect_shape(m, L + "self_attn.k_proj.weight", {kv, H});
    expect_shape(m, L + "self_attn.v_proj.weight", {kv, H});
    expect_shape(m, L + "self_attn.o_proj.weight", {H, q});
    expect_shape(m, L + "post_attention_layernorm.weight", {H});
    expect_shape(m, L + "mlp.gate_proj.weight", {t.intermediate_size, H});
    expect_shape(m, L + "mlp.up_proj.weight", {t.intermediate_size, H});
    expect_shape(m, L + "mlp.down_proj.weight", {H, t.intermediate_size});
  }
  expect_shape(m, p + "norm.weight", {H});
  if (m.find("lm_head.weight")) expect_shape(m, "lm_head.weight", {t.vocab_size, H});
  if (m.find(p + "layers." + std::to_string(t.num_layers) + ".input_layernorm.weight"))
    throw Error(ErrorCode::kShapeMismatch, "the weights have more decoder layers than num_hidden_layers = " +
                                               std::to_string(t.num_layers) + " in config.json");

  VisionConfig& v = m.config.vision;
  if (!v.present) return;
  const std::string vp = kVision;
  // The weights decide what the architecture table cannot: MLP width, layer scale, final norm.
  if (const TensorView* fc1 = m.find(vp + "blocks.0.mlp.fc1.weight"); fc1 && fc1->shape.size() == 2) {
    // A size read from the file: range-checked before it becomes an int.
    if (fc1->shape[0] < 1 || fc1->shape[0] > (int64_t(1) << 20))
      throw Error(ErrorCode::kShapeMismatch, "weight '" + vp + "blocks.0.mlp.fc1.weight' has shape " + fc1->shape_string() +
                                                 ": its MLP width must be 1..1048576");
    v.mlp_hidden = static_cast<int>(fc1->shape[0]);
  }
  v.layer_scale = m.find(vp + "blocks.0.gamma_1") != nullptr;
  v.post_norm = m.find(vp + "norm.weight") != nullptr;
  const int64_t C = v.width;
  expect_shape(m, vp + "patch_embed.proj.weight", {C, 3, v.patch_size, v.patch_size});
  if (v.class_token) expect_shape(m, vp + "cls_token", {1, 1, C});
  expect_shape(m, vp + "pos_embed", {1, v.tokens(), C});
  if (v.pre_norm) {
    expect_shape(m, vp + "norm_pre.weight", {C});
    expect_shape(m, vp + "norm_pre.bias", {C});
  }
  for (int b = 0; b < v.depth; ++b) {
    std::string B = vp + "blocks." + std::to_string(b) + ".";
    expect_shape(m, B + "norm1.weight", {C});
    expect_shape(m, B + "norm1.bias", {C});
    expect_shape(m, B + "attn.qkv.weight", {3 * C, C});
    expect_shape(m, B + "attn.qkv.bias", {3 * C});
    expect_shape(m, B + "attn.proj.weight", {C, C});
    expect_shape(m, B + "attn.proj.bias", {C});
    expect_shape(m, B + "norm2.weight", {C});
    expect_shape(m, B + "norm2.bias", {C});
    expect_shape(m, B + "mlp.fc1.weight", {v.mlp_hidden, C});
    expect_shape(m, B + "mlp.fc1.bias", {v.mlp_hidden});
    expect_shape(m, B + "mlp.fc2.weight", {C, v.mlp_hidden});
    expect_shape(m, B + "mlp.fc2.bias", {C});
    if (v.layer_scale) {
      expect_shape(m, B + "gamma_1", {C});
      expect_shape(m, B + "gamma_2", {C});
    }
  }
  if (v.post_norm) {
    expect_shape(m, vp + "norm.weight", {C});
    expect_shape(m, vp + "norm.bias", {C});
  }
  const std::string pp = kProjector;
  expect_shape(m, pp + "linear_1.weight", {H, C});
  expect_shape(m, pp + "linear_1.bias", {H});
  expect_shape(m, pp + "linear_2.weight", {H, H});
  expect_shape(m, pp + "linear_2.bias", {H});
}

}  // namespace

const TensorView* LoadedModel::find(const std::string& name) const { return weights->find(name); }

const TensorView& LoadedModel::get(const std::string& name) const {
  const TensorView* t = find(name);
  if (!t) throw Error(ErrorCode::kShapeMismatch, "weight '" + name + "' is missing from " + dir);
  return *t;
}

const TensorView& LoadedModel::lm_head() const {
  const TensorView* head = find("lm_head.weight");
  if (head && !config.text.tie_word_embeddings) return *head;
  return get(std::string(kText) + "embed_tokens.weight");
}

std::unique_ptr<LoadedModel> load_model(const std::string& dir, const ProgressFn& progress) {
  if (!is_directory(dir))
    throw Error(ErrorCode::kFileNotFound, "model directory not found: " + dir +
                                              ". Pass the folder that holds config.json and model.safetensors.");
  auto m = std::make_unique<LoadedModel>();
  m->dir = dir;
  std::string config_path = join(dir, "config.json");
  if (!file_exists(config_path))
    throw Error(ErrorCode::kFileNotFound, "config.json not found in " + dir + ": is this a Hugging Face checkpoint?");
  m->config = parse_model_config(read_text_file(config_path), config_path);
  std::string gen_path = join(dir, "generation_config.json");
  if (file_exists(gen_path)) m->generation = parse_generation_config(read_text_file(gen_path), gen_path);
  if (progress) progress(0.1, "weights");
  m->weights = SafetensorsSet::open_dir(dir);
  validate(*m);
  if (progress) progress(1.0, "weights");
  return m;
}

}  // namespace plm
