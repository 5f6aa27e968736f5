// Opt-in per-op wall-time totals: PLM_PROFILE=1 makes every OpTimer add its scope's duration to a named
// counter, and the totals are printed to stderr when the process exits (sorted, with call counts).
// Off by default, when an OpTimer costs one branch on a cached flag.
#pragma once
#include <chrono>

namespace plm {

bool op_profile_enabled();
void op_profile_add(const char* name, double ms);

class OpTimer {
 public:
  explicit OpTimer(const char* name) : name_(op_profile_enabled() ? name : nullptr) {
    if (name_) t0_ = std::chrono::steady_clock::now();
  }
  ~OpTimer() {
    if (name_)
      op_profile_add(name_, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0_).count());
  }
  OpTimer(const OpTimer&) = delete;
  OpTimer& operator=(const OpTimer&) = delete;

 private:
  const char* name_;
  std::chrono::steady_clock::time_point t0_;
};

}  // namespace plm
