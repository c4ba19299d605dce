#include "model/llama.hpp"

#include <algorithm>
#include <cmath>

#include "core/rng.hpp"
#include "ops/activation.hpp"
#include "ops/attention.hpp"
#include "ops/init.hpp"
#include "ops/loss.hpp"
#include "ops/matmul.hpp"
#include "ops/norm.hpp"

namespace st {

namespace {

std::string layer_prefix(int64_t l) { return str("model.layers.", l, "."); }

Tensor alloc(const Shape& s, const LlamaModel& m, MemCategory cat) { return Tensor::zeros(s, m.dtype, m.device, cat); }

// First `rows` rows of a [max_rows, cols] buffer.
Tensor rows_of(const Tensor& buf, int64_t rows) { return buf.slice(0, rows); }

bool contains(const std::vector<std::string>& v, const std::string& s) { return std::find(v.begin(), v.end(), s) != v.end(); }

// A linear layer's structure before its storage exists: name and full shape (materialize_params
// gives it this rank's shape).
Linear declare_linear(const std::string& name, int64_t in, int64_t out) {
  Linear l;
  l.name = name;
  l.in = in;
  l.out = out;
  return l;
}

}  // namespace

void llama_check_tp(const LlamaConfig& cfg, int p) {
  check_tp_divisible(p, {{cfg.num_heads, "the number of attention heads", "num_attention_heads"},
                         {cfg.num_kv_heads, "the number of key/value heads", "num_key_value_heads"},
                         {cfg.intermediate_size, "the FFN width", "intermediate_size"},
                         {cfg.vocab_size, "the vocabulary", "vocab_size"}});
}

LlamaLocalDims llama_local_dims(const LlamaModel& m) {
  const int64_t p = m.tp.size;
  LlamaLocalDims d;
  d.heads = m.cfg.num_heads / p;
  d.kv_heads = m.cfg.num_kv_heads / p;
  d.q_dim = d.heads * m.cfg.head_dim;
  d.kv_dim = d.kv_heads * m.cfg.head_dim;
  d.intermediate = m.cfg.intermediate_size / p;
  d.vocab = m.cfg.vocab_size / p;
  d.vocab_offset = d.vocab * m.tp.rank;
  return d;
}

const TpPlan& llama_tp_plan() {
  static const TpPlan plan{{{"embed", TpMode::column},
                            {"q", TpMode::column},
                            {"k", TpMode::column},
                            {"v", TpMode::column},
                            {"o", TpMode::row},
                            {"gate", TpMode::column},
                            {"up", TpMode::column},
                            {"down", TpMode::row},
                            {"lm_head", TpMode::column}}};
  return plan;
}

ParamTable llama_param_table(LlamaModel& m) {
  const LlamaConfig& c = m.cfg;
  const TpPlan& plan = llama_tp_plan();
  const int L = static_cast<int>(m.blocks.size());
  ParamTable t;
  t.num_units = L + 2;
  t.unit_names.push_back("embed");
  for (int l = 0; l < L; ++l) t.unit_names.push_back(str("layers.", l));
  t.unit_names.push_back("head");
  t.embed_unit = 0;
  t.head_unit = L + 1;
  t.tied = c.tie_word_embeddings;
  t.base_trainable = m.base_trainable;
  t.hooks = &m.hooks;
  t.dtype = m.dtype;
  t.device = m.device;
  t.tp = m.tp;
  auto split_of = [&](const std::string& key) { return tp_effective(plan.style_of(key), m.tp); };
  auto norm = [&](const std::string& name, Tensor* w, Tensor* g, int unit) {
    ParamEntry e;
    e.name = name;
    e.tensor = w;
    e.grad = g;
    e.full_shape = Shape{c.hidden_size};
    e.unit = unit;
    e.decay = false;
    e.init = ParamInit::ones;
    t.params.push_back(std::move(e));
  };
  // A linear's weight [out, in] (and bias [out]) with the plan's style of its short name.
  auto linear = [&](Linear& lin, int64_t in, int64_t out, int unit, bool bias) {
    const std::string key = lin.name == "lm_head" ? "lm_head" : llama_module_short_name(lin.name);
    const TpMode split = split_of(key);
    ParamEntry w;
    w.name = lin.name + ".weight";
    w.tensor = &lin.weight;
    w.grad = &lin.grad;
    w.linear = &lin;
    w.full_shape = Shape{out, in};
    w.split = split;
    w.unit = unit;
    w.quantizable = key != "lm_head";
    t.params.push_back(std::move(w));
    if (bias) {
      ParamEntry b;
      b.name = lin.name + ".bias";
      b.tensor = &lin.bias;
      b.grad = &lin.bias_grad;
      b.linear = &lin;
      b.bias = true;
      b.full_shape = Shape{out};
      b.split = split == TpMode::column ? TpMode::column : TpMode::none;  // with the output rows
      b.unit = unit;
      b.decay = false;
      b.init = ParamInit::zeros;
      t.params.push_back(std::move(b));
    }
  };
  {
    ParamEntry e;
    e.name = "model.embed_tokens.weight";
    e.tensor = &m.embed;
    e.grad = &m.embed_grad;
    if (c.tie_word_embeddings) {  // lm_head reads (and its gradient adds into) the embedding's buffers
      e.aliases = {&m.lm_head.weight};
      e.grad_aliases = {&m.lm_head.grad};
    }
    e.full_shape = Shape{c.vocab_size, c.hidden_size};
    e.split = split_of("embed");
    e.unit = 0;
    t.params.push_back(std::move(e));
  }
  const int64_t C = c.hidden_size, I = c.intermediate_size;
  for (int l = 0; l < L; ++l) {
    LlamaBlock& b = m.blocks[static_cast<size_t>(l)];
    const std::string p = layer_prefix(l);
    const int u = l + 1;
    norm(p + "input_layernorm.weight", &b.attn_norm, &b.attn_norm_grad, u);
    linear(b.q, C, c.q_dim(), u, c.qkv_bias);
    linear(b.k, C, c.kv_dim(), u, c.qkv_bias);
    linear(b.v, C, c.kv_dim(), u, c.qkv_bias);
    linear(b.o, c.q_dim(), C, u, false);
    norm(p + "post_attention_layernorm.weight", &b.mlp_norm, &b.mlp_norm_grad, u);
    linear(b.gate, C, I, u, false);
    linear(b.up, C, I, u, false);
    linear(b.down, I, C, u, false);
    for (Linear* lin : {&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down}) {
      t.linears.push_back(lin);
      t.linear_units.push_back(u);
    }
  }
  norm("model.norm.weight", &m.final_norm, &m.final_norm_grad, L + 1);
  if (!c.tie_word_embeddings) linear(m.lm_head, C, c.vocab_size, L + 1, false);
  t.linears.push_back(&m.lm_head);
  t.linear_units.push_back(L + 1);
  return t;
}

LlamaModel llama_build(const LlamaConfig& cfg, DType dtype, Device device, const LlamaQuant& quant,
                       const TpGroup& tp) {
  cfg.validate("model config");
  llama_check_tp(cfg, tp.size);
  if (tp.size > 1 && !tp.comm) ST_THROW("llama_build: tp.size ", tp.size, " without a communicator");
  if (quant.nf4_any()) {
    quant.nf4.validate("qlora");
    for (const std::string& t : quant.modules)
      if (!contains(llama_module_names(), t)) ST_THROW_INPUT("qlora: unknown module '", t, "' (use q, k, v, o, gate, up, down)");
  }
  for (const std::string& t : quant.fp8_modules)
    if (!contains(llama_module_names(), t))
      ST_THROW_INPUT("lora_targets: a llama model has no module '", t, "' (use q, k, v, o, gate, up, down; with ",
                     quant.fp8_where, ": base_precision = fp8 their base is held in FP8)");
  LlamaModel m;
  m.cfg = cfg;
  m.dtype = dtype;
  m.device = device;
  m.tp = tp.size > 1 ? tp : TpGroup{};
  // The structure at full shapes; materialize_params allocates this rank's part of each tensor.
  const int64_t C = cfg.hidden_size, I = cfg.intermediate_size;
  m.blocks.resize(static_cast<size_t>(cfg.num_layers));
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    LlamaBlock& b = m.blocks[static_cast<size_t>(l)];
    const std::string p = layer_prefix(l);
    b.q = declare_linear(p + "self_attn.q_proj", C, cfg.q_dim());
    b.k = declare_linear(p + "self_attn.k_proj", C, cfg.kv_dim());
    b.v = declare_linear(p + "self_attn.v_proj", C, cfg.kv_dim());
    b.o = declare_linear(p + "self_attn.o_proj", cfg.q_dim(), C);
    b.gate = declare_linear(p + "mlp.gate_proj", C, I);
    b.up = declare_linear(p + "mlp.up_proj", C, I);
    b.down = declare_linear(p + "mlp.down_proj", I, C);
  }
  m.lm_head = declare_linear("lm_head", C, cfg.vocab_size);
  ParamTable t = llama_param_table(m);
  materialize_params(t, quant, llama_module_short_name);
  if (cfg.tie_word_embeddings) {  // the head is the embedding's buffer (the same vocabulary rows under TP)
    m.lm_head.out = m.embed.dim(0);
    m.lm_head.in = C;
    m.lm_head.tp = m.tp;
    m.lm_head.tp_mode = tp_effective(llama_tp_plan().style_of("lm_head"), m.tp);
  }
  m.rope = rope_tables(cfg.max_position_embeddings, cfg.head_dim, cfg.rope_theta, device, cfg.rope_scaling);
  if (quant.nf4_any()) m.dequant = share_dequant_buffer(llama_linears(m), dtype, device);
  return m;
}

std::vector<LlamaWeightSlot> llama_weight_slots(LlamaModel& m) { return weight_slots(llama_param_table(m)); }
std::vector<std::pair<std::string, Tensor*>> llama_named_weights(LlamaModel& m) {
  return named_weights(llama_param_table(m));
}
Tensor llama_shard_of(const LlamaModel& m, const LlamaWeightSlot& slot, const Tensor& full) {
  return slot_shard_of(m.tp, slot, full);
}
void llama_set_weight(const LlamaWeightSlot& slot, const Tensor& value) { set_weight(slot, value); }
LlamaWeightBytes llama_weight_bytes(LlamaModel& m) { return param_bytes(llama_param_table(m)); }

void llama_dequantize(LlamaModel& m) {
  dequantize_linears(llama_linears(m), m.dtype);
  m.dequant.reset();
}

void llama_init_random(LlamaModel& m, uint64_t seed, double std) {
  ParamTable t = llama_param_table(m);
  init_params_random(t, seed, std);
}

void llama_enable_base_training(LlamaModel& m, MasterWeights mw) {
  ParamTable t = llama_param_table(m);
  enable_base_training(t, mw);
  m.base_trainable = true;
}

std::vector<Linear*> llama_linears(LlamaModel& m) {
  std::vector<Linear*> out;
  for (auto& b : m.blocks)
    for (Linear* lin : {&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down}) out.push_back(lin);
  out.push_back(&m.lm_head);
  return out;
}

std::vector<std::vector<Linear*>> llama_input_groups(LlamaModel& m) {
  std::vector<std::vector<Linear*>> out;
  for (auto& b : m.blocks) {
    out.push_back({&b.q, &b.k, &b.v});
    out.push_back({&b.gate, &b.up});
  }
  return out;
}

std::vector<ParamRef> llama_trainable_params(LlamaModel& m) { return trainable_params(llama_param_table(m)); }
std::vector<std::vector<ParamRef>> llama_params_by_unit(LlamaModel& m) { return params_by_unit(llama_param_table(m)); }
int64_t llama_num_trainable(LlamaModel& m) { return num_trainable(llama_param_table(m)); }

bool llama_adapters_need_scratch(const LlamaModel& m) {
  for (const LlamaBlock& blk : m.blocks)
    for (const Linear* l : {&blk.q, &blk.k, &blk.v, &blk.o, &blk.gate, &blk.up, &blk.down})
      if (l->adapter && l->adapter->needs_scratch()) return true;
  return false;
}

namespace {
// Whether the LM head can run over chunks of rows in a training forward: no adapter on it (LoRA's
// saved products are per batch), no TP (the vocabulary-parallel loss is one collective over the
// batch), and where the base trains its gradient bound (ZeRO-3 binds it only in the backward).
bool head_chunkable(const LlamaModel& m) {
  return !m.lm_head.adapter && !m.tp.active() && (!m.base_trainable || m.lm_head.grad.defined());
}
}  // namespace

int64_t llama_head_chunk_rows(int64_t rows, int64_t vocab, DType dtype) {
  constexpr double kWhole = 256.0 * (1 << 20), kChunk = 64.0 * (1 << 20);
  const double row_bytes = static_cast<double>(vocab) * static_cast<double>(dtype_size(dtype));
  if (static_cast<double>(rows) * row_bytes <= kWhole) return 0;
  const int64_t r = std::max<int64_t>(512, static_cast<int64_t>(kChunk / row_bytes) / 128 * 128);
  return r < rows ? r : 0;
}

LlamaActivations llama_activations(const LlamaModel& m, int64_t B_max, int64_t T_max,
                                   bool checkpointing, bool trainable, int64_t head_chunk) {
  return llama_activations(m, B_max, T_max, checkpointing ? Checkpointed::all() : Checkpointed::none(), trainable,
                           head_chunk);
}

LlamaActivations llama_activations(const LlamaModel& m, int64_t B_max, int64_t T_max,
                                   Checkpointed checkpointing, bool trainable, int64_t head_chunk) {
  const LlamaConfig& c = m.cfg;
  const LlamaLocalDims ld = llama_local_dims(m);
  const int64_t BT = B_max * T_max, C = c.hidden_size, I = ld.intermediate;
  LlamaActivations a;
  a.B_max = B_max;
  a.T_max = T_max;
  a.checkpointed = trainable ? checkpointing.of(c.num_layers) : 0;
  a.trainable = trainable;
  auto act = [&](const Shape& s) { return alloc(s, m, MemCategory::activations); };
  // Statistics (norm rstd, attention lse, losses) in the master precision.
  auto stat = [&](const Shape& s) {
    return Tensor::zeros(s, master_dtype(m.dtype), m.device, MemCategory::activations);
  };
  a.resid = act({c.num_layers + 1, BT, C});
  const size_t nsets = trainable ? static_cast<size_t>(checkpoint_sets(c.num_layers, a.checkpointed)) : 1;
  a.blocks.resize(nsets);
  for (auto& b : a.blocks) {
    b.xn1 = act({BT, C});
    b.rstd1 = stat({BT});
    b.q = act({BT, ld.q_dim});
    b.k = act({BT, ld.kv_dim});
    b.v = act({BT, ld.kv_dim});
    b.att = act({BT, ld.q_dim});
    b.lse = stat({BT, ld.heads});
    b.x_mid = act({BT, C});
    b.xn2 = act({BT, C});
    b.rstd2 = stat({BT});
    b.gate = act({BT, I});
    b.up = act({BT, I});
    b.h = act({BT, I});
  }
  a.xnf = act({BT, C});
  a.rstdf = stat({BT});
  if (trainable && head_chunkable(m))
    a.head_chunk = head_chunk < 0 ? llama_head_chunk_rows(BT, ld.vocab, m.dtype) : head_chunk;
  if (a.head_chunk >= BT) a.head_chunk = 0;
  a.logits = act({a.head_chunk > 0 ? a.head_chunk : BT, ld.vocab});
  a.losses = stat({BT});
  if (trainable) {
    auto ws = [&](const Shape& s) { return alloc(s, m, MemCategory::workspace); };
    a.dresid = ws({BT, C});
    a.dxn = ws({BT, C});
    // datt (o's input gradient, read by the attention backward) lives between the MLP's use of
    // dxn and the q/k/v backward's write of it: one buffer where the shapes agree.
    a.datt = ld.q_dim == C ? a.dxn : ws({BT, ld.q_dim});
    a.dq = ws({BT, ld.q_dim});
    a.dk = ws({BT, ld.kv_dim});
    a.dv = ws({BT, ld.kv_dim});
    a.dh = ws({BT, I});
    if (llama_adapters_need_scratch(m)) a.scratch = ws({BT, std::max({C, I, ld.q_dim})});
  }
  return a;
}

bool& lora_terms_to_swiglu_on_cpu() {
  static bool on = false;
  return on;
}

namespace {

// Views of one activation set for the current batch (BT rows).
struct BlockView {
  Tensor xn1, rstd1, q, k, v, att, lse, x_mid, xn2, rstd2, gate, up, h;
};

BlockView view_block(const LlamaBlockActs& s, int64_t BT) {
  return {rows_of(s.xn1, BT), rows_of(s.rstd1, BT), rows_of(s.q, BT),   rows_of(s.k, BT),
          rows_of(s.v, BT),   rows_of(s.att, BT),   rows_of(s.lse, BT), rows_of(s.x_mid, BT),
          rows_of(s.xn2, BT), rows_of(s.rstd2, BT), rows_of(s.gate, BT), rows_of(s.up, BT),
          rows_of(s.h, BT)};
}

Tensor resid_at(const LlamaActivations& a, int64_t l, int64_t BT) {
  const int64_t max_rows = a.B_max * a.T_max;
  Tensor layer = a.resid.slice(l, l + 1);  // [1, max_rows, C]
  return layer.view({max_rows, layer.dim(-1)}).slice(0, BT);
}

AttentionShape attention_shape(const LlamaModel& m, const LlamaBatch& batch) {
  const LlamaConfig& c = m.cfg;
  const LlamaLocalDims ld = llama_local_dims(m);  // this rank's heads under TP
  AttentionShape s;
  s.B = batch.B;
  s.T = batch.T;
  s.Hq = ld.heads;
  s.Hkv = ld.kv_heads;
  s.D = c.head_dim;
  s.causal = true;
  s.scale = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
  return s;
}

// Attention over the batch's documents when it has them (packing), else over its rows.
void attend_forward(const LlamaModel& m, const LlamaBatch& batch, BlockView& s) {
  if (batch.segments.defined())
    attention_varlen_forward(attention_shape(m, batch), s.q, s.k, s.v, batch.segments, s.att, s.lse);
  else
    attention_forward(attention_shape(m, batch), s.q, s.k, s.v, batch.lengths, s.att, s.lse);
}
// dq and dk come out through RoPE's backward (inside the CUDA kernels where they can take it).
void attend_backward(const LlamaModel& m, const LlamaBatch& batch, const BlockView& s, const Tensor& datt, Tensor& dq,
                     Tensor& dk, Tensor& dv) {
  const AttentionRope rope{&m.rope, batch.positions};
  if (batch.segments.defined())
    attention_varlen_backward(attention_shape(m, batch), s.q, s.k, s.v, s.att, s.lse, datt, batch.segments, dq, dk, dv,
                              false, &rope);
  else
    attention_backward(attention_shape(m, batch), s.q, s.k, s.v, s.att, s.lse, datt, batch.lengths, dq, dk, dv, false,
                       Tensor(), nullptr, &rope);
}

LayerContext with_scratch(const LayerContext& ctx, LlamaActivations& a) {
  LayerContext c = ctx;
  if (a.scratch.defined()) c.scratch = &a.scratch;
  return c;
}

// s holds views (handles) of this block's activation buffers; they are written through.
void block_forward(LlamaModel& m, LlamaBlock& blk, BlockView s, const Tensor& x_in,
                   Tensor& x_out, const LlamaBatch& batch, const LayerContext& ctx) {
  const LlamaConfig& c = m.cfg;
  rmsnorm_forward(x_in, blk.attn_norm, c.rms_norm_eps, s.xn1, s.rstd1);
  // q and k leave through RoPE (with LoRA: base GEMM, then the adapter term and the rotation in
  // one pass).
  const OutputRope qk_rope{&m.rope, batch.B, batch.T, batch.positions, {true, true, false}};
  linear_group_forward({&blk.q, &blk.k, &blk.v}, s.xn1, {&s.q, &s.k, &s.v}, ctx, &qk_rope);  // llama_input_groups
  attend_forward(m, batch, s);
  // x_mid = x_in + o(att): residual in the GEMM. Under TP o is row-parallel: linear_layer_forward
  // adds the residual once and completes the sum over the group (Megatron's "g"); q, k, v, gate
  // and up need no communication (x is replicated).
  linear_layer_forward(blk.o, s.att, s.x_mid, false, ctx, &x_in);
  rmsnorm_forward(s.x_mid, blk.mlp_norm, c.rms_norm_eps, s.xn2, s.rstd2);
  // gate and up: with SHARDTUNE_SKINNY's swiglu kind on CUDA (or a test's CPU switch) their LoRA
  // terms stay out of s.gate and s.up, and SwiGLU's forward and backward make them in the tile.
  std::vector<LowRankTerm> gu_terms;
  auto rank = [](const Linear& l) { return l.adapter ? l.adapter->term_rank() : int64_t{0}; };
  const bool terms_to_swiglu = s.gate.device() == Device::cpu
                                   ? lora_terms_to_swiglu_on_cpu()
                                   : swiglu_lora_one_pass(s.gate, rank(blk.gate), rank(blk.up), rank(blk.down));
  linear_group_forward({&blk.gate, &blk.up}, s.xn2, {&s.gate, &s.up}, ctx, nullptr, terms_to_swiglu ? &gu_terms : nullptr);
  if (terms_to_swiglu) swiglu_lora_forward(s.gate, s.up, gu_terms[0], gu_terms[1], s.h);
  else swiglu_forward(s.gate, s.up, s.h);
  // A checkpoint recompute rebuilds what the block's backward reads (h, gate, up, xn2, x_mid,
  // att, q, k, v, lse, xn1, the rstds), never x_out: the down projection, a fifth of the block's
  // GEMM FLOPs (and under TP its all-reduce), is not redone.
  if (ctx.recompute) return;
  linear_layer_forward(blk.down, s.h, x_out, false, ctx, &s.x_mid);  // x_out = x_mid + down(h)
}

// On entry dresid = dL/dx_out; on exit dL/dx_in.
void block_backward(LlamaModel& m, LlamaBlock& blk, const BlockView& s, const Tensor& x_in,
                    LlamaActivations& a, const LlamaBatch& batch, const LayerContext& ctx) {
  const int64_t BT = batch.B * batch.T;
  Tensor dresid = rows_of(a.dresid, BT), dxn = rows_of(a.dxn, BT), datt = rows_of(a.datt, BT);
  Tensor dq = rows_of(a.dq, BT), dk = rows_of(a.dk, BT), dv = rows_of(a.dv, BT);
  // dgate is dh's buffer and dup up's (the block's saved up is not read after SwiGLU's backward;
  // a checkpointed block's is the recompute's): SwiGLU's backward reads each element of dh, gate
  // and up before it writes that element's dgate and dup (elementwise kernels, and the swiglu
  // kind's tiles loaded whole before any is written). No [BT, I] workspace for dup: 0.17 GiB at
  // the 7B shape, 0.21 at 13B.
  Tensor dh = rows_of(a.dh, BT), dgate = dh, dup = s.up;
  auto grad_or_null = [](Tensor& g) { return g.defined() ? &g : nullptr; };

  // The first contribution to each scratch gradient overwrites it (no zeroing pass).
  // MLP branch: x_out = x_mid + down(h)
  // Where the forward left gate's and up's LoRA terms to SwiGLU, down's input-gradient term
  // (dxa A) is left to it too: SwiGLU's backward adds all three in the tile.
  const std::vector<LowRankTerm> gu_terms = linear_left_out_terms({&blk.gate, &blk.up}, s.xn2);
  const bool terms_to_swiglu = gu_terms[0].defined() || gu_terms[1].defined();
  LowRankTerm dh_term;
  linear_layer_backward(blk.down, s.h, dresid, &dh, ctx, false, terms_to_swiglu ? &dh_term : nullptr);
  if (terms_to_swiglu)
    swiglu_lora_backward(dh, s.gate, s.up, gu_terms[0], gu_terms[1], dgate, dup, &dh_term);
  else
    swiglu_backward(dh, s.gate, s.up, dgate, dup, false);
  linear_group_backward({&blk.gate, &blk.up}, s.xn2, {&dgate, &dup}, &dxn, ctx, false);
  tp_sum_partials(m.tp, dxn);  // column-parallel gate/up: partial input gradients (Megatron's "f")
  rmsnorm_backward(dxn, s.x_mid, blk.mlp_norm, s.rstd2, dresid, grad_or_null(blk.mlp_norm_grad));

  // Attention branch: x_mid = x_in + o(att)
  linear_layer_backward(blk.o, s.att, dresid, &datt, ctx, false);
  attend_backward(m, batch, s, datt, dq, dk, dv);
  linear_group_backward({&blk.q, &blk.k, &blk.v}, s.xn1, {&dq, &dk, &dv}, &dxn, ctx, false);
  tp_sum_partials(m.tp, dxn);
  rmsnorm_backward(dxn, x_in, blk.attn_norm, s.rstd1, dresid, grad_or_null(blk.attn_norm_grad));
}

void check_batch(const LlamaModel& m, const LlamaActivations& a, const LlamaBatch& batch) {
  if (batch.B <= 0 || batch.T <= 0 || batch.B > a.B_max || batch.T > a.T_max)
    ST_THROW("batch [", batch.B, ", ", batch.T, "] exceeds the activation buffers [", a.B_max, ", ", a.T_max, "]");
  const int64_t longest = batch.positions.defined() ? batch.max_position + 1 : batch.T;  // positions used
  if (longest > m.cfg.max_position_embeddings)
    ST_THROW_INPUT("sequence length ", longest, " exceeds the model's max_position_embeddings ",
                   m.cfg.max_position_embeddings);
  if (m.cfg.sliding_window > 0 && longest > m.cfg.sliding_window)
    ST_THROW_INPUT("sequence length ", longest, " exceeds the model's sliding_window ", m.cfg.sliding_window,
                   ": sliding-window attention is not implemented (rows within the window attend to every earlier "
                   "position, as plain causal attention does)");
  const int64_t BT = batch.B * batch.T;
  if (batch.ids.numel() != BT || batch.targets.numel() != BT || batch.weight.numel() != BT ||
      batch.lengths.numel() != batch.B || (batch.positions.defined() && batch.positions.numel() != BT) ||
      (batch.segments.defined() && batch.segments.tokens != BT))
    ST_THROW("batch tensors do not match B=", batch.B, " T=", batch.T);
}

}  // namespace

double llama_forward(LlamaModel& m, LlamaActivations& a, const LlamaBatch& batch,
                     const LayerContext& ctx_in, bool grad) {
  check_batch(m, a, batch);
  if (grad && !a.trainable) ST_THROW("llama_forward: gradient requested on eval-only activations");
  const int64_t BT = batch.B * batch.T, L = m.cfg.num_layers;
  const LayerContext ctx = with_scratch(ctx_in, a);
  Tensor x0 = resid_at(a, 0, BT);
  {
    UnitScope unit(m.hooks, 0, false);
    embedding_layer_forward(batch.ids, m.embed, m.tp, x0);  // vocabulary-parallel under TP
  }
  for (int64_t l = 0; l < L; ++l) {
    UnitScope unit(m.hooks, static_cast<int>(l) + 1, false);
    const BlockView s = view_block(a.blocks[checkpoint_set(l, a.checkpointed, a.blocks.size())], BT);
    Tensor x_out = resid_at(a, l + 1, BT);
    block_forward(m, m.blocks[static_cast<size_t>(l)], s, resid_at(a, l, BT), x_out, batch, ctx);
  }
  UnitScope head(m.hooks, static_cast<int>(L) + 1, false);
  Tensor xnf = rows_of(a.xnf, BT), rstdf = rows_of(a.rstdf, BT);
  rmsnorm_forward(resid_at(a, L, BT), m.final_norm, m.cfg.rms_norm_eps, xnf, rstdf);
  Tensor losses = rows_of(a.losses, BT);
  if (grad && a.head_dx_ready)
    ST_THROW("llama_forward: the previous forward added the LM head's gradient (chunked logits) but its "
             "llama_backward never ran");
  a.head_dx_ready = false;
  if (a.head_chunk == 0 || BT <= a.head_chunk) {
    Tensor logits = rows_of(a.logits, BT);
    linear_layer_forward(m.lm_head, xnf, logits, false, ctx);
    return lm_cross_entropy(logits, batch.targets, batch.weight, losses, grad, m.tp);
  }
  if (!head_chunkable(m))
    ST_THROW("llama_forward: the LM head cannot run in chunks (an adapter on it, TP, or its gradient unbound "
             "since the activations were made)");
  // Chunks of head_chunk rows: logits, the loss (and its gradient in place) and, with grad, the
  // head's backward: dxn (the final norm's output gradient) and, where the head trains, its
  // weight gradient, added chunk by chunk (a bf16 one through an f32 accumulator: one rounding).
  Tensor dxn = rows_of(a.dxn, BT);
  const int64_t V = a.logits.dim(-1);
  if (!a.capture_rows.empty())
    a.captured = Tensor::empty({static_cast<int64_t>(a.capture_rows.size()), V}, a.logits.dtype(), a.logits.device(),
                               MemCategory::workspace);
  for (const int64_t r : a.capture_rows)
    if (r < 0 || r >= BT) ST_THROW("llama_forward: capture row ", r, " outside [0, ", BT, ")");
  auto chunks = [&] {
    for (int64_t r0 = 0; r0 < BT; r0 += a.head_chunk) {
      const int64_t n = std::min(a.head_chunk, BT - r0);
      const Tensor x = xnf.slice(r0, r0 + n);
      Tensor logits = rows_of(a.logits, n), lo = losses.slice(r0, r0 + n);
      linear_layer_forward(m.lm_head, x, logits, false, ctx);
      for (size_t i = 0; i < a.capture_rows.size(); ++i) {  // before the loss overwrites them with grad
        const int64_t r = a.capture_rows[i];
        if (r < r0 || r >= r0 + n) continue;
        Tensor dst = a.captured.slice(static_cast<int64_t>(i), static_cast<int64_t>(i) + 1);
        dst.copy_from(logits.slice(r - r0, r - r0 + 1));
      }
      cross_entropy(logits, batch.targets.slice(r0, r0 + n), batch.weight.slice(r0, r0 + n), lo, grad);
      if (!grad) continue;
      Tensor dx = dxn.slice(r0, r0 + n);
      linear_layer_backward(m.lm_head, x, logits, &dx, ctx, false);
    }
  };
  if (grad && m.lm_head.grad.defined()) {
    accumulate_grad_in_f32(m.lm_head.grad, [&](Tensor& g) {
      // The head's backward adds into g (its gradient, or the f32 accumulator) for the chunks.
      const Tensor own = m.lm_head.grad;
      m.lm_head.grad = g;
      try {
        chunks();
      } catch (...) {
        m.lm_head.grad = own;
        throw;
      }
      m.lm_head.grad = own;
    });
  } else {
    chunks();
  }
  a.head_dx_ready = grad;
  return weighted_loss_sum(losses, batch.weight);
}

void llama_backward(LlamaModel& m, LlamaActivations& a, const LlamaBatch& batch, const LayerContext& ctx_in) {
  check_batch(m, a, batch);
  if (!a.trainable) ST_THROW("llama_backward on eval-only activations");
  const int64_t BT = batch.B * batch.T, L = m.cfg.num_layers;
  const LayerContext ctx = with_scratch(ctx_in, a);
  Tensor xnf = rows_of(a.xnf, BT);
  Tensor dxn = rows_of(a.dxn, BT), dresid = rows_of(a.dresid, BT);
  {
    UnitScope head(m.hooks, static_cast<int>(L) + 1, true);
    // Chunked logits: the forward ran the head's backward already (dxn, and its weight gradient).
    if (!a.head_dx_ready) {
      Tensor dlogits = rows_of(a.logits, BT);
      linear_layer_backward(m.lm_head, xnf, dlogits, &dxn, ctx, false);
      tp_sum_partials(m.tp, dxn);  // vocabulary-parallel lm_head: partial input gradients
    }
    a.head_dx_ready = false;
    dresid.zero_();
    rmsnorm_backward(dxn, resid_at(a, L, BT), m.final_norm, rows_of(a.rstdf, BT), dresid,
                     m.final_norm_grad.defined() ? &m.final_norm_grad : nullptr);
  }
  for (int64_t l = L - 1; l >= 0; --l) {
    UnitScope unit(m.hooks, static_cast<int>(l) + 1, true);
    LlamaBlock& blk = m.blocks[static_cast<size_t>(l)];
    const BlockView s = view_block(a.blocks[checkpoint_set(l, a.checkpointed, a.blocks.size())], BT);
    const Tensor x_in = resid_at(a, l, BT);
    if (checkpoint_recomputes(l, a.checkpointed)) {
      // Activation checkpointing: recompute this block's forward from its saved input. The
      // output lands in a scratch copy so the saved block outputs stay intact.
      Tensor x_out = rows_of(a.dxn, BT);
      LayerContext rctx = ctx;
      rctx.recompute = true;
      block_forward(m, blk, s, x_in, x_out, batch, rctx);
    }
    block_backward(m, blk, s, x_in, a, batch, ctx);
  }
  UnitScope embed(m.hooks, 0, true);
  if (m.embed_grad.defined()) {
    embedding_layer_backward(batch.ids, dresid, m.tp, m.embed_grad);
  }
}

double llama_flops_per_token(const LlamaModel& m, int64_t seq_len) {
  const LlamaConfig& c = m.cfg;
  double base = 0, adapter = 0;
  // The whole model's FLOPs (under TP each rank does about 1/tp of them).
  for (const Linear* lin : llama_linears(const_cast<LlamaModel&>(m))) {
    base += static_cast<double>(lin->full_in()) * static_cast<double>(lin->full_out());
    if (lin->adapter) adapter += static_cast<double>(lin->adapter->num_parameters()) * (lin->tp_mode == TpMode::none ? 1 : lin->tp.size);
  }
  const double matmul = (m.base_trainable ? 6.0 : 4.0) * base + 6.0 * adapter;
  // QK^T and PV: 4*T*Hq*D forward per token per layer non-causal, halved by the causal mask,
  // and the backward costs twice the forward.
  const double attn = 3.0 * 2.0 * static_cast<double>(seq_len) * static_cast<double>(c.q_dim()) *
                      static_cast<double>(c.num_layers);
  return matmul + attn;
}

const std::vector<std::string>& llama_module_names() {
  static const std::vector<std::string> names{"q", "k", "v", "o", "gate", "up", "down"};
  return names;
}

std::string llama_module_short_name(const std::string& module) {
  static const std::pair<const char*, const char*> map[] = {
      {"self_attn.q_proj", "q"}, {"self_attn.k_proj", "k"}, {"self_attn.v_proj", "v"},
      {"self_attn.o_proj", "o"}, {"mlp.gate_proj", "gate"}, {"mlp.up_proj", "up"},
      {"mlp.down_proj", "down"}};
  for (const auto& [suffix, shortname] : map) {
    const std::string s = suffix;
    if (module.size() >= s.size() && module.compare(module.size() - s.size(), s.size(), s) == 0) return shortname;
  }
  return "";
}

}  // namespace st
