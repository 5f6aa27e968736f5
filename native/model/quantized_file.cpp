#include "model/quantized_file.h"

#include <cstdint>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "core/json.h"
#include "core/sha256.h"

namespace plm {
namespace {

constexpr const char* kFix = "Delete it and re-run `plm quantize` (or quantizeModel()) for this checkpoint.";
constexpr uint64_t kWholeFileFingerprint = 16ull << 20;  // files up to 16 MiB are hashed whole
constexpr uint64_t kSampleBytes = 4096;
constexpr uint64_t kSamples = 1024;
constexpr uint64_t kDataAlign = 64;  // the data section starts at a multiple of 64 bytes

std::string join(const std::string& dir, const std::string& name) {
  return (!dir.empty() && dir.back() == '/') ? dir + name : dir + "/" + name;
}

std::string base_name(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    const unsigned char u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (u < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", u);
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

void read_at(int fd, void* dst, size_t n, uint64_t offset, const std::string& path) {
  uint8_t* p = static_cast<uint8_t*>(dst);
  while (n > 0) {
    const ssize_t r = ::pread(fd, p, n, static_cast<off_t>(offset));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) throw Error(ErrorCode::kFileRead, "cannot read " + path + ": " + (r < 0 ? std::strerror(errno) : "unexpected end of file"));
    p += r;
    n -= static_cast<size_t>(r);
    offset += static_cast<uint64_t>(r);
  }
}

void write_at(int fd, const void* src, size_t n, uint64_t offset, const std::string& path) {
  const uint8_t* p = static_cast<const uint8_t*>(src);
  while (n > 0) {
    const ssize_t r = ::pwrite(fd, p, n, static_cast<off_t>(offset));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) throw Error(ErrorCode::kFileRead, "cannot write " + path + ": " + std::strerror(errno) + ". Is the disk full?");
    p += r;
    n -= static_cast<size_t>(r);
    offset += static_cast<uint64_t>(r);
  }
}

// Identity of one checkpoint file (docs/quantized-format.md, "fingerprint"): SHA-256 of the whole file when it
// is at most 16 MiB or its data section is under 4 MiB; otherwise SHA-256 of the header (8 + header length
// bytes) followed by 1024 samples of 4096 bytes at data_start + floor(i * (size - data_start - 4096) / 1023).
std::string fingerprint(const SafetensorsFile& f) {
  const std::string& path = f.path();
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(ErrorCode::kFileRead, "cannot open " + path + ": " + std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  const uint64_t size = f.file_size(), start = f.header_size();
  Sha256 h;
  std::vector<uint8_t> buf(1 << 20);
  if (size <= kWholeFileFingerprint || size - start < kSamples * kSampleBytes) {
    for (uint64_t off = 0; off < size;) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(buf.size(), size - off));
      read_at(fd, buf.data(), n, off, path);
      h.update(buf.data(), n);
      off += n;
    }
    return h.hex_digest();
  }
  buf.resize(static_cast<size_t>(std::max<uint64_t>(start, kSampleBytes)));
  read_at(fd, buf.data(), static_cast<size_t>(start), 0, path);
  h.update(buf.data(), static_cast<size_t>(start));
  const uint64_t span = size - start - kSampleBytes;
  for (uint64_t i = 0; i < kSamples; ++i) {
    const uint64_t off = start + (span / (kSamples - 1)) * i + (span % (kSamples - 1)) * i / (kSamples - 1);
    read_at(fd, buf.data(), kSampleBytes, off, path);
    h.update(buf.data(), kSampleBytes);
  }
  return h.hex_digest();
}

struct SourceFile {
  std::string name;
  uint64_t size = 0;
  std::string fingerprint;
};

std::vector<SourceFile> source_files(const LoadedModel& m) {
  std::vector<SourceFile> out;
  for (const auto& f : m.weights->files()) out.push_back({base_name(f->path()), f->file_size(), fingerprint(*f)});
  return out;
}

std::string config_sha256(const LoadedModel& m) {
  const std::string text = read_text_file(join(m.dir, "config.json"));
  return sha256_hex(text.data(), text.size());
}

const char* group_size_name(cpu::Quant q) { return q == cpu::Quant::kQ4 ? "32" : "row"; }

struct Layout {
  const TensorView* source;
  std::string name;
  int64_t rows, cols, groups;
  uint64_t qbytes, sbytes;
  uint64_t qoff = 0, soff = 0;  // offsets in the data section
};

Layout layout_of(const QuantTarget& t, cpu::Quant q) {
  Layout l;
  l.source = t.source;
  l.name = t.name;
  l.rows = t.source->shape[0];
  l.cols = t.source->numel() / l.rows;
  l.groups = q == cpu::Quant::kQ4 ? l.cols / cpu::kQ4Group : 1;
  l.qbytes = static_cast<uint64_t>(l.rows) * static_cast<uint64_t>(q == cpu::Quant::kQ4 ? l.cols / 2 : l.cols);
  l.sbytes = static_cast<uint64_t>(l.rows * l.groups) * sizeof(float);
  return l;
}

std::string tensor_entry(const std::string& name, const char* dtype, int64_t d0, int64_t d1, uint64_t b, uint64_t e) {
  return json_string(name) + ":{\"dtype\":\"" + dtype + "\",\"shape\":[" + std::to_string(d0) + "," +
         std::to_string(d1) + "],\"data_offsets\":[" + std::to_string(b) + "," + std::to_string(e) + "]}";
}

// "1.0" -> {1, 0}; false when malformed.
bool parse_version(const std::string& s, int* major, int* minor) {
  const size_t dot = s.find('.');
  if (dot == std::string::npos || dot == 0 || dot + 1 >= s.size()) return false;
  for (size_t i = 0; i < s.size(); ++i)
    if (i != dot && (s[i] < '0' || s[i] > '9')) return false;
  if (dot > 6 || s.size() - dot > 7) return false;
  *major = std::atoi(s.substr(0, dot).c_str());
  *minor = std::atoi(s.substr(dot + 1).c_str());
  return true;
}

}  // namespace

std::string quant_layer_matrix_name(int layer, int which) {
  return "model.language_model.layers." + std::to_string(layer) + "." + kQuantLayerMatrices[which];
}

std::string default_quantized_path(const std::string& dir, cpu::Quant q) {
  return join(dir, std::string("model.") + cpu::quant_name(q) + ".plmq.safetensors");
}

std::vector<QuantTarget> quant_targets(const LoadedModel& model) {
  std::vector<QuantTarget> out;
  for (int l = 0; l < model.config.text.num_layers; ++l)
    for (int i = 0; i < 7; ++i) {
      const std::string name = quant_layer_matrix_name(l, i);
      out.push_back({name, &model.get(name + ".weight")});
    }
  out.push_back({kQuantLmHead, &model.lm_head()});
  return out;
}

bool quantizable(const TensorView& t, cpu::Quant q) {
  if (t.shape.size() != 2 || t.shape[0] <= 0 || t.shape[1] <= 0) return false;
  if (q == cpu::Quant::kQ4) return t.shape[1] % cpu::kQ4Group == 0;
  return q == cpu::Quant::kQ8;
}

QuantizeFileResult write_quantized_file(const LoadedModel& model, cpu::Quant q, const std::string& path,
                                        ThreadPool* pool, const ProgressFn& progress, const CancelToken* cancel) {
  if (q == cpu::Quant::kNone)
    throw Error(ErrorCode::kInvalidArgument, "quantize: the kind must be \"int8\" or \"q4\"");
  auto cancelled = [&] { return cancel && cancel->is_cancelled(); };
  QuantizeFileResult result;
  result.path = path;
  result.quant = q;

  // Layout: every scales tensor (f32, so each stays 4-byte aligned), then every qweight tensor, in target order,
  // back to back (strict safetensors readers reject gaps).
  std::vector<Layout> items;
  for (const QuantTarget& t : quant_targets(model)) {
    if (quantizable(*t.source, q)) items.push_back(layout_of(t, q));
    else ++result.kept;
  }
  uint64_t off = 0, total_source = 0;
  for (Layout& l : items) {
    l.soff = off;
    off += l.sbytes;
  }
  for (Layout& l : items) {
    l.qoff = off;
    off += l.qbytes;
    total_source += l.source->nbytes();
  }
  const uint64_t data_bytes = off;

  std::string files_json = "[";
  for (const SourceFile& f : source_files(model)) {
    if (files_json.size() > 1) files_json += ",";
    files_json += "{\"name\":" + json_string(f.name) + ",\"size\":" + std::to_string(f.size) +
                  ",\"fingerprint\":\"" + f.fingerprint + "\"}";
  }
  files_json += "]";
  std::string header = "{\"__metadata__\":{";
  header += "\"format\":" + json_string(kQuantFormatName);
  header += ",\"format_version\":\"" + std::to_string(kQuantFormatMajor) + "." + std::to_string(kQuantFormatMinor) + "\"";
  header += ",\"quant\":" + json_string(cpu::quant_name(q));
  header += ",\"group_size\":" + json_string(group_size_name(q));
  header += ",\"lm_head_source\":" + json_string(model.lm_head().name);
  header += ",\"source_config_sha256\":" + json_string(config_sha256(model));
  header += ",\"source_files\":" + json_string(files_json);
  header += "}";
  for (const Layout& l : items) {
    header += "," + tensor_entry(l.name + ".scales", "F32", l.rows, l.groups, l.soff, l.soff + l.sbytes);
    header += "," + tensor_entry(l.name + ".qweight", q == cpu::Quant::kQ4 ? "U8" : "I8", l.rows,
                                 q == cpu::Quant::kQ4 ? l.cols / 2 : l.cols, l.qoff, l.qoff + l.qbytes);
  }
  header += "}";
  while ((8 + header.size()) % kDataAlign != 0) header += ' ';
  const uint64_t data_start = 8 + header.size();
  result.file_bytes = data_start + data_bytes;

  const std::string tmp = path + ".tmp-" + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw Error(ErrorCode::kFileRead, "cannot create " + tmp + ": " + std::strerror(errno));
  bool done = false;
  struct Cleanup {
    int& fd;
    const std::string& tmp;
    bool& done;
    ~Cleanup() {
      if (fd >= 0) ::close(fd);
      if (!done) ::unlink(tmp.c_str());
    }
  } cleanup{fd, tmp, done};

  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(header.size()) >> (8 * i));
  write_at(fd, len, 8, 0, tmp);
  write_at(fd, header.data(), header.size(), 8, tmp);
  if (progress) progress(0.0, "quantize");
  uint64_t done_source = 0;
  for (const Layout& l : items) {
    if (cancelled()) throw Error(ErrorCode::kCancelled, "cancelled");
    cpu::WeightMatrix w;
    w.dtype = l.source->dtype;
    w.data = l.source->data;
    w.rows = l.rows;
    w.cols = l.cols;
    cpu::QuantizedMatrix qm = cpu::quantize_matrix(w, q, pool);
    if (qm.data.size() != l.qbytes || qm.scales.size() * sizeof(float) != l.sbytes)
      throw Error(ErrorCode::kInternal, "quantize: unexpected size of " + l.name);
    write_at(fd, qm.scales.data(), l.sbytes, data_start + l.soff, tmp);
    write_at(fd, qm.data.data(), l.qbytes, data_start + l.qoff, tmp);
    done_source += l.source->nbytes();
    ++result.quantized;
    if (progress) progress(total_source ? static_cast<double>(done_source) / total_source : 1.0, "quantize");
  }
  result.source_bytes = total_source;
  if (cancelled()) throw Error(ErrorCode::kCancelled, "cancelled");
  if (::ftruncate(fd, static_cast<off_t>(result.file_bytes)) != 0 || ::fsync(fd) != 0)
    throw Error(ErrorCode::kFileRead, "cannot write " + tmp + ": " + std::strerror(errno));
  const int rc = ::close(fd);
  fd = -1;
  if (rc != 0) throw Error(ErrorCode::kFileRead, "cannot write " + tmp + ": " + std::strerror(errno));
  if (::rename(tmp.c_str(), path.c_str()) != 0)
    throw Error(ErrorCode::kFileRead, "cannot move " + tmp + " to " + path + ": " + std::strerror(errno));
  done = true;
  return result;
}

std::unique_ptr<QuantizedFile> QuantizedFile::open(const std::string& path, const LoadedModel& model) {
  std::unique_ptr<QuantizedFile> qf(new QuantizedFile());
  if (is_directory(path))
    throw Error(ErrorCode::kInvalidArgument, path + " is a directory; pass the quantized file itself (model.<kind>.plmq.safetensors)");
  if (!file_exists(path))
    throw Error(ErrorCode::kFileNotFound, "quantized file not found: " + path +
                                              ". Make it with `plm quantize --model DIR --kind int8|q4 --out " + path + "`.");
  try {
    qf->file_ = std::make_unique<SafetensorsFile>(path, std::string("This quantized file is damaged. ") + kFix);
  } catch (const Error& e) {
    const std::string msg = e.what();
    if (msg.find("plm quantize") != std::string::npos) throw;
    throw Error(e.code(), msg + ". This quantized file is damaged. " + kFix);
  }
  const SafetensorsFile& f = *qf->file_;
  const auto& meta = f.metadata();
  auto get = [&](const char* key) -> std::string {
    auto it = meta.find(key);
    return it == meta.end() ? std::string() : it->second;
  };

  if (get("format") != kQuantFormatName)
    throw Error(ErrorCode::kCorruptFile, path + " is not a plm-quant file (its safetensors __metadata__ has no \"format\": \"" +
                                             kQuantFormatName + "\"). " + kFix);
  int major = 0, minor = 0;
  if (!parse_version(get("format_version"), &major, &minor))
    throw Error(ErrorCode::kCorruptFile, path + ": malformed format_version \"" + get("format_version") + "\". " + kFix);
  const std::string reads = std::to_string(kQuantFormatMajor) + ".x";
  if (major != kQuantFormatMajor)
    throw Error(ErrorCode::kUnsupportedVersion,
                path + " is plm-quant format version " + get("format_version") + ", but this build of perception-lm reads " +
                    reads + ". " + kFix);
  const std::string qname = get("quant"), group = get("group_size");
  if (qname == "int8") qf->quant_ = cpu::Quant::kQ8;
  else if (qname == "q4") qf->quant_ = cpu::Quant::kQ4;
  if (qf->quant_ == cpu::Quant::kNone || group != group_size_name(qf->quant_))
    throw Error(ErrorCode::kUnsupportedVersion,
                path + " holds quantization \"" + qname + "\" with group size \"" + group +
                    "\", which this build does not read (int8 with one scale per row, q4 with groups of 32). " + kFix);
  const cpu::Quant q = qf->quant_;

  // The checkpoint it was made from.
  auto stale = [&](const std::string& what) {
    return Error(ErrorCode::kStaleFile, path + " was made from a different checkpoint than " + model.dir + " (" + what +
                                            "). Re-run `plm quantize --model " + model.dir + " --kind " + qname +
                                            "` (or delete the file to quantize at load).");
  };
  if (get("source_config_sha256") != config_sha256(model)) throw stale("config.json differs");
  Json recorded = Json::parse(get("source_files"), path + " (source_files metadata)");
  if (!recorded.is_array()) throw Error(ErrorCode::kCorruptFile, path + ": source_files is not a JSON array. " + kFix);
  const std::vector<SourceFile> actual = source_files(model);
  if (recorded.array().size() != actual.size())
    throw stale("it lists " + std::to_string(recorded.array().size()) + " weight files, the checkpoint has " +
                std::to_string(actual.size()));
  for (size_t i = 0; i < actual.size(); ++i) {
    const Json& r = recorded.array()[i];
    const Json *name = r.find("name"), *size = r.find("size"), *fp = r.find("fingerprint");
    if (!name || !name->is_string() || !size || !size->is_number() || !fp || !fp->is_string())
      throw Error(ErrorCode::kCorruptFile, path + ": malformed source_files entry " + std::to_string(i) + ". " + kFix);
    if (name->string() != actual[i].name) throw stale("weight file " + name->string() + " vs " + actual[i].name);
    uint64_t recorded_size = 0;
    if (!size->as_uint64(&recorded_size))
      throw Error(ErrorCode::kCorruptFile, path + ": source_files entry " + std::to_string(i) +
                                               " has a size that is not a whole number of bytes. " + kFix);
    if (recorded_size != actual[i].size)
      throw stale(actual[i].name + " has " + std::to_string(actual[i].size) + " bytes, it was made from " +
                  std::to_string(recorded_size));
    if (fp->string() != actual[i].fingerprint) throw stale("the contents of " + actual[i].name + " differ");
  }
  if (get("lm_head_source") != model.lm_head().name)
    throw stale("its LM head came from " + get("lm_head_source") + ", this checkpoint's is " + model.lm_head().name);

  // Every quantizable target present with the shapes its checkpoint tensor implies; the others absent.
  const auto& tensors = f.tensors();
  for (const QuantTarget& t : quant_targets(model)) {
    const auto qw = tensors.find(t.name + ".qweight");
    const auto sc = tensors.find(t.name + ".scales");
    if (!quantizable(*t.source, q)) {
      if (qw != tensors.end() || sc != tensors.end())
        throw Error(ErrorCode::kCorruptFile, path + ": holds " + t.name + ", which " + qname + " cannot quantize. " + kFix);
      continue;
    }
    if (qw == tensors.end() || sc == tensors.end())
      throw Error(ErrorCode::kCorruptFile, path + ": " + t.name + ".qweight or .scales is missing. " + kFix);
    const Layout l = layout_of(t, q);
    const std::vector<int64_t> qshape = {l.rows, q == cpu::Quant::kQ4 ? l.cols / 2 : l.cols}, sshape = {l.rows, l.groups};
    const DType qdtype = q == cpu::Quant::kQ4 ? DType::kU8 : DType::kI8;
    if (qw->second.dtype != qdtype || qw->second.shape != qshape || sc->second.dtype != DType::kF32 ||
        sc->second.shape != sshape)
      throw Error(ErrorCode::kCorruptFile, path + ": " + t.name + " has " + dtype_name(qw->second.dtype) + " " +
                                               qw->second.shape_string() + " / " + dtype_name(sc->second.dtype) + " " +
                                               sc->second.shape_string() + ", the checkpoint implies " +
                                               dtype_name(qdtype) + " [" + std::to_string(qshape[0]) + ", " +
                                               std::to_string(qshape[1]) + "] / F32 [" + std::to_string(l.rows) + ", " +
                                               std::to_string(l.groups) + "]. " + kFix);
    if (reinterpret_cast<uintptr_t>(sc->second.data) % alignof(float) != 0)
      throw Error(ErrorCode::kCorruptFile, path + ": " + t.name + ".scales is not 4-byte aligned. " + kFix);
    cpu::WeightMatrix w;
    w.data = qw->second.data;
    w.scales = static_cast<const float*>(sc->second.data);
    w.rows = l.rows;
    w.cols = l.cols;
    w.quant = q;
    qf->matrices_[t.name] = w;
  }
  return qf;
}

const cpu::WeightMatrix* QuantizedFile::find(const std::string& name) const {
  auto it = matrices_.find(name);
  return it == matrices_.end() ? nullptr : &it->second;
}

}  // namespace plm
