// What the training loop needs from a model family (Llama-style decoders, T5 encoder-decoders):
// the model with its method (full, LoRA, QLoRA) and tensor-parallel sharding, its parameter
// table, its activation and batch buffers, one micro-batch's forward and backward from host rows,
// validation scores, and saving. The trainer (train/trainer.cpp) owns the step loop, the
// optimizer, DDP and ZeRO-3 and never sees the model type; families are registered in
// train/families.hpp.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "adapters/lora.hpp"
#include "config/choices.hpp"
#include "config/run_config.hpp"
#include "io/shards.hpp"
#include "model/linear.hpp"
#include "model/llama.hpp"
#include "model/param_table.hpp"

namespace st {

// Sizes of the shards a run reads: the longest rows the buffers must hold.
struct DataShape {
  int64_t seq_len = 0;     // encoder (or only) sequence length L
  int64_t target_len = 0;  // seq2seq: decoder length Lt (0 for causal shards)
  int64_t pack_length = 0; // sequence packing: training rows of this many tokens (0: none)
  std::vector<int32_t> label_token_ids;
  int64_t row_len() const { return pack_length > seq_len ? pack_length : seq_len; }  // the buffers' rows
};

// One evaluation batch: the summed token losses, and for classification shards the scores of
// the label tokens at the answer position ([rows, labels], complete on every TP rank).
struct EvalScores {
  double loss_sum = 0;
  std::vector<float> label_scores;
};

// Inputs of a logits request (`shardtune export --logits-input`): rows of token ids with right
// padding, and for an encoder-decoder the decoder inputs.
struct LogitsInput {
  int64_t B = 0, T = 0, Td = 0;
  std::vector<int32_t> ids, lengths;  // [B, T], [B]
  std::vector<int32_t> dec_ids;       // [B, Td] (seq2seq)
};

// Incremental decoding of one sequence with a key/value cache (`shardtune generate`).
class TokenDecoder {
 public:
  virtual ~TokenDecoder() = default;
  virtual void reset() = 0;              // start a new sequence (the cache empties)
  virtual int64_t length() const = 0;    // positions in the cache
  virtual int64_t capacity() const = 0;  // the most positions it holds
  // Feeds ids (1 <= n <= the step limit) at the next positions; the logits [V] of the last, f32.
  virtual std::vector<float> step(const std::vector<int32_t>& ids) = 0;
};

class ModelRunner {
 public:
  virtual ~ModelRunner() = default;

  virtual std::string describe() const = 0;        // "llama: ..." / "t5: ..." one line
  virtual int64_t num_parameters() const = 0;      // of the whole model
  virtual int tp_size() const = 0;

  // Every tensor of the model once (model/param_table.hpp): what trains, its units, its linears,
  // what ZeRO-3 shards and DDP sums (parallel/parallelize.hpp).
  virtual ParamTable param_table() = 0;

  // The method (before allocate). attach_lora returns the number of adapters.
  virtual void enable_base_training(MasterWeights mw) = 0;
  virtual int64_t attach_lora(const LoraConfig& lc, uint64_t seed) = 0;
  // Model FLOPs per training token (forward + backward) at the training shape.
  virtual double flops_per_token() const = 0;
  // Tokens a row contributes to throughput figures (encoder + decoder for seq2seq).
  virtual std::vector<int32_t> row_tokens(const ShardDataset& data) const = 0;
  virtual bool has_hooks() const = 0;

  // Activation and batch buffers for micro-batches of up to B rows of the data's shape.
  // checkpointing: the first blocks that recompute their forward in backward (training only).
  virtual void allocate(int64_t B, Checkpointed checkpointing, bool training) = 0;
  // Blocks activation checkpointing counts (T5: encoder + decoder blocks).
  virtual int64_t num_blocks() const = 0;
  // One micro-batch: every target token weighs token_weight; returns the weighted loss sum.
  virtual double forward(const Batch& host, double token_weight, const LayerContext& ctx, bool grad) = 0;
  virtual void backward(const LayerContext& ctx) = 0;  // after forward(..., grad = true)
  // Token positions the last forward computed, padding included: B x T (T5: encoder + decoder).
  virtual int64_t computed_tokens() const = 0;
  virtual EvalScores eval_batch(const Batch& host, const std::vector<int32_t>& label_ids) = 0;
  // The logits [B, T (decoder: Td), V] of one forward on `in` (no TP), as an f32 CPU tensor.
  virtual Tensor logits(const LogitsInput& in) = 0;

  // A decoder for sequences of up to `capacity` positions fed at most `max_step` tokens per step
  // (one rank). InputError for a family that cannot decode incrementally (T5, for now).
  virtual std::unique_ptr<TokenDecoder> decoder(int64_t capacity, int64_t max_step) = 0;
  // The model's BOS and EOS token ids (its config.json; -1: none).
  virtual int64_t bos_id() const = 0;
  virtual int64_t eos_id() const = 0;
  virtual int64_t vocab_size() const = 0;

  // Dequantize NF4 bases, merge adapters and write a Hugging Face directory, sharded above
  // max_shard_bytes (collective within the TP group; the TP group's rank 0 writes).
  virtual void save(const std::string& dir, const std::string& tokenizer_path, uint64_t max_shard_bytes) = 0;

  // Derived from the parameter table.
  std::vector<Linear*> linears() { return param_table().linears; }
  int64_t num_trainable() { return st::num_trainable(param_table()); }
  WeightBytes weight_bytes() { return param_bytes(param_table()); }
};

struct ModelFamily;

// What a family's runner factory is given (train/families.hpp).
struct RunnerSpec {
  const RunConfig& c;
  const ShardInfo& info;   // the shards' metadata (a synthetic one for the planner and export)
  DataShape shape;         // the longest rows the buffers hold
  DType dtype = DType::f32;
  Device device = Device::cpu;
  TpGroup tp;              // this rank's TP group (size 1: none)
  Method method = Method::full;
  bool training = false;
  const ModelFamily& family;
  // base_precision = fp8 with method = lora, when the adapters will be attached (set by
  // build_training_state only): the adapted modules get their FP8 base at the build (W8, and W8^T
  // with fp8_transpose = stored), so the dense model is never held whole. fp8_where names the
  // deck key in refusals.
  bool fp8_base = false;
  std::string fp8_where = "options";
};

// The FP8 part of a runner's BaseQuant: with spec.fp8_base, the adapted modules (`adapted`, the
// list attach_lora will use) get their FP8 base at the build; nothing otherwise.
inline void set_fp8_quant(BaseQuant& q, const RunnerSpec& s, const std::vector<std::string>& adapted) {
  if (!s.fp8_base) return;
  if (s.method != Method::lora) ST_THROW("fp8_base at the build is for method = lora, not ", method_name(s.method));
  q.fp8_modules = adapted;
  q.fp8_keep_transpose = s.c.fp8_transpose == "stored";
  q.fp8_where = s.fp8_where;
}

// The decoder families (Llama, Mistral, Qwen2): one runner over LlamaModel, with the family's
// config reader and writer (train/llama_runner.cpp).
struct DecoderConfigIo {
  LlamaConfig (*read)(const std::string& dir) = nullptr;
  void (*write)(const std::string& dir, const LlamaConfig& cfg) = nullptr;
  // Random init from the deck: the family's fixed features (Qwen2: q, k, v biases).
  void (*random_defaults)(LlamaConfig& cfg) = nullptr;
};
std::unique_ptr<ModelRunner> make_decoder_runner(const RunnerSpec& spec, const DecoderConfigIo& io);
std::unique_ptr<ModelRunner> make_t5_runner(const RunnerSpec& spec);

}  // namespace st
