// The decoder families (Llama 2/3.x, Mistral, Qwen2) behind ModelRunner: causal shards,
// LlamaModel with its adapters, activations (with optional checkpointing) and batch buffers. The
// families differ only in their config.json reader and writer (DecoderConfigIo).
#include <algorithm>

#include "adapters/apply.hpp"
#include "adapters/peft.hpp"
#include "core/allocator.hpp"
#include "core/log.hpp"
#include "io/llama_io.hpp"
#include "model/llama_cache.hpp"
#include "train/evaluate.hpp"
#include "train/families.hpp"
#include "train/loader.hpp"
#include "train/model_runner.hpp"

namespace st {

namespace {

LlamaConfig config_from_options(const RunConfig& c, const ShardInfo& info, const DecoderConfigIo& io) {
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
  if (io.random_defaults) io.random_defaults(m);
  m.validate(str("options of ", c.deck.empty() ? std::string("the command line") : c.deck));
  return m;
}

// The KV-cached decoder over the runner's model (model/llama_cache.hpp).
class Decoder final : public TokenDecoder {
 public:
  Decoder(LlamaModel& m, int64_t capacity, int64_t max_step) : m_(m), cache_(llama_kv_cache(m, capacity, max_step)) {}
  void reset() override { cache_.reset(); }
  int64_t length() const override { return cache_.length; }
  int64_t capacity() const override { return cache_.capacity; }
  std::vector<float> step(const std::vector<int32_t>& ids) override {
    const Tensor logits = llama_decode(m_, cache_, ids).to_cpu(DType::f32);
    const float* p = logits.ptr<float>();
    return std::vector<float>(p, p + logits.numel());
  }

 private:
  LlamaModel& m_;
  LlamaKvCache cache_;
};

class DecoderRunner final : public ModelRunner {
 public:
  DecoderRunner(const RunnerSpec& s, const DecoderConfigIo& io)
      : family_(s.family), io_(io), shape_(s.shape), device_(s.device), micro_batch_(s.c.micro_batch_size) {
    const RunConfig& c = s.c;
    MemoryPhase phase("load");
    const LlamaQuant quant = quant_of(s);
    if (!c.model.empty()) {
      m_ = load_decoder(c.model, io.read(c.model), s.dtype, s.device, quant, s.tp);
      ST_LOG("model: loaded ", c.model, " (", family_.name, " ", m_.cfg.summary(), ")");
    } else {
      m_ = llama_build(config_from_options(c, s.info, io), s.dtype, s.device, quant, s.tp);
      llama_init_random(m_, c.seed, c.init_std);
      ST_LOG("model: random init, seed ", c.seed, " (", family_.name, " ", m_.cfg.summary(), ")");
    }
    if (s.tp.size > 1) {
      const LlamaLocalDims d = llama_local_dims(m_);
      ST_LOG("tp: ", s.tp.size, " ranks per tensor-parallel group; this rank holds ", d.heads, " of ", m_.cfg.num_heads,
             " heads, ", d.kv_heads, " of ", m_.cfg.num_kv_heads, " KV heads, ", d.intermediate, " of ",
             m_.cfg.intermediate_size, " FFN columns, vocabulary rows [", d.vocab_offset, ", ", d.vocab_offset + d.vocab,
             ")");
    }
    if (quant.nf4_any()) {
      const LlamaWeightBytes wb = llama_weight_bytes(m_);
      ST_LOG("qlora: ", wb.quantized_layers, " linear layers in NF4 (block ", quant.nf4.block,
             quant.nf4.double_quant ? ", double quantization" : "", "): base weights ",
             format_bytes(static_cast<double>(wb.stored)), " instead of ", format_bytes(static_cast<double>(wb.dense)),
             " in ", dtype_name(s.dtype), " (", format_bytes(static_cast<double>(wb.dense - wb.stored)), " saved)");
    }
    if (s.info.tokenizer_vocab_size > m_.cfg.vocab_size)
      ST_THROW_INPUT(c.data, ": the shards' tokenizer has ", s.info.tokenizer_vocab_size,
                     " pieces but the model's vocabulary has only ", m_.cfg.vocab_size);
    // Sliding-window attention is not implemented: a window the rows fit in is plain causal
    // attention, a shorter one is refused here rather than silently trained as full attention.
    if (m_.cfg.sliding_window > 0 && shape_.seq_len > m_.cfg.sliding_window)
      ST_THROW_INPUT(c.model.empty() ? std::string("options") : c.model + "/config.json", ": sliding_window = ",
                     m_.cfg.sliding_window, " is shorter than the run's sequence length ", shape_.seq_len,
                     ": sliding-window attention is not implemented (shorten the rows to at most ",
                     m_.cfg.sliding_window, " tokens)");
    if (shape_.seq_len > m_.cfg.max_position_embeddings)
      ST_WARN("shards hold rows of up to ", shape_.seq_len, " tokens but the model's max_position_embeddings is ",
              m_.cfg.max_position_embeddings, "; longer batches will be refused");
  }

  std::string describe() const override { return family_.name + " " + m_.cfg.summary(); }
  int64_t num_parameters() const override { return m_.cfg.num_parameters(); }
  int tp_size() const override { return m_.tp.size; }
  ParamTable param_table() override { return llama_param_table(m_); }

  void enable_base_training(MasterWeights mw) override { llama_enable_base_training(m_, mw); }
  int64_t attach_lora(const LoraConfig& lc, uint64_t seed) override {
    return st::attach_lora(m_, lc, micro_batch_ * shape_.row_len(), seed);
  }
  double flops_per_token() const override { return llama_flops_per_token(m_, shape_.seq_len); }
  std::vector<int32_t> row_tokens(const ShardDataset& data) const override { return data.lengths(); }
  bool has_hooks() const override { return m_.hooks != nullptr; }

  int64_t num_blocks() const override { return m_.cfg.num_layers; }
  void allocate(int64_t B, Checkpointed checkpointing, bool training) override {
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
    // The label tokens' logits at the position predicting the first answer token; under TP each
    // rank holds a vocabulary range, so the owner of each label token contributes it.
    std::vector<int64_t> pos(static_cast<size_t>(host.rows));
    for (int64_t b = 0; b < host.rows; ++b) pos[static_cast<size_t>(b)] = host.answer_start[static_cast<size_t>(b)] - 1;
    // Weight 1 per target: the forward returns the plain sum of token losses.
    batch_ = buffers_->make(host, 1.0);
    const int64_t T = batch_.T;
    // Chunked logits keep only the last chunk: the forward copies row b's asked position out as
    // its chunk passes (inside the head's own pass: no further collective under ZeRO-3; a
    // position outside the row copies the row's first and scores as none).
    const bool chunked = !label_ids.empty() && acts_->head_chunk > 0 && batch_.B * T > acts_->head_chunk;
    acts_->capture_rows.clear();
    if (chunked)
      for (int64_t b = 0; b < host.rows; ++b) {
        const int64_t p = pos[static_cast<size_t>(b)];
        acts_->capture_rows.push_back(b * T + (p >= 0 && p < T ? p : 0));
      }
    try {
      s.loss_sum = llama_forward(m_, *acts_, batch_, LayerContext{}, false);
    } catch (...) {
      acts_->capture_rows.clear();
      throw;
    }
    acts_->capture_rows.clear();
    if (label_ids.empty()) return s;
    const LlamaLocalDims ld = llama_local_dims(m_);
    if (chunked) {
      std::vector<int64_t> at(pos.size());
      for (size_t b = 0; b < pos.size(); ++b) at[b] = pos[b] >= 0 && pos[b] < T ? 0 : -1;
      s.label_scores = label_scores_at(acts_->captured, 1, at, label_ids, ld.vocab_offset, ld.vocab, m_.tp);
      return s;
    }
    s.label_scores = label_scores_at(acts_->logits, T, pos, label_ids, ld.vocab_offset, ld.vocab, m_.tp);
    return s;
  }
  Tensor logits(const LogitsInput& in) override {
    LlamaActivations acts = llama_activations(m_, in.B, in.T, false, false);
    LlamaBatch b;
    b.B = in.B;
    b.T = in.T;
    b.ids = tensor_on(in.ids, DType::i32, device_);
    b.targets = tensor_on(std::vector<int32_t>(static_cast<size_t>(in.B * in.T), -1), DType::i32, device_);
    b.weight = tensor_on(std::vector<int32_t>(static_cast<size_t>(in.B * in.T), 0), DType::f32, device_);
    b.lengths = tensor_on(in.lengths, DType::i32, device_);
    llama_forward(m_, acts, b, LayerContext{}, false);
    return acts.logits.slice(0, in.B * in.T).to_cpu(DType::f32).view({in.B, in.T, m_.cfg.vocab_size});
  }

  std::unique_ptr<TokenDecoder> decoder(int64_t capacity, int64_t max_step) override {
    return std::make_unique<Decoder>(m_, capacity, max_step);
  }
  int64_t bos_id() const override { return m_.cfg.bos_token_id; }
  int64_t eos_id() const override { return m_.cfg.eos_token_id; }
  int64_t vocab_size() const override { return m_.cfg.vocab_size; }

  void save(const std::string& dir, const std::string& tokenizer_path, uint64_t max_shard_bytes) override {
    llama_dequantize(m_);  // a QLoRA base merges in its dequantized form
    merge_adapters(m_);
    save_decoder(m_, dir, tokenizer_path, max_shard_bytes, io_.write);
  }

 private:
  // The NF4 layers of a QLoRA run, or of an evaluation with method = qlora (none for other
  // methods): "adapted" quantizes the modules of the loaded adapter when there is one (deck key
  // adapter), else lora_targets; "all" every block projection. The FP8 layers of a LoRA run with
  // base_precision = fp8: the adapted modules (the same list, as attach_lora will use it).
  LlamaQuant quant_of(const RunnerSpec& s) const {
    const RunConfig& c = s.c;
    LlamaQuant q;
    const auto adapted = [&] {
      return !c.adapter.empty() ? lora_config_from_peft(read_peft_config(c.adapter, family_.peft), family_.peft).targets
                                : lora_targets_for(c, family_);
    };
    if (s.fp8_base) set_fp8_quant(q, s, adapted());
    if (s.method != Method::qlora) return q;  // eval with method = qlora: the NF4 base too
    q.modules = c.qlora_quantize == "all" ? llama_module_names() : adapted();
    q.nf4.block = c.qlora_block_size;
    q.nf4.double_quant = c.qlora_double_quant;
    return q;
  }

  const ModelFamily& family_;
  DecoderConfigIo io_;
  LlamaModel m_;
  DataShape shape_;
  Device device_;
  std::unique_ptr<LlamaActivations> acts_;
  std::unique_ptr<BatchBuffers> buffers_;
  LlamaBatch batch_;
  int64_t micro_batch_ = 1;
};

}  // namespace

std::unique_ptr<ModelRunner> make_decoder_runner(const RunnerSpec& spec, const DecoderConfigIo& io) {
  return std::make_unique<DecoderRunner>(spec, io);
}

ModelFamily decoder_family(std::string name, std::vector<std::string> model_types, DecoderConfigIo io,
                           std::string refuses) {
  ModelFamily f;
  f.name = std::move(name);
  f.model_types = std::move(model_types);
  f.seq2seq = false;
  f.module_names = llama_module_names();
  f.default_lora_targets = llama_module_names();
  f.peft.family = f.name;
  f.peft.task_type = "CAUSAL_LM";
  f.peft.targets = {{"q", "q_proj"},       {"k", "k_proj"},   {"v", "v_proj"},    {"o", "o_proj"},
                    {"gate", "gate_proj"}, {"up", "up_proj"}, {"down", "down_proj"}};
  f.peft.short_name = llama_module_short_name;
  f.read_config = [read = io.read](const std::string& dir) {
    const LlamaConfig c = read(dir);
    return ModelShape{c.summary(), c.vocab_size, c.hidden_size, c.intermediate_size, c.num_layers,
                      c.num_heads,   c.num_kv_heads, c.head_dim};
  };
  f.make_runner = [io](const RunnerSpec& spec) { return make_decoder_runner(spec, io); };
  f.refuses = std::move(refuses);
  return f;
}

}  // namespace st
