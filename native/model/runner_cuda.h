// The CUDA runner: dlopen()s libplm_cuda.so (built separately, linked against nothing but the driver)
// and forwards the Runner interface to its C ABI (native/cuda/plm_cuda_api.h). Plain C++: no CUDA headers.
// make_cuda_runner() and cuda_status() (declared in engine.h) are defined in runner_cuda.cpp.
#pragma once
#include <string>

namespace plm {

// Path of the loaded libplm_cuda.so, or empty with *why_not set when it cannot be used.
std::string cuda_library_path(std::string* why_not);

}  // namespace plm
