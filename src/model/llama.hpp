// Llama-family decoder: parameters as plain structs, hand-written forward and backward.
//
// Per block (pre-norm):  x_mid = x + o(attn(rope(q(n1(x))), rope(k(n1(x))), v(n1(x))))
//                        x_out = x_mid + down(silu(gate(n2(x_mid))) * up(n2(x_mid)))
// then logits = lm_head(norm(x_L)). Shapes: C hidden, I intermediate, Hq/Hkv heads, D head dim,
// V vocabulary, B batch rows, T sequence length (the batch's longest row), BT = B*T.
// The same decoder is Llama 2 / 3.x (rotary scaling llama3 in the inv_freq table), Mistral, and
// Qwen2 (biases on q, k, v): the families differ in their config readers (io/hf_*.cpp).
//
// No parallel code here: the same model runs on one rank or many. Its tensors are listed once
// (llama_param_table) with the TP plan's split of each (llama_tp_plan); ZeRO-3 and DDP attach
// through `hooks`, tensor parallelism through the TP group's collectives (model/tp_plan.hpp).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.hpp"
#include "model/checkpointing.hpp"
#include "model/hooks.hpp"
#include "model/linear.hpp"
#include "model/llama_config.hpp"
#include "model/param_table.hpp"
#include "ops/attention.hpp"
#include "ops/rope.hpp"
#include "quant/nf4.hpp"

namespace st {

struct LlamaBlock {
  Tensor attn_norm;       // [C]   input_layernorm
  Tensor attn_norm_grad;  // [C]   defined when the base trains
  Linear q;               // [Hq*D, C]   (+ bias [Hq*D] with qkv_bias)
  Linear k;               // [Hkv*D, C]  (+ bias [Hkv*D])
  Linear v;               // [Hkv*D, C]  (+ bias [Hkv*D])
  Linear o;               // [C, Hq*D]
  Tensor mlp_norm;        // [C]   post_attention_layernorm
  Tensor mlp_norm_grad;   // [C]
  Linear gate;            // [I, C]
  Linear up;              // [I, C]
  Linear down;            // [C, I]
};

// The short names of a block's linear layers ("q", "k", "v", "o", "gate", "up", "down"), and the
// short name of a Llama module ("model.layers.3.mlp.up_proj" -> "up"; "" when none).
const std::vector<std::string>& llama_module_names();
std::string llama_module_short_name(const std::string& module);

// Which linear layers keep their frozen base in NF4 (QLoRA) or FP8 (base_precision = fp8 with
// LoRA): short names (q, k, v, o, gate, up, down; lm_head and the embedding stay in the compute
// dtype). BaseQuant in model/param_table.hpp.
using LlamaQuant = BaseQuant;

// This rank's share of the model's dimensions: under tensor parallelism (tp.size = p) the heads,
// KV heads, FFN width and vocabulary are split p ways; otherwise the full ones.
struct LlamaLocalDims {
  int64_t heads = 0, kv_heads = 0, q_dim = 0, kv_dim = 0, intermediate = 0, vocab = 0, vocab_offset = 0;
};

// Units for ModelHooks (model/hooks.hpp): 0 = the embedding, 1..L = block l-1, L+1 = the head
// (final norm and lm_head).
using LlamaHooks = ModelHooks;

struct LlamaModel {
  LlamaConfig cfg;  // the full model's configuration, whatever the sharding
  ModelHooks* hooks = nullptr;  // not owned
  TpGroup tp;       // tensor parallelism (size 1: every tensor whole)
  DType dtype = DType::f32;
  Device device = Device::cpu;
  Tensor embed;            // [V, C]  model.embed_tokens
  Tensor embed_grad;       // [V, C]
  std::vector<LlamaBlock> blocks;
  Tensor final_norm;       // [C]     model.norm
  Tensor final_norm_grad;  // [C]
  Linear lm_head;          // [V, C]; weight and grad share embed's buffers when tied
  RopeTables rope;
  bool base_trainable = false;
  std::shared_ptr<Tensor> dequant;  // one layer's dequantized weight, shared by NF4 layers
};

LlamaLocalDims llama_local_dims(const LlamaModel& m);
// Throws InputError unless heads, KV heads, FFN size and vocabulary divide by tp_size.
// Tests: leave the gate and up LoRA terms to SwiGLU on the CPU too (swiglu_lora_forward /
// backward: the order CUDA takes with SHARDTUNE_SKINNY's swiglu kind). Off by default.
bool& lora_terms_to_swiglu_on_cpu();

void llama_check_tp(const LlamaConfig& cfg, int tp_size);

// The TP plan (Megatron): q, k, v, gate, up and lm_head column-parallel (rank i holds rows
// [i out/p, (i+1) out/p) of W, and of a bias), o and down row-parallel (columns of W), the
// embedding vocabulary-parallel ("embed": rows [i V/p, (i+1) V/p)), norms replicated.
const TpPlan& llama_tp_plan();
// Every tensor of the model once: embedding (unit 0), per block its norms, projections and
// biases (unit l+1), the final norm and an untied lm_head (unit L+1); in Hugging Face's order.
ParamTable llama_param_table(LlamaModel& m);

// Allocates this rank's part of every weight (zero-filled) in `dtype` on `device` as the TP plan
// splits it over `tp`; linears named in `quant` get NF4 or FP8 storage instead (filled by
// llama_init_random, load_llama or set_weight); those layers quantize their shard (an FP8 one
// with its shard's per-tensor scale).
LlamaModel llama_build(const LlamaConfig& cfg, DType dtype, Device device, const LlamaQuant& quant = {},
                       const TpGroup& tp = {});
// Normal(0, std) for embeddings and projections, ones for norms, zeros for biases; each tensor
// seeded from (seed, its name), so the result does not depend on the order of initialisation.
void llama_init_random(LlamaModel& m, uint64_t seed, double std);
// Allocate gradients for every base parameter (full fine-tuning; bf16 ones with
// master_weights = none on a bf16 model: model/param_table.hpp).
void llama_enable_base_training(LlamaModel& m, MasterWeights mw = MasterWeights::f32);

// The views of the parameter table under the names the loaders, tests and runner use.
using LlamaWeightSlot = WeightSlot;
using LlamaWeightBytes = WeightBytes;
// Every base weight with its Hugging Face name (lm_head omitted when tied); `linear` is set (and
// `tensor` undefined) for NF4- or FP8-stored weights.
std::vector<LlamaWeightSlot> llama_weight_slots(LlamaModel& m);
// The dense weights as (name, tensor); refused for a model with NF4 or FP8 layers.
std::vector<std::pair<std::string, Tensor*>> llama_named_weights(LlamaModel& m);
// This rank's part of a full tensor of `slot` (any device; a copy).
Tensor llama_shard_of(const LlamaModel& m, const LlamaWeightSlot& slot, const Tensor& full);
// Store `value` (this rank's shape) into the slot: a converted copy, or NF4 or FP8 quantization.
void llama_set_weight(const LlamaWeightSlot& slot, const Tensor& value);
LlamaWeightBytes llama_weight_bytes(LlamaModel& m);
// Replace every NF4 base by its dequantized dense weight (before merging or saving).
void llama_dequantize(LlamaModel& m);
// Every linear layer (adapters attach here), in block order then lm_head.
std::vector<Linear*> llama_linears(LlamaModel& m);
// The layers that read the same input, which the blocks run through linear_group_forward /
// backward: q, k, v and gate, up of every block.
std::vector<std::vector<Linear*>> llama_input_groups(LlamaModel& m);
// Trainable parameters (base when trainable, then adapters), in a fixed order.
std::vector<ParamRef> llama_trainable_params(LlamaModel& m);
int64_t llama_num_trainable(LlamaModel& m);
// The same parameters grouped by unit (index as in ModelHooks: 0 the embedding, l+1 block l,
// L+1 the head), in the order above within each unit.
std::vector<std::vector<ParamRef>> llama_params_by_unit(LlamaModel& m);

// One micro-batch on the model's device. ids/targets/weight hold B*T entries (row-major [B, T]);
// targets[b,t] is the token predicted at position t (-1: none), weight[b,t] its factor in the
// objective; lengths[b] is the row's real length (keys beyond it are masked). T may not pass a
// sliding window (InputError: sliding-window attention is not implemented, and within the
// window it is plain causal attention).
// With `segments` defined (train/loader.hpp fills them for every batch), attention runs over
// the documents of the flattened [B*T] stream instead (ops/attention.hpp: each document attends
// only to itself, padding to nothing; sequence packing puts several documents in a row), and
// `positions` gives each token's RoPE position (a document's restart at 0; max_position is the
// largest). Without them row b is one sequence at positions 0..T-1 with keys >= lengths[b] masked.
struct LlamaBatch {
  int64_t B = 0, T = 0;
  Tensor ids;      // i32 [B*T]
  Tensor targets;  // i32 [B*T]
  Tensor weight;   // f32 [B*T]
  Tensor lengths;  // i32 [B]
  Tensor positions;             // i32 [B*T] or undefined
  int64_t max_position = 0;     // the largest of positions
  AttentionSegments segments;   // or undefined (count 0)
};

struct LlamaBlockActs {
  Tensor xn1, rstd1;     // [BT, C], [BT]
  Tensor q, k, v;        // [BT, Hq*D], [BT, Hkv*D], [BT, Hkv*D]  (q, k after RoPE)
  Tensor att, lse;       // [BT, Hq*D], [BT, Hq]
  Tensor x_mid;          // [BT, C]
  Tensor xn2, rstd2;     // [BT, C], [BT]
  Tensor gate, up, h;    // [BT, I]
};

struct LlamaActivations {
  int64_t B_max = 0, T_max = 0;
  int64_t checkpointed = 0;        // the first blocks checkpointed (model/checkpointing.hpp)
  bool trainable = false;          // backward buffers allocated
  Tensor resid;                    // [L+1, B_max*T_max, C]: input of each block, then the output
  std::vector<LlamaBlockActs> blocks;  // training: checkpoint_sets(L, checkpointed); eval: 1
  Tensor xnf, rstdf;               // [BT, C], [BT]
  // [BT, V] (holds dlogits after a training forward), or [head_chunk, V]: training activations
  // of a batch whose logits would pass 256 MiB run the LM head and the loss over chunks of
  // head_chunk rows (llama_forward), so the whole batch's logits never exist.
  Tensor logits;
  int64_t head_chunk = 0;          // rows a chunk (0: the whole batch at once)
  bool head_dx_ready = false;      // the last forward left the final norm's output gradient in dxn
  // Rows whose logits a chunked forward copies out as its chunks pass (evaluation's label scores):
  // set before llama_forward; `captured` [capture_rows.size(), V_local] holds them after it.
  std::vector<int64_t> capture_rows;
  Tensor captured;
  Tensor losses;                   // [BT]  per-position loss
  // Backward scratch. dh holds dL/dh, then SwiGLU's backward writes dL/dgate over it and dL/dup
  // over the block's saved up (in place: two [BT, I] buffers fewer, 0.21 GiB each at 13B's
  // shape); datt shares dxn's buffer where Hq*D = C (their uses do not overlap in a block's backward).
  Tensor dresid, dxn, datt, dq, dk, dv, dh;
  Tensor scratch;  // adapters' workspace [BT, max(C, I, Hq*D)]: only where an adapter needs one (LoRA dropout)
};

// Whether any adapter of the model needs the activations' scratch buffer (LoRA dropout): it is
// allocated only then, so adapters attach before the activations are allocated.
bool llama_adapters_need_scratch(const LlamaModel& m);
// head_chunk: rows of the LM head's chunks (training activations only): -1 chooses
// (llama_head_chunk_rows), 0 none (the whole batch's logits), N > 0 chunks of N rows where the
// model allows them (no adapter on lm_head, no TP, and under base training its gradient bound:
// ZeRO-3's full fine-tuning keeps whole logits).
LlamaActivations llama_activations(const LlamaModel& m, int64_t B_max, int64_t T_max,
                                   Checkpointed checkpointing, bool trainable, int64_t head_chunk = -1);
// Every block checkpointed or none.
LlamaActivations llama_activations(const LlamaModel& m, int64_t B_max, int64_t T_max,
                                   bool checkpointing, bool trainable, int64_t head_chunk = -1);
// The chunk the activations choose: none when the batch's logits take at most 256 MiB, else
// about 64 MiB of logits a chunk (a multiple of 128 rows, at least 512; 1024 rows at a vocabulary
// of 32000 in bf16, 512 at 128256).
int64_t llama_head_chunk_rows(int64_t rows, int64_t vocab, DType dtype);

// Forward pass. Returns sum over positions of weight * loss. With grad, acts.logits is replaced
// by d(objective)/d(logits), ready for llama_backward; with chunked logits (acts.head_chunk) the
// head's backward runs here instead, chunk by chunk (its output gradient into acts.dxn, its
// weight gradient added; what llama_backward's head part then skips), so such a forward must be
// followed by llama_backward before the next one with grad (refused otherwise: the head's
// gradient would hold a micro-batch the rest of the model never saw), and acts.logits holds only
// the last chunk: acts.capture_rows names rows to keep (acts.captured). ctx.training enables dropout.
double llama_forward(LlamaModel& m, LlamaActivations& a, const LlamaBatch& batch,
                     const LayerContext& ctx, bool grad);
// Backward pass after llama_forward(..., grad=true): accumulates into every trainable gradient.
void llama_backward(LlamaModel& m, LlamaActivations& a, const LlamaBatch& batch, const LayerContext& ctx);

// Training FLOPs per token for throughput figures: the matmul FLOPs of forward + backward
// (6 N for full fine-tuning; 4 N when base weights get no gradient, plus adapter terms) and the
// attention score/value products (causal: about half of T per token).
double llama_flops_per_token(const LlamaModel& m, int64_t seq_len);

}  // namespace st
