// A small JSON reader for config files and safetensors headers (no writer, no comments). Strict RFC 8259
// grammar (numbers, escapes, no control characters in strings, strings valid UTF-8, no lone surrogates), plus
// the NaN / Infinity / -Infinity literals that Python's json.dumps writes. Nesting depth is capped at 256.
// Integer literals keep their exact value (as_uint64 / as_int64) so that 64-bit offsets are never rounded.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace plm {

class Json {
 public:
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };

  // Throws plm::Error(kCorruptFile) naming `source` and the byte offset on malformed input.
  static Json parse(const std::string& text, const std::string& source);

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::kNull; }
  bool is_number() const { return type_ == Type::kNumber; }
  bool is_string() const { return type_ == Type::kString; }
  bool is_array() const { return type_ == Type::kArray; }
  bool is_object() const { return type_ == Type::kObject; }
  bool is_bool() const { return type_ == Type::kBool; }

  double number() const { return number_; }
  // True, with the value, when this is an integer literal (no fraction, no exponent) that fits the type.
  // "1.0", "1e3", NaN and -0 are not integer literals.
  bool as_uint64(uint64_t* out) const;
  bool as_int64(int64_t* out) const;
  bool boolean() const { return bool_; }
  const std::string& string() const { return string_; }
  const std::vector<Json>& array() const { return array_; }
  const std::vector<std::pair<std::string, Json>>& items() const { return object_; }  // in file order

  // Object member or nullptr.
  const Json* find(const std::string& key) const;
  bool has(const std::string& key) const { return find(key) != nullptr; }

 private:
  Type type_ = Type::kNull;
  bool bool_ = false;
  double number_ = 0;
  bool int_literal_ = false;   // written as -?digits, and fits int64 or uint64 (below)
  bool int_negative_ = false;
  uint64_t int_magnitude_ = 0;
  std::string string_;
  std::vector<Json> array_;
  std::vector<std::pair<std::string, Json>> object_;
  friend class JsonParser;
};

// Reads a regular file of at most `max_bytes` (a FIFO, device or directory is kFileRead, never a hang: it is
// opened non-blocking and checked with fstat before any read). Throws kFileNotFound / kFileRead.
std::string read_text_file(const std::string& path, size_t max_bytes = size_t(64) << 20);
bool file_exists(const std::string& path);
bool is_directory(const std::string& path);

}  // namespace plm
