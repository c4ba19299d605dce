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
// No parallel code: its tensors are listed once (t5_param_table) with the TP plan's split of each
// (t5_tp_plan); ZeRO-3 and DDP attach through `hooks` (see the units below), tensor parallelism
// through the TP group's collectives (model/tp_plan.hpp).
// Decoder inputs are the labels shifted right with decoder_start_token_id (t5_shift_right).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.hpp"
#include "model/checkpointing.hpp"
#include "model/hooks.hpp"
#include "model/linear.hpp"
#include "model/param_table.hpp"
#include "model/t5_config.hpp"
#include "quant/nf4.hpp"

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

// Which linear layers keep their frozen base in NF4 (QLoRA) or FP8 (base_precision = fp8 with
// LoRA): short names (t5_module_names: q, k, v, o (self- and cross-attention alike), wi_0, wi_1
// (gated FFN), wi (ReLU FFN), wo); `shared`, the relative-bias tables and lm_head stay in the
// compute dtype. BaseQuant in model/param_table.hpp.
using T5Quant = BaseQuant;
const std::vector<std::string>& t5_module_names();
// "decoder.block.1.layer.1.EncDecAttention.k" -> "k", "...DenseReluDense.wi" -> "wi"; "" for
// anything else (lm_head).
std::string t5_module_short_name(const std::string& module);

// Units for ModelHooks (model/hooks.hpp), Le encoder and Ld decoder blocks:
//   0                 `shared` + both relative-bias tables: computes both bias tensors and embeds
//                     the encoder and the decoder ids (backward: both embedding scatters and both
//                     table gradients)
//   1 .. Le           encoder block l-1
//   Le+1              encoder final norm
//   Le+2 .. Le+Ld+1   decoder block l-Le-2
//   Le+Ld+2           head: decoder final norm + lm_head (reads unit 0's `shared` when tied)
// Forward runs them in increasing order, backward in decreasing order.
struct T5Model {
  T5Config cfg;  // the full model's configuration, whatever the sharding
  DType dtype = DType::f32;
  Device device = Device::cpu;
  ModelHooks* hooks = nullptr;             // not owned
  TpGroup tp;                              // tensor parallelism (size 1: every tensor whole)
  Tensor shared, shared_grad;              // [V/p, C]  vocabulary rows of this rank
  Tensor enc_rel, enc_rel_grad;            // [num_buckets, H/p]  encoder.block.0...relative_attention_bias (heads of this rank)
  Tensor dec_rel, dec_rel_grad;            // decoder.block.0...relative_attention_bias
  std::vector<T5EncBlock> enc;
  std::vector<T5DecBlock> dec;
  Tensor enc_final, enc_final_grad, dec_final, dec_final_grad;  // [C] (replicated)
  Linear lm_head;                          // [V/p, C]; shares `shared` when tied
  bool base_trainable = false;
  std::shared_ptr<Tensor> dequant;         // one layer's dequantized weight, shared by NF4 layers
};

int t5_num_units(const T5Model& m);  // Le + Ld + 3

// This rank's share of the dimensions: under TP (tp.size = p) heads, FFN width and vocabulary
// are split p ways (inner = heads * d_kv).
struct T5LocalDims {
  int64_t heads = 0, inner = 0, d_ff = 0, vocab = 0, vocab_offset = 0;
};
T5LocalDims t5_local_dims(const T5Model& m);
// Throws InputError naming the config key unless num_heads, d_ff and vocab_size divide by p.
void t5_check_tp(const T5Config& cfg, int p);

// The TP plan (Megatron): q, k, v, wi_0, wi_1 (wi) column-parallel and o, wo row-parallel, the
// relative-bias tables split by heads, `shared` vocabulary-parallel, lm_head column-parallel.
const TpPlan& t5_tp_plan();
// Every tensor once, in t5_weight_names' order, with its unit (the relative-bias tables in unit
// 0, whichever block stores them).
ParamTable t5_param_table(T5Model& m);

// Allocates every weight (zero-filled); linears named in `quant` get NF4 or FP8 storage instead.
// With tp.size = p > 1 (Megatron): q, k, v, wi_0, wi_1 (wi) column-parallel and o, wo
// row-parallel in self-attention, cross-attention and FFN; the relative-bias tables split by
// heads (columns: rank i holds heads [i H/p, (i+1) H/p)); `shared` vocabulary-parallel (rows);
// lm_head column-parallel over the vocabulary; norms replicated. NF4 and FP8 layers quantize
// their shard.
T5Model t5_build(const T5Config& cfg, DType dtype, Device device, const T5Quant& quant = {}, const TpGroup& tp = {});
// Normal(0, std) for matrices and tables, ones for norms, seeded per full tensor name; under TP
// each rank draws the full tensor and keeps its part (the same model for any p); NF4 and FP8
// layers are drawn densely and quantized.
void t5_init_random(T5Model& m, uint64_t seed, double std);
// Allocate gradients for every base parameter (refused with NF4 or FP8 layers; bf16 ones with
// master_weights = none on a bf16 model).
void t5_enable_base_training(T5Model& m, MasterWeights mw = MasterWeights::f32);

// Every weight with its transformers name, in t5_weight_names' order (lm_head omitted when tied);
// `linear` is set (and `tensor` undefined) for an NF4- or FP8-stored linear.
using T5WeightSlot = WeightSlot;
std::vector<T5WeightSlot> t5_weight_slots(T5Model& m);
// This rank's part of a full tensor of `slot` (any device; a copy).
Tensor t5_shard_of(const T5Model& m, const T5WeightSlot& slot, const Tensor& full);
// Store `value` (this rank's shape) into the slot: a copy (converted), or NF4 or FP8 quantization.
void t5_set_weight(const T5WeightSlot& slot, const Tensor& value);
// The full tensor of a slot as a CPU tensor of `dtype` (f32 or f64), gathered over the TP group
// when the slot is split (collective then); every rank gets it. Dense slots only.
Tensor t5_gather_full(const T5Model& m, const T5WeightSlot& slot, DType dtype = DType::f32);
// The dense slots as (name, tensor); refused when a layer is stored in NF4 or FP8.
std::vector<std::pair<std::string, Tensor*>> t5_named_weights(T5Model& m);
// Bytes of the base weights as stored, and as they would be in the compute dtype (this rank).
using T5WeightBytes = WeightBytes;
T5WeightBytes t5_weight_bytes(T5Model& m);
// Replace every NF4 base by its dequantized dense weight (before merging or saving).
void t5_dequantize(T5Model& m);
// Every linear layer (adapters attach here): encoder blocks (q, k, v, o, wi_0, [wi_1], wo),
// decoder blocks (self q, k, v, o, cross q, k, v, o, FFN), then lm_head.
std::vector<Linear*> t5_linears(T5Model& m);
// The layers that read the same input, which the blocks run through linear_group_forward /
// backward: self-attention q, k, v; cross-attention k, v (the encoder output); wi_0, wi_1 (gated).
std::vector<std::vector<Linear*>> t5_input_groups(T5Model& m);
// Trainable parameters: the base (when trainable, in t5_weight_slots' order; TP-split tensors
// flagged tp_sharded), then the adapters of t5_linears in order.
std::vector<ParamRef> t5_trainable_params(T5Model& m);
int64_t t5_num_trainable(T5Model& m);
// The same grouped by unit (as above; an adapter belongs to its linear's unit).
std::vector<std::vector<ParamRef>> t5_params_by_unit(T5Model& m);
// Training FLOPs of one example (Te encoder and Td decoder positions) divided by Te + Td: the
// exact matmul count of every linear on the rows it sees (encoder linears and the cross-attention
// k, v on Te rows, the other decoder linears and lm_head on Td rows; 6 per MAC with base
// gradients, 4 without, 6 per adapter parameter), plus the attention products (QK^T and PV:
// encoder Te x Te, decoder causal Td x Td / 2, cross Td x Te; backward twice the forward).
// The whole model's count (under TP each rank does about 1/p of it).
double t5_flops_per_token(const T5Model& m, int64_t Te, int64_t Td);

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
  // Checkpointed blocks of each stack (model/checkpointing.hpp): the first n of the encoder,
  // then of the decoder.
  int64_t enc_checkpointed = 0, dec_checkpointed = 0;
  Tensor enc_bias, dec_bias, enc_dbias, dec_dbias;  // [H/p, T, T] (master dtype)
  Tensor enc_buckets, dec_buckets;                  // i32 [T * T] of the current lengths
  int64_t enc_buckets_T = -1, dec_buckets_T = -1;   // the lengths the bucket tables hold
  Tensor x;            // [Le+1, B*Te, C] encoder residual stream
  Tensor e, erstd;     // encoder output (final norm) [B*Te, C]
  Tensor y;            // [Ld+1, B*Td, C] decoder residual stream
  Tensor yf, yrstd;    // final-normed decoder output (scaled when tied)
  Tensor logits, losses;  // [B*Td, V/p] (dlogits after a training forward), [B*Td]
  struct Enc {
    Tensor n0, r0, q, k, v, att, lse, mid, n1, r1, g, u, h;
  };
  struct Dec {
    Tensor n0, r0, q, k, v, att, lse, mid1, n1, r1, cq, ck, cv, catt, clse, mid2, n2, r2, g, u, h;
  };
  std::vector<Enc> enc;
  std::vector<Dec> dec;
  // Backward scratch.
  Tensor dx, dn, datt, dq, dk, dv, dh, de, dy, dck, dcv;  // d(gate) over dh, d(up) over the saved u
  Tensor scratch;  // adapters' workspace (LoRA dropout): [max(B*Te, B*Td), max(C, inner/p, F/p)]
};

// Buffers for micro-batches of up to B rows of up to Te encoder and Td decoder positions; a
// smaller batch is laid out compactly at its own [B, Te] / [B, Td] and uses the first rows.
// checkpointing: keep only the block inputs (the residual streams) of the first blocks (encoder
// blocks first, then decoder blocks) and recompute their forward before their backward
// (model/checkpointing.hpp; every block: one set of block internals per stack instead of Le, Ld).
T5Activations t5_activations(const T5Model& m, int64_t B, int64_t Te, int64_t Td, bool trainable,
                             Checkpointed checkpointing);
T5Activations t5_activations(const T5Model& m, int64_t B, int64_t Te, int64_t Td, bool trainable,
                             bool checkpointing = false);
// Returns sum over decoder positions of weight * loss (the same on every TP rank); with grad,
// acts.logits becomes dlogits. ctx.training enables adapter dropout (same seed in backward).
double t5_forward(T5Model& m, T5Activations& a, const T5Batch& batch, bool grad, const LayerContext& ctx = {});
void t5_backward(T5Model& m, T5Activations& a, const T5Batch& batch, const LayerContext& ctx = {});

}  // namespace st
