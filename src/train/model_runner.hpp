// What the training loop needs from a model family (Llama-style decoders, T5 encoder-decoders):
// the model with its method (full, LoRA, QLoRA) and tensor-parallel sharding, its activation and
// batch buffers, one micro-batch's forward and backward from host rows, validation scores, and
// saving. The trainer (train/trainer.cpp) owns the step loop, the optimizer, DDP and ZeRO-3 and
// never sees the model type.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "adapters/lora.hpp"
#include "config/run_config.hpp"
#include "io/shards.hpp"
#include "model/linear.hpp"
#include "model/llama.hpp"
#include "parallel/comm.hpp"

namespace st {

class Zero3;

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

class ModelRunner {
 public:
  virtual ~ModelRunner() = default;

  virtual std::string describe() const = 0;        // "llama: ..." / "t5: ..." one line
  virtual int64_t num_parameters() const = 0;      // of the whole model
  virtual int tp_size() const = 0;

  // The method (before allocate). attach_lora returns the number of adapters.
  virtual void enable_base_training() = 0;
  virtual int64_t attach_lora(const LoraConfig& lc, uint64_t seed) = 0;
  virtual int64_t num_trainable() = 0;
  // Every linear layer (adapters hang on them): for reading and writing PEFT adapters.
  virtual std::vector<Linear*> linears() = 0;
  virtual WeightBytes weight_bytes() = 0;  // base weights as stored and dense
  // Model FLOPs per training token (forward + backward) at the training shape.
  virtual double flops_per_token() const = 0;
  // Tokens a row contributes to throughput figures (encoder + decoder for seq2seq).
  virtual std::vector<int32_t> row_tokens(const ShardDataset& data) const = 0;

  // Parameters for the optimizer (base when trainable, then adapters), and the same grouped by
  // unit in forward order (DDP buckets).
  virtual std::vector<ParamRef> trainable_params() = 0;
  virtual std::vector<std::vector<ParamRef>> params_by_unit() = 0;
  virtual void set_hooks(ModelHooks* hooks) = 0;
  virtual bool has_hooks() const = 0;
  virtual std::unique_ptr<Zero3> make_zero3(Comm& dp, bool prefetch) = 0;

  // Activation and batch buffers for micro-batches of up to B rows of the data's shape.
  virtual void allocate(int64_t B, bool checkpointing, bool training) = 0;
  // One micro-batch: every target token weighs token_weight; returns the weighted loss sum.
  virtual double forward(const Batch& host, double token_weight, const LayerContext& ctx, bool grad) = 0;
  virtual void backward(const LayerContext& ctx) = 0;  // after forward(..., grad = true)
  // Token positions the last forward computed, padding included: B x T (T5: encoder + decoder).
  virtual int64_t computed_tokens() const = 0;
  virtual EvalScores eval_batch(const Batch& host, const std::vector<int32_t>& label_ids) = 0;

  // Dequantize NF4 bases, merge adapters and write a Hugging Face directory (collective within
  // the TP group; the TP group's rank 0 writes).
  virtual void save(const std::string& dir, const std::string& tokenizer_path) = 0;
};

// The model family the options name: the checkpoint's model_type when `model` is set (InputError
// when it contradicts an explicit `arch`), else `arch`.
std::string model_arch(const RunConfig& c);
// The model family of a run: model_arch(c), checked against the shards.
// InputError when they disagree or the shards are of the other kind (causal vs seq2seq).
std::string resolve_arch(const RunConfig& c, const ShardInfo& info);

std::unique_ptr<ModelRunner> make_llama_runner(const RunConfig& c, const ShardInfo& info, const DataShape& shape,
                                               DType dtype, Device device, const TpGroup& tp, bool training);
std::unique_ptr<ModelRunner> make_t5_runner(const RunConfig& c, const ShardInfo& info, const DataShape& shape,
                                            DType dtype, Device device, const TpGroup& tp, bool training);

}  // namespace st
