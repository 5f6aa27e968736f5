#include "core/error.h"

namespace plm {

const char* error_code_name(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument: return "ERR_INVALID_ARGUMENT";
    case ErrorCode::kFileNotFound: return "ERR_FILE_NOT_FOUND";
    case ErrorCode::kFileRead: return "ERR_FILE_READ";
    case ErrorCode::kCorruptFile: return "ERR_CORRUPT_FILE";
    case ErrorCode::kShapeMismatch: return "ERR_SHAPE_MISMATCH";
    case ErrorCode::kUnsupportedDtype: return "ERR_UNSUPPORTED_DTYPE";
    case ErrorCode::kUnsupportedModel: return "ERR_UNSUPPORTED_MODEL";
    case ErrorCode::kContextOverflow: return "ERR_CONTEXT_OVERFLOW";
    case ErrorCode::kImageDecode: return "ERR_IMAGE_DECODE";
    case ErrorCode::kCancelled: return "ERR_CANCELLED";
    case ErrorCode::kDisposed: return "ERR_DISPOSED";
    case ErrorCode::kBackend: return "ERR_BACKEND";
    case ErrorCode::kOutOfMemory: return "ERR_OUT_OF_MEMORY";
    case ErrorCode::kUnsupportedVersion: return "ERR_UNSUPPORTED_VERSION";
    case ErrorCode::kStaleFile: return "ERR_STALE_FILE";
    case ErrorCode::kInternal: return "ERR_INTERNAL";
  }
  return "ERR_INTERNAL";
}

}  // namespace plm
