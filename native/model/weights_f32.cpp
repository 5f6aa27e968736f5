#include "model/weights_f32.h"

#include <cstdint>

#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace plm {

std::vector<float> load_f32(const LoadedModel& model, const std::string& name) {
  const TensorView& t = model.get(name);
  std::vector<float> out(static_cast<size_t>(t.numel()));
  to_f32(t.dtype, t.data, out.data(), t.numel());
  return out;
}

cpu::WeightMatrix matrix(const TensorView& t) {
  cpu::WeightMatrix m;
  m.dtype = t.dtype;
  m.data = t.data;
  m.rows = t.shape.empty() ? 0 : t.shape[0];
  m.cols = t.shape.empty() ? 0 : t.numel() / t.shape[0];
  return m;
}

void release_mapped_pages(const cpu::WeightMatrix& source) {
#if defined(__unix__) || defined(__APPLE__)
  const long page = sysconf(_SC_PAGESIZE);
  if (page <= 0 || !source.data) return;
  const uintptr_t b = reinterpret_cast<uintptr_t>(source.data);
  const uintptr_t e = b + static_cast<uintptr_t>(source.rows * source.cols) * dtype_size(source.dtype);
  const uintptr_t b2 = (b + page - 1) / page * page, e2 = e / page * page;
  if (e2 > b2) madvise(reinterpret_cast<void*>(b2), e2 - b2, MADV_DONTNEED);
#else
  (void)source;
#endif
}

}  // namespace plm
