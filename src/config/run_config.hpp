// RunConfig: every option of `shardtune train` / `eval`, resolved from
//   built-in defaults  <  base decks (include = ...)  <  the deck  <  the command line.
// Unknown keys, wrong types and out-of-range values are InputErrors naming the key and the
// file (or "command line") it came from. The resolved options are printed at start and stored
// in metrics.h5 (/config).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace st {

// Upper bounds of the integer options (README "Errors and exit statuses"). They sit far above
// any real model; their purpose is that no option can make a size product overflow int64 before
// the products themselves are checked (train/preflight.hpp).
constexpr int64_t kMaxVocab = 2147483647;      // vocab_size: token ids are int32
constexpr int64_t kMaxWidth = 1 << 20;         // hidden_size, intermediate_size, lora_r
constexpr int64_t kMaxHeadDim = 1 << 16;       // head_dim
constexpr int64_t kMaxHeads = 1 << 16;         // num_heads
constexpr int64_t kMaxLayers = 1 << 12;        // num_layers, num_decoder_layers
constexpr int64_t kMaxPositions = 1 << 24;     // max_position_embeddings, T5 relative buckets / distance
constexpr int64_t kMaxBatch = 1 << 20;         // micro_batch_size, grad_accum
constexpr int64_t kMaxEpochs = 1000000;        // epochs, keep_checkpoints
constexpr int64_t kMaxRanks = 1 << 16;         // tp_size (and plan --ranks)
constexpr int64_t kMaxThreads = 4096;          // threads
constexpr double kMaxWatchdogSeconds = 1e7;    // watchdog_timeout (~116 days)

// One resolved option: its value as a deck would spell it, and what kind of value it is (so
// metrics.h5 can store numbers as numbers).
struct ResolvedOption {
  enum class Kind { text, integer, real, boolean };
  std::string key, value;
  Kind kind = Kind::text;
};

// The shortest decimal text that reads back as v (0.0003, 1e-08, 10000).
std::string format_real(double v);

struct RunConfig {
  // run
  std::string run_id;           // names runs/<run_id>/; default: the deck's file name
  std::string output_dir = "runs";
  uint64_t seed = 1234;
  std::string device = "cpu";   // cpu | cuda
  std::string dtype = "auto";   // auto (f32 on cpu, bf16 on cuda) | f32 | f64 | bf16
  int threads = 0;              // OpenMP threads per rank; 0 = cores / ranks on the node
  int log_every = 10;
  bool overwrite = false;       // replace an existing run of this run_id (its metrics.h5, checkpoints)
  // model
  std::string model;            // Hugging Face checkpoint dir; empty = random init from below
  std::string arch = "llama";   // a model family (train/families.hpp; random init; a checkpoint's model_type decides otherwise)
  int64_t vocab_size = 0;       // 0: take it from the dataset's tokenizer
  int64_t hidden_size = 256, intermediate_size = 688, num_layers = 4, num_heads = 4;
  int64_t num_kv_heads = 0;     // 0 = num_heads
  int64_t head_dim = 0;         // 0 = hidden_size / num_heads
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-5, rope_theta = 10000.0;
  // T5 random init (hidden_size = d_model, intermediate_size = d_ff, head_dim = d_kv)
  int64_t num_decoder_layers = 0;  // 0 = num_layers
  int64_t relative_attention_num_buckets = 32, relative_attention_max_distance = 128;
  std::string feed_forward_proj = "gated-gelu";  // gated-gelu | relu
  bool tie_embeddings = false;
  double init_std = 0.02;
  bool save_model = false;      // write runs/<id>/model (HF layout; LoRA merged) at the end
  // data
  std::string data;             // shard directory (or one .h5 file)
  std::string train_split = "train";
  std::string val_split = "validation";  // "" = no validation
  std::string tokenizer;        // optional: must match the shards' tokenizer checksum
  int64_t max_train_rows = 0, max_val_rows = 0;  // 0 = all
  // training
  std::string method = "full";  // full | lora | qlora
  int64_t epochs = 1, max_steps = 0;
  int64_t micro_batch_size = 8, grad_accum = 1;
  double lr = 3e-4, min_lr_ratio = 0.1;
  int64_t warmup_steps = 0;
  std::string lr_schedule = "cosine";  // cosine | linear | constant
  double weight_decay = 0.0, adam_beta1 = 0.9, adam_beta2 = 0.999, adam_eps = 1e-8;
  double grad_clip = 1.0;       // 0 = off
  // f32 | none: f32 master weights beside bf16 values, or pure bf16 (bf16 gradients and AdamW
  // moments, stochastic rounding; full fine-tuning in bf16 only: core/dtype.hpp MasterWeights)
  std::string master_weights = "f32";
  // auto | true | false | N: the first N blocks keep only their input and recompute in backward
  // (model/checkpointing.hpp); auto: the fewest that fit memory_limit or the GPU (the planner)
  std::string activation_checkpointing = "false";
  bool shuffle = true;
  bool packing = false;          // pack documents into training rows of pack_length tokens (train/packing.hpp)
  int64_t pack_length = 0;       // 0: the training shards' max_seq_len
  bool group_by_length = false;  // unpacked runs: global batches of rows of similar lengths
  int64_t eval_every = 0;       // steps; 0 = once per epoch
  bool eval_at_start = true;
  // lora
  int64_t lora_r = 8;
  double lora_alpha = 16, lora_dropout = 0.0;
  std::string lora_targets = "q,k,v,o,gate,up,down";
  std::string adapter;          // PEFT adapter dir loaded at start (train: continue it; eval: apply it)
  bool save_adapter = true;     // write runs/<id>/adapter (PEFT format) at the end of a LoRA/QLoRA run (full: ignored unless set)
  // qlora
  std::string qlora_quantize = "adapted";  // adapted | all
  int64_t qlora_block_size = 64;
  // lora, qlora: the frozen base's forward and input-gradient GEMMs in bf16 (the compute dtype) or
  // FP8 E4M3 (model/fp8_base.hpp)
  std::string base_precision = "bf16";
  // base_precision = fp8: W8^T (the input gradient's operand) kept beside W8 (stored: 2 bytes a
  // parameter) or transposed from W8 before each input-gradient GEMM (per_step: 1 byte a parameter)
  std::string fp8_transpose = "stored";
  bool qlora_double_quant = true;
  // parallel
  std::string parallel = "none";
  int64_t tp_size = 1;
  bool zero3_prefetch = true;  // ZeRO-3: start the next unit's all-gather before the current unit runs
  double watchdog_timeout = 600;  // seconds without progress before the job is aborted; 0 = off
  // memory
  std::string memory_limit = "0";  // cap on the device allocator: "40GiB", "0" = none
  std::string gpu_memory_limit;    // another name for memory_limit (set at most one of them)
  // checkpoints (exact resume: train/checkpoint.hpp)
  int64_t checkpoint_every = 0;      // steps; 0 = no periodic checkpoints (preemption still writes one)
  std::string checkpoint_dir;        // "" = <output_dir>/<run_id>/checkpoints
  std::string resume = "none";       // none | auto (newest complete checkpoint, if any) | a step-<N> directory
  int64_t keep_checkpoints = 2;      // complete checkpoints kept (older ones removed); >= 1

  // Where each key's value came from: "default", "command line" or a deck path.
  std::map<std::string, std::string> origin;
  std::string deck;                // the deck given with --deck (may be empty)
  std::string command_line;

  // All options as key -> value strings in declaration order (for printing and metrics).
  std::vector<std::pair<std::string, std::string>> resolved() const;
  std::vector<ResolvedOption> resolved_typed() const;
  // True for a random-init shape key (hidden_size, num_layers, ...) left at its default while
  // `model` names a checkpoint, whose config.json sets it: the option has no effect.
  bool set_by_checkpoint(const std::string& key) const;
  // The modules named by lora_targets (a family's default when the deck leaves it unset:
  // lora_targets_for in train/families.hpp).
  std::vector<std::string> lora_target_list() const;
};

// Parse `shardtune <subcommand> [--deck FILE] [--key value ...]`. Prints help and returns false
// when --help was given. Throws InputError on any bad key or value.
bool parse_run_config(int argc, char** argv, const std::string& subcommand, RunConfig& cfg);

// Range and consistency checks (called by parse_run_config; exposed for tests).
void validate_run_config(const RunConfig& cfg);

}  // namespace st
