#include "tests/common/golden_run.hpp"

#include <algorithm>
#include <cmath>

#include "io/h5util.hpp"
#include "ops/init.hpp"

namespace st::test {

double GoldenRun::worst_grad() const {
  double w = 0;
  for (const auto& [n, e] : grad_rel) w = std::max(w, e);
  return w;
}

std::string GoldenRun::worst_grad_name() const {
  double w = -1;
  std::string name;
  for (const auto& [n, e] : grad_rel)
    if (e > w) {
      w = e;
      name = n;
    }
  return name;
}

double golden_rel_l2(const Tensor& a, const std::vector<float>& ref) {
  if (a.numel() != static_cast<int64_t>(ref.size())) return INFINITY;
  const Tensor h = a.to_cpu(DType::f64);
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double d = h.ptr<double>()[i] - ref[i];
    num += d * d;
    den += static_cast<double>(ref[i]) * ref[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

std::vector<float> read_golden_floats(hid_t g, const std::string& name, const std::string& where) {
  int64_t n = 1;
  for (auto d : h5::dataset_dims(g, name, where)) n *= static_cast<int64_t>(d);
  std::vector<float> v(static_cast<size_t>(n));
  h5::read_dataset(g, name, H5T_NATIVE_FLOAT, v.data(), where);
  return v;
}

Tensor golden_on(const Tensor& host, Device device) {
  if (device == Device::cpu) return host;
  Tensor d = Tensor::empty(host.shape(), host.dtype(), device);
  d.copy_from(host);
  return d;
}

void bf16_round_in_place(const std::vector<std::pair<std::string, Tensor*>>& weights) {
  for (const auto& [n, w] : weights) {
    Tensor r = Tensor::empty(w->shape(), DType::bf16, w->device());
    convert_copy(r, *w);
    convert_copy(*w, r);
  }
}

void compare_golden_grads(hid_t grads, const std::vector<ParamRef>& params,
                          const std::function<std::string(const std::string&)>& fixture_name, const std::string& where,
                          GoldenRun& r) {
  for (const ParamRef& p : params) {
    r.grad_rel.emplace_back(p.name, golden_rel_l2(*p.grad, read_golden_floats(grads, fixture_name(p.name), where)));
    r.grads.push_back(p.grad->to_cpu(DType::f64));
  }
  H5G_info_t info;
  H5Gget_info(grads, &info);
  r.same_parameter_set = static_cast<hsize_t>(r.grad_rel.size()) == info.nlinks;
}

}  // namespace st::test
