#include "model/llama_cache.hpp"

#include <algorithm>
#include <cmath>

#include "core/error.hpp"
#include "ops/activation.hpp"
#include "ops/decode_attention.hpp"
#include "ops/norm.hpp"
#include "ops/rope.hpp"

namespace st {

LlamaKvCache llama_kv_cache(const LlamaModel& m, int64_t capacity, int64_t max_step) {
  const LlamaConfig& c = m.cfg;
  if (m.tp.size > 1 || m.hooks)
    ST_THROW_INPUT("incremental decoding runs the whole model on one rank (tensor parallelism and ZeRO-3 are not "
                   "supported for generation)");
  if (capacity < 1 || max_step < 1 || max_step > capacity)
    ST_THROW("llama_kv_cache: capacity ", capacity, ", max_step ", max_step);
  if (capacity > c.max_position_embeddings)
    ST_THROW_INPUT("sequence of ", capacity, " positions (prompt + new tokens) exceeds the model's "
                   "max_position_embeddings ", c.max_position_embeddings);
  if (c.sliding_window > 0 && capacity > c.sliding_window)
    ST_THROW_INPUT("sequence of ", capacity, " positions (prompt + new tokens) exceeds the model's sliding_window ",
                   c.sliding_window, ": sliding-window attention is not implemented");
  const LlamaLocalDims ld = llama_local_dims(m);
  const int64_t C = c.hidden_size, I = ld.intermediate, S = max_step;
  LlamaKvCache kv;
  kv.capacity = capacity;
  kv.max_step = max_step;
  auto act = [&](const Shape& s) { return Tensor::zeros(s, m.dtype, m.device, MemCategory::activations); };
  for (int64_t l = 0; l < c.num_layers; ++l) {
    kv.k.push_back(act({capacity, ld.kv_dim}));
    kv.v.push_back(act({capacity, ld.kv_dim}));
  }
  kv.x = act({S, C});
  kv.x_mid = act({S, C});
  kv.xn = act({S, C});
  kv.rstd = Tensor::zeros({S}, master_dtype(m.dtype), m.device, MemCategory::activations);
  kv.q = act({S, ld.q_dim});
  kv.att = act({S, ld.q_dim});
  kv.gate = act({S, I});
  kv.up = act({S, I});
  kv.h = act({S, I});
  kv.scratch = act({S, std::max({C, I, ld.q_dim})});
  kv.logits = act({1, ld.vocab});
  return kv;
}

Tensor llama_decode(LlamaModel& m, LlamaKvCache& kv, const std::vector<int32_t>& ids) {
  const LlamaConfig& c = m.cfg;
  const int64_t n = static_cast<int64_t>(ids.size()), past = kv.length;
  if (n < 1 || n > kv.max_step || past + n > kv.capacity)
    ST_THROW("llama_decode: ", n, " tokens after ", past, " exceed the cache (", kv.max_step, " per step, ",
             kv.capacity, " positions)");
  for (const int32_t id : ids)
    if (id < 0 || id >= c.vocab_size) ST_THROW_INPUT("token id ", id, " is outside the vocabulary [0, ", c.vocab_size, ")");
  const LlamaLocalDims ld = llama_local_dims(m);
  // The token ids and their positions on the device.
  std::vector<int32_t> pos(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) pos[static_cast<size_t>(i)] = static_cast<int32_t>(past + i);
  Tensor ids_dev = Tensor::empty({n}, DType::i32, m.device, MemCategory::activations);
  Tensor pos_dev = Tensor::empty({n}, DType::i32, m.device, MemCategory::activations);
  device_memcpy(ids_dev.data(), m.device, ids.data(), Device::cpu, ids.size() * sizeof(int32_t));
  device_memcpy(pos_dev.data(), m.device, pos.data(), Device::cpu, pos.size() * sizeof(int32_t));

  LayerContext ctx;  // inference: no dropout
  Tensor scratch = kv.scratch.slice(0, n);
  ctx.scratch = &scratch;
  Tensor x = kv.x.slice(0, n), x_mid = kv.x_mid.slice(0, n), xn = kv.xn.slice(0, n), rstd = kv.rstd.slice(0, n);
  Tensor q = kv.q.slice(0, n), att = kv.att.slice(0, n);
  Tensor gate = kv.gate.slice(0, n), up = kv.up.slice(0, n), h = kv.h.slice(0, n);
  embedding_layer_forward(ids_dev, m.embed, m.tp, x);
  DecodeAttentionShape as;
  as.Hq = ld.heads;
  as.Hkv = ld.kv_heads;
  as.D = c.head_dim;
  as.past = past;
  as.scale = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
  for (int64_t l = 0; l < c.num_layers; ++l) {
    LlamaBlock& blk = m.blocks[static_cast<size_t>(l)];
    Tensor k = kv.k[static_cast<size_t>(l)].slice(past, past + n), v = kv.v[static_cast<size_t>(l)].slice(past, past + n);
    rmsnorm_forward(x, blk.attn_norm, c.rms_norm_eps, xn, rstd);
    linear_layer_forward(blk.q, xn, q, false, ctx);
    linear_layer_forward(blk.k, xn, k, false, ctx);  // straight into the cache rows
    linear_layer_forward(blk.v, xn, v, false, ctx);
    rope_forward(q, 1, n, m.rope, pos_dev);
    rope_forward(k, 1, n, m.rope, pos_dev);
    decode_attention(as, q, kv.k[static_cast<size_t>(l)], kv.v[static_cast<size_t>(l)], att);
    linear_layer_forward(blk.o, att, x_mid, false, ctx, &x);  // x_mid = x + o(att)
    rmsnorm_forward(x_mid, blk.mlp_norm, c.rms_norm_eps, xn, rstd);
    linear_layer_forward(blk.gate, xn, gate, false, ctx);
    linear_layer_forward(blk.up, xn, up, false, ctx);
    swiglu_forward(gate, up, h);
    linear_layer_forward(blk.down, h, x, false, ctx, &x_mid);  // x = x_mid + down(h)
  }
  // The head on the last token only.
  Tensor last = x.slice(n - 1, n), xnl = xn.slice(0, 1), rl = rstd.slice(0, 1);
  rmsnorm_forward(last, m.final_norm, c.rms_norm_eps, xnl, rl);
  linear_layer_forward(m.lm_head, xnl, kv.logits, false, ctx);
  kv.length = past + n;
  return kv.logits;
}

}  // namespace st
