// Safetensors files opened by mmap (MAP_PRIVATE, PROT_READ), with no copy of the weights. A set is one
// model.safetensors or the shards listed by model.safetensors.index.json. Every rule of the format is
// checked, and a broken one is kCorruptFile naming the rule and the tensor: header length 2..100 MB inside the
// file; the header a strict UTF-8 JSON object; integer offsets with begin <= end; byte size = dtype x shape
// (overflow-checked); the tensors tile the data section with no gap and no overlap and end at the end of
// the file. Shard names of an index must be plain file names of the folder; shards must be regular files.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"

namespace plm {

class SafetensorsFile {
 public:
  // The largest JSON header accepted (the reference Rust reader's cap).
  static constexpr uint64_t kMaxHeaderBytes = 100000000;
  // Throws plm::Error: kFileNotFound, kFileRead (truncated), kCorruptFile (bad header), kUnsupportedDtype.
  // `fix` ends the messages of a damaged file (what to do about it).
  explicit SafetensorsFile(const std::string& path, const std::string& fix = "Re-download the checkpoint.");
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  size_t file_size() const { return size_; }
  size_t header_size() const { return header_size_; }  // 8 + the JSON header length: where the data starts

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t size_ = 0;
  size_t header_size_ = 0;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

class SafetensorsSet {
 public:
  // dir/model.safetensors.index.json if present, else dir/model.safetensors, else every *.safetensors in dir
  // except plm's own quantized files (*.plmq.safetensors, model/quantized_file.h).
  static std::unique_ptr<SafetensorsSet> open_dir(const std::string& dir);
  static std::unique_ptr<SafetensorsSet> open_file(const std::string& path);

  const TensorView* find(const std::string& name) const;
  const std::map<std::string, const TensorView*>& all() const { return index_; }
  size_t total_bytes() const;
  // The files in the order they were opened (index order, or sorted names).
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*> index_;
};

}  // namespace plm
