#include "adapters/apply.hpp"

#include <algorithm>

namespace st {

int64_t attach_lora(LlamaModel& m, const LoraConfig& cfg, int64_t max_rows, uint64_t seed) {
  for (const std::string& t : cfg.targets)
    if (std::find(lora_target_names().begin(), lora_target_names().end(), t) == lora_target_names().end())
      ST_THROW_INPUT("lora_targets: unknown module '", t, "' (use q, k, v, o, gate, up, down)");
  int64_t n = 0;
  for (Linear* lin : llama_linears(m)) {
    const std::string s = llama_module_short_name(lin->name);
    if (s.empty() || std::find(cfg.targets.begin(), cfg.targets.end(), s) == cfg.targets.end()) continue;
    lin->adapter = std::make_unique<LoraAdapter>(*lin, cfg, max_rows, seed);
    ++n;
  }
  return n;
}

void merge_adapters(LlamaModel& m) {
  for (Linear* lin : llama_linears(m)) {
    if (!lin->adapter) continue;
    if (lin->quantized()) ST_THROW("merge_adapters: ", lin->name, " is stored in NF4; call llama_dequantize first");
    lin->adapter->add_delta_to(lin->weight);
    lin->adapter.reset();
  }
}

}  // namespace st
