#include "train/mfu.hpp"

#include <algorithm>
#include <cctype>
#include <limits>
#include <vector>

namespace st {

double gpu_bf16_peak_flops(const std::string& device_name) {
  // Dense (no sparsity) bf16 tensor-core peaks with f32 accumulation, in TFLOP/s, from NVIDIA's
  // documents (the datasheets print them "with sparsity", twice these): H100 SXM5 989.4 (H100
  // Tensor Core GPU Architecture whitepaper; 1,979 with sparsity), H100 PCIe 756 (same
  // whitepaper), H200 SXM 989.4 (H200 datasheet: 1,979 with sparsity; the H100 SXM5's tensor
  // cores), GH200 989.4 (GH200 datasheet: its GPU is the H100 SXM5's), A100 312 (A100 datasheet;
  // 624 with sparsity), L40S 362.05 (L40S datasheet; 733 with sparsity). H100/H200 NVL: not in the
  // table (no MFU). The same table as analysis/bench.py's DENSE_BF16_PEAKS: every word of an entry
  // must occur in the name (case-insensitive), the first match wins.
  struct Entry {
    std::vector<std::string> words;
    double tflops;  // 0: a variant with no figure here
  };
  static const std::vector<Entry> table = {
      {{"h100", "pcie"}, 756.0}, {{"h100", "nvl"}, 0.0}, {{"h200", "nvl"}, 0.0}, {{"gh200"}, 989.4},
      {{"h100"}, 989.4},         {{"h200"}, 989.4},      {{"a100"}, 312.0},      {{"l40s"}, 362.05},
  };
  std::string name = device_name;
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char ch) { return std::tolower(ch); });
  for (const Entry& e : table) {
    bool all = true;
    for (const std::string& w : e.words) all = all && name.find(w) != std::string::npos;
    if (all) return e.tflops * 1e12;
  }
  return 0.0;
}

double model_flops_utilization(double flops_per_token, double tokens, double seconds, int gpus, double peak_flops) {
  if (!(peak_flops > 0) || !(seconds > 0) || gpus < 1) return std::numeric_limits<double>::quiet_NaN();
  return flops_per_token * tokens / seconds / (static_cast<double>(gpus) * peak_flops);
}

}  // namespace st
