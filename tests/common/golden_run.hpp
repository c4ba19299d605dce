// What the golden tests share (tests/common/t5_golden.cpp, family_golden.cpp): one run of a model
// on a transformers fixture and its measures (relative L2 of the logits, the loss, every
// gradient's relative L2), and the pieces that compute them.
#pragma once

#include <hdf5.h>

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.hpp"
#include "model/linear.hpp"

namespace st::test {

struct GoldenRun {
  double logits_rel = 0;          // relative L2 of the logits (eval forward)
  double loss = 0, ref_loss = 0;  // the training forward's loss and transformers'
  std::vector<std::pair<std::string, double>> grad_rel;  // per trainable tensor, relative L2
  bool same_parameter_set = false;  // exactly the tensors transformers has gradients for
  Tensor logits;                    // this run's logits and gradients (f64, CPU), to compare two
  std::vector<Tensor> grads;        // runs with each other; grads in grad_rel's order
  double worst_grad() const;
  std::string worst_grad_name() const;
};

// Relative L2 of `a` (any float dtype, any device) from the fixture's values; infinite when
// their sizes differ.
double golden_rel_l2(const Tensor& a, const std::vector<float>& ref);
// Dataset `name` of group `g` (any shape) as f32 values; `where` names the file in errors.
std::vector<float> read_golden_floats(hid_t g, const std::string& name, const std::string& where);
// `host` (a CPU tensor) itself on the CPU, else a copy on `device`.
Tensor golden_on(const Tensor& host, Device device);
// Rounds every weight to bf16 and back, in place: the bf16 floor of a fixture.
void bf16_round_in_place(const std::vector<std::pair<std::string, Tensor*>>& weights);
// Each parameter's gradient against dataset fixture_name(p.name) of group `grads` of file
// `where`, in order, into r.grad_rel and r.grads; r.same_parameter_set when the group holds
// exactly those datasets.
void compare_golden_grads(hid_t grads, const std::vector<ParamRef>& params,
                          const std::function<std::string(const std::string&)>& fixture_name, const std::string& where,
                          GoldenRun& r);

}  // namespace st::test
