// Checks the parsers of untrusted checkpoint files (core/json, core/safetensors, core/config) with fixed cases
// and a seeded mutation loop, for CI under AddressSanitizer + UndefinedBehaviorSanitizer (0 reports expected):
//   plm_parser_fuzz [--seconds 20] [--iterations N] [--seed 1] SEED...
// SEEDs are *.safetensors and *.json files (fixture checkpoints). Each iteration mutates one seed (bit flips,
// random bytes, interesting numbers and JSON tokens spliced in, chunks deleted or repeated, truncation, the
// 8-byte header length changed) and feeds it to Json::parse, parse_model_config / parse_generation_config or
// SafetensorsFile. A parser may accept or reject (plm::Error); anything else is a failure: another exception,
// a sanitizer report, or an accepted file that breaks an invariant the parser promises (tensors tile the data
// section and lie inside the mapping; config values in range). Same seed and iterations: same inputs.
// Built with clang's -fsanitize=fuzzer and -DPLM_LIBFUZZER, the same targets are libFuzzer entry points.
// Last line "N passed, M failed"; exit code 1 on any failure.
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "core/config.h"
#include "core/error.h"
#include "core/json.h"
#include "core/safetensors.h"

namespace {

int g_failures = 0;
int g_checks = 0;

void check(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok) {
    ++g_failures;
    std::printf("FAIL: %s\n", what.c_str());
  }
}

// An in-memory file with a path (memfd), so SafetensorsFile can open and mmap it as it does a real one.
class MemFile {
 public:
  MemFile() {
#if defined(__linux__)
    fd_ = ::memfd_create("plm-fuzz", 0);
#endif
    if (fd_ < 0) {
      char tmpl[] = "/tmp/plm-fuzz-XXXXXX";
      fd_ = ::mkstemp(tmpl);
      ::unlink(tmpl);
    }
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  ~MemFile() { ::close(fd_); }
  const std::string& write(const std::string& bytes) {
    if (::ftruncate(fd_, 0) != 0 || ::pwrite(fd_, bytes.data(), bytes.size(), 0) != static_cast<ssize_t>(bytes.size())) {
      std::perror("memfd write");
      std::exit(2);
    }
    return path_;
  }

 private:
  int fd_ = -1;
  std::string path_;
};

// --- targets -------------------------------------------------------------------------------------------------

// Returns true when accepted. Throws only on a failure (checked by the caller).
bool run_safetensors(MemFile& mf, const std::string& bytes) {
  const std::string& path = mf.write(bytes);
  try {
    plm::SafetensorsFile f(path);
    // Invariants of an accepted file.
    uint64_t total = 0;
    const uint8_t* lo = nullptr;
    for (const auto& kv : f.tensors()) {
      const plm::TensorView& t = kv.second;
      total += t.nbytes();
      if (t.nbytes() > 0) {
        check(t.data != nullptr, "accepted tensor without data: " + kv.first);
        if (!lo || static_cast<const uint8_t*>(t.data) < lo) lo = static_cast<const uint8_t*>(t.data);
      }
    }
    check(f.header_size() + total == f.file_size(),
          "accepted file whose tensors do not tile the data section (" + std::to_string(f.header_size()) + " + " +
              std::to_string(total) + " != " + std::to_string(f.file_size()) + ")");
    // Touch every byte of every tensor: reads outside the mapping would be an ASan report or a fault.
    unsigned sum = 0;
    for (const auto& kv : f.tensors()) {
      const uint8_t* p = static_cast<const uint8_t*>(kv.second.data);
      for (size_t i = 0; i < kv.second.nbytes(); i += 61) sum += p[i];
    }
    (void)sum;
    return true;
  } catch (const plm::Error&) {
    return false;
  }
}

bool run_json(const std::string& text) {
  try {
    plm::Json j = plm::Json::parse(text, "fuzz");
    uint64_t u;
    int64_t s;
    (void)j.as_uint64(&u);
    (void)j.as_int64(&s);
    return true;
  } catch (const plm::Error&) {
    return false;
  }
}

bool run_config(const std::string& text) {
  bool ok = false;
  try {
    plm::ModelConfig c = plm::parse_model_config(text, "fuzz config.json");
    const plm::TextConfig& t = c.text;
    check(t.hidden_size > 0 && t.num_layers > 0 && t.num_heads > 0 && t.num_kv_heads > 0 && t.head_dim > 0 &&
              t.vocab_size > 0 && t.max_position_embeddings > 0 && t.num_heads % t.num_kv_heads == 0,
          "accepted text config out of range");
    check(std::isfinite(t.rms_norm_eps) && t.rms_norm_eps > 0 && std::isfinite(t.rope.theta) && t.rope.theta > 0,
          "accepted non-finite or non-positive text config value");
    if (c.vision.present)
      check(c.vision.depth > 0 && c.vision.width > 0 && c.vision.heads > 0 && c.vision.width % c.vision.heads == 0 &&
                c.vision.patch_size > 0 && c.vision.image_size % c.vision.patch_size == 0 && c.vision.mlp_hidden > 0,
            "accepted vision config out of range");
    ok = true;
  } catch (const plm::Error&) {
  }
  try {
    plm::GenerationConfig g = plm::parse_generation_config(text, "fuzz generation_config.json");
    check(std::isfinite(g.temperature) && g.top_p >= 0 && g.top_p <= 1 && g.top_k >= 0, "accepted generation config out of range");
  } catch (const plm::Error&) {
  }
  return ok;
}

// --- mutations -----------------------------------------------------------------------------------------------

const char* const kTokens[] = {"NaN", "Infinity", "-Infinity", "-1", "0", "-0", "1.5", "1e308", "1e999", "2147483648",
                               "9007199254740993", "18446744073709551615", "18446744073709551616", "\"", "{", "}",
                               "[", "]", ",", ":", "null", "true", "\"x\"", "\\u0000", "\\ud800", "\\udc00",
                               "\xff", "\xc0\x80", "\xed\xa0\x80", "0x10", "+1", ".5", "1.", "01", "[1,2]", "\"F32\"",
                               "\"BF16\"", "\"data_offsets\"", "\"shape\"", "\"dtype\"", "\"__metadata__\"", " ", "\n"};

std::string mutate(const std::string& seed, bool is_safetensors, std::mt19937_64& rng) {
  std::string s = seed;
  auto pick = [&](size_t n) { return n == 0 ? size_t(0) : static_cast<size_t>(rng() % n); };
  // Most mutations land in the header, where the parser looks.
  size_t region = s.size();
  if (is_safetensors && s.size() >= 8) {
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(s[i]);
    if (n < s.size() && rng() % 10 < 8) region = static_cast<size_t>(8 + n);
  }
  const int count = 1 + static_cast<int>(rng() % 4);
  for (int m = 0; m < count && !s.empty(); ++m) {
    const size_t at = pick(std::min(region, s.size()));
    switch (rng() % 9) {
      case 0: s[at] = static_cast<char>(s[at] ^ (1 << (rng() % 8))); break;
      case 1: s[at] = static_cast<char>(rng()); break;
      case 2: {
        const char* t = kTokens[pick(sizeof kTokens / sizeof kTokens[0])];
        s.insert(at, t);
        break;
      }
      case 3: {
        const char* t = kTokens[pick(sizeof kTokens / sizeof kTokens[0])];
        s.replace(at, std::min<size_t>(s.size() - at, 1 + pick(8)), t);
        break;
      }
      case 4: s.erase(at, std::min<size_t>(s.size() - at, 1 + pick(32))); break;
      case 5: {
        const size_t len = std::min<size_t>(s.size() - at, 1 + pick(64));
        s.insert(at, s.substr(at, len));
        break;
      }
      case 6: s.resize(pick(s.size() + 1)); break;
      case 7:
        if (is_safetensors && s.size() >= 8) {
          uint64_t n = 0;
          for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(s[i]);
          const int64_t deltas[] = {-8, -4, -1, 1, 4, 8};
          n = rng() % 4 == 0 ? rng() : n + deltas[pick(6)];
          for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(n >> (8 * i));
        }
        break;
      default:  // a digit changed (offsets, shapes, sizes)
        for (size_t k = at; k < std::min(s.size(), at + 256); ++k)
          if (s[k] >= '0' && s[k] <= '9') {
            s[k] = static_cast<char>('0' + rng() % 10);
            break;
          }
        break;
    }
  }
  return s;
}

// --- fixed cases -----------------------------------------------------------------------------------------------

void fixed_cases() {
  const char* accept[] = {"{}", "[]", "0", "-0", "1.5e-3", "\"\\u00e9\\ud83d\\ude00\"", "{\"a\":[1,2,{\"b\":null}]}",
                          "NaN", "-Infinity", "\"\xc3\xa9\"", " 1 "};
  for (const char* t : accept) check(run_json(t), std::string("JSON accepted: ") + t);
  const char* reject[] = {"", "01", "+1", ".5", "1.", "1e", "0x10", "inf", "nan", "\"\\ud800\"", "\"\\udc00x\"",
                          "\"a\nb\"", "\"\xff\"", "\"\xc0\x80\"", "\"\xed\xa0\x80\"", "[1,]", "{\"a\"}", "1 2", "\"abc"};
  for (const char* t : reject) check(!run_json(t), std::string("JSON rejected: ") + t);
  uint64_t u = 0;
  int64_t i = 0;
  check(plm::Json::parse("18446744073709551615", "t").as_uint64(&u) && u == UINT64_MAX, "uint64 max exact");
  check(!plm::Json::parse("18446744073709551616", "t").as_uint64(&u), "2^64 is not a uint64");
  check(!plm::Json::parse("1.0", "t").as_uint64(&u) && !plm::Json::parse("1e3", "t").as_uint64(&u), "fractions are not integers");
  check(!plm::Json::parse("-1", "t").as_uint64(&u) && plm::Json::parse("-1", "t").as_int64(&i) && i == -1, "negative integers");
  check(plm::Json::parse("-9223372036854775808", "t").as_int64(&i) && i == INT64_MIN, "int64 min exact");
  check(!plm::Json::parse("9223372036854775808", "t").as_int64(&i), "2^63 is not an int64");
  std::string deep(300, '[');
  check(!run_json(deep + std::string(300, ']')), "nesting deeper than 256 is rejected");
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool ends_with(const std::string& s, const char* suffix) {
  const size_t n = std::strlen(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

}  // namespace

#ifdef PLM_LIBFUZZER
// libFuzzer entry (clang -fsanitize=fuzzer,address,undefined -DPLM_LIBFUZZER): the first byte picks the target.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static MemFile mf;
  const std::string s(reinterpret_cast<const char*>(data + 1), size - 1);
  switch (data[0] % 3) {
    case 0: run_safetensors(mf, s); break;
    case 1: run_json(s); break;
    default: run_config(s); break;
  }
  if (g_failures) std::abort();
  return 0;
}
#else
int main(int argc, char** argv) {
  double seconds = 20;
  long long iterations = -1;
  uint64_t seed = 1;
  std::vector<std::string> seeds;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--seconds" && i + 1 < argc) seconds = std::atof(argv[++i]);
    else if (a == "--iterations" && i + 1 < argc) iterations = std::atoll(argv[++i]);
    else if (a == "--seed" && i + 1 < argc) seed = std::strtoull(argv[++i], nullptr, 10);
    else seeds.push_back(a);
  }
  fixed_cases();
  std::vector<std::pair<std::string, bool>> corpus;  // (bytes, is safetensors)
  for (const auto& p : seeds) {
    std::string b = read_file(p);
    if (b.empty()) {
      std::printf("FAIL: cannot read seed %s\n", p.c_str());
      ++g_failures;
      continue;
    }
    corpus.emplace_back(std::move(b), ends_with(p, ".safetensors"));
  }
  MemFile mf;
  // Every seed as is must be accepted (a valid fixture rejected would make the loop meaningless).
  for (size_t k = 0; k < corpus.size(); ++k)
    check(corpus[k].second ? run_safetensors(mf, corpus[k].first) : run_json(corpus[k].first), "seed " + seeds[k] + " accepted");
  std::mt19937_64 rng(seed);
  const auto t0 = std::chrono::steady_clock::now();
  long long n = 0, accepted = 0;
  while (!corpus.empty()) {
    if (iterations >= 0 ? n >= iterations
                        : std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() >= seconds)
      break;
    const auto& c = corpus[rng() % corpus.size()];
    const std::string input = mutate(c.first, c.second, rng);
    bool ok;
    try {
      ok = c.second ? run_safetensors(mf, input) : (run_json(input), run_config(input));
    } catch (const std::exception& e) {
      ++g_failures;
      std::printf("FAIL: iteration %lld threw %s (not a plm::Error)\n", n, e.what());
      ok = false;
    }
    accepted += ok;
    ++n;
    if (g_failures > 20) break;
  }
  std::printf("mutation loop: %lld inputs from %zu seeds (seed %llu), %lld accepted, %lld rejected with plm::Error\n", n,
              corpus.size(), static_cast<unsigned long long>(seed), accepted, n - accepted);
  check(corpus.empty() || n > 0, "the mutation loop ran");
  std::printf("%d passed, %d failed\n", g_checks - g_failures, g_failures);
  return g_failures == 0 ? 0 : 1;
}
#endif
