// TEMPORARY until runner_cuda.cpp lands.
#include "model/engine.h"
namespace plm {
std::unique_ptr<Runner> make_cuda_runner(const LoadedModel&, int, int64_t, const ProgressFn&, std::string* why_not) {
  *why_not = "the CUDA backend is not built in this version";
  return nullptr;
}
std::string cuda_status() { return "the CUDA backend is not built in this version"; }
}  // namespace plm
