// The Llama-family decoder behind ModelRunner: causal shards, LlamaModel with its adapters,
// activations (with optional checkpointing) and batch buffers.
#include <algorithm>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "adapters/apply.hpp"
#include "adapters/peft.hpp"
#include "core/allocator.hpp"
#include "core/log.hpp"
#include "io/llama_io.hpp"
#include "parallel/zero3.hpp"
#include "train/evaluate.hpp"
#include "train/loader.hpp"
#include "train/model_runner.hpp"

namespace fs = std::filesystem;

namespace st {

namespace {

LlamaConfig config_from_options(const RunConfig& c, const ShardInfo& info) {
  LlamaConfig m;
  m.vocab_size = c.vocab_size > 0 ? c.vocab_size : info.tokenizer_vocab_size;
  m.hidden_size = c.hidden_size;
  m.intermediate_size = c.intermediate_size;
  m.num_layers = c.num_layers;
  m.num_heads = c.num_heads;
  m.num_kv_heads = c.num_kv_heads > 0 ? c.num_kv_heads : c.num_heads;
  m.head_dim = c.head_dim > 0 ? c.head_dim : c.hidden_size / c.num_heads;
  m.max_position_embeddings = c.max_position_embeddings;
  m.rms_norm_eps = c.rms_norm_eps;
  m.rope_theta = c.rope_theta;
  m.tie_word_embeddings = c.tie_embeddings;
  m.bos_token_id = info.bos_id;
  m.eos_token_id = info.eos_id;
  m.validate(str("options of ", c.deck.empty() ? std::string("the command line") : c.deck));
  return m;
}

// The NF4 layers of a QLoRA run, or of an evaluation with method = qlora (none for other methods).
LlamaQuant quant_from_options(const RunConfig& c) {
  LlamaQuant q;
  if (c.method != "qlora") return q;  // eval with method = qlora: the NF4 base too
  // "adapted": the modules of the loaded adapter when there is one (deck key adapter).
  q.modules = c.qlora_quantize == "all"  ? llama_module_names()
              : !c.adapter.empty()       ? lora_config_from_peft(read_peft_config(c.adapter, "llama"), "llama").targets
                                         : c.lora_target_list();
  q.nf4.block = c.qlora_block_size;
  q.nf4.double_quant = c.qlora_double_quant;
  return q;
}

class LlamaRunner final : public ModelRunner {
 public:
  LlamaRunner(const RunConfig& c, const ShardInfo& info, const DataShape& shape, DType dtype, Device device,
              const TpGroup& tp, bool /*training: eval with method = qlora loads the NF4 base too*/)
      : shape_(shape), device_(device), micro_batch_(c.micro_batch_size) {
    MemoryPhase phase("load");
    const LlamaQuant quant = quant_from_options(c);
    if (!c.model.empty()) {
      m_ = load_llama(c.model, dtype, device, quant, tp);
      ST_LOG("model: loaded ", c.model, " (", m_.cfg.summary(), ")");
    } else {
      m_ = llama_build(config_from_options(c, info), dtype, device, quant, tp);
      llama_init_random(m_, c.seed, c.init_std);
      ST_LOG("model: random init, seed ", c.seed, " (", m_.cfg.summary(), ")");
    }
    if (tp.size > 1) {
      const LlamaLocalDims d = llama_local_dims(m_);
      ST_LOG("tp: ", tp.size, " ranks per tensor-parallel group; this rank holds ", d.heads, " of ", m_.cfg.num_heads,
             " heads, ", d.kv_heads, " of ", m_.cfg.num_kv_heads, " KV heads, ", d.intermediate, " of ",
             m_.cfg.intermediate_size, " FFN columns, vocabulary rows [", d.vocab_offset, ", ", d.vocab_offset + d.vocab,
             ")");
    }
    if (quant.any()) {
      const LlamaWeightBytes wb = llama_weight_bytes(m_);
      ST_LOG("qlora: ", wb.quantized_layers, " linear layers in NF4 (block ", quant.nf4.block,
             quant.nf4.double_quant ? ", double quantization" : "", "): base weights ",
             format_bytes(static_cast<double>(wb.stored)), " instead of ", format_bytes(static_cast<double>(wb.dense)),
             " in ", dtype_name(dtype), " (", format_bytes(static_cast<double>(wb.dense - wb.stored)), " saved)");
    }
    if (info.tokenizer_vocab_size > m_.cfg.vocab_size)
      ST_THROW_INPUT(c.data, ": the shards' tokenizer has ", info.tokenizer_vocab_size,
                     " pieces but the model's vocabulary has only ", m_.cfg.vocab_size);
    if (shape.seq_len > m_.cfg.max_position_embeddings)
      ST_WARN("shards hold rows of up to ", shape.seq_len, " tokens but the model's max_position_embeddings is ",
              m_.cfg.max_position_embeddings, "; longer batches will be refused");
  }

  std::string describe() const override { return "llama " + m_.cfg.summary(); }
  int64_t num_parameters() const override { return m_.cfg.num_parameters(); }
  int tp_size() const override { return m_.tp.size; }

  void enable_base_training() override { llama_enable_base_training(m_); }
  int64_t attach_lora(const LoraConfig& lc, uint64_t seed) override {
    return st::attach_lora(m_, lc, micro_batch_ * shape_.row_len(), seed);
  }
  int64_t num_trainable() override { return llama_num_trainable(m_); }
  std::vector<Linear*> linears() override { return llama_linears(m_); }
  WeightBytes weight_bytes() override { return llama_weight_bytes(m_); }
  double flops_per_token() const override { return llama_flops_per_token(m_, shape_.seq_len); }
  std::vector<int32_t> row_tokens(const ShardDataset& data) const override { return data.lengths(); }

  std::vector<ParamRef> trainable_params() override { return llama_trainable_params(m_); }
  std::vector<std::vector<ParamRef>> params_by_unit() override { return llama_params_by_unit(m_); }
  void set_hooks(ModelHooks* hooks) override { m_.hooks = hooks; }
  bool has_hooks() const override { return m_.hooks != nullptr; }
  std::unique_ptr<Zero3> make_zero3(Comm& dp, bool prefetch) override {
    return std::make_unique<Zero3>(m_, dp, prefetch);
  }

  void allocate(int64_t B, bool checkpointing, bool training) override {
    acts_ = std::make_unique<LlamaActivations>(llama_activations(m_, B, shape_.row_len(), checkpointing, training));
    buffers_ = std::make_unique<BatchBuffers>(B, shape_.row_len(), device_);
  }
  double forward(const Batch& host, double token_weight, const LayerContext& ctx, bool grad) override {
    batch_ = buffers_->make(host, token_weight);
    return llama_forward(m_, *acts_, batch_, ctx, grad);
  }
  void backward(const LayerContext& ctx) override { llama_backward(m_, *acts_, batch_, ctx); }
  int64_t computed_tokens() const override { return batch_.B * batch_.T; }
  EvalScores eval_batch(const Batch& host, const std::vector<int32_t>& label_ids) override {
    EvalScores s;
    // Weight 1 per target: the forward returns the plain sum of token losses.
    s.loss_sum = forward(host, 1.0, LayerContext{}, false);
    if (label_ids.empty()) return s;
    // The label tokens' logits at the position predicting the first answer token; under TP each
    // rank holds a vocabulary range, so the owner of each label token contributes it.
    std::vector<int64_t> pos(static_cast<size_t>(host.rows));
    for (int64_t b = 0; b < host.rows; ++b) pos[static_cast<size_t>(b)] = host.answer_start[static_cast<size_t>(b)] - 1;
    const LlamaLocalDims ld = llama_local_dims(m_);
    s.label_scores = label_scores_at(acts_->logits, batch_.T, pos, label_ids, ld.vocab_offset, ld.vocab, m_.tp);
    return s;
  }

  void save(const std::string& dir, const std::string& tokenizer_path) override {
    llama_dequantize(m_);  // a QLoRA base merges in its dequantized form
    merge_adapters(m_);
    save_llama(m_, dir, tokenizer_path);
  }

 private:
  LlamaModel m_;
  DataShape shape_;
  Device device_;
  std::unique_ptr<LlamaActivations> acts_;
  std::unique_ptr<BatchBuffers> buffers_;
  LlamaBatch batch_;
  int64_t micro_batch_ = 1;
};

}  // namespace

std::unique_ptr<ModelRunner> make_llama_runner(const RunConfig& c, const ShardInfo& info, const DataShape& shape,
                                               DType dtype, Device device, const TpGroup& tp, bool training) {
  return std::make_unique<LlamaRunner>(c, info, shape, dtype, device, tp, training);
}

std::string model_arch(const RunConfig& c) {
  if (c.model.empty()) return c.arch;
  const fs::path p = fs::path(c.model) / "config.json";
  std::ifstream f(p);
  if (!f) ST_THROW_INPUT(c.origin.count("model") ? c.origin.at("model") : std::string("options"), ": model = ",
                         c.model, ": cannot read ", p.string());
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(f);
  } catch (const std::exception& e) {
    ST_THROW_INPUT(p.string(), ": not valid JSON: ", e.what());
  }
  const std::string type = j.value("model_type", std::string());
  if (type != "llama" && type != "t5")
    ST_THROW_INPUT(p.string(), ": model_type \"", type, "\" is not supported (llama or t5)");
  const auto it = c.origin.find("arch");
  if (it != c.origin.end() && it->second != "default" && c.arch != type)
    ST_THROW_INPUT(it->second, ": arch = ", c.arch, " but the checkpoint ", c.model, " is a ", type);
  return type;
}

std::string resolve_arch(const RunConfig& c, const ShardInfo& info) {
  const std::string arch = model_arch(c);
  const bool seq2seq = info.arch == "seq2seq";
  if (arch == "t5" && !seq2seq)
    ST_THROW_INPUT(c.data, ": a T5 (encoder-decoder) model needs seq2seq shards, but these are '", info.arch,
                   "' (write them with `shardtune prepare --arch seq2seq`)");
  if (arch == "llama" && seq2seq)
    ST_THROW_INPUT(c.data, ": these are seq2seq shards (encoder-decoder); a Llama decoder needs causal shards "
                   "(`shardtune prepare` without --arch seq2seq), or set arch = t5");
  return arch;
}

}  // namespace st
