#include "train/mfu.hpp"

#include <limits>

namespace st {

double gpu_bf16_peak_flops(const std::string& name) {
  auto has = [&](const char* s) { return name.find(s) != std::string::npos; };
  // Dense BF16 Tensor Core figures of NVIDIA's datasheets (which print them "with sparsity",
  // twice these): H100 SXM5 989.4 TFLOP/s (H100 Tensor Core GPU datasheet, BF16 1,979 TFLOPS*),
  // H200 SXM 989.4 (H200 datasheet, 1,979*), A100 312 (A100 datasheet, 624*). The PCIe and NVL
  // H100/H200 boards have lower clocks and other figures: not in the table, no MFU for them.
  if (has("H100") && !has("PCIe") && !has("NVL")) return 989.4e12;
  if (has("H200") && !has("NVL")) return 989.4e12;
  if (has("A100")) return 312e12;
  return 0.0;
}

double model_flops_utilization(double flops_per_token, double tokens, double seconds, int gpus, double peak_flops) {
  if (!(peak_flops > 0) || !(seconds > 0) || gpus < 1) return std::numeric_limits<double>::quiet_NaN();
  return flops_per_token * tokens / seconds / (static_cast<double>(gpus) * peak_flops);
}

}  // namespace st
