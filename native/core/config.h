// PerceptionLM configuration as read from a Hugging Face checkpoint's config.json and
// generation_config.json. Both flavours are read: transformers 4.x (text_config.rope_theta,
// rope_scaling, torch_dtype) and 5.x (rope_parameters, dtype, top-level tie_word_embeddings).
#pragma once
#include <string>
#include <vector>

namespace plm {

struct RopeConfig {
  enum class Type { kDefault, kLlama3 } type = Type::kDefault;
  double theta = 10000.0;
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  double original_max_position_embeddings = 8192.0;
};

struct TextConfig {
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int vocab_size = 0;
  float rms_norm_eps = 1e-5f;
  int max_position_embeddings = 0;
  bool tie_word_embeddings = false;
  RopeConfig rope;
  std::string hidden_act = "silu";
  bool attention_bias = false;
  bool mlp_bias = false;
};

// Perception Encoder (timm Eva) with the architecture defaults that model_args do not override.
struct VisionConfig {
  bool present = false;
  std::string architecture;  // timm name, e.g. vit_pe_core_large_patch14_336
  int width = 0;
  int depth = 0;
  int heads = 0;
  int head_dim = 0;
  int mlp_hidden = 0;
  int image_size = 0;
  int patch_size = 0;
  bool class_token = true;
  bool post_norm = false;        // use_post_transformer_norm
  bool pre_norm = true;          // use_pre_transformer_norm (norm_pre)
  bool layer_scale = true;       // init_values set -> gamma_1/gamma_2 exist
  float layer_norm_eps = 1e-5f;
  float rope_grid_offset = 0.f;  // 1 with a class token in PE-L
  float rope_temperature = 10000.f;
  int ref_feat_shape = 0;        // rope reference grid (scales positions by ref / grid)

  int grid() const { return image_size / patch_size; }
  int patches() const { return grid() * grid(); }
  int tokens() const { return patches() + (class_token ? 1 : 0); }
};

struct ModelConfig {
  TextConfig text;
  VisionConfig vision;
  int projector_pooling_ratio = 1;
  bool vision_use_cls_token = true;
  int image_token_id = 128002;
  int video_token_id = 128003;
  std::string dtype;  // torch_dtype / dtype as written
  int tokens_per_tile() const;  // (grid / pooling)^2
};

struct GenerationConfig {
  int bos_token_id = -1;
  std::vector<int> eos_token_ids;
  bool do_sample = false;
  float temperature = 1.f;
  float top_p = 1.f;
  int top_k = 0;
  int max_new_tokens = 0;  // 0: not set
};

// Throws plm::Error (kFileNotFound, kCorruptFile, kUnsupportedModel) with a message naming the file and key.
ModelConfig parse_model_config(const std::string& json_text, const std::string& source_name);
GenerationConfig parse_generation_config(const std::string& json_text, const std::string& source_name);

}  // namespace plm
