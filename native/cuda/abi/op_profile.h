// Device time per named op, for finding where a vision pass or a prefill spends its time.
// Off unless the environment variable PLM_CUDA_PROFILE is set when the model is created. Then every
// mark(name) records an event on the stream (no synchronization); flush() (after the stream is synchronized)
// charges the time between consecutive marks to the first one's name, and the model's destructor prints
// the totals to stderr: name, calls, total ms, mean us, share of all marked time.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace plm::cuda {

class OpProfile {
 public:
  void init(cudaStream_t stream) {
    const char* e = std::getenv("PLM_CUDA_PROFILE");
    on_ = e && *e && std::string(e) != "0";
    stream_ = stream;
  }
  bool on() const { return on_; }

  // The op `name` starts here; the previous op (if any) ends here. nullptr only ends the previous op.
  void mark(const char* name) {
    if (!on_) return;
    if (used_ == events_.size()) {
      cudaEvent_t ev;
      if (cudaEventCreate(&ev) != cudaSuccess) return;
      events_.push_back(ev);
    }
    cudaEvent_t ev = events_[used_++];
    cudaEventRecord(ev, stream_);
    names_.push_back(name ? name : "");
  }

  // Call with the stream synchronized: charges the marked intervals and frees the marks for reuse.
  void flush() {
    if (!on_) return;
    for (size_t i = 0; i + 1 < used_; ++i) {
      if (names_[i].empty()) continue;
      float ms = 0.f;
      if (cudaEventElapsedTime(&ms, events_[i], events_[i + 1]) != cudaSuccess) continue;
      Total& t = totals_[names_[i]];
      t.ms += ms;
      t.calls += 1;
    }
    used_ = 0;
    names_.clear();
  }

  void report() const {
    if (!on_ || totals_.empty()) return;
    double all = 0;
    for (const auto& kv : totals_) all += kv.second.ms;
    std::vector<std::pair<std::string, Total>> rows(totals_.begin(), totals_.end());
    std::sort(rows.begin(), rows.end(), [](const auto& a, const auto& b) { return a.second.ms > b.second.ms; });
    std::fprintf(stderr, "op profile (PLM_CUDA_PROFILE): %.1f ms marked in all\n", all);
    std::fprintf(stderr, "%-28s %8s %12s %10s %7s\n", "op", "calls", "total ms", "mean us", "share");
    for (const auto& r : rows)
      std::fprintf(stderr, "profile %-20s %8lld %12.2f %10.1f %6.1f%%\n", r.first.c_str(), (long long)r.second.calls,
                   r.second.ms, 1000.0 * r.second.ms / double(r.second.calls), 100.0 * r.second.ms / all);
  }

  ~OpProfile() {
    report();
    for (cudaEvent_t ev : events_) cudaEventDestroy(ev);
  }

 private:
  struct Total {
    double ms = 0;
    long long calls = 0;
  };
  bool on_ = false;
  cudaStream_t stream_ = nullptr;
  std::vector<cudaEvent_t> events_;
  size_t used_ = 0;
  std::vector<std::string> names_;
  std::map<std::string, Total> totals_;
};

}  // namespace plm::cuda
