// The T5 golden fixture (tests/golden/t5_golden.h5 and the checkpoints t5_flan/, t5_t5/, written
// by tests/golden/make_t5_golden.py with transformers' T5ForConditionalGeneration) and one check
// run: load the checkpoint in a dtype on a device, forward and backward the fixture's batch,
// and compare logits, loss and every gradient with transformers'. The CPU tests run it in f32,
// the GPU tests in bf16; each asserts its own tolerances.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.hpp"
#include "io/t5_io.hpp"
#include "model/t5.hpp"
#include "tests/common/golden_run.hpp"

namespace st::test {

// A batch from encoder ids [B, Te], encoder lengths [B] and labels [B, Td] (-1: ignored): the
// decoder inputs shifted right, the loss weights 1 / (number of targets), on `device`.
T5Batch t5_batch_of(int64_t B, int64_t Te, int64_t Td, const std::vector<int32_t>& ids,
                    const std::vector<int32_t>& lengths, const std::vector<int32_t>& labels, int64_t start, int64_t pad,
                    Device device = Device::cpu);

// The run's measures (tests/common/golden_run.hpp).
struct T5GoldenRun : GoldenRun {};

// name: "flan" (gated-gelu) or "t5" (relu). round_weights_to_bf16: round every weight to bf16
// after loading (and compute in `dtype`): how much of a bf16 run's difference from the f32
// fixture comes from the weights' rounding alone.
T5GoldenRun run_t5_golden(const std::string& name, DType dtype, Device device, bool round_weights_to_bf16 = false);

}  // namespace st::test
