#include "model/t5.hpp"

#include <algorithm>
#include <cmath>

#include "core/rng.hpp"
#include "io/hf_checkpoint.hpp"
#include "ops/activation.hpp"
#include "ops/attention.hpp"
#include "ops/embedding.hpp"
#include "ops/init.hpp"
#include "ops/loss.hpp"
#include "ops/matmul.hpp"
#include "ops/norm.hpp"
#include "ops/optim.hpp"
#include "ops/relbias.hpp"

namespace st {

namespace {

Linear make_linear(const std::string& name, int64_t in, int64_t out, const T5Model& m) {
  Linear l;
  l.name = name;
  l.in = in;
  l.out = out;
  l.weight = Tensor::zeros({out, in}, m.dtype, m.device, MemCategory::weights);
  return l;
}

T5Attn make_attn(const std::string& p, const T5Model& m) {
  const int64_t C = m.cfg.d_model, HD = m.cfg.inner_dim();
  return {make_linear(p + "q", C, HD, m), make_linear(p + "k", C, HD, m), make_linear(p + "v", C, HD, m),
          make_linear(p + "o", HD, C, m)};
}

T5Ffn make_ffn(const std::string& p, const T5Model& m) {
  const int64_t C = m.cfg.d_model, F = m.cfg.d_ff;
  T5Ffn f;
  if (m.cfg.gated) {
    f.wi_0 = make_linear(p + "wi_0", C, F, m);
    f.wi_1 = make_linear(p + "wi_1", C, F, m);
  } else {
    f.wi_0 = make_linear(p + "wi", C, F, m);
  }
  f.wo = make_linear(p + "wo", F, C, m);
  return f;
}

Tensor norm_weight(const T5Model& m) { return Tensor::zeros({m.cfg.d_model}, m.dtype, m.device, MemCategory::weights); }

Tensor rows(const Tensor& t, int64_t n) { return t.slice(0, n); }

// Layer l of a [L+1, rows_max, C] residual buffer, first n rows.
Tensor layer(const Tensor& stream, int64_t l, int64_t n) {
  Tensor s = stream.slice(l, l + 1);
  return s.view({stream.dim(1), stream.dim(2)}).slice(0, n);
}

AttentionShape shape_of(const T5Config& c, int64_t B, int64_t T, int64_t Tk, bool causal) {
  AttentionShape s;
  s.B = B;
  s.T = T;
  s.Tk = Tk == T ? 0 : Tk;
  s.Hq = s.Hkv = c.num_heads;
  s.D = c.d_kv;
  s.causal = causal;
  s.scale = 1.0;  // T5 folds the 1/sqrt(d) into the initialisation of q
  return s;
}

const LayerContext kCtx{};

}  // namespace

T5Model t5_build(const T5Config& cfg, DType dtype, Device device) {
  cfg.validate("T5 config");
  T5Model m;
  m.cfg = cfg;
  m.dtype = dtype;
  m.device = device;
  const int64_t V = cfg.vocab_size, C = cfg.d_model, NB = cfg.relative_attention_num_buckets, H = cfg.num_heads;
  m.shared = Tensor::zeros({V, C}, dtype, device, MemCategory::weights);
  m.enc_rel = Tensor::zeros({NB, H}, dtype, device, MemCategory::weights);
  m.dec_rel = Tensor::zeros({NB, H}, dtype, device, MemCategory::weights);
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    const std::string b = str("encoder.block.", l, ".");
    T5EncBlock e;
    e.ln0 = norm_weight(m);
    e.self = make_attn(b + "layer.0.SelfAttention.", m);
    e.ln1 = norm_weight(m);
    e.ffn = make_ffn(b + "layer.1.DenseReluDense.", m);
    m.enc.push_back(std::move(e));
  }
  m.enc_final = norm_weight(m);
  for (int64_t l = 0; l < cfg.num_decoder_layers; ++l) {
    const std::string b = str("decoder.block.", l, ".");
    T5DecBlock d;
    d.ln0 = norm_weight(m);
    d.self = make_attn(b + "layer.0.SelfAttention.", m);
    d.ln1 = norm_weight(m);
    d.cross = make_attn(b + "layer.1.EncDecAttention.", m);
    d.ln2 = norm_weight(m);
    d.ffn = make_ffn(b + "layer.2.DenseReluDense.", m);
    m.dec.push_back(std::move(d));
  }
  m.dec_final = norm_weight(m);
  if (cfg.tie_word_embeddings) {
    m.lm_head.name = "lm_head";
    m.lm_head.in = C;
    m.lm_head.out = V;
    m.lm_head.weight = m.shared;
  } else {
    m.lm_head = make_linear("lm_head", C, V, m);
  }
  return m;
}

namespace {

// Every weight with its transformers name and its gradient slot (undefined until base training
// is enabled), in t5_weight_names' order (lm_head omitted when tied).
struct T5Slot {
  std::string name;
  Tensor* weight;
  Tensor* grad;
};

std::vector<T5Slot> t5_slots(T5Model& m) {
  std::vector<T5Slot> out;
  out.push_back({"shared.weight", &m.shared, &m.shared_grad});
  auto lin = [&](Linear& l) { out.push_back({l.name + ".weight", &l.weight, &l.grad}); };
  auto attn = [&](T5Attn& a, Tensor* rel, Tensor* rel_grad) {
    for (Linear* l : {&a.q, &a.k, &a.v, &a.o}) lin(*l);
    if (rel) out.push_back({a.q.name.substr(0, a.q.name.size() - 1) + "relative_attention_bias.weight", rel, rel_grad});
  };
  auto ffn = [&](T5Ffn& f) {
    lin(f.wi_0);
    if (m.cfg.gated) lin(f.wi_1);
    lin(f.wo);
  };
  for (size_t l = 0; l < m.enc.size(); ++l) {
    T5EncBlock& e = m.enc[l];
    const std::string b = str("encoder.block.", l, ".");
    attn(e.self, l == 0 ? &m.enc_rel : nullptr, &m.enc_rel_grad);
    out.push_back({b + "layer.0.layer_norm.weight", &e.ln0, &e.ln0_grad});
    ffn(e.ffn);
    out.push_back({b + "layer.1.layer_norm.weight", &e.ln1, &e.ln1_grad});
  }
  out.push_back({"encoder.final_layer_norm.weight", &m.enc_final, &m.enc_final_grad});
  for (size_t l = 0; l < m.dec.size(); ++l) {
    T5DecBlock& d = m.dec[l];
    const std::string b = str("decoder.block.", l, ".");
    attn(d.self, l == 0 ? &m.dec_rel : nullptr, &m.dec_rel_grad);
    out.push_back({b + "layer.0.layer_norm.weight", &d.ln0, &d.ln0_grad});
    attn(d.cross, nullptr, nullptr);
    out.push_back({b + "layer.1.layer_norm.weight", &d.ln1, &d.ln1_grad});
    ffn(d.ffn);
    out.push_back({b + "layer.2.layer_norm.weight", &d.ln2, &d.ln2_grad});
  }
  out.push_back({"decoder.final_layer_norm.weight", &m.dec_final, &m.dec_final_grad});
  if (!m.cfg.tie_word_embeddings) lin(m.lm_head);
  return out;
}

}  // namespace

std::vector<std::pair<std::string, Tensor*>> t5_named_weights(T5Model& m) {
  std::vector<std::pair<std::string, Tensor*>> out;
  for (const T5Slot& s : t5_slots(m)) out.emplace_back(s.name, s.weight);
  return out;
}

void t5_init_random(T5Model& m, uint64_t seed, double std) {
  for (auto& [name, t] : t5_named_weights(m)) {
    if (t->ndim() == 1) fill_constant(*t, 1.0);
    else fill_normal(*t, counter_key(seed, name_hash(name)), 0.0, std);
  }
}

void t5_enable_base_training(T5Model& m) {
  if (m.base_trainable) return;
  m.base_trainable = true;
  // Gradients in the master precision (f32 when the weights are bf16).
  for (const T5Slot& s : t5_slots(m))
    *s.grad = Tensor::zeros(s.weight->shape(), master_dtype(m.dtype), m.device, MemCategory::gradients);
  if (m.cfg.tie_word_embeddings) m.lm_head.grad = m.shared_grad;  // both paths add into one buffer
}

std::vector<ParamRef> t5_trainable_params(T5Model& m) {
  std::vector<ParamRef> out;
  if (!m.base_trainable) return out;
  for (const T5Slot& s : t5_slots(m))  // weight decay on the projection matrices only
    out.push_back({s.name, s.weight, s.grad, s.weight->ndim() == 2 && s.name.find("relative_attention_bias") == std::string::npos});
  return out;
}

T5Model load_t5(const std::string& dir, DType dtype, Device device) {
  T5Model m = t5_build(read_t5_config(dir), dtype, device);
  CheckpointReader ckpt = CheckpointReader::open(dir);
  for (auto& [name, t] : t5_named_weights(m)) t->copy_from(ckpt.read(name, t->shape(), dtype, device, MemCategory::workspace));
  for (const std::string& extra : ckpt.unused_names()) {
    // transformers writes the shared table under these names too when it saves a T5.
    if (extra == "encoder.embed_tokens.weight" || extra == "decoder.embed_tokens.weight") continue;
    if (extra == "lm_head.weight" && m.cfg.tie_word_embeddings) continue;
    ST_THROW_INPUT(dir, ": unexpected tensor '", extra, "' in the checkpoint (not part of a T5 with this config)");
  }
  return m;
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

T5Activations t5_activations(const T5Model& m, int64_t B, int64_t Te, int64_t Td, bool trainable) {
  const T5Config& c = m.cfg;
  const int64_t C = c.d_model, HD = c.inner_dim(), F = c.d_ff, H = c.num_heads, V = c.vocab_size;
  const int64_t NE = B * Te, ND = B * Td;
  const DType sd = master_dtype(m.dtype);
  auto act = [&](const Shape& s) { return Tensor::zeros(s, m.dtype, m.device, MemCategory::activations); };
  auto stat = [&](const Shape& s) { return Tensor::zeros(s, sd, m.device, MemCategory::activations); };
  T5Activations a;
  a.B = B;
  a.Te = Te;
  a.Td = Td;
  a.trainable = trainable;
  a.enc_buckets = t5_relative_buckets(Te, Te, true, c.relative_attention_num_buckets, c.relative_attention_max_distance, m.device);
  a.dec_buckets = t5_relative_buckets(Td, Td, false, c.relative_attention_num_buckets, c.relative_attention_max_distance, m.device);
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
  for (int64_t l = 0; l < c.num_layers; ++l)
    a.enc.push_back({act({NE, C}), stat({NE}), act({NE, HD}), act({NE, HD}), act({NE, HD}), act({NE, HD}), stat({NE, H}),
                     act({NE, C}), act({NE, C}), stat({NE}), act({NE, F}), c.gated ? act({NE, F}) : Tensor(), act({NE, F})});
  for (int64_t l = 0; l < c.num_decoder_layers; ++l)
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
    a.dg = ws({N, F});
    a.du = ws({N, F});
    a.de = ws({NE, C});
    a.dy = ws({ND, C});
    a.dck = ws({NE, HD});
    a.dcv = ws({NE, HD});
  }
  return a;
}

namespace {

// out = resid + o(attn(q(n), k(kv), v(kv))): self-attention with kv = n, cross-attention with
// kv = the encoder output.
void attn_forward(const T5Attn& w, const Tensor& n, const Tensor& kv, const AttentionShape& shape, const Tensor& lengths,
                  const Tensor& bias, Tensor q, Tensor k, Tensor v, Tensor att, Tensor lse, Tensor& out,
                  const Tensor& resid) {
  linear_layer_forward(w.q, n, q, false, kCtx);
  linear_layer_forward(w.k, kv, k, false, kCtx);
  linear_layer_forward(w.v, kv, v, false, kCtx);
  attention_forward(shape, q, k, v, lengths, att, lse, bias);
  linear_layer_forward(w.o, att, out, false, kCtx, &resid);
}

// dout: gradient of the block output. dn (overwritten) gets d(n); d(kv) goes into dkv (+=) for
// cross-attention, or into dn with it for self-attention (dkv null). dbias (+=) when wanted.
void attn_backward(T5Attn& w, const Tensor& n, const Tensor& kv, const AttentionShape& shape, const Tensor& lengths,
                   const Tensor& bias, Tensor* dbias, const Tensor& q, const Tensor& k, const Tensor& v,
                   const Tensor& att, const Tensor& lse, const Tensor& dout, Tensor datt, Tensor dq, Tensor dk, Tensor dv,
                   Tensor& dn, Tensor* dkv) {
  linear_layer_backward(w.o, att, dout, &datt, kCtx, false);
  attention_backward(shape, q, k, v, att, lse, datt, lengths, dq, dk, dv, false, bias, dbias);
  linear_layer_backward(w.q, n, dq, &dn, kCtx, false);
  Tensor& dkv_into = dkv ? *dkv : dn;
  linear_layer_backward(w.k, kv, dk, &dkv_into, kCtx);
  linear_layer_backward(w.v, kv, dv, &dkv_into, kCtx);
}

// ffn(n) into out (overwritten) with the residual added: out = resid + wo(act(n)).
void ffn_forward(const T5Model& m, const T5Ffn& f, const Tensor& n, Tensor g, Tensor u, Tensor h, Tensor& out,
                 const Tensor& resid) {
  linear_layer_forward(f.wi_0, n, g, false, kCtx);
  if (m.cfg.gated) {
    linear_layer_forward(f.wi_1, n, u, false, kCtx);
    geglu_forward(g, u, h);
  } else {
    relu_forward(g, h);
  }
  linear_layer_forward(f.wo, h, out, false, kCtx, &resid);
}

// dout: gradient of the FFN output; dn (overwritten) gets the gradient of its input n.
void ffn_backward(const T5Model& m, T5Ffn& f, const Tensor& n, const Tensor& g, const Tensor& u, const Tensor& h,
                  const Tensor& dout, Tensor& dn, Tensor dh, Tensor dg, Tensor du) {
  linear_layer_backward(f.wo, h, dout, &dh, kCtx, false);
  if (m.cfg.gated) {
    geglu_backward(dh, g, u, dg, du, false);
    linear_layer_backward(f.wi_0, n, dg, &dn, kCtx, false);
    linear_layer_backward(f.wi_1, n, du, &dn, kCtx);
  } else {
    relu_backward(dh, g, dg, false);
    linear_layer_backward(f.wi_0, n, dg, &dn, kCtx, false);
  }
}

}  // namespace

double t5_forward(T5Model& m, T5Activations& a, const T5Batch& batch, bool grad) {
  const T5Config& c = m.cfg;
  const int64_t B = batch.B, Te = batch.Te, Td = batch.Td, NE = B * Te, ND = B * Td;
  if (B != a.B || Te != a.Te || Td != a.Td) ST_THROW("t5_forward: batch [", B, ", ", Te, ", ", Td, "] does not match the activations");
  if (grad && !a.trainable) ST_THROW("t5_forward: gradient requested on eval-only activations");
  const double eps = c.layer_norm_epsilon;
  // Relative position biases (one per stack, shared by its blocks).
  relative_bias_forward(m.enc_rel, a.enc_buckets, Te, Te, a.enc_bias);
  relative_bias_forward(m.dec_rel, a.dec_buckets, Td, Td, a.dec_bias);
  // Encoder.
  Tensor x0 = layer(a.x, 0, NE);
  embedding_forward(batch.enc_ids, m.shared, x0);
  const AttentionShape es = shape_of(c, B, Te, Te, false);
  for (size_t l = 0; l < m.enc.size(); ++l) {
    T5EncBlock& w = m.enc[l];
    T5Activations::Enc& s = a.enc[l];
    const Tensor xin = layer(a.x, static_cast<int64_t>(l), NE);
    Tensor xout = layer(a.x, static_cast<int64_t>(l) + 1, NE);
    rmsnorm_forward(xin, w.ln0, eps, s.n0, s.r0);
    attn_forward(w.self, s.n0, s.n0, es, batch.enc_lengths, a.enc_bias, s.q, s.k, s.v, s.att, s.lse, s.mid, xin);
    rmsnorm_forward(s.mid, w.ln1, eps, s.n1, s.r1);
    ffn_forward(m, w.ffn, s.n1, s.g, s.u, s.h, xout, s.mid);
  }
  rmsnorm_forward(layer(a.x, c.num_layers, NE), m.enc_final, eps, a.e, a.erstd);
  // Decoder.
  Tensor y0 = layer(a.y, 0, ND);
  embedding_forward(batch.dec_ids, m.shared, y0);
  const AttentionShape ds = shape_of(c, B, Td, Td, true), cs = shape_of(c, B, Td, Te, false);
  for (size_t l = 0; l < m.dec.size(); ++l) {
    T5DecBlock& w = m.dec[l];
    T5Activations::Dec& s = a.dec[l];
    const Tensor yin = layer(a.y, static_cast<int64_t>(l), ND);
    Tensor yout = layer(a.y, static_cast<int64_t>(l) + 1, ND);
    rmsnorm_forward(yin, w.ln0, eps, s.n0, s.r0);
    attn_forward(w.self, s.n0, s.n0, ds, batch.dec_lengths, a.dec_bias, s.q, s.k, s.v, s.att, s.lse, s.mid1, yin);
    rmsnorm_forward(s.mid1, w.ln1, eps, s.n1, s.r1);
    attn_forward(w.cross, s.n1, a.e, cs, batch.enc_lengths, Tensor(), s.cq, s.ck, s.cv, s.catt, s.clse, s.mid2, s.mid1);
    rmsnorm_forward(s.mid2, w.ln2, eps, s.n2, s.r2);
    ffn_forward(m, w.ffn, s.n2, s.g, s.u, s.h, yout, s.mid2);
  }
  rmsnorm_forward(layer(a.y, c.num_decoder_layers, ND), m.dec_final, eps, a.yf, a.yrstd);
  // The head sees the decoder output scaled by d_model^-0.5 (T5's tied head).
  if (c.scale_decoder_outputs) scale_inplace(a.yf, 1.0 / std::sqrt(static_cast<double>(c.d_model)));
  linear_layer_forward(m.lm_head, a.yf, a.logits, false, kCtx);
  cross_entropy(a.logits, batch.dec_targets, batch.dec_weight, a.losses, grad);
  const Tensor lh = a.losses.to_cpu(DType::f64), wh = batch.dec_weight.to_cpu(DType::f64);
  double total = 0;
  for (int64_t i = 0; i < ND; ++i) total += wh.ptr<double>()[i] * lh.ptr<double>()[i];
  return total;
}

void t5_backward(T5Model& m, T5Activations& a, const T5Batch& batch) {
  const T5Config& c = m.cfg;
  const int64_t B = batch.B, Te = batch.Te, Td = batch.Td, NE = B * Te, ND = B * Td;
  if (!a.trainable) ST_THROW("t5_backward on eval-only activations");
  auto g = [](Tensor& t) { return t.defined() ? &t : nullptr; };
  Tensor dn = rows(a.dn, ND), dy = rows(a.dy, ND);
  // Head.
  linear_layer_backward(m.lm_head, a.yf, a.logits, &dn, kCtx, false);
  if (c.scale_decoder_outputs) scale_inplace(dn, 1.0 / std::sqrt(static_cast<double>(c.d_model)));
  dy.zero_();
  // rmsnorm_backward needs the normalised-and-unscaled input: recompute nothing, it takes x.
  rmsnorm_backward(dn, layer(a.y, c.num_decoder_layers, ND), m.dec_final, a.yrstd, dy, g(m.dec_final_grad));
  Tensor de = rows(a.de, NE);
  de.zero_();
  if (a.dec_dbias.defined()) {
    a.dec_dbias.zero_();
    a.enc_dbias.zero_();
  }
  const AttentionShape ds = shape_of(c, B, Td, Td, true), cs = shape_of(c, B, Td, Te, false);
  Tensor datt = rows(a.datt, ND), dq = rows(a.dq, ND), dk = rows(a.dk, ND), dv = rows(a.dv, ND);
  Tensor dh = rows(a.dh, ND), dgt = rows(a.dg, ND), du = rows(a.du, ND);
  Tensor dck = rows(a.dck, NE), dcv = rows(a.dcv, NE);
  for (int64_t l = static_cast<int64_t>(m.dec.size()) - 1; l >= 0; --l) {
    T5DecBlock& w = m.dec[static_cast<size_t>(l)];
    T5Activations::Dec& s = a.dec[static_cast<size_t>(l)];
    const Tensor yin = layer(a.y, l, ND);
    // FFN: y_out = mid2 + ffn(n2 mid2)
    ffn_backward(m, w.ffn, s.n2, s.g, s.u, s.h, dy, dn, dh, dgt, du);
    rmsnorm_backward(dn, s.mid2, w.ln2, s.r2, dy, g(w.ln2_grad));
    // Cross-attention: mid2 = mid1 + o'(attn(q'(n1), k'(e), v'(e))); k', v' feed the encoder.
    attn_backward(w.cross, s.n1, a.e, cs, batch.enc_lengths, Tensor(), nullptr, s.cq, s.ck, s.cv, s.catt, s.clse, dy, datt,
                  dq, dck, dcv, dn, &de);
    rmsnorm_backward(dn, s.mid1, w.ln1, s.r1, dy, g(w.ln1_grad));
    // Self-attention with the causal relative bias.
    attn_backward(w.self, s.n0, s.n0, ds, batch.dec_lengths, a.dec_bias, g(a.dec_dbias), s.q, s.k, s.v, s.att, s.lse, dy,
                  datt, dq, dk, dv, dn, nullptr);
    rmsnorm_backward(dn, yin, w.ln0, s.r0, dy, g(w.ln0_grad));
  }
  if (m.shared_grad.defined()) embedding_backward(batch.dec_ids, dy, m.shared_grad);
  if (m.dec_rel_grad.defined()) relative_bias_backward(a.dec_dbias, a.dec_buckets, Td, Td, m.dec_rel_grad);
  // Encoder: dx starts as d(final norm input) of the encoder output's gradient.
  Tensor dx = rows(a.dx, NE), dne = rows(a.dn, NE);
  dx.zero_();
  rmsnorm_backward(de, layer(a.x, c.num_layers, NE), m.enc_final, a.erstd, dx, g(m.enc_final_grad));
  const AttentionShape es = shape_of(c, B, Te, Te, false);
  Tensor edatt = rows(a.datt, NE), edq = rows(a.dq, NE), edk = rows(a.dk, NE), edv = rows(a.dv, NE);
  Tensor edh = rows(a.dh, NE), edg = rows(a.dg, NE), edu = rows(a.du, NE);
  for (int64_t l = static_cast<int64_t>(m.enc.size()) - 1; l >= 0; --l) {
    T5EncBlock& w = m.enc[static_cast<size_t>(l)];
    T5Activations::Enc& s = a.enc[static_cast<size_t>(l)];
    const Tensor xin = layer(a.x, l, NE);
    ffn_backward(m, w.ffn, s.n1, s.g, s.u, s.h, dx, dne, edh, edg, edu);
    rmsnorm_backward(dne, s.mid, w.ln1, s.r1, dx, g(w.ln1_grad));
    attn_backward(w.self, s.n0, s.n0, es, batch.enc_lengths, a.enc_bias, g(a.enc_dbias), s.q, s.k, s.v, s.att, s.lse, dx,
                  edatt, edq, edk, edv, dne, nullptr);
    rmsnorm_backward(dne, xin, w.ln0, s.r0, dx, g(w.ln0_grad));
  }
  if (m.shared_grad.defined()) embedding_backward(batch.enc_ids, dx, m.shared_grad);
  if (m.enc_rel_grad.defined()) relative_bias_backward(a.enc_dbias, a.enc_buckets, Te, Te, m.enc_rel_grad);
}

std::vector<Linear*> t5_linears(T5Model& m) {
  std::vector<Linear*> out;
  auto attn = [&](T5Attn& a) {
    for (Linear* l : {&a.q, &a.k, &a.v, &a.o}) out.push_back(l);
  };
  auto ffn = [&](T5Ffn& f) {
    out.push_back(&f.wi_0);
    if (m.cfg.gated) out.push_back(&f.wi_1);
    out.push_back(&f.wo);
  };
  for (T5EncBlock& e : m.enc) {
    attn(e.self);
    ffn(e.ffn);
  }
  for (T5DecBlock& d : m.dec) {
    attn(d.self);
    attn(d.cross);
    ffn(d.ffn);
  }
  if (!m.cfg.tie_word_embeddings) out.push_back(&m.lm_head);
  return out;
}

const std::vector<std::string>& t5_module_names() {
  static const std::vector<std::string> names{"q", "k", "v", "o", "wi_0", "wi_1", "wi", "wo"};
  return names;
}

std::string t5_module_short_name(const std::string& module) {
  const size_t dot = module.rfind('.');
  const std::string last = dot == std::string::npos ? module : module.substr(dot + 1);
  for (const std::string& n : t5_module_names())
    if (n == last) return n;
  return "";
}

}  // namespace st
