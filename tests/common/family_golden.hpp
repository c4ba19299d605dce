// The decoder-family golden fixtures (tests/golden/<family>_tiny*, written by
// tests/golden/make_family_golden.py with transformers + PEFT on the GPU host) and one check run
// of them: load the checkpoint (its family's config reader, the sharded loader for qwen2) in a
// dtype on a device, forward and backward the fixture's batch as the base model or with the LoRA
// adapters, and compare logits, loss and every gradient with transformers'. The CPU test runs it
// in f32 and f64, the GPU test in bf16; each asserts its own tolerances.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "core/tensor.hpp"
#include "ops/rope.hpp"
#include "tests/common/golden_run.hpp"

namespace st::test {

// The families with fixtures: "llama3", "qwen2", "mistral".
const std::vector<std::string>& golden_families();
// Why the fixture of `family` cannot be used ("" when it is there): the tests skip with it.
std::string family_golden_missing(const std::string& family);

enum class GoldenMode { full, lora, peft_adapter };

// The run's measures (tests/common/golden_run.hpp) and the rotary tables.
struct FamilyGoldenRun : GoldenRun {
  // The rotary table: shardtune's (from the config it read) and transformers' (the fixture).
  std::vector<float> inv_freq;
  std::vector<double> ref_inv_freq;
  RopeScaling rope_scaling;
  int64_t head_dim = 0;
  double rope_theta = 0;
};

// round_weights_to_bf16: round every base weight to bf16 after loading (the bf16 floor of the
// fixture: how much of a bf16 run's difference comes from the weights' rounding alone).
// peft_adapter: the saved PEFT adapter directory loaded through shardtune's reader (logits and
// loss only; no gradients).
FamilyGoldenRun run_family_golden(const std::string& family, GoldenMode mode, DType dtype, Device device,
                                  bool round_weights_to_bf16 = false);

}  // namespace st::test
