// T5 v1.1 / FlanT5 encoder-decoder (transformers' T5ForConditionalGeneration), hand-written
// forward and backward on the same ops as the Llama model.
//
// Encoder (pre-norm, T5 RMS layer norm, no biases):
//   x = shared[input_ids];  b_enc = rel_bias(enc table, bidirectional buckets)   [H, Te, Te]
//   per block: x += o(attn(q(n0 x), k(n0 x), v(n0 x); bias b_enc, key padding, scale 1))
//              x += wo(gelu_new(wi_0(n1 x)) * wi_1(n1 x))        (ReLU wi/wo for original T5)
//   e = final_norm(x)
// Decoder:
//   y = shared[decoder_input_ids];  b_dec = rel_bias(dec table, causal buckets)    [H, Td, Td]
//   per block: y += o(attn(self; bias b_dec, causal))
//              y += o'(attn(q'(n1 y), k'(e), v'(e); encoder key padding, no bias))
//              y += ffn(n2 y)
//   logits = lm_head(final_norm(y) [* d_model^-0.5 with scale_decoder_outputs])
// The relative bias tables live in block 0 of each stack and serve every block of it.
// Decoder inputs are the labels shifted right with decoder_start_token_id (t5_shift_right).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/tensor.hpp"
#include "model/linear.hpp"
#include "model/t5_config.hpp"

namespace st {

struct T5Attn {
  Linear q, k, v, o;
};

struct T5Ffn {
  Linear wi_0, wi_1, wo;  // gated: wi_0 (GELU branch), wi_1 (linear branch); relu: wi_0 holds `wi`
};

struct T5EncBlock {
  Tensor ln0, ln0_grad, ln1, ln1_grad;
  T5Attn self;
  T5Ffn ffn;
};

struct T5DecBlock {
  Tensor ln0, ln0_grad, ln1, ln1_grad, ln2, ln2_grad;
  T5Attn self, cross;
  T5Ffn ffn;
};

struct T5Model {
  T5Config cfg;
  DType dtype = DType::f32;
  Device device = Device::cpu;
  Tensor shared, shared_grad;              // [V, C]
  Tensor enc_rel, enc_rel_grad;            // [num_buckets, H]  encoder.block.0...relative_attention_bias
  Tensor dec_rel, dec_rel_grad;            // decoder.block.0...relative_attention_bias
  std::vector<T5EncBlock> enc;
  std::vector<T5DecBlock> dec;
  Tensor enc_final, enc_final_grad, dec_final, dec_final_grad;  // [C]
  Linear lm_head;                          // [V, C]; shares `shared` when tied
  bool base_trainable = false;
};

T5Model t5_build(const T5Config& cfg, DType dtype, Device device);
// Normal(0, std) for matrices and tables, ones for norms, seeded per tensor name.
void t5_init_random(T5Model& m, uint64_t seed, double std);
void t5_enable_base_training(T5Model& m);
// Every weight with its transformers name, in t5_weight_names' order (lm_head omitted when tied).
std::vector<std::pair<std::string, Tensor*>> t5_named_weights(T5Model& m);
// Trainable parameters (the base when trainable), each with its gradient.
std::vector<ParamRef> t5_trainable_params(T5Model& m);
// Loads <dir>/config.json and model.safetensors (or shards), validating names and shapes.
T5Model load_t5(const std::string& dir, DType dtype, Device device);

// One micro-batch: encoder ids [B, Te] with lengths, decoder inputs/targets/weights [B, Td].
struct T5Batch {
  int64_t B = 0, Te = 0, Td = 0;
  Tensor enc_ids, enc_lengths;                 // i32 [B*Te], i32 [B]
  Tensor dec_ids, dec_targets, dec_weight;     // i32, i32 (-1: none), f32 [B*Td]
  Tensor dec_lengths;                          // i32 [B]
};
// decoder_input_ids from labels (i32, -1 = ignore): [start, labels[0..Td-2]], -1 -> pad.
std::vector<int32_t> t5_shift_right(const std::vector<int32_t>& labels, int64_t B, int64_t Td, int64_t start,
                                    int64_t pad);

struct T5Activations {
  int64_t B = 0, Te = 0, Td = 0;
  bool trainable = false;
  Tensor enc_bias, dec_bias, enc_dbias, dec_dbias;  // [H, T, T] (master dtype)
  Tensor enc_buckets, dec_buckets;                  // i32
  Tensor x;            // [Le+1, B*Te, C] encoder residual stream
  Tensor e, erstd;     // encoder output (final norm) [B*Te, C]
  Tensor y;            // [Ld+1, B*Td, C] decoder residual stream
  Tensor yf, yrstd;    // final-normed decoder output (scaled when tied)
  Tensor logits, losses;
  struct Enc {
    Tensor n0, r0, q, k, v, att, lse, mid, n1, r1, g, u, h;
  };
  struct Dec {
    Tensor n0, r0, q, k, v, att, lse, mid1, n1, r1, cq, ck, cv, catt, clse, mid2, n2, r2, g, u, h;
  };
  std::vector<Enc> enc;
  std::vector<Dec> dec;
  // Backward scratch.
  Tensor dx, dn, datt, dq, dk, dv, dh, dg, du, de, dy, dck, dcv;
};

T5Activations t5_activations(const T5Model& m, int64_t B, int64_t Te, int64_t Td, bool trainable);
// Returns sum over decoder positions of weight * loss; with grad, acts.logits becomes dlogits.
double t5_forward(T5Model& m, T5Activations& a, const T5Batch& batch, bool grad);
void t5_backward(T5Model& m, T5Activations& a, const T5Batch& batch);

// Every linear layer (adapters attach here): encoder blocks, decoder blocks, then lm_head when
// untied. Short names are the last part of the module name: q, k, v, o, wi_0, wi_1, wi, wo.
std::vector<Linear*> t5_linears(T5Model& m);
const std::vector<std::string>& t5_module_names();
std::string t5_module_short_name(const std::string& module);

}  // namespace st
