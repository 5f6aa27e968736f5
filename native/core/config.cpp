#include "core/config.h"

#include <cmath>
#include <cstdio>

#include "core/error.h"
#include "core/json.h"

namespace plm {
namespace {

[[noreturn]] void bad(const std::string& source, const std::string& what) {
  throw Error(ErrorCode::kCorruptFile, source + ": " + what);
}

std::string show(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

// Every numeric field goes through one of these: a present value (not JSON null) must be a finite number in
// range, and an integer field an integral one, so no cast below is ever undefined (NaN, 2^31, -1 ...).
const Json* present(const Json& obj, const char* key) {
  const Json* v = obj.find(key);
  return v && !v->is_null() ? v : nullptr;
}

int checked_int(const Json& v, const char* key, long long lo, long long hi, const std::string& source) {
  const double x = v.is_number() ? v.number() : std::nan("");
  if (!v.is_number() || !std::isfinite(x) || x != std::floor(x) || x < static_cast<double>(lo) || x > static_cast<double>(hi))
    bad(source, std::string("\"") + key + "\" = " + (v.is_number() ? show(x) : "a non-number") +
                    " is invalid: it must be an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return static_cast<int>(x);
}

int int_field(const Json& obj, const char* key, int fallback, long long lo, long long hi, const std::string& source) {
  const Json* v = present(obj, key);
  return v ? checked_int(*v, key, lo, hi, source) : fallback;
}

int required_int(const Json& obj, const char* key, long long lo, long long hi, const std::string& source) {
  const Json* v = present(obj, key);
  if (!v) bad(source, std::string("missing \"") + key + "\"");
  return checked_int(*v, key, lo, hi, source);
}

// A finite real in (lo, hi] when lo_open, else [lo, hi].
double real_field(const Json& obj, const char* key, double fallback, double lo, double hi, bool lo_open,
                  const std::string& source) {
  const Json* v = present(obj, key);
  if (!v) return fallback;
  const double x = v->is_number() ? v->number() : std::nan("");
  if (!v->is_number() || !std::isfinite(x) || (lo_open ? x <= lo : x < lo) || x > hi)
    bad(source, std::string("\"") + key + "\" = " + (v->is_number() ? show(x) : "a non-number") +
                    " is invalid: it must be a finite number in " + (lo_open ? "(" : "[") + show(lo) + ", " + show(hi) + "]");
  return x;
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
  rope->theta = real_field(*params, "rope_theta", rope->theta, 0.0, 1e12, true, source);
  if (type == "default") {
    rope->type = RopeConfig::Type::kDefault;
  } else if (type == "llama3") {
    rope->type = RopeConfig::Type::kLlama3;
    rope->factor = real_field(*params, "factor", 8.0, 0.0, 1e6, true, source);
    rope->low_freq_factor = real_field(*params, "low_freq_factor", 1.0, 0.0, 1e6, true, source);
    rope->high_freq_factor = real_field(*params, "high_freq_factor", 4.0, 0.0, 1e6, true, source);
    rope->original_max_position_embeddings =
        real_field(*params, "original_max_position_embeddings", 8192.0, 0.0, 1e9, true, source);
    // The llama3 scaling divides by (high - low).
    if (!(rope->high_freq_factor > rope->low_freq_factor))
      bad(source, "\"high_freq_factor\" must be larger than \"low_freq_factor\"");
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

// A number, or the first of an array of numbers ([h, w] sizes), checked like int_field.
int first_of(const Json& obj, const char* key, int fallback, long long lo, long long hi, const std::string& source) {
  const Json* v = present(obj, key);
  if (!v) return fallback;
  if (v->is_array()) {
    if (v->array().empty()) bad(source, std::string("\"") + key + "\" is an empty array");
    for (const Json& x : v->array()) checked_int(x, key, lo, hi, source);
    if (v->array().size() > 1 && v->array()[0].number() != v->array()[1].number())
      throw Error(ErrorCode::kUnsupportedModel, source + ": \"" + key + "\" must be square");
    return checked_int(v->array()[0], key, lo, hi, source);
  }
  return checked_int(*v, key, lo, hi, source);
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
  v->patch_size = first_of(ma, "patch_size", arch->patch, 1, 1024, source);
  v->width = int_field(ma, "embed_dim", arch->width, 1, 16384, source);
  v->depth = int_field(ma, "depth", arch->depth, 1, 1024, source);
  v->heads = int_field(ma, "num_heads", arch->heads, 1, 1024, source);
  double mlp_ratio = real_field(ma, "mlp_ratio", arch->mlp_ratio, 0.0, 64.0, true, source);
  v->mlp_hidden = static_cast<int>(v->width * mlp_ratio);  // timm: int(dim * mlp_ratio); weights decide when in doubt
  if (v->mlp_hidden < 1) bad(source, "embed_dim x mlp_ratio must be at least 1");
  v->image_size = first_of(ma, "img_size", arch->img, 1, 8192, source);
  v->class_token = boolean(ma, "class_token", arch->class_token);
  v->rope_grid_offset = static_cast<float>(real_field(ma, "rope_grid_offset", arch->grid_offset, -1e6, 1e6, false, source));
  v->ref_feat_shape = first_of(ma, "ref_feat_shape", arch->ref_feat, 0, 8192, source);
  v->pre_norm = boolean(ma, "use_pre_transformer_norm", true);
  const Json* post = ma.find("use_post_transformer_norm");
  v->post_norm = post && post->is_bool() ? post->boolean() : false;
  const Json* iv = ma.find("init_values");
  v->layer_scale = iv && iv->is_number();
  if (v->layer_scale && !std::isfinite(iv->number())) bad(source, "\"init_values\" must be finite");
  if (v->width % v->heads != 0)
    bad(source, "vision embed_dim " + std::to_string(v->width) + " is not divisible by num_heads");
  v->head_dim = v->width / v->heads;
  if (v->image_size % v->patch_size != 0 || v->image_size < v->patch_size)
    bad(source, "vision img_size must be a positive multiple of patch_size");
  if (v->grid() > 1024) bad(source, "vision img_size / patch_size must be at most 1024");
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
  t.hidden_size = required_int(*tc, "hidden_size", 1, 65536, tsrc);
  t.intermediate_size = required_int(*tc, "intermediate_size", 1, 1 << 20, tsrc);
  t.num_layers = required_int(*tc, "num_hidden_layers", 1, 1024, tsrc);
  t.num_heads = required_int(*tc, "num_attention_heads", 1, 1024, tsrc);
  t.num_kv_heads = int_field(*tc, "num_key_value_heads", t.num_heads, 1, 1024, tsrc);
  t.vocab_size = required_int(*tc, "vocab_size", 1, 1 << 22, tsrc);
  if (t.num_heads % t.num_kv_heads != 0)
    bad(tsrc, "num_attention_heads (" + std::to_string(t.num_heads) + ") must be a multiple of num_key_value_heads (" +
                  std::to_string(t.num_kv_heads) + ")");
  if (!present(*tc, "head_dim") && t.hidden_size % t.num_heads != 0)
    bad(tsrc, "hidden_size must be a multiple of num_attention_heads when head_dim is not given");
  t.head_dim = int_field(*tc, "head_dim", t.hidden_size / t.num_heads, 2, 4096, tsrc);
  if (t.head_dim % 2 != 0) bad(tsrc, "\"head_dim\" must be even (rotary embeddings rotate pairs)");
  t.rms_norm_eps = static_cast<float>(real_field(*tc, "rms_norm_eps", 1e-6, 1e-30, 1.0, false, tsrc));
  t.max_position_embeddings = int_field(*tc, "max_position_embeddings", 2048, 1, 1 << 21, tsrc);
  t.hidden_act = str(*tc, "hidden_act", "silu");
  t.attention_bias = boolean(*tc, "attention_bias", false);
  t.mlp_bias = boolean(*tc, "mlp_bias", false);
  if (t.hidden_act != "silu")
    throw Error(ErrorCode::kUnsupportedModel, tsrc + ": hidden_act \"" + t.hidden_act + "\" is not supported (silu)");
  if (t.attention_bias || t.mlp_bias)
    throw Error(ErrorCode::kUnsupportedModel, tsrc + ": attention or MLP biases are not supported (Llama 3 has none)");
  // 4.x: text_config.rope_theta + rope_scaling; 5.x: text_config.rope_parameters (with rope_theta inside).
  t.rope.theta = real_field(*tc, "rope_theta", 10000.0, 0.0, 1e12, true, tsrc);
  if (const Json* rp = tc->find("rope_parameters")) read_rope(rp, &t.rope, tsrc + ".rope_parameters");
  if (const Json* rs = tc->find("rope_scaling")) read_rope(rs, &t.rope, tsrc + ".rope_scaling");
  // Tying: the top-level flag (5.x) wins over text_config's (4.x); transformers' default is tied.
  bool tie = boolean(*tc, "tie_word_embeddings", true);
  t.tie_word_embeddings = boolean(root, "tie_word_embeddings", tie);

  c.dtype = str(root, "dtype", str(root, "torch_dtype", str(*tc, "torch_dtype", str(*tc, "dtype", ""))));
  c.projector_pooling_ratio = int_field(root, "projector_pooling_ratio", 1, 1, 64, source);
  c.vision_use_cls_token = boolean(root, "vision_use_cls_token", true);
  c.image_token_id = int_field(root, "image_token_id", 128002, 0, t.vocab_size - 1, source);
  c.video_token_id = int_field(root, "video_token_id", 128003, 0, t.vocab_size - 1, source);
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
  const long long kMaxId = 0x7fffffff;
  if (!root.is_object()) bad(source, "expected a JSON object");
  g.bos_token_id = int_field(root, "bos_token_id", -1, -1, kMaxId, source);
  if (const Json* e = present(root, "eos_token_id")) {
    if (e->is_array()) {
      for (const Json& x : e->array()) g.eos_token_ids.push_back(checked_int(x, "eos_token_id", 0, kMaxId, source));
    } else {
      g.eos_token_ids.push_back(checked_int(*e, "eos_token_id", 0, kMaxId, source));
    }
  }
  g.do_sample = boolean(root, "do_sample", false);
  g.temperature = static_cast<float>(real_field(root, "temperature", 1.0, 0.0, 1e6, false, source));
  g.top_p = static_cast<float>(real_field(root, "top_p", 1.0, 0.0, 1.0, false, source));
  g.top_k = int_field(root, "top_k", 0, 0, kMaxId, source);
  g.max_new_tokens = int_field(root, "max_new_tokens", 0, 0, kMaxId, source);
  return g;
}

}  // namespace plm
