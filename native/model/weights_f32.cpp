#include "model/weights_f32.h"

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

}  // namespace plm
