// N-API glue for image and video-frame preprocessing. Inputs are copied into C++-owned buffers on
// the JS thread (the JS Uint8Array may be mutated or collected while the worker runs); results are
// copied into JS-owned ArrayBuffers (no external buffers: Electron forbids them).
#include "image_processor_binding.h"

#include "async_job.h"

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/thread_pool.h"
#include "model/image_processor.h"

namespace {

using plm_napi::coded_error;

// One process-wide pool for preprocessing, created on first use.
plm::ThreadPool* preprocess_pool() {
  static plm::ThreadPool pool(0);
  return &pool;
}

// Reads args[i] as an integer in [lo, hi]; throws a JS TypeError with code ERR_INVALID_ARGUMENT.
int int_arg(const Napi::CallbackInfo& info, size_t i, const char* name, int64_t lo, int64_t hi) {
  Napi::Env env = info.Env();
  if (info.Length() <= i || !info[i].IsNumber()) {
    throw coded_error(env, plm::error_code_name(plm::ErrorCode::kInvalidArgument),
                     std::string(name) + " must be a number");
  }
  double v = info[i].As<Napi::Number>().DoubleValue();
  if (!(v >= static_cast<double>(lo) && v <= static_cast<double>(hi)) || v != static_cast<double>(static_cast<int64_t>(v))) {
    throw coded_error(env, plm::error_code_name(plm::ErrorCode::kInvalidArgument),
                     std::string(name) + " must be an integer in " + std::to_string(lo) + ".." + std::to_string(hi) +
                         ", got " + info[i].ToString().Utf8Value());
  }
  return static_cast<int>(v);
}

// Copies args[i] (Uint8Array / Buffer) into a vector, checking its byte length.
std::vector<uint8_t> bytes_arg(const Napi::CallbackInfo& info, size_t i, size_t expected) {
  Napi::Env env = info.Env();
  if (info.Length() <= i || !info[i].IsTypedArray() ||
      info[i].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
    throw coded_error(env, plm::error_code_name(plm::ErrorCode::kInvalidArgument), "rgb must be a Uint8Array");
  }
  auto arr = info[i].As<Napi::Uint8Array>();
  if (arr.ByteLength() != expected) {
    throw coded_error(env, plm::error_code_name(plm::ErrorCode::kInvalidArgument),
                     "rgb has " + std::to_string(arr.ByteLength()) + " bytes, expected " + std::to_string(expected) +
                         " (width * height * 3" + std::string(" per frame)"));
  }
  std::vector<uint8_t> out(expected);
  if (expected) std::memcpy(out.data(), arr.Data(), expected);
  return out;
}

using PreprocessWorker = plm_napi::JobWorker;

class ImageWorker : public PreprocessWorker {
 public:
  ImageWorker(Napi::Env env, std::vector<uint8_t> rgb, int w, int h, int tile, int max_tiles)
      : PreprocessWorker(env), rgb_(std::move(rgb)), w_(w), h_(h), tile_(tile), max_tiles_(max_tiles) {}

 protected:
  void Work() override {
    result_ = plm::preprocess_image(rgb_.data(), w_, h_, tile_, max_tiles_, preprocess_pool());
    rgb_.clear();
    rgb_.shrink_to_fit();
  }
  Napi::Value Result(Napi::Env env) override {
    Napi::Object obj = Napi::Object::New(env);
    obj.Set("pixelValues", plm_napi::float_array(env, result_.pixel_values.data(), result_.pixel_values.size()));
    obj.Set("numTiles", Napi::Number::New(env, result_.num_tiles));
    Napi::Array grid = Napi::Array::New(env, 2);
    grid.Set(uint32_t{0}, Napi::Number::New(env, result_.grid.n_w));
    grid.Set(uint32_t{1}, Napi::Number::New(env, result_.grid.n_h));
    obj.Set("grid", grid);
    return obj;
  }

 private:
  std::vector<uint8_t> rgb_;
  int w_, h_, tile_, max_tiles_;
  plm::ProcessedImage result_;
};

class FramesWorker : public PreprocessWorker {
 public:
  FramesWorker(Napi::Env env, std::vector<uint8_t> rgb, int w, int h, int frames, int tile)
      : PreprocessWorker(env), rgb_(std::move(rgb)), w_(w), h_(h), frames_(frames), tile_(tile) {}

 protected:
  void Work() override {
    const size_t frame_bytes = static_cast<size_t>(w_) * h_ * 3;
    const size_t frame_floats = 3 * static_cast<size_t>(tile_) * tile_;
    out_.resize(frame_floats * frames_);  // [F, 3, S, S]
    for (int f = 0; f < frames_; ++f) {
      plm::preprocess_frame_into(rgb_.data() + f * frame_bytes, w_, h_, tile_, out_.data() + f * frame_floats,
                                 preprocess_pool());
    }
  }
  Napi::Value Result(Napi::Env env) override {
    Napi::Object obj = Napi::Object::New(env);
    obj.Set("pixelValues", plm_napi::float_array(env, out_.data(), out_.size()));
    obj.Set("numFrames", Napi::Number::New(env, frames_));
    return obj;
  }

 private:
  std::vector<uint8_t> rgb_;
  int w_, h_, frames_, tile_;
  std::vector<float> out_;
};

// Size checks that need no pixels, done before copying the buffer so that a huge width*height
// is rejected without allocating.
void validate_dims_js(Napi::Env env, int w, int h) {
  try {
    plm::validate_image_size(w, h);
  } catch (const plm::Error& e) {
    throw coded_error(env, plm::error_code_name(e.code()), e.what());
  }
}

Napi::Value PreprocessImage(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int w = int_arg(info, 1, "width", 0, plm::kMaxImageSide + 1);
  const int h = int_arg(info, 2, "height", 0, plm::kMaxImageSide + 1);
  const int tile = int_arg(info, 3, "tileSize", 1, 4096);
  const int max_tiles = int_arg(info, 4, "maxNumTiles", 1, 1024);
  validate_dims_js(env, w, h);
  auto rgb = bytes_arg(info, 0, static_cast<size_t>(w) * h * 3);
  auto* worker = new ImageWorker(env, std::move(rgb), w, h, tile, max_tiles);
  Napi::Promise p = worker->Promise();
  worker->Queue();
  return p;
}

Napi::Value PreprocessFrames(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int w = int_arg(info, 1, "width", 0, plm::kMaxImageSide + 1);
  const int h = int_arg(info, 2, "height", 0, plm::kMaxImageSide + 1);
  const int frames = int_arg(info, 3, "numFrames", 1, 100000);
  const int tile = int_arg(info, 4, "tileSize", 1, 4096);
  validate_dims_js(env, w, h);
  auto rgb = bytes_arg(info, 0, static_cast<size_t>(w) * h * 3 * frames);
  auto* worker = new FramesWorker(env, std::move(rgb), w, h, frames, tile);
  Napi::Promise p = worker->Promise();
  worker->Queue();
  return p;
}

// selectTileGrid(width, height, tileSize, maxNumTiles) -> [nW, nH] (synchronous, cheap).
Napi::Value SelectTileGrid(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const int w = int_arg(info, 0, "width", 1, 1 << 30);
  const int h = int_arg(info, 1, "height", 1, 1 << 30);
  const int tile = int_arg(info, 2, "tileSize", 1, 4096);
  const int max_tiles = int_arg(info, 3, "maxNumTiles", 1, 1024);
  plm::TileGrid g = plm::select_tile_grid(w, h, tile, max_tiles);
  Napi::Array out = Napi::Array::New(env, 2);
  out.Set(uint32_t{0}, Napi::Number::New(env, g.n_w));
  out.Set(uint32_t{1}, Napi::Number::New(env, g.n_h));
  return out;
}

// Runs `start` and returns its promise; argument errors thrown synchronously become a rejected
// promise so that callers only ever see async failures.
template <typename Fn>
Napi::Value as_promise(Napi::Env env, Fn start) {
  try {
    return start();
  } catch (const Napi::Error& e) {
    auto d = Napi::Promise::Deferred::New(env);
    d.Reject(e.Value());
    return d.Promise();
  }
}

}  // namespace

void RegisterImageProcessor(Napi::Env env, Napi::Object exports) {
  exports.Set("preprocessImage",
              Napi::Function::New(
                  env, [](const Napi::CallbackInfo& info) { return as_promise(info.Env(), [&] { return PreprocessImage(info); }); },
                  "preprocessImage"));
  exports.Set("selectTileGrid", Napi::Function::New(env, SelectTileGrid, "selectTileGrid"));
  exports.Set("preprocessFrames",
              Napi::Function::New(
                  env, [](const Napi::CallbackInfo& info) { return as_promise(info.Env(), [&] { return PreprocessFrames(info); }); },
                  "preprocessFrames"));
}
