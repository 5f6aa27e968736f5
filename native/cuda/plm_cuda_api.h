/* The C ABI of libplm_cuda, the separately built CUDA backend. The CPU addon dlopen()s the library
 * only when a driver and GPU are present, checks plm_cuda_abi_version() == PLM_CUDA_ABI_VERSION, and
 * calls nothing else before that. Plain C so that any compiler on either side agrees on the layout.
 * Every call that can fail returns 0 on success and a plm_cuda_status otherwise, with a message in err. */
#ifndef PLM_CUDA_API_H_
#define PLM_CUDA_API_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PLM_CUDA_ABI_VERSION 1

#if defined(_WIN32)
#define PLM_CUDA_EXPORT __declspec(dllexport)
#else
#define PLM_CUDA_EXPORT __attribute__((visibility("default")))
#endif

enum plm_cuda_status {
  PLM_CUDA_OK = 0,
  PLM_CUDA_ERR_NO_DEVICE = 1,
  PLM_CUDA_ERR_OUT_OF_MEMORY = 2,
  PLM_CUDA_ERR_INVALID = 3,
  PLM_CUDA_ERR_CUDA = 4,
  PLM_CUDA_ERR_CANCELLED = 5,
};

enum plm_cuda_dtype { PLM_CUDA_F32 = 0, PLM_CUDA_F16 = 1, PLM_CUDA_BF16 = 2 };

/* One weight tensor as it lies in the (host, mmap'd) safetensors file, with its Hugging Face name,
 * e.g. "model.language_model.layers.0.self_attn.q_proj.weight". */
typedef struct plm_cuda_tensor {
  const char* name;
  int32_t dtype; /* plm_cuda_dtype */
  int32_t ndim;
  int64_t shape[4];
  const void* data;
} plm_cuda_tensor;

typedef struct plm_cuda_model_config {
  /* Llama decoder */
  int32_t hidden_size, intermediate_size, num_layers, num_heads, num_kv_heads, head_dim, vocab_size;
  float rms_norm_eps;
  int32_t tie_word_embeddings;
  const float* rope_inv_freq; /* [head_dim / 2], llama3 scaling already applied by the host */
  int32_t max_context;        /* KV cache capacity in tokens */
  int32_t image_token_id, video_token_id;
  /* Perception Encoder (has_vision == 0: text only) */
  int32_t has_vision;
  int32_t vision_width, vision_depth, vision_heads, vision_head_dim, vision_mlp_hidden;
  int32_t image_size, patch_size;
  int32_t vision_class_token;   /* 1: CLS token (PE-L), stripped before the projector */
  int32_t vision_post_norm;     /* 1: a final LayerNorm "norm" exists */
  float vision_ln_eps;
  const float* vision_rope_cos; /* [patches, vision_head_dim / 2], grid offset applied; CLS excluded */
  const float* vision_rope_sin; /* same */
  int32_t pooling_ratio;        /* projector average pooling (2 for PLM) */
} plm_cuda_model_config;

typedef struct plm_cuda_sampling {
  float temperature; /* <= 0: greedy (argmax, first maximal index) */
  int32_t top_k;     /* <= 0: off */
  float top_p;       /* >= 1: off */
  float min_p;       /* <= 0: off */
  uint64_t seed;
  uint64_t step;     /* mixed into the seed so each step draws a fresh number */
} plm_cuda_sampling;

typedef void (*plm_cuda_progress_fn)(void* user, double fraction);
/* Called with each named intermediate (f32 on the host) when dumping is on; shape has ndim entries. */
typedef void (*plm_cuda_dump_fn)(void* user, const char* name, const float* data, const int64_t* shape, int32_t ndim);

PLM_CUDA_EXPORT int32_t plm_cuda_abi_version(void);

/* Number of usable devices (0 if none), with a one-line description or the reason none is usable in `info`. */
PLM_CUDA_EXPORT int32_t plm_cuda_device_info(char* info, size_t info_len);

typedef struct plm_cuda_model plm_cuda_model;

/* Uploads the weights (chunked, reporting progress) and allocates the KV cache on device `device`. */
PLM_CUDA_EXPORT int32_t plm_cuda_model_create(const plm_cuda_model_config* config, const plm_cuda_tensor* tensors,
                                              int32_t num_tensors, int32_t device, plm_cuda_progress_fn progress,
                                              void* progress_user, plm_cuda_model** out, char* err, size_t err_len);
PLM_CUDA_EXPORT void plm_cuda_model_destroy(plm_cuda_model* model);

/* Optional: named intermediates of the next calls are passed to fn (null turns dumping off). */
PLM_CUDA_EXPORT void plm_cuda_set_dump(plm_cuda_model* model, plm_cuda_dump_fn fn, void* user);

/* Vision tower + projector on pixels [tiles, 3, S, S] (f32, host). The features
 * [tiles * tokens_per_tile, hidden] stay on the device for the next plm_cuda_forward with use_features;
 * when features_out is not null they are also copied there as f32. */
PLM_CUDA_EXPORT int32_t plm_cuda_encode_images(plm_cuda_model* model, const float* pixels, int32_t tiles,
                                               float* features_out, char* err, size_t err_len);

/* Appends n tokens at the end of the KV cache and runs the decoder. With use_features, the rows whose id is
 * image_token_id or video_token_id take consecutive rows of the last encoded features, in order.
 * logits_rows: 0 = none, 1 = the last row only, n = every row; logits_out [logits_rows, vocab] f32 host. */
PLM_CUDA_EXPORT int32_t plm_cuda_forward(plm_cuda_model* model, const int32_t* ids, int32_t n, int32_t use_features,
                                         int32_t logits_rows, float* logits_out, char* err, size_t err_len);

/* One decode step for `token` (a CUDA graph after the first call) and sampling on the device.
 * logits_out may be null; otherwise it receives [vocab] f32 logits. */
PLM_CUDA_EXPORT int32_t plm_cuda_decode_step(plm_cuda_model* model, int32_t token, const plm_cuda_sampling* sampling,
                                             int32_t* next_token, float* logits_out, char* err, size_t err_len);

/* Drops cache entries beyond n tokens (0 clears it). */
PLM_CUDA_EXPORT void plm_cuda_truncate(plm_cuda_model* model, int32_t n);
PLM_CUDA_EXPORT int32_t plm_cuda_cache_length(const plm_cuda_model* model);

#ifdef __cplusplus
}
#endif

#endif /* PLM_CUDA_API_H_ */
