#include "core/json.h"

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <limits>
#include <cstdlib>

#include "core/error.h"

namespace plm {

class JsonParser {
 public:
  JsonParser(const std::string& text, const std::string& source) : s_(text), source_(source) {}

  Json parse_document() {
    Json v = parse_value(0);
    skip_ws();
    if (pos_ != s_.size()) fail("unexpected trailing characters");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& what) {
    throw Error(ErrorCode::kCorruptFile,
                source_ + ": invalid JSON at byte " + std::to_string(pos_) + ": " + what);
  }
  void skip_ws() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\r' || s_[pos_] == '\t')) ++pos_;
  }
  char peek() {
    skip_ws();
    if (pos_ >= s_.size()) fail("unexpected end of input");
    return s_[pos_];
  }
  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++pos_;
  }
  bool consume_literal(const char* lit) {
    size_t n = std::char_traits<char>::length(lit);
    if (s_.compare(pos_, n, lit) == 0) {
      pos_ += n;
      return true;
    }
    return false;
  }

  Json parse_value(int depth) {
    if (depth > 256) fail("nesting too deep");
    Json v;
    char c = peek();
    if (c == '{') {
      ++pos_;
      v.type_ = Json::Type::kObject;
      if (peek() == '}') { ++pos_; return v; }
      for (;;) {
        if (peek() != '"') fail("expected a string key");
        std::string key = parse_string();
        expect(':');
        v.object_.emplace_back(std::move(key), parse_value(depth + 1));
        char d = peek();
        ++pos_;
        if (d == '}') break;
        if (d != ',') fail("expected ',' or '}'");
      }
    } else if (c == '[') {
      ++pos_;
      v.type_ = Json::Type::kArray;
      if (peek() == ']') { ++pos_; return v; }
      for (;;) {
        v.array_.push_back(parse_value(depth + 1));
        char d = peek();
        ++pos_;
        if (d == ']') break;
        if (d != ',') fail("expected ',' or ']'");
      }
    } else if (c == '"') {
      v.type_ = Json::Type::kString;
      v.string_ = parse_string();
    } else if (consume_literal("true")) {
      v.type_ = Json::Type::kBool;
      v.bool_ = true;
    } else if (consume_literal("false")) {
      v.type_ = Json::Type::kBool;
    } else if (consume_literal("null")) {
      v.type_ = Json::Type::kNull;
    } else if (consume_literal("NaN")) {  // Python's json.dumps writes these
      v.type_ = Json::Type::kNumber;
      v.number_ = std::numeric_limits<double>::quiet_NaN();
    } else if (consume_literal("Infinity")) {
      v.type_ = Json::Type::kNumber;
      v.number_ = std::numeric_limits<double>::infinity();
    } else if (c == '-' || (c >= '0' && c <= '9')) {
      if (consume_literal("-Infinity")) {
        v.type_ = Json::Type::kNumber;
        v.number_ = -std::numeric_limits<double>::infinity();
        return v;
      }
      parse_number(v);
      v.type_ = Json::Type::kNumber;
    } else {
      fail("unexpected character");
    }
    return v;
  }

  // RFC 8259 number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?. strtod would also take "0x1p3", "inf",
  // "nan" and leading '+'; it only sees text that passed this grammar.
  void parse_number(Json& v) {
    const size_t start = pos_;
    auto digit = [&](size_t i) { return i < s_.size() && s_[i] >= '0' && s_[i] <= '9'; };
    size_t i = pos_;
    const bool negative = i < s_.size() && s_[i] == '-';
    if (negative) ++i;
    if (!digit(i)) fail("bad number");
    if (s_[i] == '0') {
      ++i;
      if (digit(i)) fail("bad number (leading zero)");
    } else {
      while (digit(i)) ++i;
    }
    const size_t int_end = i;
    bool integral = true;
    if (i < s_.size() && s_[i] == '.') {
      integral = false;
      ++i;
      if (!digit(i)) fail("bad number (no digit after '.')");
      while (digit(i)) ++i;
    }
    if (i < s_.size() && (s_[i] == 'e' || s_[i] == 'E')) {
      integral = false;
      ++i;
      if (i < s_.size() && (s_[i] == '+' || s_[i] == '-')) ++i;
      if (!digit(i)) fail("bad number (no digit in the exponent)");
      while (digit(i)) ++i;
    }
    const std::string text = s_.substr(start, i - start);
    char* end = nullptr;
    v.number_ = std::strtod(text.c_str(), &end);
    if (end != text.c_str() + text.size()) fail("bad number");
    v.type_ = Json::Type::kNumber;
    if (integral) {
      uint64_t mag = 0;
      bool fits = true;
      for (size_t k = start + (negative ? 1 : 0); k < int_end; ++k) {
        const uint64_t d = static_cast<uint64_t>(s_[k] - '0');
        if (mag > (std::numeric_limits<uint64_t>::max() - d) / 10) {
          fits = false;
          break;
        }
        mag = mag * 10 + d;
      }
      if (fits && !(negative && mag == 0)) {
        v.int_literal_ = true;
        v.int_negative_ = negative;
        v.int_magnitude_ = mag;
      }
    }
    pos_ = i;
  }

  static void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  uint32_t parse_hex4() {
    if (pos_ + 4 > s_.size()) fail("truncated \\u escape");
    uint32_t v = 0;
    for (int i = 0; i < 4; ++i) {
      char h = s_[pos_++];
      v <<= 4;
      if (h >= '0' && h <= '9') v |= h - '0';
      else if (h >= 'a' && h <= 'f') v |= h - 'a' + 10;
      else if (h >= 'A' && h <= 'F') v |= h - 'A' + 10;
      else fail("bad \\u escape");
    }
    return v;
  }

  // Length of the valid UTF-8 sequence starting at s_[i] (1..4), or 0 (overlong, surrogate, > U+10FFFF, cut).
  size_t utf8_length(size_t i) const {
    const auto b = [&](size_t k) { return k < s_.size() ? static_cast<unsigned char>(s_[k]) : 0u; };
    const unsigned c = b(i);
    const auto cont = [&](size_t k) { return (b(k) & 0xC0u) == 0x80u; };
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return cont(i + 1) ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
      const unsigned c1 = b(i + 1);
      if (c == 0xE0 && c1 < 0xA0) return 0;  // overlong
      if (c == 0xED && c1 >= 0xA0) return 0;  // UTF-16 surrogate
      return cont(i + 1) && cont(i + 2) ? 3 : 0;
    }
    if (c >= 0xF0 && c <= 0xF4) {
      const unsigned c1 = b(i + 1);
      if (c == 0xF0 && c1 < 0x90) return 0;  // overlong
      if (c == 0xF4 && c1 >= 0x90) return 0;  // > U+10FFFF
      return cont(i + 1) && cont(i + 2) && cont(i + 3) ? 4 : 0;
    }
    return 0;
  }

  std::string parse_string() {
    expect('"');
    std::string out;
    for (;;) {
      if (pos_ >= s_.size()) fail("unterminated string");
      const unsigned char c = static_cast<unsigned char>(s_[pos_]);
      if (c == '"') {
        ++pos_;
        break;
      }
      if (c < 0x20) fail("control character in a string");
      if (c >= 0x80) {
        const size_t n = utf8_length(pos_);
        if (n == 0) fail("invalid UTF-8 in a string");
        out.append(s_, pos_, n);
        pos_ += n;
        continue;
      }
      ++pos_;
      if (c != '\\') {
        out += static_cast<char>(c);
        continue;
      }
      if (pos_ >= s_.size()) fail("unterminated escape");
      char e = s_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp = parse_hex4();
          if (cp >= 0xDC00 && cp < 0xE000) fail("lone low surrogate in a \\u escape");
          if (cp >= 0xD800 && cp < 0xDC00) {
            if (!(pos_ + 6 <= s_.size() && s_[pos_] == '\\' && s_[pos_ + 1] == 'u')) fail("lone high surrogate in a \\u escape");
            pos_ += 2;
            const uint32_t lo = parse_hex4();
            if (lo < 0xDC00 || lo >= 0xE000) fail("high surrogate not followed by a low surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          append_utf8(out, cp);
          break;
        }
        default: fail("bad escape");
      }
    }
    return out;
  }

  const std::string& s_;
  const std::string& source_;
  size_t pos_ = 0;
};

Json Json::parse(const std::string& text, const std::string& source) {
  return JsonParser(text, source).parse_document();
}

bool Json::as_uint64(uint64_t* out) const {
  if (type_ != Type::kNumber || !int_literal_ || int_negative_) return false;
  *out = int_magnitude_;
  return true;
}

bool Json::as_int64(int64_t* out) const {
  if (type_ != Type::kNumber || !int_literal_) return false;
  const uint64_t limit = int_negative_ ? uint64_t(1) << 63 : (uint64_t(1) << 63) - 1;
  if (int_magnitude_ > limit) return false;
  *out = int_negative_ ? static_cast<int64_t>(0 - int_magnitude_) : static_cast<int64_t>(int_magnitude_);
  return true;
}

const Json* Json::find(const std::string& key) const {
  if (type_ != Type::kObject) return nullptr;
  for (const auto& kv : object_)
    if (kv.first == key) return &kv.second;
  return nullptr;
}

bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool is_directory(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string read_text_file(const std::string& path, size_t max_bytes) {
  // O_NONBLOCK: opening a FIFO never waits for a writer; fstat then refuses anything but a regular file.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    if (errno == ENOENT) throw Error(ErrorCode::kFileNotFound, "file not found: " + path);
    throw Error(ErrorCode::kFileRead, "cannot open " + path + ": " + std::strerror(errno));
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
    throw Error(ErrorCode::kFileRead, path + " is not a regular file");
  if (static_cast<uint64_t>(st.st_size) > max_bytes)
    throw Error(ErrorCode::kFileRead, path + " is larger than " + std::to_string(max_bytes) + " bytes");
  std::string out(static_cast<size_t>(st.st_size), '\0');
  size_t done = 0;
  while (done < out.size()) {
    const ssize_t n = ::read(fd, &out[done], out.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw Error(ErrorCode::kFileRead, "error reading " + path + ": " + std::strerror(errno));
    if (n == 0) break;  // shrank while reading
    done += static_cast<size_t>(n);
  }
  out.resize(done);
  return out;
}

}  // namespace plm
