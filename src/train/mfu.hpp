// Model FLOPs utilisation: the model's training FLOPs per second over the GPUs' dense bf16 peak
// (torchtitan's convention: the peak from a device table, never a constant).
#pragma once

#include <string>

namespace st {

// Dense (no sparsity) bf16 tensor-core peak of a GPU, in FLOP/s, by the name
// cudaGetDeviceProperties reports; 0 for a device not in the table (MFU is then not recorded).
double gpu_bf16_peak_flops(const std::string& device_name);

// MFU of a step: model FLOPs (flops_per_token x tokens of the global batch) per second over the
// peak of `gpus` devices; NaN when the peak is unknown (0), as on CPUs.
double model_flops_utilization(double flops_per_token, double tokens, double seconds, int gpus, double peak_flops);

}  // namespace st
