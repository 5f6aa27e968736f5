// Benchmark through plm::Engine on any backend (cpu or cuda):
//   plm_bench --model DIR --backend cuda|cpu --json OUT.json [--decode-tokens 128] [--prefill 512,4096]
//             [--tiles 1,37] [--ttft-tiles 37] [--describe-tokens 64] [--runs 3] [--max-context N]
// decode ms/token (median over runs, after a warm-up), prefill tokens/s, vision tiles/s (encode_images on
// random pixels), and time to first token for an image prompt of ttft-tiles tiles (vision + prefill of
// tiles*256 placeholders + a few text tokens + the first sample), and "describe": the same image prompt
// generating describe-tokens tokens (no early stop), the whole request. Every number is a median of --runs.
#include <cstdint>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "model/engine.h"

using namespace plm;

namespace {

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}
std::vector<int> parse_list(const std::string& s) {
  std::vector<int> r;
  std::stringstream ss(s);
  std::string t;
  while (std::getline(ss, t, ','))
    if (!t.empty()) r.push_back(std::stoi(t));
  return r;
}
std::string list_json(const std::vector<double>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}
std::string esc(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    o += c;
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model, backend = "cuda", json;
  int decode_tokens = 128, runs = 3, max_context = 0, ttft_tiles = 37, describe_tokens = 0;
  std::vector<int> prefill = {512, 4096}, tiles = {1, 37};
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--model") model = next();
    else if (a == "--backend") backend = next();
    else if (a == "--json") json = next();
    else if (a == "--decode-tokens") decode_tokens = std::stoi(next());
    else if (a == "--prefill") prefill = parse_list(next());
    else if (a == "--tiles") tiles = parse_list(next());
    else if (a == "--ttft-tiles") ttft_tiles = std::stoi(next());
    else if (a == "--describe-tokens") describe_tokens = std::stoi(next());
    else if (a == "--runs") runs = std::max(1, std::stoi(next()));
    else if (a == "--max-context") max_context = std::stoi(next());
    else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  if (model.empty()) {
    std::fprintf(stderr, "usage: plm_bench --model DIR --backend cuda|cpu --json OUT.json [...]\n");
    return 2;
  }
  std::string out = "{\n";
  auto add = [&](const std::string& k, const std::string& v) { out += "  \"" + k + "\": " + v + ",\n"; };
  try {
    EngineOptions opt;
    opt.backend = backend;
    opt.max_context = max_context;
    double t0 = now_ms();
    auto eng = Engine::load(model, opt, nullptr);
    const double load_ms = now_ms() - t0;
    const ModelConfig& c = eng->model().config;
    std::printf("backend: %s (load %.0f ms)\n", eng->backend_name().c_str(), load_ms);
    add("model", "\"" + esc(model) + "\"");
    add("backend", "\"" + esc(backend) + "\"");
    add("device", "\"" + esc(eng->backend_name()) + "\"");
    add("load_ms", std::to_string(load_ms));
    std::mt19937 rng(1234);
    auto rand_ids = [&](int n) {
      std::uniform_int_distribution<int> d(c.text.vocab_size > 2000 ? 1000 : 0, std::min(100000, c.text.vocab_size - 1));
      std::vector<int32_t> v(static_cast<size_t>(n));
      for (auto& x : v) {
        do x = d(rng);
        while (x == c.image_token_id || x == c.video_token_id);
      }
      return v;
    };
    // decode
    if (decode_tokens > 1) {
      std::vector<int32_t> prompt = rand_ids(16);
      GenerateOptions go;
      go.max_tokens = decode_tokens;
      go.stop_ids = {-1};
      std::vector<double> per_tok;
      for (int r = 0; r <= runs; ++r) {
        GenerateResult res = eng->generate(prompt.data(), int64_t(prompt.size()), nullptr, go, nullptr);
        const double steps = double(std::max<size_t>(1, res.tokens.size() - 1));
        if (r > 0) per_tok.push_back(res.decode_ms / steps);  // run 0 warms up (graph capture)
      }
      std::printf("decode: %.4f ms/token (median of %d, %d tokens)\n", median(per_tok), runs, decode_tokens);
      add("decode_tokens", std::to_string(decode_tokens));
      add("decode_ms_per_token", std::to_string(median(per_tok)));
      add("decode_ms_per_token_runs", list_json(per_tok));
    }
    // prefill
    {
      std::string pj = "{";
      const int64_t V = c.text.vocab_size;
      std::vector<float> logits(static_cast<size_t>(V));
      for (size_t k = 0; k < prefill.size(); ++k) {
        const int n = prefill[k];
        if (n > c.text.max_position_embeddings || (max_context > 0 && n > max_context)) continue;
        std::vector<int32_t> ids = rand_ids(n);
        std::vector<double> ms;
        for (int r = 0; r <= runs; ++r) {
          const double a = now_ms();
          eng->forward(ids.data(), n, nullptr, 1, logits.data(), nullptr);
          if (r > 0) ms.push_back(now_ms() - a);
        }
        const double tps = n / (median(ms) / 1000.0);
        std::printf("prefill %d: %.1f ms, %.0f tokens/s\n", n, median(ms), tps);
        pj += std::string(pj.size() > 1 ? ", " : "") + "\"" + std::to_string(n) + "\": {\"ms\": " +
              std::to_string(median(ms)) + ", \"tokens_per_s\": " + std::to_string(tps) + "}";
      }
      add("prefill", pj + "}");
    }
    // vision
    if (c.vision.present) {
      const int S = c.vision.image_size;
      std::string vj = "{";
      std::uniform_real_distribution<float> u(-1.f, 1.f);
      int maxt = ttft_tiles;
      for (int t : tiles) maxt = std::max(maxt, t);
      std::vector<float> px(static_cast<size_t>(maxt) * 3 * S * S);
      for (auto& x : px) x = u(rng);
      for (int t : tiles) {
        std::vector<double> ms;
        for (int r = 0; r <= runs; ++r) {
          const double a = now_ms();
          eng->encode_images_in_backend(px.data(), t, nullptr);  // features stay on the device, as in generate()
          if (r > 0) ms.push_back(now_ms() - a);
        }
        const double tps = t / (median(ms) / 1000.0);
        std::printf("vision %d tiles: %.2f ms, %.1f tiles/s\n", t, median(ms), tps);
        vj += std::string(vj.size() > 1 ? ", " : "") + "\"" + std::to_string(t) + "\": {\"ms\": " +
              std::to_string(median(ms)) + ", \"tiles_per_s\": " + std::to_string(tps) + "}";
      }
      add("vision", vj + "}");
      // TTFT: image prompt
      if (ttft_tiles > 0) {
        const int tpt = c.tokens_per_tile();
        std::vector<int32_t> ids = rand_ids(5);
        ids.insert(ids.begin() + 3, size_t(ttft_tiles) * tpt, c.image_token_id);
        if (int64_t(ids.size()) + 1 <= c.text.max_position_embeddings && (max_context <= 0 || int(ids.size()) + 1 <= max_context)) {
          MediaInput media;
          media.pixels = px.data();
          media.tiles = ttft_tiles;
          GenerateOptions go;
          go.max_tokens = 1;
          go.stop_ids = {-1};
          std::vector<double> ms, vis, pre;
          for (int r = 0; r <= runs; ++r) {
            const double a = now_ms();
            GenerateResult res = eng->generate(ids.data(), int64_t(ids.size()), &media, go, nullptr);
            if (r > 0) {
              ms.push_back(now_ms() - a);
              vis.push_back(res.vision_ms);
              pre.push_back(res.prefill_ms);
            }
          }
          std::printf("ttft %d tiles (%zu tokens): %.1f ms (vision %.1f, prefill %.1f)\n", ttft_tiles, ids.size(),
                      median(ms), median(vis), median(pre));
          add("ttft_tiles", std::to_string(ttft_tiles));
          add("ttft_prompt_tokens", std::to_string(ids.size()));
          add("ttft_ms", std::to_string(median(ms)));
          add("ttft_vision_ms", std::to_string(median(vis)));
          add("ttft_prefill_ms", std::to_string(median(pre)));
          if (describe_tokens > 0) {  // one whole "describe this image" request: vision, prefill, N tokens
            go.max_tokens = describe_tokens;
            std::vector<double> dm;
            size_t got = 0;
            for (int r = 0; r <= runs; ++r) {
              const double a = now_ms();
              GenerateResult res = eng->generate(ids.data(), int64_t(ids.size()), &media, go, nullptr);
              if (r > 0) dm.push_back(now_ms() - a);
              got = res.tokens.size();
            }
            std::printf("describe %d tiles + %zu tokens: %.1f ms\n", ttft_tiles, got, median(dm));
            add("describe_tokens", std::to_string(got));
            add("describe_ms", std::to_string(median(dm)));
          }
        }
      }
    }
    out += "  \"ok\": true\n}\n";
  } catch (const std::exception& e) {
    std::fprintf(stderr, "plm_bench: %s\n", e.what());
    out += "  \"ok\": false,\n  \"error\": \"" + esc(e.what()) + "\"\n}\n";
    if (!json.empty())
      if (FILE* f = std::fopen(json.c_str(), "w")) {
        std::fputs(out.c_str(), f);
        std::fclose(f);
      }
    return 1;
  }
  if (!json.empty())
    if (FILE* f = std::fopen(json.c_str(), "w")) {
      std::fputs(out.c_str(), f);
      std::fclose(f);
    }
  std::fputs(out.c_str(), stdout);
  return 0;
}
