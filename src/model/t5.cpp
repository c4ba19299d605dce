#include "model/t5.hpp"


#include <algorithm>
#include <cmath>

#include "core/rng.hpp"
#include "ops/activation.hpp"
#include "ops/attention.hpp"
#include "ops/init.hpp"
#include "ops/matmul.hpp"
#include "ops/norm.hpp"
#include "ops/optim.hpp"
#include "ops/relbias.hpp"

namespace st {

namespace {

Tensor rows(const Tensor& t, int64_t n) { return t.slice(0, n); }

// Layer l of a [L+1, rows_max, C] residual buffer, first n rows.
Tensor layer(const Tensor& stream, int64_t l, int64_t n) {
  Tensor s = stream.slice(l, l + 1);
  return s.view({stream.dim(1), stream.dim(2)}).slice(0, n);
}

bool contains(const std::vector<std::string>& v, const std::string& s) { return std::find(v.begin(), v.end(), s) != v.end(); }

// A linear layer's structure before its storage exists (materialize_params gives it this rank's
// shape).
Linear declare_linear(const std::string& name, int64_t in, int64_t out) {
  Linear l;
  l.name = name;
  l.in = in;
  l.out = out;
  return l;
}

T5Attn declare_attn(const std::string& p, const T5Config& c) {
  const int64_t C = c.d_model, HD = c.inner_dim();
  return {declare_linear(p + "q", C, HD), declare_linear(p + "k", C, HD), declare_linear(p + "v", C, HD),
          declare_linear(p + "o", HD, C)};
}

T5Ffn declare_ffn(const std::string& p, const T5Config& c) {
  T5Ffn f;
  if (c.gated) {
    f.wi_0 = declare_linear(p + "wi_0", c.d_model, c.d_ff);
    f.wi_1 = declare_linear(p + "wi_1", c.d_model, c.d_ff);
  } else {
    f.wi_0 = declare_linear(p + "wi", c.d_model, c.d_ff);
  }
  f.wo = declare_linear(p + "wo", c.d_ff, c.d_model);
  return f;
}

AttentionShape shape_of(const T5Model& m, int64_t B, int64_t T, int64_t Tk, bool causal) {
  AttentionShape s;
  s.B = B;
  s.T = T;
  s.Tk = Tk == T ? 0 : Tk;
  s.Hq = s.Hkv = t5_local_dims(m).heads;
  s.D = m.cfg.d_kv;
  s.causal = causal;
  s.scale = 1.0;  // T5 folds the 1/sqrt(d) into the initialisation of q
  return s;
}

}  // namespace

const std::vector<std::string>& t5_module_names() {
  static const std::vector<std::string> names{"q", "k", "v", "o", "wi_0", "wi_1", "wi", "wo"};
  return names;
}

std::string t5_module_short_name(const std::string& module) {
  const size_t dot = module.rfind('.');
  if (dot == std::string::npos) return "";
  const std::string last = module.substr(dot + 1), parent = module.substr(0, dot);
  auto ends_with = [&](const char* suffix) {
    const std::string x = suffix;
    return parent.size() >= x.size() && parent.compare(parent.size() - x.size(), x.size(), x) == 0;
  };
  const bool attn = ends_with("SelfAttention") || ends_with("EncDecAttention"), ffn = ends_with("DenseReluDense");
  if (attn && (last == "q" || last == "k" || last == "v" || last == "o")) return last;
  if (ffn && (last == "wi_0" || last == "wi_1" || last == "wi" || last == "wo")) return last;
  return "";
}

int t5_num_units(const T5Model& m) { return static_cast<int>(m.enc.size() + m.dec.size()) + 3; }

T5LocalDims t5_local_dims(const T5Model& m) {
  const int64_t p = m.tp.size;
  T5LocalDims d;
  d.heads = m.cfg.num_heads / p;
  d.inner = d.heads * m.cfg.d_kv;
  d.d_ff = m.cfg.d_ff / p;
  d.vocab = m.cfg.vocab_size / p;
  d.vocab_offset = d.vocab * m.tp.rank;
  return d;
}

void t5_check_tp(const T5Config& cfg, int p) {
  check_tp_divisible(p, {{cfg.num_heads, "the number of attention heads", "num_heads"},
                         {cfg.d_ff, "the FFN width", "d_ff"},
                         {cfg.vocab_size, "the vocabulary", "vocab_size"}});
}

const TpPlan& t5_tp_plan() {
  static const TpPlan plan{{{"shared", TpMode::column},
                            {"relative_attention_bias", TpMode::row},
                            {"q", TpMode::column},
                            {"k", TpMode::column},
                            {"v", TpMode::column},
                            {"o", TpMode::row},
                            {"wi_0", TpMode::column},
                            {"wi_1", TpMode::column},
                            {"wi", TpMode::column},
                            {"wo", TpMode::row},
                            {"lm_head", TpMode::column}}};
  return plan;
}

ParamTable t5_param_table(T5Model& m) {
  const T5Config& c = m.cfg;
  const TpPlan& plan = t5_tp_plan();
  const int Le = static_cast<int>(m.enc.size()), Ld = static_cast<int>(m.dec.size());
  ParamTable t;
  t.num_units = t5_num_units(m);
  t.unit_names.push_back("embed");
  for (int l = 0; l < Le; ++l) t.unit_names.push_back(str("encoder.block.", l));
  t.unit_names.push_back("encoder.final");
  for (int l = 0; l < Ld; ++l) t.unit_names.push_back(str("decoder.block.", l));
  t.unit_names.push_back("head");
  t.embed_unit = 0;
  t.head_unit = Le + Ld + 2;
  t.tied = c.tie_word_embeddings;
  t.base_trainable = m.base_trainable;
  t.hooks = &m.hooks;
  t.dtype = m.dtype;
  t.device = m.device;
  t.tp = m.tp;
  auto split_of = [&](const std::string& key) { return tp_effective(plan.style_of(key), m.tp); };
  auto plain = [&](const std::string& name, Tensor* w, Tensor* g, Shape full, const std::string& key, int unit, bool decay,
                   ParamInit init) {
    ParamEntry e;
    e.name = name;
    e.tensor = w;
    e.grad = g;
    e.full_shape = full;
    e.split = key.empty() ? TpMode::none : split_of(key);
    e.unit = unit;
    e.decay = decay;
    e.init = init;
    t.params.push_back(std::move(e));
    return &t.params.back();
  };
  auto norm = [&](const std::string& name, Tensor* w, Tensor* g, int unit) {
    plain(name, w, g, Shape{c.d_model}, "", unit, false, ParamInit::ones);
  };
  auto linear = [&](Linear& lin, int64_t in, int64_t out, int unit) {
    const std::string key = lin.name == "lm_head" ? "lm_head" : t5_module_short_name(lin.name);
    ParamEntry e;
    e.name = lin.name + ".weight";
    e.tensor = &lin.weight;
    e.grad = &lin.grad;
    e.linear = &lin;
    e.full_shape = Shape{out, in};
    e.split = split_of(key);
    e.unit = unit;
    e.quantizable = key != "lm_head";
    t.params.push_back(std::move(e));
    t.linears.push_back(&lin);
    t.linear_units.push_back(unit);
  };
  const int64_t C = c.d_model, HD = c.inner_dim(), F = c.d_ff, NB = c.relative_attention_num_buckets;
  auto attn = [&](T5Attn& a, int unit, Tensor* rel, Tensor* rel_grad) {
    for (Linear* l : {&a.q, &a.k, &a.v}) linear(*l, C, HD, unit);
    linear(a.o, HD, C, unit);
    // The stack's relative-bias table (block 0) serves every block: it belongs to unit 0.
    if (rel)
      plain(a.q.name.substr(0, a.q.name.size() - 1) + "relative_attention_bias.weight", rel, rel_grad,
            Shape{NB, c.num_heads}, "relative_attention_bias", 0, false, ParamInit::normal);
  };
  auto ffn = [&](T5Ffn& f, int unit) {
    linear(f.wi_0, C, F, unit);
    if (c.gated) linear(f.wi_1, C, F, unit);
    linear(f.wo, F, C, unit);
  };
  {
    ParamEntry* e = plain("shared.weight", &m.shared, &m.shared_grad, Shape{c.vocab_size, C}, "shared", 0, true,
                          ParamInit::normal);
    if (c.tie_word_embeddings) {  // lm_head reads (and its gradient adds into) `shared`'s buffers
      e->aliases = {&m.lm_head.weight};
      e->grad_aliases = {&m.lm_head.grad};
    }
  }
  for (int l = 0; l < Le; ++l) {
    T5EncBlock& e = m.enc[static_cast<size_t>(l)];
    const std::string b = str("encoder.block.", l, ".");
    attn(e.self, 1 + l, l == 0 ? &m.enc_rel : nullptr, &m.enc_rel_grad);
    norm(b + "layer.0.layer_norm.weight", &e.ln0, &e.ln0_grad, 1 + l);
    ffn(e.ffn, 1 + l);
    norm(b + "layer.1.layer_norm.weight", &e.ln1, &e.ln1_grad, 1 + l);
  }
  norm("encoder.final_layer_norm.weight", &m.enc_final, &m.enc_final_grad, Le + 1);
  for (int l = 0; l < Ld; ++l) {
    T5DecBlock& d = m.dec[static_cast<size_t>(l)];
    const std::string b = str("decoder.block.", l, ".");
    const int u = Le + 2 + l;
    attn(d.self, u, l == 0 ? &m.dec_rel : nullptr, &m.dec_rel_grad);
    norm(b + "layer.0.layer_norm.weight", &d.ln0, &d.ln0_grad, u);
    attn(d.cross, u, nullptr, nullptr);
    norm(b + "layer.1.layer_norm.weight", &d.ln1, &d.ln1_grad, u);
    ffn(d.ffn, u);
    norm(b + "layer.2.layer_norm.weight", &d.ln2, &d.ln2_grad, u);
  }
  norm("decoder.final_layer_norm.weight", &m.dec_final, &m.dec_final_grad, Le + Ld + 2);
  if (!c.tie_word_embeddings) {
    linear(m.lm_head, C, c.vocab_size, Le + Ld + 2);
  } else {
    t.linears.push_back(&m.lm_head);
    t.linear_units.push_back(Le + Ld + 2);
  }
  return t;
}

T5Model t5_build(const T5Config& cfg, DType dtype, Device device, const T5Quant& quant, const TpGroup& tp) {
  cfg.validate("T5 config");
  t5_check_tp(cfg, tp.size);
  if (tp.size > 1 && !tp.comm) ST_THROW("t5_build: tp.size ", tp.size, " without a communicator");
  if (quant.nf4_any()) {
    quant.nf4.validate("qlora");
    for (const std::string& t : quant.modules) {
      if (!contains(t5_module_names(), t))
        ST_THROW_INPUT("qlora: unknown T5 module '", t, "' (use q, k, v, o, wi_0, wi_1, wi, wo)");
      if (cfg.gated && t == "wi") ST_THROW_INPUT("qlora: module 'wi' does not exist in a gated-gelu T5 (use wi_0, wi_1)");
      if (!cfg.gated && (t == "wi_0" || t == "wi_1")) ST_THROW_INPUT("qlora: module '", t, "' does not exist in a relu T5 (use wi)");
    }
  }
  // FP8 modules are the LoRA targets: one this variant lacks is refused by attach_lora, by name.
  for (const std::string& t : quant.fp8_modules)
    if (!contains(t5_module_names(), t))
      ST_THROW_INPUT("lora_targets: a T5 model has no module '", t, "' (use q, k, v, o, wi_0, wi_1, wi, wo; with ",
                     quant.fp8_where, ": base_precision = fp8 their base is held in FP8)");
  T5Model m;
  m.cfg = cfg;
  m.dtype = dtype;
  m.device = device;
  m.tp = tp.size > 1 ? tp : TpGroup{};
  // The structure at full shapes; materialize_params allocates this rank's part of each tensor.
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    const std::string b = str("encoder.block.", l, ".");
    T5EncBlock e;
    e.self = declare_attn(b + "layer.0.SelfAttention.", cfg);
    e.ffn = declare_ffn(b + "layer.1.DenseReluDense.", cfg);
    m.enc.push_back(std::move(e));
  }
  for (int64_t l = 0; l < cfg.num_decoder_layers; ++l) {
    const std::string b = str("decoder.block.", l, ".");
    T5DecBlock d;
    d.self = declare_attn(b + "layer.0.SelfAttention.", cfg);
    d.cross = declare_attn(b + "layer.1.EncDecAttention.", cfg);
    d.ffn = declare_ffn(b + "layer.2.DenseReluDense.", cfg);
    m.dec.push_back(std::move(d));
  }
  m.lm_head = declare_linear("lm_head", cfg.d_model, cfg.vocab_size);
  ParamTable t = t5_param_table(m);
  materialize_params(t, quant, t5_module_short_name);
  if (cfg.tie_word_embeddings) {  // the head is `shared`'s buffer (the same vocabulary rows under TP)
    m.lm_head.out = m.shared.dim(0);
    m.lm_head.in = cfg.d_model;
    m.lm_head.tp = m.tp;
    m.lm_head.tp_mode = tp_effective(t5_tp_plan().style_of("lm_head"), m.tp);
  }
  if (quant.nf4_any()) m.dequant = share_dequant_buffer(t5_linears(m), dtype, device);
  return m;
}

std::vector<T5WeightSlot> t5_weight_slots(T5Model& m) { return weight_slots(t5_param_table(m)); }
Tensor t5_shard_of(const T5Model& m, const T5WeightSlot& slot, const Tensor& full) { return slot_shard_of(m.tp, slot, full); }
void t5_set_weight(const T5WeightSlot& slot, const Tensor& value) { set_weight(slot, value); }
Tensor t5_gather_full(const T5Model& m, const T5WeightSlot& slot, DType dtype) { return gather_full(m.tp, slot, dtype); }
std::vector<std::pair<std::string, Tensor*>> t5_named_weights(T5Model& m) { return named_weights(t5_param_table(m)); }

void t5_init_random(T5Model& m, uint64_t seed, double std) {
  ParamTable t = t5_param_table(m);
  init_params_random(t, seed, std);
}

void t5_enable_base_training(T5Model& m, MasterWeights mw) {
  ParamTable t = t5_param_table(m);
  enable_base_training(t, mw);
  m.base_trainable = true;
}

T5WeightBytes t5_weight_bytes(T5Model& m) { return param_bytes(t5_param_table(m)); }

void t5_dequantize(T5Model& m) {
  dequantize_linears(t5_linears(m), m.dtype);
  m.dequant.reset();
}

std::vector<Linear*> t5_linears(T5Model& m) { return t5_param_table(m).linears; }

std::vector<std::vector<Linear*>> t5_input_groups(T5Model& m) {
  std::vector<std::vector<Linear*>> out;
  auto ffn = [&](T5Ffn& f) {
    if (m.cfg.gated) out.push_back({&f.wi_0, &f.wi_1});
  };
  for (T5EncBlock& b : m.enc) {
    out.push_back({&b.self.q, &b.self.k, &b.self.v});
    ffn(b.ffn);
  }
  for (T5DecBlock& b : m.dec) {
    out.push_back({&b.self.q, &b.self.k, &b.self.v});
    out.push_back({&b.cross.k, &b.cross.v});
    ffn(b.ffn);
  }
  return out;
}
std::vector<ParamRef> t5_trainable_params(T5Model& m) { return trainable_params(t5_param_table(m)); }
int64_t t5_num_trainable(T5Model& m) { return num_trainable(t5_param_table(m)); }
std::vector<std::vector<ParamRef>> t5_params_by_unit(T5Model& m) { return params_by_unit(t5_param_table(m)); }

double t5_flops_per_token(const T5Model& m_in, int64_t Te, int64_t Td) {
  T5Model& m = const_cast<T5Model&>(m_in);
  const T5Config& c = m.cfg;
  const double te = static_cast<double>(Te), td = static_cast<double>(Td);
  double total = 0;
  const double per_mac = m.base_trainable ? 6.0 : 4.0;
  for (const Linear* lin : t5_linears(m)) {
    // Rows it sees: encoder linears and the cross-attention's k, v read the encoder's positions.
    const std::string& n = lin->name;
    const bool enc_rows = n.rfind("encoder.", 0) == 0 || (n.find("EncDecAttention.") != std::string::npos &&
                                                            (t5_module_short_name(n) == "k" || t5_module_short_name(n) == "v"));
    const double rows = enc_rows ? te : td;
    total += rows * per_mac * static_cast<double>(lin->full_in()) * static_cast<double>(lin->full_out());
    if (lin->adapter)
      total += rows * 6.0 * static_cast<double>(lin->adapter->num_parameters()) *
               (lin->tp_mode == TpMode::none ? 1 : lin->tp.size);
  }
  // QK^T and PV: 4 Tq Tk H D forward per layer (causal: half), backward twice the forward.
  const double hd = static_cast<double>(c.inner_dim());
  const double attn = 4.0 * hd * (te * te * static_cast<double>(c.num_layers) +
                                  static_cast<double>(c.num_decoder_layers) * (td * td / 2.0 + td * te));
  total += 3.0 * attn;
  return Te + Td > 0 ? total / (te + td) : 0.0;
}

std::vector<int32_t> t5_shift_right(const std::vector<int32_t>& labels, int64_t B, int64_t Td, int64_t start,
                                    int64_t pad) {
  if (static_cast<int64_t>(labels.size()) != B * Td) ST_THROW("t5_shift_right: ", labels.size(), " labels for ", B, " x ", Td);
  std::vector<int32_t> out(labels.size());
  for (int64_t b = 0; b < B; ++b) {
    out[static_cast<size_t>(b * Td)] = static_cast<int32_t>(start);
    for (int64_t t = 1; t < Td; ++t) {
      const int32_t l = labels[static_cast<size_t>(b * Td + t - 1)];
      out[static_cast<size_t>(b * Td + t)] = l < 0 ? static_cast<int32_t>(pad) : l;
    }
  }
  return out;
}

T5Activations t5_activations(const T5Model& m, int64_t B, int64_t Te, int64_t Td, bool trainable, bool checkpointing) {
  return t5_activations(m, B, Te, Td, trainable, checkpointing ? Checkpointed::all() : Checkpointed::none());
}

T5Activations t5_activations(const T5Model& m, int64_t B, int64_t Te, int64_t Td, bool trainable,
                             Checkpointed checkpointing) {
  const T5Config& c = m.cfg;
  const T5LocalDims ld = t5_local_dims(m);
  const int64_t C = c.d_model, HD = ld.inner, F = ld.d_ff, H = ld.heads, V = ld.vocab;
  const int64_t NE = B * Te, ND = B * Td;
  const DType sd = master_dtype(m.dtype);
  auto act = [&](const Shape& s) { return Tensor::zeros(s, m.dtype, m.device, MemCategory::activations); };
  auto stat = [&](const Shape& s) { return Tensor::zeros(s, sd, m.device, MemCategory::activations); };
  T5Activations a;
  a.B = B;
  a.Te = Te;
  a.Td = Td;
  a.trainable = trainable;
  // Every block's internals for training, the checkpointed blocks of a stack sharing one set
  // (block inputs are the residual stream; each is recomputed before its backward); one set
  // per stack for evaluation.
  const int64_t n = trainable ? checkpointing.of(c.num_layers + c.num_decoder_layers) : 0;
  a.enc_checkpointed = std::min(n, c.num_layers);
  a.dec_checkpointed = n - a.enc_checkpointed;
  const int64_t enc_sets = trainable ? checkpoint_sets(c.num_layers, a.enc_checkpointed) : 1;
  const int64_t dec_sets = trainable ? checkpoint_sets(c.num_decoder_layers, a.dec_checkpointed) : 1;
  a.enc_buckets = Tensor::zeros({Te * Te}, DType::i32, m.device, MemCategory::activations);
  a.dec_buckets = Tensor::zeros({Td * Td}, DType::i32, m.device, MemCategory::activations);
  a.enc_bias = stat({H, Te, Te});
  a.dec_bias = stat({H, Td, Td});
  a.x = act({c.num_layers + 1, NE, C});
  a.e = act({NE, C});
  a.erstd = stat({NE});
  a.y = act({c.num_decoder_layers + 1, ND, C});
  a.yf = act({ND, C});
  a.yrstd = stat({ND});
  a.logits = act({ND, V});
  a.losses = stat({ND});
  for (int64_t l = 0; l < enc_sets; ++l)
    a.enc.push_back({act({NE, C}), stat({NE}), act({NE, HD}), act({NE, HD}), act({NE, HD}), act({NE, HD}), stat({NE, H}),
                     act({NE, C}), act({NE, C}), stat({NE}), act({NE, F}), c.gated ? act({NE, F}) : Tensor(), act({NE, F})});
  for (int64_t l = 0; l < dec_sets; ++l)
    a.dec.push_back({act({ND, C}), stat({ND}), act({ND, HD}), act({ND, HD}), act({ND, HD}), act({ND, HD}), stat({ND, H}),
                     act({ND, C}), act({ND, C}), stat({ND}), act({ND, HD}), act({NE, HD}), act({NE, HD}), act({ND, HD}),
                     stat({ND, H}), act({ND, C}), act({ND, C}), stat({ND}), act({ND, F}), c.gated ? act({ND, F}) : Tensor(),
                     act({ND, F})});
  if (trainable) {
    const int64_t N = std::max(NE, ND);
    auto ws = [&](const Shape& s) { return Tensor::zeros(s, m.dtype, m.device, MemCategory::workspace); };
    a.enc_dbias = stat({H, Te, Te});
    a.dec_dbias = stat({H, Td, Td});
    a.dx = ws({N, C});
    a.dn = ws({N, C});
    a.datt = ws({N, HD});
    a.dq = ws({N, HD});
    a.dk = ws({N, HD});
    a.dv = ws({N, HD});
    a.dh = ws({N, F});
    a.de = ws({NE, C});
    a.dy = ws({ND, C});
    a.dck = ws({NE, HD});
    a.dcv = ws({NE, HD});
    a.scratch = ws({N, std::max({C, HD, F})});
  }
  return a;
}

namespace {

// out = resid + o(attn(q(n), k(kv), v(kv))): self-attention with kv = n, cross-attention with
// kv = the encoder output. Under TP q, k, v hold this rank's heads and o is row-parallel (its
// linear layer adds the residual once and completes the sum over the group).
void attn_forward(const T5Attn& w, const Tensor& n, const Tensor& kv, const AttentionShape& shape,
                  const Tensor& lengths, const Tensor& bias, Tensor q, Tensor k, Tensor v, Tensor att, Tensor lse,
                  Tensor& out, const Tensor& resid, const LayerContext& ctx) {
  if (n.data() == kv.data()) {  // self-attention: q, k and v read n (t5_input_groups)
    linear_group_forward({&w.q, &w.k, &w.v}, n, {&q, &k, &v}, ctx);
  } else {  // cross-attention: k and v read the encoder output
    linear_layer_forward(w.q, n, q, false, ctx);
    linear_group_forward({&w.k, &w.v}, kv, {&k, &v}, ctx);
  }
  attention_forward(shape, q, k, v, lengths, att, lse, bias);
  linear_layer_forward(w.o, att, out, false, ctx, &resid);  // row-parallel: the sum over the group
}

// dout: gradient of the block output (replicated). dn (overwritten) gets d(n), all-reduced over
// the TP group; d(kv) goes into dkv (+=, this rank's partial sum, the caller all-reduces) for
// cross-attention, or into dn with d(n) for self-attention (dkv null). dbias (+=) when wanted.
void attn_backward(const T5Model& m, T5Attn& w, const Tensor& n, const Tensor& kv, const AttentionShape& shape,
                   const Tensor& lengths, const Tensor& bias, Tensor* dbias, const Tensor& q, const Tensor& k,
                   const Tensor& v, const Tensor& att, const Tensor& lse, const Tensor& dout, Tensor datt, Tensor dq,
                   Tensor dk, Tensor dv, Tensor& dn, Tensor* dkv, const LayerContext& ctx) {
  linear_layer_backward(w.o, att, dout, &datt, ctx, false);
  attention_backward(shape, q, k, v, att, lse, datt, lengths, dq, dk, dv, false, bias, dbias);
  if (dkv) {  // cross-attention: d(kv) into dkv (+=)
    linear_layer_backward(w.q, n, dq, &dn, ctx, false);
    linear_group_backward({&w.k, &w.v}, kv, {&dk, &dv}, dkv, ctx);
  } else {
    linear_group_backward({&w.q, &w.k, &w.v}, n, {&dq, &dk, &dv}, &dn, ctx, false);
  }
  tp_sum_partials(m.tp, dn);  // column-parallel q (k, v): partial input gradients (Megatron's "f")
}

// ffn(n) into out (overwritten) with the residual added: out = resid + wo(act(n)); wi column-
// and wo row-parallel under TP.
void ffn_forward(const T5Model& m, const T5Ffn& f, const Tensor& n, Tensor g, Tensor u, Tensor h, Tensor& out,
                 const Tensor& resid, const LayerContext& ctx) {
  if (m.cfg.gated) {
    linear_group_forward({&f.wi_0, &f.wi_1}, n, {&g, &u}, ctx);
    geglu_forward(g, u, h);
  } else {
    linear_layer_forward(f.wi_0, n, g, false, ctx);
    relu_forward(g, h);
  }
  // A checkpoint recompute needs g, u and h for the backward, not the block's output: wo (and
  // under TP its all-reduce) is not redone.
  if (ctx.recompute) return;
  linear_layer_forward(f.wo, h, out, false, ctx, &resid);  // row-parallel: the sum over the group
}

// dout: gradient of the FFN output; dn (overwritten) gets the gradient of its input n. The
// activation's backward writes d(gate) over dh and d(up) over the block's saved u (read before
// written, element by element; neither is read after): no [N, F] workspaces for them.
void ffn_backward(const T5Model& m, T5Ffn& f, const Tensor& n, const Tensor& g, const Tensor& u, const Tensor& h,
                  const Tensor& dout, Tensor& dn, Tensor dh, const LayerContext& ctx) {
  linear_layer_backward(f.wo, h, dout, &dh, ctx, false);
  Tensor dg = dh, du = u;
  if (m.cfg.gated) {
    geglu_backward(dh, g, u, dg, du, false);
    linear_group_backward({&f.wi_0, &f.wi_1}, n, {&dg, &du}, &dn, ctx, false);
  } else {
    relu_backward(dh, g, dg, false);
    linear_layer_backward(f.wi_0, n, dg, &dn, ctx, false);
  }
  tp_sum_partials(m.tp, dn);  // column-parallel wi: partial input gradients (Megatron's "f")
}

// out = shared[ids]; vocabulary-parallel under TP (each rank its rows, zeros elsewhere, summed).
void embed(const T5Model& m, const Tensor& ids, Tensor& out) { embedding_layer_forward(ids, m.shared, m.tp, out); }

void embed_backward(T5Model& m, const Tensor& ids, const Tensor& dout) {
  if (m.shared_grad.defined()) embedding_layer_backward(ids, dout, m.tp, m.shared_grad);
}

LayerContext with_scratch(const LayerContext& ctx, T5Activations& a) {
  LayerContext c = ctx;
  if (a.scratch.defined()) c.scratch = &a.scratch;
  return c;
}

}  // namespace

namespace {

// The activations of a batch of B <= a.B rows of Te <= a.Te encoder and Td <= a.Td decoder
// positions: views of the first B*Te (B*Td) rows of every buffer (a micro-batch is laid out
// compactly at its own length), the bias tensors [H, T, T] over the start of their buffers, and
// the bucket tables for these lengths (recomputed only when a length changes).
T5Activations shaped(const T5Model& m, T5Activations& a, int64_t B, int64_t Te, int64_t Td, const char* who) {
  if (B < 1 || Te < 1 || Td < 1 || B > a.B || Te > a.Te || Td > a.Td)
    ST_THROW(who, ": batch [", B, ", ", Te, ", ", Td, "] does not fit the activations [", a.B, ", ", a.Te, ", ", a.Td, "]");
  const T5Config& c = m.cfg;
  auto fill_buckets = [&](Tensor& buf, int64_t T, bool bidirectional, int64_t& cached) {
    if (cached == T) return;
    const Tensor host = t5_relative_buckets(T, T, bidirectional, c.relative_attention_num_buckets,
                                            c.relative_attention_max_distance, Device::cpu);
    buf.slice(0, T * T).copy_from(host);
    cached = T;
  };
  fill_buckets(a.enc_buckets, Te, true, a.enc_buckets_T);
  fill_buckets(a.dec_buckets, Td, false, a.dec_buckets_T);
  if (B == a.B && Te == a.Te && Td == a.Td) return a;
  const int64_t NE = B * Te, ND = B * Td;
  auto r = [](const Tensor& t, int64_t n) { return t.defined() ? t.slice(0, n) : t; };
  auto square = [](const Tensor& t, int64_t T) {
    if (!t.defined()) return t;
    const int64_t H = t.dim(0);
    return t.view({t.numel()}).slice(0, H * T * T).view({H, T, T});
  };
  T5Activations v = a;
  v.B = B;
  v.Te = Te;
  v.Td = Td;
  v.enc_buckets = a.enc_buckets.slice(0, Te * Te);
  v.dec_buckets = a.dec_buckets.slice(0, Td * Td);
  v.enc_bias = square(a.enc_bias, Te);
  v.dec_bias = square(a.dec_bias, Td);
  v.enc_dbias = square(a.enc_dbias, Te);
  v.dec_dbias = square(a.dec_dbias, Td);
  // The residual streams [L+1, rows, C] keep their layout: layer() takes the first rows of each.
  v.e = r(a.e, NE);
  v.erstd = r(a.erstd, NE);
  v.yf = r(a.yf, ND);
  v.yrstd = r(a.yrstd, ND);
  v.logits = r(a.logits, ND);
  v.losses = r(a.losses, ND);
  for (T5Activations::Enc& s : v.enc)
    for (Tensor* t : {&s.n0, &s.r0, &s.q, &s.k, &s.v, &s.att, &s.lse, &s.mid, &s.n1, &s.r1, &s.g, &s.u, &s.h}) *t = r(*t, NE);
  for (T5Activations::Dec& s : v.dec) {
    for (Tensor* t : {&s.n0, &s.r0, &s.q, &s.k, &s.v, &s.att, &s.lse, &s.mid1, &s.n1, &s.r1, &s.cq, &s.catt, &s.clse, &s.mid2,
                      &s.n2, &s.r2, &s.g, &s.u, &s.h})
      *t = r(*t, ND);
    s.ck = r(s.ck, NE);
    s.cv = r(s.cv, NE);
  }
  return v;
}

}  // namespace

namespace {

// One encoder block: xout = xin + attn(n0 xin) + ffn(n1 mid), its internals into s.
void enc_block_forward(const T5Model& m, const T5EncBlock& w, T5Activations::Enc& s, const Tensor& xin, Tensor& xout,
                       const T5Activations& a, const T5Batch& batch, const LayerContext& ctx) {
  const double eps = m.cfg.layer_norm_epsilon;
  const AttentionShape es = shape_of(m, batch.B, batch.Te, batch.Te, false);
  rmsnorm_forward(xin, w.ln0, eps, s.n0, s.r0);
  attn_forward(w.self, s.n0, s.n0, es, batch.enc_lengths, a.enc_bias, s.q, s.k, s.v, s.att, s.lse, s.mid, xin, ctx);
  rmsnorm_forward(s.mid, w.ln1, eps, s.n1, s.r1);
  ffn_forward(m, w.ffn, s.n1, s.g, s.u, s.h, xout, s.mid, ctx);
}

// One decoder block: self-attention (causal, relative bias), cross-attention on the encoder
// output a.e, feed-forward.
void dec_block_forward(const T5Model& m, const T5DecBlock& w, T5Activations::Dec& s, const Tensor& yin, Tensor& yout,
                       const T5Activations& a, const T5Batch& batch, const LayerContext& ctx) {
  const double eps = m.cfg.layer_norm_epsilon;
  const AttentionShape ds = shape_of(m, batch.B, batch.Td, batch.Td, true), cs = shape_of(m, batch.B, batch.Td, batch.Te, false);
  rmsnorm_forward(yin, w.ln0, eps, s.n0, s.r0);
  attn_forward(w.self, s.n0, s.n0, ds, batch.dec_lengths, a.dec_bias, s.q, s.k, s.v, s.att, s.lse, s.mid1, yin, ctx);
  rmsnorm_forward(s.mid1, w.ln1, eps, s.n1, s.r1);
  attn_forward(w.cross, s.n1, a.e, cs, batch.enc_lengths, Tensor(), s.cq, s.ck, s.cv, s.catt, s.clse, s.mid2, s.mid1, ctx);
  rmsnorm_forward(s.mid2, w.ln2, eps, s.n2, s.r2);
  ffn_forward(m, w.ffn, s.n2, s.g, s.u, s.h, yout, s.mid2, ctx);
}

// The activation set of block l: its own, or the one shared set (checkpointed blocks, eval).
template <typename Set>
Set& set_of(std::vector<Set>& sets, int l, int64_t checkpointed) {
  return sets[checkpoint_set(l, checkpointed, sets.size())];
}

// Activation checkpointing: recompute block l's forward from its saved input before its
// backward (adapters keep their saved state: ctx.recompute). The output goes to `scratch`, so
// the saved stream stays as the forward left it.
LayerContext recompute_ctx(const LayerContext& ctx) {
  LayerContext r = ctx;
  r.recompute = true;
  return r;
}

}  // namespace

double t5_forward(T5Model& m, T5Activations& full, const T5Batch& batch, bool grad, const LayerContext& ctx_in) {
  const T5Config& c = m.cfg;
  const int64_t B = batch.B, Te = batch.Te, Td = batch.Td, NE = B * Te, ND = B * Td;
  if (grad && !full.trainable) ST_THROW("t5_forward: gradient requested on eval-only activations");
  T5Activations a = shaped(m, full, B, Te, Td, "t5_forward");
  const LayerContext ctx = with_scratch(ctx_in, a);
  const double eps = c.layer_norm_epsilon;
  const int Le = static_cast<int>(m.enc.size()), Ld = static_cast<int>(m.dec.size());
  {
    // Unit 0: relative position biases (one per stack, shared by its blocks) and both embeddings.
    UnitScope unit(m.hooks, 0, false);
    relative_bias_forward(m.enc_rel, a.enc_buckets, Te, Te, a.enc_bias);
    relative_bias_forward(m.dec_rel, a.dec_buckets, Td, Td, a.dec_bias);
    Tensor x0 = layer(a.x, 0, NE), y0 = layer(a.y, 0, ND);
    embed(m, batch.enc_ids, x0);
    embed(m, batch.dec_ids, y0);
  }
  // Encoder.
  for (int l = 0; l < Le; ++l) {
    UnitScope unit(m.hooks, 1 + l, false);
    Tensor xout = layer(a.x, l + 1, NE);
    enc_block_forward(m, m.enc[static_cast<size_t>(l)], set_of(a.enc, l, a.enc_checkpointed), layer(a.x, l, NE), xout, a, batch, ctx);
  }
  {
    UnitScope unit(m.hooks, Le + 1, false);
    rmsnorm_forward(layer(a.x, Le, NE), m.enc_final, eps, a.e, a.erstd);
  }
  // Decoder.
  for (int l = 0; l < Ld; ++l) {
    UnitScope unit(m.hooks, Le + 2 + l, false);
    Tensor yout = layer(a.y, l + 1, ND);
    dec_block_forward(m, m.dec[static_cast<size_t>(l)], set_of(a.dec, l, a.dec_checkpointed), layer(a.y, l, ND), yout, a, batch, ctx);
  }
  UnitScope head(m.hooks, Le + Ld + 2, false);
  rmsnorm_forward(layer(a.y, Ld, ND), m.dec_final, eps, a.yf, a.yrstd);
  // The head sees the decoder output scaled by d_model^-0.5 (T5's tied head).
  if (c.scale_decoder_outputs) scale_inplace(a.yf, 1.0 / std::sqrt(static_cast<double>(c.d_model)));
  linear_layer_forward(m.lm_head, a.yf, a.logits, false, ctx);
  return lm_cross_entropy(a.logits, batch.dec_targets, batch.dec_weight, a.losses, grad, m.tp);
}

void t5_backward(T5Model& m, T5Activations& full, const T5Batch& batch, const LayerContext& ctx_in) {
  const T5Config& c = m.cfg;
  const int64_t B = batch.B, Te = batch.Te, Td = batch.Td, NE = B * Te, ND = B * Td;
  if (!full.trainable) ST_THROW("t5_backward on eval-only activations");
  T5Activations a = shaped(m, full, B, Te, Td, "t5_backward");
  const LayerContext ctx = with_scratch(ctx_in, a);
  const int Le = static_cast<int>(m.enc.size()), Ld = static_cast<int>(m.dec.size());
  auto g = [](Tensor& t) { return t.defined() ? &t : nullptr; };
  // dy (decoder stream) and de (encoder output) are kept until the encoder and unit 0 use them.
  Tensor dn = rows(a.dn, ND), dy = rows(a.dy, ND), de = rows(a.de, NE);
  {
    UnitScope head(m.hooks, Le + Ld + 2, true);
    linear_layer_backward(m.lm_head, a.yf, a.logits, &dn, ctx, false);
    tp_sum_partials(m.tp, dn);  // vocabulary-parallel lm_head: partial input gradients
    if (c.scale_decoder_outputs) scale_inplace(dn, 1.0 / std::sqrt(static_cast<double>(c.d_model)));
    dy.zero_();
    rmsnorm_backward(dn, layer(a.y, Ld, ND), m.dec_final, a.yrstd, dy, g(m.dec_final_grad));
  }
  de.zero_();
  if (a.dec_dbias.defined()) {
    a.dec_dbias.zero_();
    a.enc_dbias.zero_();
  }
  const AttentionShape ds = shape_of(m, B, Td, Td, true), cs = shape_of(m, B, Td, Te, false);
  Tensor datt = rows(a.datt, ND), dq = rows(a.dq, ND), dk = rows(a.dk, ND), dv = rows(a.dv, ND);
  Tensor dh = rows(a.dh, ND);
  Tensor dck = rows(a.dck, NE), dcv = rows(a.dcv, NE);
  for (int l = Ld - 1; l >= 0; --l) {
    UnitScope unit(m.hooks, Le + 2 + l, true);
    T5DecBlock& w = m.dec[static_cast<size_t>(l)];
    T5Activations::Dec& s = set_of(a.dec, l, a.dec_checkpointed);
    const Tensor yin = layer(a.y, l, ND);
    if (checkpoint_recomputes(l, a.dec_checkpointed)) dec_block_forward(m, w, s, yin, dn, a, batch, recompute_ctx(ctx));
    // FFN: y_out = mid2 + ffn(n2 mid2)
    ffn_backward(m, w.ffn, s.n2, s.g, s.u, s.h, dy, dn, dh, ctx);
    rmsnorm_backward(dn, s.mid2, w.ln2, s.r2, dy, g(w.ln2_grad));
    // Cross-attention: mid2 = mid1 + o'(attn(q'(n1), k'(e), v'(e))); k', v' feed the encoder
    // (under TP, de collects this rank's partial sums over every decoder block).
    attn_backward(m, w.cross, s.n1, a.e, cs, batch.enc_lengths, Tensor(), nullptr, s.cq, s.ck, s.cv, s.catt, s.clse, dy,
                  datt, dq, dck, dcv, dn, &de, ctx);
    rmsnorm_backward(dn, s.mid1, w.ln1, s.r1, dy, g(w.ln1_grad));
    // Self-attention with the causal relative bias.
    attn_backward(m, w.self, s.n0, s.n0, ds, batch.dec_lengths, a.dec_bias, g(a.dec_dbias), s.q, s.k, s.v, s.att, s.lse,
                  dy, datt, dq, dk, dv, dn, nullptr, ctx);
    rmsnorm_backward(dn, yin, w.ln0, s.r0, dy, g(w.ln0_grad));
  }
  // Encoder: dx starts as d(final norm input) of the encoder output's gradient.
  Tensor dx = rows(a.dx, NE), dne = rows(a.dn, NE);
  {
    UnitScope unit(m.hooks, Le + 1, true);
    tp_sum_partials(m.tp, de);  // the cross-attention k', v' of every decoder block, summed once
    dx.zero_();
    rmsnorm_backward(de, layer(a.x, Le, NE), m.enc_final, a.erstd, dx, g(m.enc_final_grad));
  }
  const AttentionShape es = shape_of(m, B, Te, Te, false);
  Tensor edatt = rows(a.datt, NE), edq = rows(a.dq, NE), edk = rows(a.dk, NE), edv = rows(a.dv, NE);
  Tensor edh = rows(a.dh, NE);
  for (int l = Le - 1; l >= 0; --l) {
    UnitScope unit(m.hooks, 1 + l, true);
    T5EncBlock& w = m.enc[static_cast<size_t>(l)];
    T5Activations::Enc& s = set_of(a.enc, l, a.enc_checkpointed);
    const Tensor xin = layer(a.x, l, NE);
    if (checkpoint_recomputes(l, a.enc_checkpointed)) enc_block_forward(m, w, s, xin, dne, a, batch, recompute_ctx(ctx));
    ffn_backward(m, w.ffn, s.n1, s.g, s.u, s.h, dx, dne, edh, ctx);
    rmsnorm_backward(dne, s.mid, w.ln1, s.r1, dx, g(w.ln1_grad));
    attn_backward(m, w.self, s.n0, s.n0, es, batch.enc_lengths, a.enc_bias, g(a.enc_dbias), s.q, s.k, s.v, s.att, s.lse,
                  dx, edatt, edq, edk, edv, dne, nullptr, ctx);
    rmsnorm_backward(dne, xin, w.ln0, s.r0, dx, g(w.ln0_grad));
  }
  UnitScope unit(m.hooks, 0, true);
  embed_backward(m, batch.dec_ids, dy);
  embed_backward(m, batch.enc_ids, dx);
  if (m.dec_rel_grad.defined()) relative_bias_backward(a.dec_dbias, a.dec_buckets, Td, Td, m.dec_rel_grad);
  if (m.enc_rel_grad.defined()) relative_bias_backward(a.enc_dbias, a.enc_buckets, Te, Te, m.enc_rel_grad);
}

}  // namespace st
