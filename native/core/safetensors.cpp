#include "core/safetensors.h"

#include <cstdint>
#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cerrno>
#include <cstring>
#include <limits>

#include "core/error.h"
#include "core/json.h"

namespace plm {
namespace {

// Printable ASCII of a string taken from a file, cut to 64 characters: an error message never carries raw bytes.
std::string printable(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (out.size() >= 64) {
      out += "...";
      break;
    }
    out += (c >= 0x20 && c < 0x7f) ? c : '?';
  }
  return out;
}

bool parse_dtype(const std::string& s, DType* out) {
  static const std::pair<const char*, DType> kTable[] = {
      {"F32", DType::kF32}, {"F16", DType::kF16}, {"BF16", DType::kBF16}, {"I32", DType::kI32},
      {"I64", DType::kI64}, {"U8", DType::kU8},   {"I8", DType::kI8}};
  for (const auto& e : kTable)
    if (s == e.first) {
      *out = e.second;
      return true;
    }
  return false;
}

std::string join_path(const std::string& dir, const std::string& name) {
  if (dir.empty() || dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

std::string real_path(const std::string& p) {
  char* r = ::realpath(p.c_str(), nullptr);
  if (!r) return std::string();
  std::string out(r);
  std::free(r);
  return out;
}

bool inside(const std::string& path, const std::string& folder) {
  return !folder.empty() && path.size() > folder.size() && path.compare(0, folder.size(), folder) == 0 &&
         (folder.back() == '/' || path[folder.size()] == '/');
}

// A weights file of the checkpoint folder `dir`, as a path safe to open: `name` must be a plain file name (no
// '/', not '.' or '..', no control characters), the entry a regular file or a symlink to one that stays inside
// the folder, or, for the Hugging Face cache layout (<repo>/snapshots/<rev>/name -> ../../blobs/<hash>), inside
// <repo>/blobs. FIFOs, devices, sockets and directories are refused before anything opens them.
std::string checked_weights_path(const std::string& dir, const std::string& name, const std::string& listed_in) {
  const std::string where = listed_in.empty() ? "" : " (listed in " + listed_in + ")";
  bool plain = !name.empty() && name != "." && name != ".." && name.size() <= 255;
  for (char c : name)
    if (c == '/' || c == '\\' || static_cast<unsigned char>(c) < 0x20) plain = false;
  if (!plain)
    throw Error(ErrorCode::kCorruptFile, "weights file name '" + printable(name) + "'" + where +
                                             " is not a plain file name inside the checkpoint folder: shards must "
                                             "be files of the folder itself (no '/', no '..')");
  const std::string path = join_path(dir, name);
  struct stat lst;
  if (::lstat(path.c_str(), &lst) != 0)
    throw Error(ErrorCode::kFileNotFound, "weights file " + path + where + " is missing. Download every shard of the checkpoint.");
  if (S_ISLNK(lst.st_mode)) {
    const std::string real = real_path(path), folder = real_path(dir);
    std::string blobs;
    const size_t snap = folder.rfind("/snapshots/");
    if (snap != std::string::npos && folder.find('/', snap + 11) == std::string::npos) blobs = folder.substr(0, snap) + "/blobs";
    if (real.empty())
      throw Error(ErrorCode::kFileNotFound, "weights file " + path + where + " is a dangling symlink");
    if (!inside(real, folder) && !inside(real, blobs))
      throw Error(ErrorCode::kCorruptFile, "weights file " + path + where +
                                               " is a symlink that leaves the checkpoint folder; copy the file into the folder");
    struct stat st;
    if (::stat(real.c_str(), &st) != 0 || !S_ISREG(st.st_mode))
      throw Error(ErrorCode::kFileRead, "weights file " + path + where + " is not a regular file");
    return real;
  }
  if (!S_ISREG(lst.st_mode))
    throw Error(ErrorCode::kFileRead, "weights file " + path + where + " is not a regular file (a FIFO, device or folder?)");
  return path;
}

}  // namespace

namespace {

// a * b, false on overflow.
bool mul_overflows(uint64_t a, uint64_t b, uint64_t* out) {
  if (a != 0 && b > std::numeric_limits<uint64_t>::max() / a) return true;
  *out = a * b;
  return false;
}

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path, const std::string& fix) : path_(path) {
  // O_NONBLOCK: a FIFO never blocks the open; fstat then refuses anything that is not a regular file.
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw Error(ErrorCode::kFileNotFound, "cannot open weights file " + path + ": " + std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(ErrorCode::kFileRead, "not a regular file: " + path);
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ < 8) {
    ::close(fd);
    throw Error(ErrorCode::kFileRead, path + " is truncated (" + std::to_string(size_) +
                                          " bytes): a safetensors file starts with an 8-byte header length. " + fix);
  }
  // Private and read-only: the process never writes the weights, and no write through another mapping of the
  // file is promised to show (see docs/security.md for a file that changes underneath).
  map_ = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    throw Error(ErrorCode::kFileRead, "cannot mmap " + path + ": " + std::strerror(errno));
  }
  const auto corrupt = [&](const std::string& rule, const std::string& tensor = std::string()) -> Error {
    return Error(ErrorCode::kCorruptFile, path + ": not a valid safetensors file: " + rule +
                                              (tensor.empty() ? "" : " (tensor '" + printable(tensor) + "')") + ". " + fix);
  };
  try {
    const uint8_t* bytes = static_cast<const uint8_t*>(map_);
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
    // Rule 1: 2 <= N (the smallest header is "{}"), 8 + N <= file size, N <= 100 MB (the reference reader's cap).
    if (header_len < 2 || header_len > size_ - 8 || header_len > kMaxHeaderBytes)
      throw corrupt("the declared header length " + std::to_string(header_len) + " does not fit a file of " +
                    std::to_string(size_) + " bytes (it must be 2.." + std::to_string(kMaxHeaderBytes) +
                    " and leave room for the 8-byte prefix)");
    std::string header(reinterpret_cast<const char*>(bytes + 8), header_len);
    // Rule 2: the header is a JSON object: it starts with '{'; only spaces may pad it after the closing '}'.
    if (header[0] != '{') throw corrupt("the header does not start with '{'");
    size_t last = header.find_last_not_of(' ');
    if (last == std::string::npos || header[last] != '}') throw corrupt("the header does not end with '}' (plus space padding)");
    Json root = Json::parse(header, path + " (safetensors header)");  // strict JSON, valid UTF-8
    if (!root.is_object()) throw corrupt("the header is not a JSON object");
    header_size_ = 8 + header_len;
    const uint8_t* data = bytes + 8 + header_len;
    const uint64_t data_size = size_ - 8 - header_len;
    struct Range {
      uint64_t begin, end;
      std::string name;
    };
    std::vector<Range> ranges;
    for (const auto& kv : root.items()) {
      if (kv.first == "__metadata__") {
        if (!kv.second.is_object()) throw corrupt("__metadata__ is not an object of strings");
        for (const auto& m : kv.second.items()) {
          if (!m.second.is_string()) throw corrupt("__metadata__ value '" + printable(m.first) + "' is not a string");
          metadata_[m.first] = m.second.string();
        }
        continue;
      }
      const Json& t = kv.second;
      if (tensors_.count(kv.first)) throw corrupt("the tensor name appears twice in the header", kv.first);
      const Json* dt = t.find("dtype");
      const Json* shape = t.find("shape");
      const Json* offs = t.find("data_offsets");
      if (!t.is_object() || !dt || !dt->is_string() || !shape || !shape->is_array() || !offs || !offs->is_array() ||
          offs->array().size() != 2)
        throw corrupt("the entry must be an object with \"dtype\" (string), \"shape\" (array) and \"data_offsets\" "
                      "(two integers)",
                      kv.first);
      TensorView view;
      view.name = kv.first;
      if (!parse_dtype(dt->string(), &view.dtype))
        throw Error(ErrorCode::kUnsupportedDtype, path + ": tensor '" + printable(kv.first) + "' has dtype " +
                                                     printable(dt->string()) +
                                                     ", which is not supported (F32, F16, BF16, I32, I64, U8, I8)");
      // Rule 3: the byte size is dtype size x product(shape), every dimension a non-negative integer, no overflow.
      uint64_t nbytes = dtype_size(view.dtype);
      for (const Json& d : shape->array()) {
        uint64_t dim = 0;
        if (!d.as_uint64(&dim) || dim > uint64_t(std::numeric_limits<int64_t>::max()))
          throw corrupt("a shape dimension is not a non-negative integer", kv.first);
        if (mul_overflows(nbytes, dim, &nbytes)) throw corrupt("dtype size x shape overflows 64 bits", kv.first);
        view.shape.push_back(static_cast<int64_t>(dim));
      }
      // Rule 4: offsets are non-negative integers (no fraction, exponent, NaN or string), begin <= end.
      uint64_t b = 0, e = 0;
      if (!offs->array()[0].as_uint64(&b) || !offs->array()[1].as_uint64(&e))
        throw corrupt("data_offsets must be two non-negative integers", kv.first);
      if (b > e) throw corrupt("data_offsets begin " + std::to_string(b) + " > end " + std::to_string(e), kv.first);
      if (e - b != nbytes)
        throw corrupt("it holds " + std::to_string(e - b) + " bytes but " + dtype_name(view.dtype) + " " +
                          view.shape_string() + " needs " + std::to_string(nbytes),
                      kv.first);
      ranges.push_back({b, e, kv.first});
      if (e <= data_size) view.data = data + b;
      tensors_.emplace(view.name, std::move(view));
    }
    // Rule 5: the tensors tile the data section: sorted by offset, the first begins at 0, each begins where the
    // previous ends (no gap, no overlap), and the last ends at the end of the file (no appended bytes).
    std::sort(ranges.begin(), ranges.end(), [](const Range& x, const Range& y) {
      return x.begin != y.begin ? x.begin < y.begin : x.end < y.end;
    });
    uint64_t at = 0;
    for (const Range& r : ranges) {
      if (r.begin > at)
        throw corrupt("a gap of " + std::to_string(r.begin - at) + " bytes in the data section before it", r.name);
      if (r.begin < at) throw corrupt("it overlaps the previous tensor in the data section", r.name);
      at = r.end;
    }
    if (at > data_size)
      throw Error(ErrorCode::kFileRead, path + ": the tensors end at byte " + std::to_string(at) + " of the data section but it holds " +
                                            std::to_string(data_size) + " bytes: the file is truncated. " + fix);
    if (at < data_size)
      throw corrupt(std::to_string(data_size - at) + " bytes follow the last tensor (the data section must end at the "
                    "end of the file)");
  } catch (...) {
    ::munmap(map_, size_);
    map_ = nullptr;
    throw;
  }
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, size_);
}

std::unique_ptr<SafetensorsSet> SafetensorsSet::open_file(const std::string& path) {
  auto set = std::make_unique<SafetensorsSet>();
  set->files_.push_back(std::make_unique<SafetensorsFile>(path));
  for (const auto& kv : set->files_.back()->tensors()) set->index_[kv.first] = &kv.second;
  return set;
}

std::unique_ptr<SafetensorsSet> SafetensorsSet::open_dir(const std::string& dir) {
  auto set = std::make_unique<SafetensorsSet>();
  std::vector<std::string> files;
  std::string index_path = join_path(dir, "model.safetensors.index.json");
  std::map<std::string, std::string> expected;  // tensor -> shard, from the index
  std::string listed_in;
  if (file_exists(index_path)) {
    Json index = Json::parse(read_text_file(index_path), index_path);
    const Json* wm = index.find("weight_map");
    if (!wm || !wm->is_object())
      throw Error(ErrorCode::kCorruptFile, index_path + ": missing \"weight_map\"");
    for (const auto& kv : wm->items()) {
      if (!kv.second.is_string())
        throw Error(ErrorCode::kCorruptFile, index_path + ": weight_map entry '" + printable(kv.first) + "' is not a file name");
      expected[kv.first] = kv.second.string();
      if (std::find(files.begin(), files.end(), kv.second.string()) == files.end())
        files.push_back(kv.second.string());
    }
    if (files.empty()) throw Error(ErrorCode::kCorruptFile, index_path + ": weight_map is empty");
    listed_in = index_path;
  } else if (file_exists(join_path(dir, "model.safetensors")) || ::access(join_path(dir, "model.safetensors").c_str(), F_OK) == 0) {
    files.push_back("model.safetensors");
  } else {
    if (DIR* d = ::opendir(dir.c_str())) {
      while (dirent* e = ::readdir(d)) {
        std::string n = e->d_name;
        const bool ours = n.size() > 17 && n.compare(n.size() - 17, 17, ".plmq.safetensors") == 0;
        if (n.size() > 12 && n.compare(n.size() - 12, 12, ".safetensors") == 0 && !ours) files.push_back(n);
      }
      ::closedir(d);
    }
    std::sort(files.begin(), files.end());
    if (files.empty())
      throw Error(ErrorCode::kFileNotFound,
                  "no weights in " + dir + ": expected model.safetensors or model.safetensors.index.json");
  }
  std::vector<std::string> paths;
  for (const auto& f : files) paths.push_back(checked_weights_path(dir, f, listed_in));  // all names first
  for (size_t i = 0; i < files.size(); ++i) {
    set->files_.push_back(std::make_unique<SafetensorsFile>(paths[i]));
    for (const auto& kv : set->files_.back()->tensors()) {
      if (set->index_.count(kv.first))
        throw Error(ErrorCode::kCorruptFile, "tensor '" + printable(kv.first) + "' appears in two weight files");
      set->index_[kv.first] = &kv.second;
    }
  }
  for (const auto& kv : expected)
    if (!set->index_.count(kv.first))
      throw Error(ErrorCode::kCorruptFile, "tensor '" + printable(kv.first) + "' is listed in the index for " +
                                               printable(kv.second) + " but that file does not contain it");
  return set;
}

const TensorView* SafetensorsSet::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

size_t SafetensorsSet::total_bytes() const {
  size_t n = 0;
  for (const auto& kv : index_) n += kv.second->nbytes();
  return n;
}

}  // namespace plm
