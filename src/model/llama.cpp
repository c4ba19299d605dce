#include "model/llama.hpp"


#include <algorithm>
#include <cmath>

#include "model/init_slots.hpp"
#include "core/rng.hpp"
#include "ops/activation.hpp"
#include "ops/init.hpp"
#include "ops/attention.hpp"
#include "ops/embedding.hpp"
#include "ops/loss.hpp"
#include "ops/matmul.hpp"
#include "ops/norm.hpp"
#include "parallel/comm.hpp"
#include "parallel/tp_ops.hpp"

namespace st {

namespace {

Tensor alloc(const Shape& s, const LlamaModel& m, MemCategory cat) {
  return Tensor::zeros(s, m.dtype, m.device, cat);
}

// in/out are the full layer's; the layer holds this rank's part under `mode`.
Linear make_linear(const std::string& name, int64_t in, int64_t out, const LlamaModel& m, const LlamaQuant& quant,
                   TpMode mode) {
  Linear l;
  l.name = name;
  l.tp = m.tp;
  l.tp_mode = m.tp.size > 1 ? mode : TpMode::none;
  l.in = l.tp_mode == TpMode::row ? in / m.tp.size : in;
  l.out = l.tp_mode == TpMode::column ? out / m.tp.size : out;
  in = l.in;
  out = l.out;
  const std::string s = llama_module_short_name(name);
  if (!s.empty() && std::find(quant.modules.begin(), quant.modules.end(), s) != quant.modules.end())
    l.nf4 = std::make_shared<Nf4Tensor>(nf4_allocate(out, in, quant.nf4, m.device));  // no dense weight
  else
    l.weight = alloc({out, in}, m, MemCategory::weights);
  return l;
}

std::string layer_prefix(int64_t l) { return str("model.layers.", l, "."); }

// First `rows` rows of a [max_rows, cols] buffer.
Tensor rows_of(const Tensor& buf, int64_t rows) { return buf.slice(0, rows); }

// Sum of a partial result over the TP group (no-op without tensor parallelism).
void tp_all_reduce(const LlamaModel& m, Tensor& t) {
  if (m.tp.active()) m.tp.comm->all_reduce_sum(t);
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

Tensor llama_shard_of(const LlamaModel& m, const LlamaWeightSlot& slot, const Tensor& full) {
  if (full.shape() != slot.full_shape)
    ST_THROW(slot.name, ": value ", full.str(), " does not match the full shape ", slot.full_shape.str());
  return tp_shard_of(full, slot.split, m.tp);
}

LlamaModel llama_build(const LlamaConfig& cfg, DType dtype, Device device, const LlamaQuant& quant,
                       const TpGroup& tp) {
  cfg.validate("model config");
  llama_check_tp(cfg, tp.size);
  if (tp.size > 1 && !tp.comm) ST_THROW("llama_build: tp.size ", tp.size, " without a communicator");
  if (quant.any()) {
    quant.nf4.validate("qlora");
    for (const std::string& t : quant.modules)
      if (std::find(llama_module_names().begin(), llama_module_names().end(), t) == llama_module_names().end())
        ST_THROW_INPUT("qlora: unknown module '", t, "' (use q, k, v, o, gate, up, down)");
  }
  LlamaModel m;
  m.cfg = cfg;
  m.dtype = dtype;
  m.device = device;
  m.tp = tp.size > 1 ? tp : TpGroup{};
  const int64_t C = cfg.hidden_size, I = cfg.intermediate_size, V = cfg.vocab_size;
  m.embed = alloc({V / m.tp.size, C}, m, MemCategory::weights);
  m.blocks.resize(static_cast<size_t>(cfg.num_layers));
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    LlamaBlock& b = m.blocks[static_cast<size_t>(l)];
    const std::string p = layer_prefix(l);
    b.attn_norm = alloc({C}, m, MemCategory::weights);
    b.q = make_linear(p + "self_attn.q_proj", C, cfg.q_dim(), m, quant, TpMode::column);
    b.k = make_linear(p + "self_attn.k_proj", C, cfg.kv_dim(), m, quant, TpMode::column);
    b.v = make_linear(p + "self_attn.v_proj", C, cfg.kv_dim(), m, quant, TpMode::column);
    b.o = make_linear(p + "self_attn.o_proj", cfg.q_dim(), C, m, quant, TpMode::row);
    b.mlp_norm = alloc({C}, m, MemCategory::weights);
    b.gate = make_linear(p + "mlp.gate_proj", C, I, m, quant, TpMode::column);
    b.up = make_linear(p + "mlp.up_proj", C, I, m, quant, TpMode::column);
    b.down = make_linear(p + "mlp.down_proj", I, C, m, quant, TpMode::row);
  }
  m.final_norm = alloc({C}, m, MemCategory::weights);
  if (cfg.tie_word_embeddings) {
    m.lm_head.name = "lm_head";
    m.lm_head.in = C;
    m.lm_head.out = V / m.tp.size;
    m.lm_head.tp = m.tp;
    m.lm_head.tp_mode = m.tp.size > 1 ? TpMode::column : TpMode::none;
    m.lm_head.weight = m.embed;  // shared buffer (the same vocabulary rows under TP)
  } else {
    m.lm_head = make_linear("lm_head", C, V, m, quant, TpMode::column);
  }
  m.rope = rope_tables(cfg.max_position_embeddings, cfg.head_dim, cfg.rope_theta, device);
  if (quant.any()) m.dequant = share_dequant_buffer(llama_linears(m), dtype, device);
  return m;
}

std::vector<LlamaWeightSlot> llama_weight_slots(LlamaModel& m) {
  std::vector<LlamaWeightSlot> out;
  auto dense = [&](const std::string& name, Tensor* t) {
    out.push_back({name, t, nullptr, t->shape(), t->shape(), TpMode::none});
  };
  auto linear = [&](Linear* lin) {
    out.push_back({lin->name + ".weight", &lin->weight, lin->quantized() ? lin : nullptr, Shape{lin->out, lin->in},
                   Shape{lin->full_out(), lin->full_in()}, lin->tp_mode});
  };
  out.push_back({"model.embed_tokens.weight", &m.embed, nullptr, m.embed.shape(), Shape{m.cfg.vocab_size, m.cfg.hidden_size},
                 m.tp.size > 1 ? TpMode::column : TpMode::none});
  for (size_t l = 0; l < m.blocks.size(); ++l) {
    LlamaBlock& b = m.blocks[l];
    const std::string p = layer_prefix(static_cast<int64_t>(l));
    dense(p + "input_layernorm.weight", &b.attn_norm);
    for (Linear* lin : {&b.q, &b.k, &b.v, &b.o}) linear(lin);
    dense(p + "post_attention_layernorm.weight", &b.mlp_norm);
    for (Linear* lin : {&b.gate, &b.up, &b.down}) linear(lin);
  }
  dense("model.norm.weight", &m.final_norm);
  if (!m.cfg.tie_word_embeddings) linear(&m.lm_head);
  return out;
}

std::vector<std::pair<std::string, Tensor*>> llama_named_weights(LlamaModel& m) {
  std::vector<std::pair<std::string, Tensor*>> out;
  for (const LlamaWeightSlot& s : llama_weight_slots(m)) {
    if (s.linear) ST_THROW(s.name, " is stored in NF4: dequantize the model first");
    out.emplace_back(s.name, s.tensor);
  }
  return out;
}

void llama_set_weight(const LlamaWeightSlot& slot, const Tensor& value) {
  if (value.shape() != slot.shape) ST_THROW(slot.name, ": value ", value.str(), " does not match ", slot.shape.str());
  if (slot.linear) nf4_quantize(value, *slot.linear->nf4);
  else if (value.dtype() == slot.tensor->dtype()) slot.tensor->copy_from(value);
  else convert_copy(*slot.tensor, value);
}

LlamaWeightBytes llama_weight_bytes(LlamaModel& m) { return weight_bytes_of(llama_weight_slots(m), m.dtype); }

void llama_dequantize(LlamaModel& m) {
  dequantize_linears(llama_linears(m), m.dtype);
  m.dequant.reset();
}

void llama_init_random(LlamaModel& m, uint64_t seed, double std) {
  init_slots_random(llama_weight_slots(m), seed, std, m.dtype, m.device, llama_set_weight,
                    [&](const auto& s, const Tensor& full) { return llama_shard_of(m, s, full); });
}

void llama_enable_base_training(LlamaModel& m) {
  if (m.base_trainable) return;
  for (Linear* lin : llama_linears(m))
    if (lin->quantized()) ST_THROW_INPUT(lin->name, " is stored in NF4 and cannot train (NF4 bases are frozen)");
  m.base_trainable = true;
  // Gradients in the master precision (f32 when the weights are bf16).
  auto grad = [&](const Tensor& w) {
    return Tensor::zeros(w.shape(), master_dtype(m.dtype), m.device, MemCategory::gradients);
  };
  m.embed_grad = grad(m.embed);
  for (auto& b : m.blocks) {
    b.attn_norm_grad = grad(b.attn_norm);
    b.mlp_norm_grad = grad(b.mlp_norm);
    for (Linear* lin : {&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down}) lin->grad = grad(lin->weight);
  }
  m.final_norm_grad = grad(m.final_norm);
  if (m.cfg.tie_word_embeddings) m.lm_head.grad = m.embed_grad;  // both paths add into one buffer
  else m.lm_head.grad = grad(m.lm_head.weight);
}

std::vector<Linear*> llama_linears(LlamaModel& m) {
  std::vector<Linear*> out;
  for (auto& b : m.blocks)
    for (Linear* lin : {&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down}) out.push_back(lin);
  out.push_back(&m.lm_head);
  return out;
}

std::vector<ParamRef> llama_trainable_params(LlamaModel& m) {
  std::vector<ParamRef> out;
  if (m.base_trainable) {
    const bool tp = m.tp.size > 1;  // under TP every matrix is sharded, the norms replicated
    out.push_back({"model.embed_tokens.weight", &m.embed, &m.embed_grad, true, nullptr, tp});
    for (size_t l = 0; l < m.blocks.size(); ++l) {
      LlamaBlock& b = m.blocks[l];
      const std::string p = layer_prefix(static_cast<int64_t>(l));
      out.push_back({p + "input_layernorm.weight", &b.attn_norm, &b.attn_norm_grad, false});
      for (Linear* lin : {&b.q, &b.k, &b.v, &b.o})
        out.push_back({lin->name + ".weight", &lin->weight, &lin->grad, true, nullptr, tp});
      out.push_back({p + "post_attention_layernorm.weight", &b.mlp_norm, &b.mlp_norm_grad, false});
      for (Linear* lin : {&b.gate, &b.up, &b.down})
        out.push_back({lin->name + ".weight", &lin->weight, &lin->grad, true, nullptr, tp});
    }
    out.push_back({"model.norm.weight", &m.final_norm, &m.final_norm_grad, false});
    if (!m.cfg.tie_word_embeddings)
      out.push_back({"lm_head.weight", &m.lm_head.weight, &m.lm_head.grad, true, nullptr, tp});
  }
  for (Linear* lin : llama_linears(m))
    if (lin->adapter) lin->adapter->collect_params(out);
  return out;
}

std::vector<std::vector<ParamRef>> llama_params_by_unit(LlamaModel& m) {
  const size_t L = m.blocks.size();
  std::vector<std::vector<ParamRef>> out(L + 2);
  const std::string layers = "model.layers.";
  for (ParamRef& p : llama_trainable_params(m)) {
    size_t u = L + 1;  // model.norm, lm_head (and its adapter)
    if (p.name.rfind("model.embed_tokens.", 0) == 0) {
      u = 0;
    } else if (p.name.rfind(layers, 0) == 0) {
      u = std::stoul(p.name.substr(layers.size())) + 1;
      if (u > L) ST_THROW("llama_params_by_unit: ", p.name, " names a layer beyond ", L);
    }
    out[u].push_back(p);
  }
  return out;
}

int64_t llama_num_trainable(LlamaModel& m) {
  int64_t n = 0;
  for (const ParamRef& p : llama_trainable_params(m)) n += p.value->numel();
  return n;
}

LlamaActivations llama_activations(const LlamaModel& m, int64_t B_max, int64_t T_max,
                                   bool checkpointing, bool trainable) {
  const LlamaConfig& c = m.cfg;
  const LlamaLocalDims ld = llama_local_dims(m);
  const int64_t BT = B_max * T_max, C = c.hidden_size, I = ld.intermediate;
  LlamaActivations a;
  a.B_max = B_max;
  a.T_max = T_max;
  a.checkpointing = checkpointing;
  a.trainable = trainable;
  auto act = [&](const Shape& s) { return alloc(s, m, MemCategory::activations); };
  // Statistics (norm rstd, attention lse, losses) in the master precision.
  auto stat = [&](const Shape& s) {
    return Tensor::zeros(s, master_dtype(m.dtype), m.device, MemCategory::activations);
  };
  a.resid = act({c.num_layers + 1, BT, C});
  const size_t nsets = (trainable && !checkpointing) ? static_cast<size_t>(c.num_layers) : 1;
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
  a.logits = act({BT, ld.vocab});
  a.losses = stat({BT});
  if (trainable) {
    auto ws = [&](const Shape& s) { return alloc(s, m, MemCategory::workspace); };
    a.dresid = ws({BT, C});
    a.dxn = ws({BT, C});
    a.datt = ws({BT, ld.q_dim});
    a.dq = ws({BT, ld.q_dim});
    a.dk = ws({BT, ld.kv_dim});
    a.dv = ws({BT, ld.kv_dim});
    a.dh = ws({BT, I});
    a.dgate = ws({BT, I});
    a.dup = ws({BT, I});
    a.scratch = ws({BT, std::max({C, I, ld.q_dim})});
  }
  return a;
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
void attend_backward(const LlamaModel& m, const LlamaBatch& batch, const BlockView& s, const Tensor& datt, Tensor& dq,
                     Tensor& dk, Tensor& dv) {
  if (batch.segments.defined())
    attention_varlen_backward(attention_shape(m, batch), s.q, s.k, s.v, s.att, s.lse, datt, batch.segments, dq, dk, dv,
                              false);
  else
    attention_backward(attention_shape(m, batch), s.q, s.k, s.v, s.att, s.lse, datt, batch.lengths, dq, dk, dv, false);
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
  linear_layer_forward(blk.q, s.xn1, s.q, false, ctx);
  linear_layer_forward(blk.k, s.xn1, s.k, false, ctx);
  linear_layer_forward(blk.v, s.xn1, s.v, false, ctx);
  rope_forward(s.q, batch.B, batch.T, m.rope, batch.positions);
  rope_forward(s.k, batch.B, batch.T, m.rope, batch.positions);
  attend_forward(m, batch, s);
  // x_mid = x_in + o(att): residual in the GEMM. Under TP o is row-parallel: each rank has a
  // partial sum, the residual is added on rank 0 only, and one all-reduce completes it
  // (Megatron's "g"); q, k, v, gate and up need no communication (x is replicated).
  const bool resid_here = m.tp.rank == 0;
  linear_layer_forward(blk.o, s.att, s.x_mid, false, ctx, resid_here ? &x_in : nullptr);
  tp_all_reduce(m, s.x_mid);
  rmsnorm_forward(s.x_mid, blk.mlp_norm, c.rms_norm_eps, s.xn2, s.rstd2);
  linear_layer_forward(blk.gate, s.xn2, s.gate, false, ctx);
  linear_layer_forward(blk.up, s.xn2, s.up, false, ctx);
  swiglu_forward(s.gate, s.up, s.h);
  linear_layer_forward(blk.down, s.h, x_out, false, ctx, resid_here ? &s.x_mid : nullptr);  // x_out = x_mid + down(h)
  tp_all_reduce(m, x_out);
}

// On entry dresid = dL/dx_out; on exit dL/dx_in.
void block_backward(LlamaModel& m, LlamaBlock& blk, const BlockView& s, const Tensor& x_in,
                    LlamaActivations& a, const LlamaBatch& batch, const LayerContext& ctx) {
  const int64_t BT = batch.B * batch.T;
  Tensor dresid = rows_of(a.dresid, BT), dxn = rows_of(a.dxn, BT), datt = rows_of(a.datt, BT);
  Tensor dq = rows_of(a.dq, BT), dk = rows_of(a.dk, BT), dv = rows_of(a.dv, BT);
  Tensor dh = rows_of(a.dh, BT), dgate = rows_of(a.dgate, BT), dup = rows_of(a.dup, BT);
  auto grad_or_null = [](Tensor& g) { return g.defined() ? &g : nullptr; };

  // The first contribution to each scratch gradient overwrites it (no zeroing pass).
  // MLP branch: x_out = x_mid + down(h)
  linear_layer_backward(blk.down, s.h, dresid, &dh, ctx, false);
  swiglu_backward(dh, s.gate, s.up, dgate, dup, false);
  linear_layer_backward(blk.gate, s.xn2, dgate, &dxn, ctx, false);
  linear_layer_backward(blk.up, s.xn2, dup, &dxn, ctx);
  tp_all_reduce(m, dxn);  // column-parallel gate/up: partial input gradients (Megatron's "f")
  rmsnorm_backward(dxn, s.x_mid, blk.mlp_norm, s.rstd2, dresid, grad_or_null(blk.mlp_norm_grad));

  // Attention branch: x_mid = x_in + o(att)
  linear_layer_backward(blk.o, s.att, dresid, &datt, ctx, false);
  attend_backward(m, batch, s, datt, dq, dk, dv);
  rope_backward(dq, batch.B, batch.T, m.rope, batch.positions);
  rope_backward(dk, batch.B, batch.T, m.rope, batch.positions);
  linear_layer_backward(blk.q, s.xn1, dq, &dxn, ctx, false);
  linear_layer_backward(blk.k, s.xn1, dk, &dxn, ctx);
  linear_layer_backward(blk.v, s.xn1, dv, &dxn, ctx);
  tp_all_reduce(m, dxn);
  rmsnorm_backward(dxn, x_in, blk.attn_norm, s.rstd1, dresid, grad_or_null(blk.attn_norm_grad));
}

void check_batch(const LlamaModel& m, const LlamaActivations& a, const LlamaBatch& batch) {
  if (batch.B <= 0 || batch.T <= 0 || batch.B > a.B_max || batch.T > a.T_max)
    ST_THROW("batch [", batch.B, ", ", batch.T, "] exceeds the activation buffers [", a.B_max, ", ", a.T_max, "]");
  const int64_t longest = batch.positions.defined() ? batch.max_position + 1 : batch.T;  // positions used
  if (longest > m.cfg.max_position_embeddings)
    ST_THROW_INPUT("sequence length ", longest, " exceeds the model's max_position_embeddings ",
                   m.cfg.max_position_embeddings);
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
    if (m.tp.active()) {  // vocabulary-parallel: each rank looks up its own rows, zeros elsewhere
      embedding_forward_shard(batch.ids, m.embed, llama_local_dims(m).vocab_offset, x0);
      tp_all_reduce(m, x0);
    } else {
      embedding_forward(batch.ids, m.embed, x0);
    }
  }
  const bool per_block = a.blocks.size() == static_cast<size_t>(L) && L > 1;
  for (int64_t l = 0; l < L; ++l) {
    UnitScope unit(m.hooks, static_cast<int>(l) + 1, false);
    const BlockView s = view_block(a.blocks[per_block ? static_cast<size_t>(l) : 0], BT);
    Tensor x_out = resid_at(a, l + 1, BT);
    block_forward(m, m.blocks[static_cast<size_t>(l)], s, resid_at(a, l, BT), x_out, batch, ctx);
  }
  UnitScope head(m.hooks, static_cast<int>(L) + 1, false);
  Tensor xnf = rows_of(a.xnf, BT), rstdf = rows_of(a.rstdf, BT), logits = rows_of(a.logits, BT);
  rmsnorm_forward(resid_at(a, L, BT), m.final_norm, m.cfg.rms_norm_eps, xnf, rstdf);
  linear_layer_forward(m.lm_head, xnf, logits, false, ctx);
  Tensor losses = rows_of(a.losses, BT);
  if (m.tp.active())  // no rank holds the [BT, V] logits: each has its vocabulary columns
    return vocab_parallel_cross_entropy(logits, batch.targets, batch.weight, &losses, grad, *m.tp.comm);
  cross_entropy(logits, batch.targets, batch.weight, losses, grad);
  // Objective = sum_n weight_n * loss_n, reduced on the host in double.
  const Tensor lh = losses.to_cpu(DType::f64);
  const Tensor wh = batch.weight.device() == Device::cpu ? batch.weight : batch.weight.to_cpu(DType::f32);
  const double* lp = lh.ptr<double>();
  const float* wp = wh.ptr<float>();
  double total = 0;
  for (int64_t i = 0; i < BT; ++i) total += static_cast<double>(wp[i]) * lp[i];
  return total;
}

void llama_backward(LlamaModel& m, LlamaActivations& a, const LlamaBatch& batch, const LayerContext& ctx_in) {
  check_batch(m, a, batch);
  if (!a.trainable) ST_THROW("llama_backward on eval-only activations");
  const int64_t BT = batch.B * batch.T, L = m.cfg.num_layers;
  const LayerContext ctx = with_scratch(ctx_in, a);
  Tensor dlogits = rows_of(a.logits, BT), xnf = rows_of(a.xnf, BT);
  Tensor dxn = rows_of(a.dxn, BT), dresid = rows_of(a.dresid, BT);
  {
    UnitScope head(m.hooks, static_cast<int>(L) + 1, true);
    linear_layer_backward(m.lm_head, xnf, dlogits, &dxn, ctx, false);
    tp_all_reduce(m, dxn);  // vocabulary-parallel lm_head: partial input gradients
    dresid.zero_();
    rmsnorm_backward(dxn, resid_at(a, L, BT), m.final_norm, rows_of(a.rstdf, BT), dresid,
                     m.final_norm_grad.defined() ? &m.final_norm_grad : nullptr);
  }
  const bool per_block = a.blocks.size() == static_cast<size_t>(L) && L > 1;
  for (int64_t l = L - 1; l >= 0; --l) {
    UnitScope unit(m.hooks, static_cast<int>(l) + 1, true);
    LlamaBlock& blk = m.blocks[static_cast<size_t>(l)];
    const BlockView s = view_block(a.blocks[per_block ? static_cast<size_t>(l) : 0], BT);
    const Tensor x_in = resid_at(a, l, BT);
    if (!per_block && L > 1) {
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
    if (m.tp.active()) embedding_backward_shard(batch.ids, dresid, llama_local_dims(m).vocab_offset, m.embed_grad);
    else embedding_backward(batch.ids, dresid, m.embed_grad);
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
