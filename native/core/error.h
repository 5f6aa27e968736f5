// Errors that cross every boundary as a stable code plus a message that says how to fix it.
#pragma once
#include <stdexcept>
#include <string>

namespace plm {

enum class ErrorCode {
  kInvalidArgument,     // bad call arguments
  kFileNotFound,        // missing directory or file
  kFileRead,            // I/O error, truncated file
  kCorruptFile,         // malformed safetensors header, bad JSON
  kShapeMismatch,       // tensor shape disagrees with config.json
  kUnsupportedDtype,    // tensor dtype we cannot read
  kUnsupportedModel,    // architecture or config we do not implement
  kContextOverflow,     // prompt longer than the context
  kImageDecode,         // image is not an image / zero sized / too large
  kCancelled,           // AbortSignal fired
  kDisposed,            // call on a disposed model
  kBackend,             // CUDA or other backend failure
  kOutOfMemory,         // allocation failed
  kUnsupportedVersion,  // a file format version this build cannot read (plm-quant major version)
  kStaleFile,           // a derived file (plm-quant) made from another checkpoint than the one loaded
  kInternal,
};

const char* error_code_name(ErrorCode code);  // "ERR_FILE_NOT_FOUND", ...

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const { return code_; }

 private:
  ErrorCode code_;
};

}  // namespace plm
