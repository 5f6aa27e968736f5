// Activation buffers kept between forward passes.
#pragma once
#include <cstddef>
#include <vector>

namespace plm {

// A buffer that grows to the largest size asked for and is kept, neither freed nor re-zeroed between calls.
// A forward pass that allocated its activations afresh had the kernel map, fault in and zero new pages for
// each one every time (glibc serves large blocks by mmap and unmaps them on free): ~45k page faults and
// ~0.17 s of system time per 4-tile vision pass on the 2-core VM. Contents are unspecified: callers write
// before they read. Not thread-safe; a model runs one job at a time.
template <class T>
class Scratch {
 public:
  T* get(size_t n) {
    if (buf_.size() < n) buf_.resize(n);
    return buf_.data();
  }

 private:
  std::vector<T> buf_;
};

}  // namespace plm
