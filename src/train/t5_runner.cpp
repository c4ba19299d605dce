// The T5 / FlanT5 encoder-decoder behind ModelRunner: seq2seq shards (encoder ids, decoder
// targets), T5Model with its adapters, activations and the micro-batch tensors.
#include <algorithm>
#include <cmath>

#include "adapters/apply.hpp"
#include "adapters/peft.hpp"
#include "core/allocator.hpp"
#include "core/log.hpp"
#include "io/hf_checkpoint.hpp"
#include "io/hf_tokenizer.hpp"
#include "io/t5_io.hpp"
#include "model/t5.hpp"
#include "train/evaluate.hpp"
#include "train/families.hpp"
#include "train/loader.hpp"
#include "train/model_runner.hpp"

namespace st {

namespace {

T5Config t5_config_from_options(const RunConfig& c, const ShardInfo& info) {
  T5Config m;
  m.vocab_size = c.vocab_size > 0 ? c.vocab_size : info.tokenizer_vocab_size;
  m.d_model = c.hidden_size;
  m.d_ff = c.intermediate_size;
  m.num_layers = c.num_layers;
  m.num_decoder_layers = c.num_decoder_layers > 0 ? c.num_decoder_layers : c.num_layers;
  m.num_heads = c.num_heads;
  m.d_kv = c.head_dim > 0 ? c.head_dim : c.hidden_size / c.num_heads;
  m.relative_attention_num_buckets = c.relative_attention_num_buckets;
  m.relative_attention_max_distance = c.relative_attention_max_distance;
  m.layer_norm_epsilon = c.rms_norm_eps;
  m.gated = c.feed_forward_proj != "relu";
  m.tie_word_embeddings = c.tie_embeddings;
  m.scale_decoder_outputs = c.tie_embeddings;  // T5's tied head sees the scaled decoder output
  m.pad_token_id = std::max<int32_t>(0, info.pad_id);
  m.decoder_start_token_id = std::max<int32_t>(0, info.decoder_start_id);
  m.eos_token_id = info.eos_id;
  m.validate(str("options of ", c.deck.empty() ? std::string("the command line") : c.deck));
  return m;
}

class T5Runner final : public ModelRunner {
 public:
  explicit T5Runner(const RunnerSpec& s)
      : family_(s.family), shape_(s.shape), device_(s.device), micro_batch_(s.c.micro_batch_size) {
    const RunConfig& c = s.c;
    const ShardInfo& info = s.info;
    const DataShape& shape = s.shape;
    const DType dtype = s.dtype;
    const Device device = s.device;
    const TpGroup& tp = s.tp;
    MemoryPhase phase("load");
    if (shape.target_len < 1) ST_THROW_INPUT(c.data, ": the shards have no decoder targets (target_len 0)");
    const auto origin = c.origin.find("lora_targets");
    default_targets_ = origin == c.origin.end() || origin->second == "default";
    gated_ = c.model.empty() ? c.feed_forward_proj != "relu" : read_t5_config(c.model).gated;
    const T5Quant quant = quant_from_options(s);
    if (!c.model.empty()) {
      m_ = load_t5(c.model, dtype, device, quant, tp);
      ST_LOG("model: loaded ", c.model, " (t5 ", m_.cfg.summary(), ")");
    } else {
      m_ = t5_build(t5_config_from_options(c, info), dtype, device, quant, tp);
      t5_init_random(m_, c.seed, c.init_std);
      ST_LOG("model: random init, seed ", c.seed, " (t5 ", m_.cfg.summary(), ")");
    }
    if (tp.size > 1) {
      const T5LocalDims d = t5_local_dims(m_);
      ST_LOG("tp: ", tp.size, " ranks per tensor-parallel group; this rank holds ", d.heads, " of ", m_.cfg.num_heads,
             " heads, ", d.d_ff, " of ", m_.cfg.d_ff, " FFN columns, vocabulary rows [", d.vocab_offset, ", ",
             d.vocab_offset + d.vocab, ")");
    }
    if (quant.nf4_any()) {
      const T5WeightBytes wb = t5_weight_bytes(m_);
      ST_LOG("qlora: ", wb.quantized_layers, " linear layers in NF4 (block ", quant.nf4.block,
             quant.nf4.double_quant ? ", double quantization" : "", "): base weights ",
             format_bytes(static_cast<double>(wb.stored)), " instead of ", format_bytes(static_cast<double>(wb.dense)));
    }
    if (info.tokenizer_vocab_size > m_.cfg.vocab_size)
      ST_THROW_INPUT(c.data, ": the shards' tokenizer has ", info.tokenizer_vocab_size,
                     " pieces but the model's vocabulary has only ", m_.cfg.vocab_size);
    if (info.decoder_start_id >= 0 && info.decoder_start_id != m_.cfg.decoder_start_token_id)
      ST_WARN("shards were written with decoder_start_id ", info.decoder_start_id, " but the model's is ",
              m_.cfg.decoder_start_token_id, "; the model's is used");
  }

  std::string describe() const override { return "t5 " + m_.cfg.summary(); }
  int64_t num_parameters() const override { return m_.cfg.num_parameters(); }
  int tp_size() const override { return m_.tp.size; }

  void enable_base_training(MasterWeights mw) override { t5_enable_base_training(m_, mw); }
  int64_t attach_lora(const LoraConfig& lc_in, uint64_t seed) override {
    LoraConfig lc = lc_in;
    if (default_targets_) lc.targets = present(lc.targets);
    for (const std::string& t : lc.targets)
      if (present({t}).empty())
        ST_THROW_INPUT("lora_targets: '", t, "' does not exist in a ", gated_ ? "gated-gelu" : "relu", " T5 (its feed-forward is ",
                       gated_ ? "wi_0, wi_1, wo" : "wi, wo", ")");
    return st::attach_lora(m_, lc, micro_batch_ * std::max(shape_.seq_len, shape_.target_len), seed);
  }
  ParamTable param_table() override { return t5_param_table(m_); }
  double flops_per_token() const override { return t5_flops_per_token(m_, shape_.seq_len, shape_.target_len); }
  std::vector<int32_t> row_tokens(const ShardDataset& data) const override {
    std::vector<int32_t> out = data.lengths();
    const std::vector<int32_t>& t = data.target_lengths();
    for (size_t i = 0; i < out.size(); ++i) out[i] += t[i];
    return out;
  }

  bool has_hooks() const override { return m_.hooks != nullptr; }

  int64_t num_blocks() const override { return m_.cfg.num_layers + m_.cfg.num_decoder_layers; }
  void allocate(int64_t B, Checkpointed checkpointing, bool training) override {
    B_ = B;
    acts_ = std::make_unique<T5Activations>(t5_activations(m_, B, shape_.seq_len, shape_.target_len, training, checkpointing));
    const int64_t NE = B * shape_.seq_len, ND = B * shape_.target_len;
    auto both = [&](Tensor& dev, Tensor& host, int64_t n, DType dt) {
      host = Tensor::empty({n}, dt, Device::cpu, MemCategory::workspace);
      dev = device_ == Device::cpu ? host : Tensor::empty({n}, dt, device_, MemCategory::workspace);
    };
    both(d_enc_ids_, h_enc_ids_, NE, DType::i32);
    both(d_enc_lengths_, h_enc_lengths_, B, DType::i32);
    both(d_dec_ids_, h_dec_ids_, ND, DType::i32);
    both(d_dec_targets_, h_dec_targets_, ND, DType::i32);
    both(d_dec_weight_, h_dec_weight_, ND, DType::f32);
    both(d_dec_lengths_, h_dec_lengths_, B, DType::i32);
  }

  double forward(const Batch& host, double token_weight, const LayerContext& ctx, bool grad) override {
    fill_batch(host, token_weight);
    return t5_forward(m_, *acts_, batch_, grad, ctx);
  }
  void backward(const LayerContext& ctx) override { t5_backward(m_, *acts_, batch_, ctx); }
  int64_t computed_tokens() const override { return batch_.B * (batch_.Te + batch_.Td); }

  EvalScores eval_batch(const Batch& host, const std::vector<int32_t>& label_ids) override {
    EvalScores s;
    s.loss_sum = forward(host, 1.0, LayerContext{}, false);
    if (label_ids.empty()) return s;
    // The decoder's first position (after decoder_start) predicts the label word's first token.
    const std::vector<int64_t> pos(static_cast<size_t>(host.rows), 0);
    const T5LocalDims d = t5_local_dims(m_);
    s.label_scores = label_scores_at(acts_->logits, batch_.Td, pos, label_ids, d.vocab_offset, d.vocab, m_.tp);
    return s;
  }

  std::unique_ptr<TokenDecoder> decoder(int64_t, int64_t) override {
    ST_THROW_INPUT("generate: the t5 family (encoder-decoder) has no incremental decoder yet; generate samples from "
                   "the decoder families (llama, mistral, qwen2)");
  }
  int64_t bos_id() const override { return -1; }
  int64_t eos_id() const override { return m_.cfg.eos_token_id; }
  int64_t vocab_size() const override { return m_.cfg.vocab_size; }

  Tensor logits(const LogitsInput& in) override {
    T5Activations acts = t5_activations(m_, in.B, in.T, in.Td, false, false);
    T5Batch b;
    b.B = in.B;
    b.Te = in.T;
    b.Td = in.Td;
    const std::vector<int32_t> none(static_cast<size_t>(in.B * in.Td), -1), zero(none.size(), 0);
    b.enc_ids = tensor_on(in.ids, DType::i32, device_);
    b.enc_lengths = tensor_on(in.lengths, DType::i32, device_);
    b.dec_ids = tensor_on(in.dec_ids, DType::i32, device_);
    b.dec_targets = tensor_on(none, DType::i32, device_);
    b.dec_weight = tensor_on(zero, DType::f32, device_);
    b.dec_lengths = tensor_on(std::vector<int32_t>(static_cast<size_t>(in.B), static_cast<int32_t>(in.Td)), DType::i32, device_);
    t5_forward(m_, acts, b, false, LayerContext{});
    return acts.logits.slice(0, in.B * in.Td).to_cpu(DType::f32).view({in.B, in.Td, m_.cfg.vocab_size});
  }

  void save(const std::string& dir, const std::string& tokenizer_path, uint64_t max_shard_bytes) override {
    t5_dequantize(m_);
    merge_adapters(m_);
    save_t5(m_, dir, max_shard_bytes);
    if (!tokenizer_path.empty() && m_.tp.rank == 0)
      save_hf_tokenizer(tokenizer_path, dir, HfTokenizerKind::t5, kT5ModelMaxLength, m_.cfg.vocab_size);
  }

 private:
  // The feed-forward names this variant has out of `names` (gated: wi_0, wi_1; ReLU: wi).
  std::vector<std::string> present(const std::vector<std::string>& names) const {
    std::vector<std::string> out;
    for (const std::string& n : names)
      if (gated_ ? n != "wi" : (n != "wi_0" && n != "wi_1")) out.push_back(n);
    return out;
  }

  // The NF4 layers: every projection of this variant (all), or the LoRA targets (the default
  // targets filtered to the variant; names given in the deck are taken as they are). The FP8
  // layers of a LoRA run with base_precision = fp8: the LoRA targets, as attach_lora takes them.
  T5Quant quant_from_options(const RunnerSpec& s) const {
    const RunConfig& c = s.c;
    T5Quant q;
    const auto adapted = [&] {
      return !c.adapter.empty() ? lora_config_from_peft(read_peft_config(c.adapter, family_.peft), family_.peft).targets
             : default_targets_ ? present(lora_targets_for(c, family_))
                                : lora_targets_for(c, family_);
    };
    if (s.fp8_base) set_fp8_quant(q, s, adapted());
    if (s.method != Method::qlora) return q;  // eval with method = qlora: the NF4 base too
    q.modules = c.qlora_quantize == "all" ? present(t5_module_names()) : adapted();
    q.nf4.block = c.qlora_block_size;
    q.nf4.double_quant = c.qlora_double_quant;
    return q;
  }

  // Host rows into a compact micro-batch of [B, Te] encoder and [B, Td] decoder positions, Te
  // and Td the longest row's lengths rounded up to a multiple of 8 (aligned GEMM rows; fewer
  // distinct shapes), at most the shards' lengths. Encoder ids padded (keys beyond a row's
  // length are masked), decoder inputs shifted right from the targets, targets beyond a row's
  // target length ignored.
  void fill_batch(const Batch& host, double token_weight) {
    if (!host.pack_rows.empty()) ST_THROW("t5: packed batches are not supported (packing = true is refused for T5)");
    const int64_t B = host.rows, L = host.seq_len, Lt = host.target_len;
    if (B < 1 || B > B_) ST_THROW("t5 batch of ", B, " rows for buffers of ", B_);
    if (L > shape_.seq_len || Lt > shape_.target_len)
      ST_THROW("t5 batch [", L, ", ", Lt, "] exceeds buffers [", shape_.seq_len, ", ", shape_.target_len, "]");
    auto fit = [](int64_t longest, int64_t cap) { return std::min(cap, std::max<int64_t>(8, (longest + 7) / 8 * 8)); };
    const int64_t Te = fit(host.max_length(), L), Td = fit(host.max_target_length(), Lt);
    int32_t* ei = h_enc_ids_.ptr<int32_t>();
    int32_t* el = h_enc_lengths_.ptr<int32_t>();
    int32_t* di = h_dec_ids_.ptr<int32_t>();
    int32_t* dt = h_dec_targets_.ptr<int32_t>();
    float* dw = h_dec_weight_.ptr<float>();
    int32_t* dl = h_dec_lengths_.ptr<int32_t>();
    const int32_t pad = static_cast<int32_t>(m_.cfg.pad_token_id), start = static_cast<int32_t>(m_.cfg.decoder_start_token_id);
    for (int64_t b = 0; b < B; ++b) {
      const size_t r = static_cast<size_t>(b);
      const int64_t len = std::clamp<int64_t>(host.lengths[r], 1, Te);
      const int64_t tlen = std::min<int64_t>(host.target_lengths[r], Td);
      const int32_t* ids = host.ids.data() + r * static_cast<size_t>(L);
      const int32_t* tg = host.targets.data() + r * static_cast<size_t>(Lt);
      el[b] = static_cast<int32_t>(len);
      dl[b] = static_cast<int32_t>(std::max<int64_t>(1, tlen));
      for (int64_t t = 0; t < Te; ++t) ei[b * Te + t] = t < len ? ids[t] : pad;
      for (int64_t t = 0; t < Td; ++t) {
        const bool target = t < tlen;
        dt[b * Td + t] = target ? tg[t] : -1;
        dw[b * Td + t] = target ? static_cast<float>(token_weight) : 0.0f;
        // decoder_input_ids = [start, labels[0..Td-2]] with ignored labels read as pad.
        di[b * Td + t] = t == 0 ? start : (t - 1 < tlen ? tg[t - 1] : pad);
      }
    }
    batch_.B = B;
    batch_.Te = Te;
    batch_.Td = Td;
    batch_.enc_ids = d_enc_ids_.slice(0, B * Te);
    batch_.enc_lengths = d_enc_lengths_.slice(0, B);
    batch_.dec_ids = d_dec_ids_.slice(0, B * Td);
    batch_.dec_targets = d_dec_targets_.slice(0, B * Td);
    batch_.dec_weight = d_dec_weight_.slice(0, B * Td);
    batch_.dec_lengths = d_dec_lengths_.slice(0, B);
    if (device_ != Device::cpu) {
      batch_.enc_ids.copy_from(h_enc_ids_.slice(0, B * Te));
      batch_.enc_lengths.copy_from(h_enc_lengths_.slice(0, B));
      batch_.dec_ids.copy_from(h_dec_ids_.slice(0, B * Td));
      batch_.dec_targets.copy_from(h_dec_targets_.slice(0, B * Td));
      batch_.dec_weight.copy_from(h_dec_weight_.slice(0, B * Td));
      batch_.dec_lengths.copy_from(h_dec_lengths_.slice(0, B));
    }
  }

  const ModelFamily& family_;
  T5Model m_;
  DataShape shape_;
  Device device_;
  int64_t micro_batch_ = 1, B_ = 0;
  bool default_targets_ = true, gated_ = true;
  std::unique_ptr<T5Activations> acts_;
  T5Batch batch_;
  Tensor h_enc_ids_, h_enc_lengths_, h_dec_ids_, h_dec_targets_, h_dec_weight_, h_dec_lengths_;  // host staging
  Tensor d_enc_ids_, d_enc_lengths_, d_dec_ids_, d_dec_targets_, d_dec_weight_, d_dec_lengths_;  // device
};

}  // namespace

std::unique_ptr<ModelRunner> make_t5_runner(const RunnerSpec& spec) { return std::make_unique<T5Runner>(spec); }

}  // namespace st
