#include "config/run_config.hpp"

#include <algorithm>
#include <boost/program_options.hpp>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <set>
#include <sstream>
#include <type_traits>

#include "config/choices.hpp"
#include "core/allocator.hpp"
#include "config/strict_value.hpp"
#include "core/error.hpp"

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace st {

std::string format_real(double v) {
  // The shortest digits that read back as v, positioned as Python's repr does: plain notation for
  // decimal exponents -4..15 (0.0003, 10000), scientific beyond (1e-05, 1e+20).
  char buf[400];
  const int exp10 = v == 0 || !std::isfinite(v) ? 0 : static_cast<int>(std::floor(std::log10(std::fabs(v))));
  const auto fmt = exp10 >= -4 && exp10 < 16 ? std::chars_format::fixed : std::chars_format::scientific;
  const auto r = std::to_chars(buf, buf + sizeof(buf), v, fmt);
  return std::string(buf, r.ptr);
}

namespace {

// One table of every option: the single place a key, its type, default and help live.
struct OptionTable {
  po::options_description all{"Options (deck keys; each also settable as --key value)"};
  std::vector<std::string> order;
  std::vector<std::pair<std::string, po::options_description>> groups;
};

std::string trim(const std::string& s) { return trim_blanks(s); }

template <typename T>
void add(po::options_description& g, OptionTable& t, const char* key, T* field, const char* help) {
  if constexpr (std::is_same_v<T, bool>) g.add_options()(key, po::value<T>(field)->default_value(*field), help);
  else g.add_options()(key, (new strict_value<T>(field, key))->default_value(*field), help);
  t.order.push_back(key);
}

// Reals and booleans print as written in a deck (0.0003, not 0.00029999999999999997; true/false).
template <>
void add<double>(po::options_description& g, OptionTable& t, const char* key, double* field, const char* help) {
  g.add_options()(key, (new strict_value<double>(field, key))->default_value(*field, format_real(*field)), help);
  t.order.push_back(key);
}

template <>
void add<bool>(po::options_description& g, OptionTable& t, const char* key, bool* field, const char* help) {
  g.add_options()(key, po::value<bool>(field)->default_value(*field, *field ? "true" : "false"), help);
  t.order.push_back(key);
}

void add_string(po::options_description& g, OptionTable& t, const char* key, std::string* field, const char* help) {
  g.add_options()(key, po::value<std::string>(field)->default_value(*field, '"' + *field + '"'), help);
  t.order.push_back(key);
}

void build_table(RunConfig& c, OptionTable& t) {
  po::options_description run("Run");
  add_string(run, t, "run_id", &c.run_id, "run name; output goes to <output_dir>/<run_id>/ (default: the deck's file name)");
  add_string(run, t, "output_dir", &c.output_dir, "directory holding the run directories");
  add(run, t, "seed", &c.seed, "seed of every random choice (init, shuffling, dropout)");
  add_string(run, t, "device", &c.device, "cpu | cuda");
  add_string(run, t, "dtype", &c.dtype, "compute dtype: auto (f32 on cpu, bf16 on cuda) | f32 | f64 (cpu) | bf16 (cuda)");
  add(run, t, "threads", &c.threads, "OpenMP threads per rank (0: the node's cores divided among its ranks)");
  add(run, t, "log_every", &c.log_every, "print a progress line every N optimizer steps");
  add(run, t, "overwrite", &c.overwrite,
      "replace an existing run of this run_id (its metrics.h5 and checkpoints); without it such a run is refused "
      "(resume = auto continues one instead)");

  po::options_description model("Model");
  add_string(model, t, "model", &c.model, "Hugging Face checkpoint directory (config.json + model.safetensors); empty: random init from the keys below");
  add_string(model, t, "arch", &c.arch, "model family for random init: llama | mistral | qwen2 | t5 (with model set, the checkpoint's model_type decides)");
  add(model, t, "vocab_size", &c.vocab_size, "random init: vocabulary size (0: the shards' tokenizer size)");
  add(model, t, "hidden_size", &c.hidden_size, "random init: hidden size C");
  add(model, t, "intermediate_size", &c.intermediate_size, "random init: MLP size I");
  add(model, t, "num_layers", &c.num_layers, "random init: number of blocks");
  add(model, t, "num_heads", &c.num_heads, "random init: query heads");
  add(model, t, "num_kv_heads", &c.num_kv_heads, "random init: key/value heads (0: num_heads)");
  add(model, t, "head_dim", &c.head_dim, "random init: head dimension (0: hidden_size / num_heads)");
  add(model, t, "max_position_embeddings", &c.max_position_embeddings, "random init: longest sequence");
  add(model, t, "rms_norm_eps", &c.rms_norm_eps, "random init: RMSNorm epsilon");
  add(model, t, "rope_theta", &c.rope_theta, "random init: rotary base");
  add(model, t, "num_decoder_layers", &c.num_decoder_layers, "random init, t5: decoder blocks (0: num_layers; num_layers counts encoder blocks)");
  add(model, t, "relative_attention_num_buckets", &c.relative_attention_num_buckets, "random init, t5: relative position buckets");
  add(model, t, "relative_attention_max_distance", &c.relative_attention_max_distance, "random init, t5: distance of the last (logarithmic) bucket");
  add_string(model, t, "feed_forward_proj", &c.feed_forward_proj, "random init, t5: gated-gelu (wi_0, wi_1, wo: T5 v1.1 / FlanT5) | relu (wi, wo: original T5)");
  add(model, t, "tie_embeddings", &c.tie_embeddings, "random init: LM head shares the embedding matrix");
  add(model, t, "init_std", &c.init_std, "random init: standard deviation of weights");
  add(model, t, "save_model", &c.save_model, "write <run dir>/model in Hugging Face layout at the end (LoRA merged into the weights)");

  po::options_description data("Data");
  add_string(data, t, "data", &c.data, "directory of HDF5 shards written by `shardtune prepare` (or one .h5 file)");
  add_string(data, t, "train_split", &c.train_split, "training split (files <data>/<split>-*.h5)");
  add_string(data, t, "val_split", &c.val_split, "validation split (empty: no validation)");
  add_string(data, t, "tokenizer", &c.tokenizer, "SentencePiece model; if set, must be the one the shards were written with");
  add(data, t, "max_train_rows", &c.max_train_rows, "use only the first N training rows (0: all)");
  add(data, t, "max_val_rows", &c.max_val_rows, "use only the first N validation rows (0: all)");

  po::options_description train("Training");
  add_string(train, t, "method", &c.method, "full | lora | qlora (LoRA on a frozen NF4 base)");
  add(train, t, "epochs", &c.epochs, "passes over the training split");
  add(train, t, "max_steps", &c.max_steps, "stop after N optimizer steps (0: run all epochs)");
  add(train, t, "micro_batch_size", &c.micro_batch_size, "rows per forward/backward on one rank");
  add(train, t, "grad_accum", &c.grad_accum, "micro-batches per optimizer step");
  add(train, t, "lr", &c.lr, "peak learning rate");
  add(train, t, "min_lr_ratio", &c.min_lr_ratio, "final learning rate as a fraction of lr (cosine, linear)");
  add(train, t, "warmup_steps", &c.warmup_steps, "linear warm-up steps from 0 to lr");
  add_string(train, t, "lr_schedule", &c.lr_schedule, "cosine | linear | constant (after warm-up)");
  add(train, t, "weight_decay", &c.weight_decay, "AdamW decoupled weight decay (not applied to norms)");
  add(train, t, "adam_beta1", &c.adam_beta1, "AdamW beta1");
  add(train, t, "adam_beta2", &c.adam_beta2, "AdamW beta2");
  add(train, t, "adam_eps", &c.adam_eps, "AdamW epsilon");
  add(train, t, "grad_clip", &c.grad_clip, "clip the global gradient norm to this (0: off)");
  add_string(train, t, "master_weights", &c.master_weights,
             "f32 | none: bf16 weights train through f32 master copies (f32 gradients and AdamW moments: 16 bytes a "
             "parameter beside the bf16 value), or in pure bf16 (bf16 gradients and moments, no master, the update "
             "stochastically rounded: 8 bytes a parameter); none applies to full fine-tuning in bf16 and has no effect "
             "on adapters or f32 runs");
  add_string(train, t, "activation_checkpointing", &c.activation_checkpointing,
             "true | false | N | auto: blocks that keep only their input and recompute their forward in backward "
             "(true: all; N: the first N; auto: the fewest that fit memory_limit or the GPU's memory, chosen by the planner)");
  add(train, t, "shuffle", &c.shuffle, "shuffle training rows each epoch (seeded)");
  add(train, t, "packing", &c.packing,
      "sequence packing: whole documents packed first-fit-decreasing into training rows of pack_length tokens, each "
      "with its own positions, causal attention and loss (micro_batch_size counts packed rows; Llama only)");
  add(train, t, "pack_length", &c.pack_length, "tokens per packed training row (0: the training shards' max_seq_len)");
  add(train, t, "group_by_length", &c.group_by_length,
      "unpacked runs: global batches of rows of similar lengths, in a seeded random order (less padding)");
  add(train, t, "eval_every", &c.eval_every, "also evaluate every N steps (0: at the end of each epoch only)");
  add(train, t, "eval_at_start", &c.eval_at_start, "evaluate before the first step (the untrained baseline)");

  po::options_description lora("LoRA");
  add(lora, t, "lora_r", &c.lora_r, "adapter rank r");
  add(lora, t, "lora_alpha", &c.lora_alpha, "adapter scale numerator: scale = alpha / r");
  add(lora, t, "lora_dropout", &c.lora_dropout, "dropout on the adapter input");
  add_string(lora, t, "lora_targets", &c.lora_targets, "comma-separated modules: q,k,v,o,gate,up,down");
  add_string(lora, t, "adapter", &c.adapter,
             "PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors) loaded at start instead of a "
             "fresh init: train continues it (its r, lora_alpha and target_modules replace lora_r, lora_alpha and "
             "lora_targets), eval applies it");
  add(lora, t, "save_adapter", &c.save_adapter,
      "write <run dir>/adapter in PEFT format (adapter_config.json + adapter_model.safetensors) at the end of a "
      "lora or qlora run (full fine-tuning has no adapter: the default does nothing there, an explicit true is refused)");

  po::options_description qlora("QLoRA (method = qlora; the LoRA keys above apply too)");
  add_string(qlora, t, "qlora_quantize", &c.qlora_quantize,
             "which linear layers store their frozen base in NF4: adapted (those in lora_targets) | all (every block projection)");
  add(qlora, t, "qlora_block_size", &c.qlora_block_size, "NF4 values per absmax: 64, 128 or 256");
  add(qlora, t, "qlora_double_quant", &c.qlora_double_quant, "8-bit absmax values around their mean (block 256)");
  add_string(lora, t, "base_precision", &c.base_precision,
             "bf16 | fp8: the frozen base of adapted layers in the compute dtype, or in FP8 E4M3 (per-tensor scales, "
             "activations quantized with current scaling; forward and input-gradient GEMMs in FP8 with f32 accumulation; "
             "CUDA needs compute capability 8.9+); lora and qlora only");
  add_string(lora, t, "fp8_transpose", &c.fp8_transpose,
             "stored | per_step: with base_precision = fp8, keep W8^T (the input gradient's operand) beside W8 (2 bytes a "
             "base parameter, as bf16), or transpose W8 into one shared buffer before each input-gradient GEMM (1 byte a "
             "parameter; one extra pass over the FP8 weights a backward)");

  po::options_description par("Parallelism and memory");
  add_string(par, t, "parallel", &c.parallel,
             "strategy: none (one rank) | ddp (data parallel: replicated model, gradients summed over ranks) | "
             "tp (Megatron tensor parallelism over tp_size ranks; data parallel across groups) | "
             "zero3 (parameters, gradients and optimizer state sharded over the data-parallel ranks) | "
             "tp+zero3 (both: TP inside groups of tp_size, ZeRO-3 across them) | "
             "auto (the planner's fastest strategy and tp_size that fits in memory_limit, or the GPU's memory)");
  add(par, t, "tp_size", &c.tp_size,
      "tensor-parallel group size (parallel = tp or tp+zero3); must divide the world size; the data-parallel size is world / tp_size");
  add(par, t, "zero3_prefetch", &c.zero3_prefetch,
      "ZeRO-3: all-gather the next unit's parameters (asynchronously) while the current unit computes");
  add(par, t, "watchdog_timeout", &c.watchdog_timeout,
      "abort the whole job when a rank makes no progress (a step, a collective) for this many seconds (0: off)");
  add_string(par, t, "memory_limit", &c.memory_limit, "refuse device allocations beyond this (e.g. 40GiB; 0: no cap); a run over it ends with outcome oom");
  add_string(par, t, "gpu_memory_limit", &c.gpu_memory_limit, "the same as memory_limit (set one of them)");

  po::options_description ckpt("Checkpoints and resume");
  add(ckpt, t, "checkpoint_every", &c.checkpoint_every,
      "write a checkpoint every N optimizer steps and at the end (0: only when stopped by SIGTERM/SIGUSR1)");
  add_string(ckpt, t, "checkpoint_dir", &c.checkpoint_dir, "where checkpoints go (empty: <output_dir>/<run_id>/checkpoints)");
  add_string(ckpt, t, "resume", &c.resume,
             "none | auto (continue from the newest complete checkpoint in checkpoint_dir; start afresh if there is none) | "
             "a checkpoint directory (.../step-<N>)");
  add(ckpt, t, "keep_checkpoints", &c.keep_checkpoints, "complete checkpoints to keep (older ones are removed)");

  const std::pair<const char*, po::options_description*> groups[] = {
      {"Run", &run}, {"Model", &model}, {"Data", &data}, {"Training", &train}, {"LoRA", &lora},
      {"QLoRA (method = qlora; the LoRA keys above apply too)", &qlora}, {"Parallelism and memory", &par},
      {"Checkpoints and resume", &ckpt}};
  for (const auto& [caption, g] : groups) {
    t.all.add(*g);
    t.groups.emplace_back(caption, *g);
  }
}

// The keys each subcommand's --help lists (train: all). eval and export accept the others too,
// so that a training deck can be passed as it is, but they have no effect there.
const std::set<std::string>* help_keys(const std::string& subcommand) {
  static const std::set<std::string> eval = {
      "run_id", "output_dir", "seed", "device", "dtype", "threads", "model", "arch", "vocab_size", "hidden_size",
      "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "max_position_embeddings",
      "rms_norm_eps", "rope_theta", "num_decoder_layers", "relative_attention_num_buckets",
      "relative_attention_max_distance", "feed_forward_proj", "tie_embeddings", "init_std", "data", "val_split",
      "tokenizer", "max_val_rows", "micro_batch_size", "method", "adapter", "qlora_quantize", "qlora_block_size",
      "qlora_double_quant", "base_precision", "fp8_transpose", "parallel", "tp_size", "zero3_prefetch", "watchdog_timeout", "memory_limit",
      "gpu_memory_limit"};
  static const std::set<std::string> exp = {"model", "adapter", "tokenizer", "dtype", "device"};
  if (subcommand == "eval") return &eval;
  if (subcommand == "export") return &exp;
  return nullptr;
}

void print_help(const std::string& subcommand, const po::options_description& cli_only, const OptionTable& table) {
  const std::set<std::string>* keys = help_keys(subcommand);
  if (subcommand == "eval") {
    std::cout << "Usage: shardtune eval [--deck FILE] [--key value ...]\n\n"
              << "Validation loss (and accuracy, for classification shards) of `model`, with `adapter` applied when set,\n"
              << "on `val_split` of `data`; no training. Prints one line,\n"
              << "  eval  step 0 | val loss L | val acc A% | R rows, N targets, Ts\n"
              << "and writes <output_dir>/<run_id>/eval-<n>/metrics.h5 (/evals, /summary; n = 1, 2, ...: never the\n"
              << "training run's metrics). A training deck works as it is:\n"
              << "keys not listed below are accepted and ignored. An adapter saved by a QLoRA run is evaluated on\n"
              << "the NF4 base it was trained on (its shardtune_adapter.json says so) unless method is set.\n\n";
  } else if (subcommand != "export") {
    std::cout << "Usage: shardtune " << subcommand << " [--deck FILE] [--key value ...]\n\n"
              << "Options are read from built-in defaults, then the deck's base decks (include = ...),\n"
              << "then the deck, then the command line; later sources win. Unknown keys are errors.\n\n";
  }
  std::cout << cli_only << "\n";
  if (!keys) {
    std::cout << table.all << "\n";
    return;
  }
  std::cout << "Options (deck keys; each also settable as --key value):\n";
  for (const auto& [caption, group] : table.groups) {
    po::options_description shown(caption);
    for (const auto& o : group.options())
      if (keys->count(o->long_name())) shown.add(o);
    if (!shown.options().empty()) std::cout << shown << "\n";
  }
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

std::string suggestion(const std::string& key, const std::vector<std::string>& known) {
  std::string best;
  size_t best_d = 4;
  for (const auto& k : known) {
    const size_t d = edit_distance(key, k);
    if (d < best_d) { best_d = d; best = k; }
  }
  return best.empty() ? "" : str(" (did you mean '", best, "'?)");
}

std::string strip_dashes(std::string s) {
  while (!s.empty() && s[0] == '-') s.erase(0, 1);
  return s;
}

// Store one layer's options, recording their origin; errors name the source.
void store_layer(const po::parsed_options& parsed, po::variables_map& vm, const std::string& source,
                 RunConfig& cfg, const OptionTable& table) {
  try {
    po::store(parsed, vm);
  } catch (const po::error& e) {
    ST_THROW_INPUT(source, ": ", e.what());
  }
  (void)table;
  for (const auto& o : parsed.options)
    if (!cfg.origin.count(o.string_key)) cfg.origin[o.string_key] = source;
}

// One `key = value` line of a deck.
struct DeckEntry {
  std::string key, value;
  int line = 0;
};

constexpr size_t kMaxDeckBytes = size_t{1} << 20;

// The lines of a deck: "key = value", comments from '#' to the end of the line, blank lines. A
// UTF-8 byte-order mark and CRLF line endings are accepted; anything else odd (a directory, a
// device, a binary or huge file, a line without '=', a [section], a key set twice) is refused
// naming the deck and the line.
std::vector<DeckEntry> read_deck(const std::string& path) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) ST_THROW_INPUT(path, ": deck not found");
  if (fs::is_directory(st)) ST_THROW_INPUT(path, ": is a directory, not a deck (a text file of key = value lines)");
  if (!fs::is_regular_file(st)) ST_THROW_INPUT(path, ": not a regular file (a deck is a text file of key = value lines)");
  const uintmax_t size = fs::file_size(path, ec);
  if (ec) ST_THROW_INPUT(path, ": cannot read deck: ", ec.message());
  if (size > kMaxDeckBytes) ST_THROW_INPUT(path, ": ", size, " bytes is not a deck (decks are text files under 1 MiB)");
  std::ifstream in(path, std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!in && !in.eof()) ST_THROW_INPUT(path, ": cannot read deck");
  if (text.rfind("\xEF\xBB\xBF", 0) == 0) text.erase(0, 3);  // UTF-8 byte-order mark
  std::vector<DeckEntry> out;
  std::map<std::string, int> first_line;
  std::istringstream lines(text);
  std::string raw;
  for (int n = 1; std::getline(lines, raw); ++n) {
    const std::string at = str(path, ":", n);
    if (raw.find('\0') != std::string::npos) ST_THROW_INPUT(at, ": binary data (a deck is a text file)");
    if (!raw.empty() && raw.back() == '\r') raw.pop_back();  // CRLF
    const std::string line = trim(raw.substr(0, raw.find('#')));
    if (line.empty()) continue;
    if (line.front() == '[') ST_THROW_INPUT(at, ": sections ('", line, "') are not used in decks: write key = value");
    const size_t eq = line.find('=');
    if (eq == std::string::npos) ST_THROW_INPUT(at, ": '", line, "' is not a 'key = value' line");
    DeckEntry e{trim(line.substr(0, eq)), trim(line.substr(eq + 1)), n};
    if (e.key.empty()) ST_THROW_INPUT(at, ": '", line, "' has no key before '='");
    const auto [it, fresh] = first_line.emplace(e.key, n);
    if (!fresh)
      ST_THROW_INPUT(at, ": key '", e.key, "' is set twice in this deck (first on line ", it->second,
                     "); set it once (a deck overrides its base deck's keys)");
    out.push_back(std::move(e));
  }
  return out;
}

// Parse a deck and the chain of decks it includes (each deck's keys override its base's).
void load_deck(const std::string& path, po::variables_map& vm, RunConfig& cfg, const OptionTable& table,
               std::set<std::string>& seen) {
  std::error_code ec;
  const fs::path canon = fs::weakly_canonical(path, ec);
  const std::vector<DeckEntry> entries = read_deck(path);
  if (!seen.insert(canon.string()).second) ST_THROW_INPUT(path, ": include cycle");
  const DeckEntry* include = nullptr;
  for (const DeckEntry& e : entries) {
    const std::string at = str(path, ":", e.line);
    if (e.key == "include") {
      if (include)
        ST_THROW_INPUT(at, ": more than one 'include' (first on line ", include->line, "; a deck layers on one base deck)");
      if (e.value.empty()) ST_THROW_INPUT(at, ": include needs the path of a base deck (include = base.cfg)");
      include = &e;
      continue;
    }
    const po::option_description* d = table.all.find_nothrow(e.key, false);
    if (!d) ST_THROW_INPUT(at, ": unknown key '", e.key, "'", suggestion(e.key, table.order));
    // Every value is checked, also one a later layer (the command line) overrides.
    try {
      boost::any probe;
      d->semantic()->parse(probe, {e.value}, true);
    } catch (const po::error& err) {
      ST_THROW_INPUT(at, ": ", err.what());
    }
    po::parsed_options one(&table.all);
    one.options.emplace_back(e.key, std::vector<std::string>{e.value});
    store_layer(one, vm, at, cfg, table);
  }
  if (include) {
    fs::path base = fs::path(include->value);
    if (base.is_relative()) base = fs::path(path).parent_path() / base;
    try {
      load_deck(base.string(), vm, cfg, table, seen);
    } catch (const InputError& e) {
      ST_THROW_INPUT(e.what(), " (included from ", path, ":", include->line, ")");
    }
  }
}

}  // namespace

bool parse_run_config(int argc, char** argv, const std::string& subcommand, RunConfig& cfg) {
  OptionTable table;
  build_table(cfg, table);
  po::options_description cli_only("Command line");
  std::string deck;
  bool help = false;
  cli_only.add_options()("help,h", po::bool_switch(&help), "print this help")(
      "deck,d", po::value<std::string>(&deck), "input deck (.cfg) to read options from");
  po::options_description cli;
  cli.add(cli_only).add(table.all);

  std::ostringstream cmd;
  cmd << "shardtune";  // argv[0] is the subcommand
  for (int i = 0; i < argc; ++i) cmd << " " << argv[i];
  cfg.command_line = cmd.str();

  po::variables_map vm;
  po::parsed_options parsed(&cli);
  try {
    parsed = po::command_line_parser(argc, argv).options(cli).run();
  } catch (const po::unknown_option& e) {
    const std::string key = strip_dashes(e.get_option_name());
    ST_THROW_INPUT("command line: unknown option '--", key, "'", suggestion(key, table.order));
  } catch (const po::error& e) {
    ST_THROW_INPUT("command line: ", e.what());
  }
  store_layer(parsed, vm, "command line", cfg, table);
  if (vm.count("help") && vm["help"].as<bool>()) {
    print_help(subcommand, cli_only, table);
    return false;
  }
  if (vm.count("deck")) {
    deck = vm["deck"].as<std::string>();
    std::set<std::string> seen;
    load_deck(deck, vm, cfg, table, seen);
  }
  try {
    po::notify(vm);
  } catch (const po::error& e) {
    ST_THROW_INPUT("options: ", e.what());
  }
  cfg.deck = deck;
  for (const auto& k : table.order)
    if (!cfg.origin.count(k)) cfg.origin[k] = "default";
  if (!cfg.gpu_memory_limit.empty()) {  // the other name of memory_limit
    if (cfg.origin.at("memory_limit") != "default" && cfg.memory_limit != cfg.gpu_memory_limit)
      ST_THROW_INPUT(cfg.origin.at("gpu_memory_limit"), ": gpu_memory_limit = ", cfg.gpu_memory_limit, " and ",
                     cfg.origin.at("memory_limit"), ": memory_limit = ", cfg.memory_limit,
                     " disagree (they are one setting: set one of them)");
    cfg.memory_limit = cfg.gpu_memory_limit;
    cfg.origin["memory_limit"] = cfg.origin.at("gpu_memory_limit");
  }
  if (cfg.run_id.empty()) {
    cfg.run_id = deck.empty() ? subcommand : fs::path(deck).stem().string();
    cfg.origin["run_id"] = deck.empty() ? "default (the subcommand's name)" : "default (the deck's file name)";
  }
  validate_run_config(cfg);
  return true;
}

std::vector<std::string> RunConfig::lora_target_list() const {
  std::vector<std::string> out;
  std::stringstream ss(lora_targets);
  std::string item;
  while (std::getline(ss, item, ',')) {
    item.erase(std::remove_if(item.begin(), item.end(), ::isspace), item.end());
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

std::vector<ResolvedOption> RunConfig::resolved_typed() const {
  RunConfig copy = *this;
  OptionTable table;
  build_table(copy, table);
  std::vector<ResolvedOption> out;
  for (const auto& key : table.order) {
    const po::option_description& d = table.all.find(key, false);
    // The semantic's default is bound to the field's current value (copied above), so its
    // textual default is the resolved value.
    boost::any v;
    d.semantic()->apply_default(v);
    ResolvedOption o{key, "", ResolvedOption::Kind::text};
    if (auto p = boost::any_cast<std::string>(&v)) o.value = *p;
    else if (auto p = boost::any_cast<int64_t>(&v)) o = {key, std::to_string(*p), ResolvedOption::Kind::integer};
    else if (auto p = boost::any_cast<uint64_t>(&v)) o = {key, std::to_string(*p), ResolvedOption::Kind::integer};
    else if (auto p = boost::any_cast<int>(&v)) o = {key, std::to_string(*p), ResolvedOption::Kind::integer};
    else if (auto p = boost::any_cast<bool>(&v)) o = {key, *p ? "true" : "false", ResolvedOption::Kind::boolean};
    else if (auto p = boost::any_cast<double>(&v)) o = {key, format_real(*p), ResolvedOption::Kind::real};
    out.push_back(o);
  }
  return out;
}

std::vector<std::pair<std::string, std::string>> RunConfig::resolved() const {
  std::vector<std::pair<std::string, std::string>> out;
  for (const ResolvedOption& o : resolved_typed()) out.emplace_back(o.key, o.value);
  return out;
}

bool RunConfig::set_by_checkpoint(const std::string& key) const {
  static const std::set<std::string> shape_keys = {
      "arch", "vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
      "max_position_embeddings", "rms_norm_eps", "rope_theta", "num_decoder_layers", "relative_attention_num_buckets",
      "relative_attention_max_distance", "feed_forward_proj", "tie_embeddings", "init_std"};
  if (model.empty() || !shape_keys.count(key)) return false;
  const auto it = origin.find(key);
  return it == origin.end() || it->second == "default";
}

void validate_run_config(const RunConfig& c) {
  auto src = [&](const std::string& key) {
    auto it = c.origin.find(key);
    return it == c.origin.end() ? std::string("options") : it->second;
  };
  auto fail = [&](const std::string& key, const std::string& why) {
    ST_THROW_INPUT(src(key), ": ", key, " ", why);
  };
  auto one_of = [&](const std::string& key, const std::string& v, std::initializer_list<const char*> allowed) {
    for (const char* a : allowed)
      if (v == a) return;
    std::string list;
    for (const char* a : allowed) list += (list.empty() ? "" : " | ") + std::string(a);
    fail(key, str("= '", v, "' is not one of: ", list));
  };
  one_of("device", c.device, {"cpu", "cuda"});
  one_of("dtype", c.dtype, {"auto", "f32", "f64", "bf16"});
  if (c.arch.empty()) fail("arch", "must name a model family (llama, mistral, qwen2, t5)");
  one_of("feed_forward_proj", c.feed_forward_proj, {"gated-gelu", "relu"});
  one_of("method", c.method, {"full", "lora", "qlora"});
  (void)run_master_weights(c);  // f32 | none (ZeRO-3 refuses none where it applies: train/setup.cpp)
  one_of("qlora_quantize", c.qlora_quantize, {"adapted", "all"});
  one_of("base_precision", c.base_precision, {"bf16", "fp8"});
  one_of("fp8_transpose", c.fp8_transpose, {"stored", "per_step"});
  if (c.fp8_transpose != "stored" && c.base_precision != "fp8")
    fail("fp8_transpose", str("= ", c.fp8_transpose, " needs base_precision = fp8 (there is no FP8 base to transpose)"));
  if (c.base_precision == "fp8") {
    if (c.method == "full")
      fail("base_precision", "= fp8 needs method = lora or qlora (full fine-tuning trains the base weights, which FP8 holds frozen)");
    if (c.parallel == "zero3" || c.parallel == "tp+zero3")
      fail("base_precision", str("= fp8 with parallel = ", c.parallel, ": ZeRO-3 shards the frozen base, which FP8 does not "
                                 "support yet (use none, ddp or tp)"));
    if (c.save_model && c.method == "lora")
      fail("base_precision", "= fp8 with save_model = true and method = lora: the bf16 base is not kept (save the adapter "
                             "and merge it into the original model instead)");
  }
  if (c.qlora_block_size != 64 && c.qlora_block_size != 128 && c.qlora_block_size != 256)
    fail("qlora_block_size", str("= ", c.qlora_block_size, " must be 64, 128 or 256"));
  one_of("lr_schedule", c.lr_schedule, {"cosine", "linear", "constant"});
  one_of("parallel", c.parallel, {"none", "ddp", "tp", "zero3", "tp+zero3", "auto"});
  if (!checkpointing_is_auto(c)) (void)run_checkpointing(c);  // true | false | N >= 0
  // Integers in [lo, hi]; reals finite and in their range (NaN fails every comparison, so each
  // check is written as "inside", never as "not outside").
  auto int_in = [&](const char* key, int64_t v, int64_t lo, int64_t hi) {
    if (!(v >= lo && v <= hi)) fail(key, str("= ", v, " must be in [", lo, ", ", hi, "]"));
  };
  auto real_in = [&](const char* key, double v, double lo, double hi, bool lo_open, bool hi_open) {
    const bool ok = std::isfinite(v) && (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi);
    if (!ok) fail(key, str("= ", v, " must be a finite number in ", lo_open ? "(" : "[", lo, ", ", hi, hi_open ? ")" : "]"));
  };
  constexpr double kInf = std::numeric_limits<double>::max();  // "no upper bound" (still finite)
  if (c.run_id.empty() || c.run_id.find('/') != std::string::npos || c.run_id == "." || c.run_id == "..")
    fail("run_id", str("= '", c.run_id, "' must be a plain name (no '/')"));
  if (c.output_dir.empty()) fail("output_dir", "must not be empty");
  int_in("threads", c.threads, 0, kMaxThreads);
  int_in("log_every", c.log_every, 1, std::numeric_limits<int>::max());
  if (c.model.empty()) {
    int_in("vocab_size", c.vocab_size, 0, kMaxVocab);
    int_in("hidden_size", c.hidden_size, 1, kMaxWidth);
    int_in("intermediate_size", c.intermediate_size, 1, kMaxWidth);
    int_in("num_layers", c.num_layers, 1, kMaxLayers);
    int_in("num_heads", c.num_heads, 1, kMaxHeads);
    int_in("num_kv_heads", c.num_kv_heads, 0, c.num_heads);
    if (c.num_kv_heads > 0 && c.num_heads % c.num_kv_heads != 0)
      fail("num_kv_heads", str("= ", c.num_kv_heads, " must divide num_heads (", c.num_heads, ")"));
    int_in("head_dim", c.head_dim, 0, kMaxHeadDim);
    int_in("max_position_embeddings", c.max_position_embeddings, 1, kMaxPositions);
    if (c.head_dim == 0 && c.hidden_size % c.num_heads != 0) fail("hidden_size", "must be a multiple of num_heads (or set head_dim)");
    real_in("init_std", c.init_std, 0, 10, true, false);
    real_in("rms_norm_eps", c.rms_norm_eps, 0, 1, true, false);
    real_in("rope_theta", c.rope_theta, 0, 1e12, true, false);
    int_in("num_decoder_layers", c.num_decoder_layers, 0, kMaxLayers);
    int_in("relative_attention_num_buckets", c.relative_attention_num_buckets, 2, kMaxPositions);
    int_in("relative_attention_max_distance", c.relative_attention_max_distance, 1, kMaxPositions);
  }
  if (c.data.empty()) fail("data", "is required (a directory of shards from `shardtune prepare`)");
  if (c.train_split.empty()) fail("train_split", "must not be empty");
  int_in("max_train_rows", c.max_train_rows, 0, std::numeric_limits<int64_t>::max());
  int_in("max_val_rows", c.max_val_rows, 0, std::numeric_limits<int64_t>::max());
  int_in("epochs", c.epochs, 1, kMaxEpochs);
  int_in("max_steps", c.max_steps, 0, std::numeric_limits<int64_t>::max());
  int_in("micro_batch_size", c.micro_batch_size, 1, kMaxBatch);
  int_in("grad_accum", c.grad_accum, 1, kMaxBatch);
  int_in("pack_length", c.pack_length, 0, kMaxPositions);
  if (c.pack_length > 0 && !c.packing) fail("pack_length", str("= ", c.pack_length, " needs packing = true"));
  if (c.packing && c.group_by_length)
    fail("group_by_length", "= true is for unpacked runs (packing = true already leaves next to no padding)");
  real_in("lr", c.lr, 0, 10, true, false);
  real_in("min_lr_ratio", c.min_lr_ratio, 0, 1, false, false);
  int_in("warmup_steps", c.warmup_steps, 0, std::numeric_limits<int64_t>::max());
  real_in("weight_decay", c.weight_decay, 0, kInf, false, false);
  if (c.lr * c.weight_decay > 1)
    fail("weight_decay", str("= ", c.weight_decay, " with lr = ", c.lr, ": lr x weight_decay must be <= 1 (AdamW scales "
                             "each weight by 1 - lr x weight_decay per step)"));
  real_in("adam_beta1", c.adam_beta1, 0, 1, false, true);
  real_in("adam_beta2", c.adam_beta2, 0, 1, false, true);
  real_in("adam_eps", c.adam_eps, 0, 1, true, false);
  real_in("grad_clip", c.grad_clip, 0, kInf, false, false);
  int_in("eval_every", c.eval_every, 0, std::numeric_limits<int64_t>::max());
  int_in("lora_r", c.lora_r, 1, kMaxWidth);
  real_in("lora_alpha", c.lora_alpha, 0, 1e6, true, false);
  real_in("lora_dropout", c.lora_dropout, 0, 1, false, true);
  {
    const auto targets = c.lora_target_list();
    if (targets.empty()) fail("lora_targets", "must name at least one module");
    for (const auto& t : targets)
      if (t != "q" && t != "k" && t != "v" && t != "o" && t != "gate" && t != "up" && t != "down" && t != "wi_0" &&
          t != "wi_1" && t != "wi" && t != "wo")
        fail("lora_targets", str("names unknown module '", t, "' (llama: q, k, v, o, gate, up, down; t5: q, k, v, o, wi_0, wi_1, wi, wo)"));
  }
  const auto save_adapter_origin = c.origin.find("save_adapter");  // the default (true) is for lora and qlora
  if (c.save_adapter && c.method == "full" && save_adapter_origin != c.origin.end() &&
      save_adapter_origin->second != "default")
    fail("save_adapter", "= true needs method = lora or qlora (full fine-tuning trains no adapter; use save_model)");
  real_in("watchdog_timeout", c.watchdog_timeout, 0, kMaxWatchdogSeconds, false, false);
  int_in("tp_size", c.tp_size, 1, kMaxRanks);
  if (c.tp_size != 1 && c.parallel != "tp" && c.parallel != "tp+zero3" && c.parallel != "auto")
    fail("tp_size", str("= ", c.tp_size, " needs parallel = tp or tp+zero3 (parallel is ", c.parallel, ")"));
  int_in("checkpoint_every", c.checkpoint_every, 0, std::numeric_limits<int64_t>::max());
  int_in("keep_checkpoints", c.keep_checkpoints, 1, kMaxEpochs);
  if (c.resume.empty()) fail("resume", "must be none, auto or a checkpoint directory");
  try {
    (void)parse_bytes(c.memory_limit, "memory_limit");
  } catch (const InputError& e) {
    fail("memory_limit", str("= '", c.memory_limit, "' is not a byte size (examples: 40GiB, 512MiB, 0)"));
  }
}

}  // namespace st
