#include "core/config.h"

#include <cmath>

#include "core/error.h"
#include "core/json.h"

namespace plm {
namespace {

[[noreturn]] void bad(const std::string& source, const std::string& what) {
  throw Error(ErrorCode::kCorruptFile, source + ": " + what);
}

double num(const Json& obj, const char* key, double fallback) {
  const Json* v = obj.find(key);
  return v && v->is_number() ? v->number() : fallback;
}

int integer(const Json& obj, const char* key, int fallback) { return static_cast<int>(num(obj, key, fallback)); }

int required_int(const Json& obj, const char* key, const std::string& source) {
  const Json* v = obj.find(key);
  if (!v || !v->is_number()) bad(source, std::string("missing or non-numeric \"") + key + "\"");
  return static_cast<int>(v->number());
}

bool boolean(const Json& obj, const char* key, bool fallback) {
  const Json* v = obj.find(key);
  return v && v->is_bool() ? v->boolean() : fallback;
}

std::string str(const Json& obj, const char* key, const std::string& fallback) {
  const Json* v = obj.find(key);
  return v && v->is_string() ? v->string() : fallback;
}

// rope_scaling (4.x) or rope_parameters (5.x): {rope_type|type, factor, low_freq_factor, ...}
void read_rope(const Json* params, RopeConfig* rope, const std::string& source) {
  if (!params || params->is_null()) return;
  if (!params->is_object()) bad(source, "rope parameters must be an object");
  std::string type = str(*params, "rope_type", str(*params, "type", "default"));
  rope->theta = num(*params, "rope_theta", rope->theta);
  if (type == "default") {
    rope->type = RopeConfig::Type::kDefault;
  } else if (type == "llama3") {
    rope->type = RopeConfig::Type::kLlama3;
    rope->factor = num(*params, "factor", 8.0);
    rope->low_freq_factor = num(*params, "low_freq_factor", 1.0);
    rope->high_freq_factor = num(*params, "high_freq_factor", 4.0);
    rope->original_max_position_embeddings = num(*params, "original_max_position_embeddings", 8192.0);
  } else {
    throw Error(ErrorCode::kUnsupportedModel,
                source + ": rope type \"" + type + "\" is not supported (supported: default, llama3)");
  }
}

struct VisionArch {
  const char* name;
  int patch, width, depth, heads;
  double mlp_ratio;
  bool class_token;
  float grid_offset;
  int ref_feat;
  int img;
};

// timm's defaults for the Perception Encoder architectures that PLM checkpoints name; model_args override them.
const VisionArch kVisionArchs[] = {
    {"vit_pe_core_large_patch14_336", 14, 1024, 24, 16, 4.0, true, 1.f, 24, 336},
    {"vit_pe_core_gigantic_patch14_448", 14, 1536, 50, 16, 8960.0 / 1536.0, false, 0.f, 32, 448},
};

int first_of(const Json* v, int fallback) {
  if (!v) return fallback;
  if (v->is_number()) return static_cast<int>(v->number());
  if (v->is_array() && !v->array().empty() && v->array()[0].is_number())
    return static_cast<int>(v->array()[0].number());
  return fallback;
}

void read_vision(const Json& vc, VisionConfig* v, const std::string& source) {
  v->present = true;
  v->architecture = str(vc, "architecture", "");
  const VisionArch* arch = nullptr;
  for (const auto& a : kVisionArchs)
    if (v->architecture == a.name) arch = &a;
  if (!arch) {
    std::string known;
    for (const auto& a : kVisionArchs) known += std::string(known.empty() ? "" : ", ") + a.name;
    throw Error(ErrorCode::kUnsupportedModel, source + ": vision architecture \"" + v->architecture +
                                                  "\" is not supported (supported: " + known + ")");
  }
  static const Json kEmpty = Json::parse("{}", "");
  const Json* margs = vc.find("model_args");
  const Json& ma = margs && margs->is_object() ? *margs : kEmpty;
  v->patch_size = first_of(ma.find("patch_size"), arch->patch);
  v->width = integer(ma, "embed_dim", arch->width);
  v->depth = integer(ma, "depth", arch->depth);
  v->heads = integer(ma, "num_heads", arch->heads);
  double mlp_ratio = num(ma, "mlp_ratio", arch->mlp_ratio);
  v->mlp_hidden = static_cast<int>(v->width * mlp_ratio);  // timm: int(dim * mlp_ratio); weights decide when in doubt
  v->image_size = first_of(ma.find("img_size"), arch->img);
  v->class_token = boolean(ma, "class_token", arch->class_token);
  v->rope_grid_offset = static_cast<float>(num(ma, "rope_grid_offset", arch->grid_offset));
  v->ref_feat_shape = first_of(ma.find("ref_feat_shape"), arch->ref_feat);
  v->pre_norm = boolean(ma, "use_pre_transformer_norm", true);
  const Json* post = ma.find("use_post_transformer_norm");
  v->post_norm = post && post->is_bool() ? post->boolean() : false;
  const Json* iv = ma.find("init_values");
  v->layer_scale = iv && iv->is_number();
  if (v->heads <= 0 || v->width % v->heads != 0)
    bad(source, "vision embed_dim " + std::to_string(v->width) + " is not divisible by num_heads");
  v->head_dim = v->width / v->heads;
  if (v->patch_size <= 0 || v->image_size % v->patch_size != 0)
    bad(source, "vision img_size must be a multiple of patch_size");
}

}  // namespace

int ModelConfig::tokens_per_tile() const {
  if (!vision.present) return 0;
  int g = vision.grid() / (projector_pooling_ratio > 0 ? projector_pooling_ratio : 1);
  return g * g;
}

ModelConfig parse_model_config(const std::string& json_text, const std::string& source) {
  Json root = Json::parse(json_text, source);
  if (!root.is_object()) bad(source, "expected a JSON object");
  ModelConfig c;
  std::string model_type = str(root, "model_type", "");
  if (model_type != "perception_lm")
    throw Error(ErrorCode::kUnsupportedModel,
                source + ": model_type \"" + model_type +
                    "\" is not supported; expected a PerceptionLM checkpoint (model_type \"perception_lm\")");
  const Json* tc = root.find("text_config");
  if (!tc || !tc->is_object()) bad(source, "missing \"text_config\"");
  TextConfig& t = c.text;
  std::string tsrc = source + " text_config";
  t.hidden_size = required_int(*tc, "hidden_size", tsrc);
  t.intermediate_size = required_int(*tc, "intermediate_size", tsrc);
  t.num_layers = required_int(*tc, "num_hidden_layers", tsrc);
  t.num_heads = required_int(*tc, "num_attention_heads", tsrc);
  t.num_kv_heads = integer(*tc, "num_key_value_heads", t.num_heads);
  t.vocab_size = required_int(*tc, "vocab_size", tsrc);
  if (t.num_heads <= 0 || t.num_kv_heads <= 0 || t.num_heads % t.num_kv_heads != 0)
    bad(tsrc, "num_attention_heads must be a positive multiple of num_key_value_heads");
  t.head_dim = integer(*tc, "head_dim", t.hidden_size / t.num_heads);
  t.rms_norm_eps = static_cast<float>(num(*tc, "rms_norm_eps", 1e-6));
  t.max_position_embeddings = integer(*tc, "max_position_embeddings", 2048);
  t.hidden_act = str(*tc, "hidden_act", "silu");
  t.attention_bias = boolean(*tc, "attention_bias", false);
  t.mlp_bias = boolean(*tc, "mlp_bias", false);
  if (t.hidden_act != "silu")
    throw Error(ErrorCode::kUnsupportedModel, tsrc + ": hidden_act \"" + t.hidden_act + "\" is not supported (silu)");
  if (t.attention_bias || t.mlp_bias)
    throw Error(ErrorCode::kUnsupportedModel, tsrc + ": attention or MLP biases are not supported (Llama 3 has none)");
  // 4.x: text_config.rope_theta + rope_scaling; 5.x: text_config.rope_parameters (with rope_theta inside).
  t.rope.theta = num(*tc, "rope_theta", 10000.0);
  if (const Json* rp = tc->find("rope_parameters")) read_rope(rp, &t.rope, tsrc + ".rope_parameters");
  if (const Json* rs = tc->find("rope_scaling")) read_rope(rs, &t.rope, tsrc + ".rope_scaling");
  // Tying: the top-level flag (5.x) wins over text_config's (4.x); transformers' default is tied.
  bool tie = boolean(*tc, "tie_word_embeddings", true);
  t.tie_word_embeddings = boolean(root, "tie_word_embeddings", tie);

  c.dtype = str(root, "dtype", str(root, "torch_dtype", str(*tc, "torch_dtype", str(*tc, "dtype", ""))));
  c.projector_pooling_ratio = integer(root, "projector_pooling_ratio", 1);
  c.vision_use_cls_token = boolean(root, "vision_use_cls_token", true);
  c.image_token_id = integer(root, "image_token_id", 128002);
  c.video_token_id = integer(root, "video_token_id", 128003);
  if (const Json* vc = root.find("vision_config"); vc && vc->is_object()) {
    read_vision(*vc, &c.vision, source + " vision_config");
    if (c.vision_use_cls_token != c.vision.class_token)
      throw Error(ErrorCode::kUnsupportedModel,
                  source + ": vision_use_cls_token disagrees with the vision tower's class token");
    int g = c.vision.grid();
    if (c.projector_pooling_ratio < 1 || g % c.projector_pooling_ratio != 0)
      bad(source, "projector_pooling_ratio must divide the patch grid (" + std::to_string(g) + ")");
  }
  return c;
}

GenerationConfig parse_generation_config(const std::string& json_text, const std::string& source) {
  Json root = Json::parse(json_text, source);
  GenerationConfig g;
  g.bos_token_id = integer(root, "bos_token_id", -1);
  if (const Json* e = root.find("eos_token_id")) {
    if (e->is_number()) g.eos_token_ids.push_back(static_cast<int>(e->number()));
    if (e->is_array())
      for (const Json& x : e->array())
        if (x.is_number()) g.eos_token_ids.push_back(static_cast<int>(x.number()));
  }
  g.do_sample = boolean(root, "do_sample", false);
  g.temperature = static_cast<float>(num(root, "temperature", 1.0));
  g.top_p = static_cast<float>(num(root, "top_p", 1.0));
  g.top_k = integer(root, "top_k", 0);
  g.max_new_tokens = integer(root, "max_new_tokens", 0);
  return g;
}

}  // namespace plm
