#include "cli/inference_model.hpp"

#include "adapters/apply.hpp"
#include "adapters/peft.hpp"
#include "core/log.hpp"

namespace st {

// The base model through its family's runner (no shards: a synthetic description of rows of up to
// seq_len / target_len tokens), with the adapter attached and loaded when there is one.
std::unique_ptr<ModelRunner> load_inference_model(RunConfig& c, const ModelFamily& fam, DType dtype, Device device,
                                                  int64_t rows, int64_t seq_len, int64_t target_len, Method method,
                                                  const char* what) {
  ShardInfo info;
  info.arch = fam.seq2seq ? "seq2seq" : "causal";
  info.task = what;
  info.decoder_start_id = -1;  // unknown: the model's own is used
  c.micro_batch_size = rows;
  DataShape shape;
  shape.seq_len = seq_len;
  shape.target_len = fam.seq2seq ? target_len : 0;
  std::unique_ptr<ModelRunner> m =
      fam.make_runner(RunnerSpec{c, info, shape, dtype, device, TpGroup{}, method, false, fam});
  if (!c.adapter.empty()) {
    const LoraConfig lc = lora_config_from_peft(read_peft_config(c.adapter, fam.peft), fam.peft);
    m->attach_lora(lc, c.seed);
    const int64_t n = load_peft_adapter(m->linears(), c.adapter);
    ST_LOG(what, ": ", c.adapter, ": ", n, " LoRA modules, r=", lc.r, " alpha=", lc.alpha);
  }
  return m;
}

}  // namespace st
