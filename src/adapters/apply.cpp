#include "adapters/apply.hpp"

#include <algorithm>

namespace st {

namespace {

bool contains(const std::vector<std::string>& v, const std::string& s) { return std::find(v.begin(), v.end(), s) != v.end(); }

std::string listed(const std::vector<std::string>& v) {
  std::string out;
  for (const std::string& s : v) out += (out.empty() ? "" : ", ") + s;
  return out;
}

template <typename ShortName>
int64_t attach_to(const std::vector<Linear*>& linears, const std::vector<std::vector<Linear*>>& input_groups,
                  const std::vector<std::string>& known, const char* family, const LoraConfig& cfg, int64_t max_rows,
                  uint64_t seed, ShortName short_name) {
  for (const std::string& t : cfg.targets)
    if (!contains(known, t))
      ST_THROW_INPUT("lora_targets: a ", family, " model has no module '", t, "' (use ", listed(known), ")");
  int64_t n = 0;
  for (Linear* lin : linears) {
    const std::string s = short_name(lin->name);
    if (s.empty() || !contains(cfg.targets, s)) continue;
    lin->adapter = std::make_unique<LoraAdapter>(*lin, cfg, max_rows, seed);
    ++n;
  }
  if (n == 0) ST_THROW_INPUT("lora_targets: none of ", listed(cfg.targets), " exists in this ", family, " model");
  if (cfg.share_inputs) lora_join_groups(input_groups);
  return n;
}

void merge_all(const std::vector<Linear*>& linears, const char* dequantize) {
  for (Linear* lin : linears) {
    if (!lin->adapter) continue;
    if (lin->quantized()) ST_THROW("merge_adapters: ", lin->name, " is stored in NF4; call ", dequantize, " first");
    if (lin->fp8_stored())
      ST_THROW("merge_adapters: ", lin->name, " holds its base in FP8 (base_precision = fp8), which keeps no dense "
               "weight to merge into; merge the saved adapter into the original model instead");
    lin->adapter->add_delta_to(lin->weight);
    lin->adapter.reset();
  }
}

}  // namespace

int64_t attach_lora(LlamaModel& m, const LoraConfig& cfg, int64_t max_rows, uint64_t seed) {
  return attach_to(llama_linears(m), llama_input_groups(m), llama_module_names(), "llama", cfg, max_rows, seed,
                   llama_module_short_name);
}

int64_t attach_lora(T5Model& m, const LoraConfig& cfg, int64_t max_rows, uint64_t seed) {
  return attach_to(t5_linears(m), t5_input_groups(m), t5_module_names(), "t5", cfg, max_rows, seed,
                   t5_module_short_name);
}

void merge_adapters(LlamaModel& m) { merge_all(llama_linears(m), "llama_dequantize"); }
void merge_adapters(T5Model& m) { merge_all(t5_linears(m), "t5_dequantize"); }

}  // namespace st
