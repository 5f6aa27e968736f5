#include "core/safetensors.h"

#include <cstdint>
#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/json.h"

namespace plm {
namespace {

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

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path, const std::string& fix) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
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
  map_ = ::mmap(nullptr, size_, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    throw Error(ErrorCode::kFileRead, "cannot mmap " + path + ": " + std::strerror(errno));
  }
  try {
    const uint8_t* bytes = static_cast<const uint8_t*>(map_);
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | bytes[i];
    if (header_len == 0 || header_len > size_ - 8 || header_len > (100u << 20))
      throw Error(ErrorCode::kCorruptFile, path + ": corrupt safetensors header (declared header length " +
                                               std::to_string(header_len) + " does not fit a file of " +
                                               std::to_string(size_) + " bytes). " + fix);
    std::string header(reinterpret_cast<const char*>(bytes + 8), header_len);
    Json root = Json::parse(header, path + " (safetensors header)");
    if (!root.is_object()) throw Error(ErrorCode::kCorruptFile, path + ": safetensors header is not a JSON object");
    header_size_ = 8 + header_len;
    const uint8_t* data = bytes + 8 + header_len;
    const uint64_t data_size = size_ - 8 - header_len;
    std::vector<std::pair<uint64_t, uint64_t>> ranges;
    for (const auto& kv : root.items()) {
      if (kv.first == "__metadata__") {
        for (const auto& m : kv.second.items())
          if (m.second.is_string()) metadata_[m.first] = m.second.string();
        continue;
      }
      const Json& t = kv.second;
      const Json* dt = t.find("dtype");
      const Json* shape = t.find("shape");
      const Json* offs = t.find("data_offsets");
      if (!dt || !dt->is_string() || !shape || !shape->is_array() || !offs || !offs->is_array() ||
          offs->array().size() != 2)
        throw Error(ErrorCode::kCorruptFile, path + ": tensor '" + kv.first + "' has a malformed header entry");
      TensorView view;
      view.name = kv.first;
      if (!parse_dtype(dt->string(), &view.dtype))
        throw Error(ErrorCode::kUnsupportedDtype, path + ": tensor '" + kv.first + "' has dtype " + dt->string() +
                                                     ", which is not supported (F32, F16, BF16, I32, I64, U8, I8)");
      for (const Json& d : shape->array()) {
        if (!d.is_number() || d.number() < 0 || d.number() != static_cast<double>(static_cast<int64_t>(d.number())))
          throw Error(ErrorCode::kCorruptFile, path + ": tensor '" + kv.first + "' has an invalid shape");
        view.shape.push_back(static_cast<int64_t>(d.number()));
      }
      uint64_t b = static_cast<uint64_t>(offs->array()[0].number());
      uint64_t e = static_cast<uint64_t>(offs->array()[1].number());
      if (b > e || e > data_size)
        throw Error(ErrorCode::kFileRead, path + ": tensor '" + kv.first + "' lies beyond the end of the file (bytes " +
                                              std::to_string(b) + ".." + std::to_string(e) + " of " +
                                              std::to_string(data_size) +
                                              "): the file is truncated. " + fix);
      if (e - b != view.nbytes())
        throw Error(ErrorCode::kCorruptFile, path + ": tensor '" + kv.first + "' holds " + std::to_string(e - b) +
                                                 " bytes but " + dtype_name(view.dtype) + " " + view.shape_string() +
                                                 " needs " + std::to_string(view.nbytes()));
      view.data = data + b;
      ranges.emplace_back(b, e);
      tensors_.emplace(view.name, std::move(view));
    }
    std::sort(ranges.begin(), ranges.end());
    for (size_t i = 1; i < ranges.size(); ++i)
      if (ranges[i].first < ranges[i - 1].second)
        throw Error(ErrorCode::kCorruptFile, path + ": tensors overlap in the data section (corrupt header)");
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
  if (file_exists(index_path)) {
    Json index = Json::parse(read_text_file(index_path), index_path);
    const Json* wm = index.find("weight_map");
    if (!wm || !wm->is_object())
      throw Error(ErrorCode::kCorruptFile, index_path + ": missing \"weight_map\"");
    for (const auto& kv : wm->items()) {
      if (!kv.second.is_string()) throw Error(ErrorCode::kCorruptFile, index_path + ": bad weight_map entry");
      expected[kv.first] = kv.second.string();
      if (std::find(files.begin(), files.end(), kv.second.string()) == files.end())
        files.push_back(kv.second.string());
    }
    for (const auto& f : files)
      if (!file_exists(join_path(dir, f)))
        throw Error(ErrorCode::kFileNotFound, "shard " + f + " listed in " + index_path +
                                                  " is missing. Download every shard of the checkpoint.");
  } else if (file_exists(join_path(dir, "model.safetensors"))) {
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
  for (const auto& f : files) {
    set->files_.push_back(std::make_unique<SafetensorsFile>(join_path(dir, f)));
    for (const auto& kv : set->files_.back()->tensors()) {
      if (set->index_.count(kv.first))
        throw Error(ErrorCode::kCorruptFile, "tensor '" + kv.first + "' appears in two weight files");
      set->index_[kv.first] = &kv.second;
    }
  }
  for (const auto& kv : expected)
    if (!set->index_.count(kv.first))
      throw Error(ErrorCode::kCorruptFile, "tensor '" + kv.first + "' is listed in the index for " + kv.second +
                                               " but that file does not contain it");
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
