// `shardtune prepare`: text -> prompt template -> SentencePiece ids -> fit to max_seq_len ->
// HDF5 shards (src/io/shards.hpp), with statistics of everything read, cut, dropped and skipped.
//
//   sst2      SST-2 TSV as a causal LM: [bos] "Review: {sentence}\nSentiment:" "positive"|"negative"
//             [eos]; labels 0/1, label_token_ids = first token of each label word.
//   instruct  Alpaca JSON/JSONL: [bos] template(instruction, input) output [eos]; labels -1.
//   random    no text: uniform random ids for benchmarks (write_random_shards below).
//
// --arch seq2seq (encoder-decoder models, T5/FlanT5) writes the seq2seq shard layout instead: an
// encoder input and a decoder target per row, no BOS on either side, EOS (add_eos) ending both:
//   sst2      input "sst2 sentence: {sentence}" [eos], target "negative"|"positive" [eos]; labels
//             0/1, label_token_ids = first token of each label word at the start of the target.
//   instruct  input = the template's prompt (what precedes the response) [eos], target = output
//             [eos]; labels -1.
// Inputs are cut to max_seq_len (content word by word, as for causal prompts), targets to
// max_target_len (from their end), the eos kept last in both; rows with an empty target or whose
// template alone does not fit are dropped.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/templates.hpp"
#include "data/text_sources.hpp"
#include "io/shards.hpp"

namespace st {

class Tokenizer;

struct PrepareOptions {
  std::string input;                 // .tsv (SST-2) or .json/.jsonl (Alpaca)
  std::string tokenizer;             // SentencePiece .model
  std::string output_dir;
  std::string split;                 // shard file prefix: "<split>-00000.h5"
  std::string format = "auto";       // auto | sst2 | alpaca (auto: by the input's extension)
  int64_t max_seq_len = 128;         // L, >= 2
  std::string loss_on = "answer";    // answer | all
  std::string prompt_template = "alpaca";  // alpaca | plain (instruction data only)
  int64_t shard_rows = 0;            // rows per shard, 0 = one shard
  bool add_bos = true;               // causal only: seq2seq rows never start with BOS
  bool add_eos = true;               // seq2seq: ends both the input and the target
  std::string arch = "causal";       // causal | seq2seq (shard layout, src/io/shards.hpp)
  int64_t max_target_len = 64;       // seq2seq: Lt, >= 2
  int64_t limit = 0;                 // read at most this many rows (good or bad), 0 = all
  std::string created_by = "shardtune prepare";
};

// Throws InputError naming the option (as --flag) for a bad value.
void validate_prepare_options(const PrepareOptions& options);
// "sst2" or "alpaca" from --format and the file name; InputError when auto cannot tell.
std::string resolve_input_format(const std::string& format, const std::string& input_path);

struct PrepareStats {
  std::string task;        // "sst2" | "instruct"
  std::string arch = "causal";  // "causal" | "seq2seq"
  std::string input, output_dir, split, tokenizer, tokenizer_sha256;
  int64_t tokenizer_vocab_size = 0;
  int64_t seq_len = 0;
  int64_t target_len = 0;  // seq2seq: Lt
  int64_t rows_read = 0, rows_written = 0, rows_dropped = 0;
  // seq2seq: prompt cut = encoder input cut, answer cut = target cut.
  int64_t rows_truncated = 0, rows_prompt_cut = 0, rows_answer_cut = 0;
  BadRows bad;
  std::vector<int64_t> dropped_lines;  // first few line (record) numbers of dropped rows
  int64_t tokens = 0;        // sum of row (seq2seq: encoder input) lengths
  int64_t loss_tokens = 0;   // sum of loss-mask ones (seq2seq: of target lengths)
  int64_t max_length = 0;
  double mean_length = 0;
  int64_t target_tokens = 0, max_target_length = 0;  // seq2seq targets
  double mean_target_length = 0;
  std::vector<std::string> label_names;   // sst2: negative, positive
  std::vector<int32_t> label_token_ids;   // first token of each label word
  std::vector<std::string> label_pieces;  // those tokens as pieces, for the report
  std::vector<std::string> shard_files;
  double seconds = 0;
};

// Tokenized rows and their statistics, before anything is written (the pipeline without I/O,
// for tests and for callers that keep data in memory).
struct PreparedRows {
  ShardRows rows;
  ShardInfo info;  // everything but the provenance of the run (paths, created_by)
  PrepareStats stats;
};
PreparedRows prepare_sst2_rows(const Sst2Source& src, const Tokenizer& tok, const PrepareOptions& options);
PreparedRows prepare_instruct_rows(const InstructSource& src, const Tokenizer& tok,
                                   const PrepareOptions& options);

// The whole pipeline: read, tokenize, fit, write the shards of options.split.
// InputError when the input or tokenizer cannot be used or no row survives.
PrepareStats prepare_dataset(const PrepareOptions& options);

// The end-of-run report (several lines, no trailing newline).
std::string format_prepare_report(const PrepareStats& stats);

// ------------------------------------------------------------ random-token shards (benchmarks)
// `shardtune prepare --random DIR`: DIR/train-00000.h5 (rows) and DIR/validation-00000.h5
// (val_rows) of full-length rows [bos=1, u_1, ..., u_{L-1}] with u uniform in [3, vocab), loss on
// every position from 1, labels -1, task "random", tokenizer_sha256 "random-vocab-<V>" (no
// tokenizer file: the pseudo-checksum keeps the two splits, and runs on other vocabularies,
// apart), eos 2, pad 0. Ids are a pure function of (seed, split, row, position), so the same
// options give byte-identical datasets. Not compressed (random ids do not deflate).
// With arch "seq2seq" (and target_len Lt): encoder rows [u_1, ..., u_{L-1}, eos] and targets
// [u'_1, ..., u'_{Lt-1}, eos], all full length, decoder_start_id = pad (0), add_bos 0; encoder
// ids are the causal rows' draws (same key and positions), targets a separate stream.
constexpr int32_t kRandomPadId = 0, kRandomBosId = 1, kRandomEosId = 2, kRandomFirstId = 3;

struct RandomShardOptions {
  std::string output_dir;   // --random DIR
  int64_t rows = 0;         // --rows N: training rows, >= 1
  int64_t seq_len = 0;      // --seq-len L, >= 2
  int64_t vocab = 0;        // --vocab V, >= 4 (ids in [3, V))
  uint64_t seed = 1234;     // --seed
  int64_t val_rows = -1;    // --val-rows M, >= 1; -1: max(1, N / 16)
  std::string arch = "causal";  // --arch causal | seq2seq
  int64_t target_len = 0;   // --target-len Lt: seq2seq only (>= 2), 0 for causal
  std::string created_by = "shardtune prepare --random";
};

struct RandomShardStats {
  std::string output_dir;
  int64_t train_rows = 0, val_rows = 0, seq_len = 0, vocab = 0;
  std::string arch = "causal";
  int64_t target_len = 0;
  uint64_t seed = 0;
  std::vector<std::string> shard_files;  // train, validation
  double seconds = 0;
};

// Throws InputError naming the option (as --flag) for a bad value.
void validate_random_shard_options(const RandomShardOptions& options);
// The validation rows: options.val_rows, or max(1, rows / 16) when it is -1.
int64_t random_val_rows(const RandomShardOptions& options);
// One split's rows and metadata, in memory ("train" and "validation" draw different ids).
PreparedRows make_random_rows(const RandomShardOptions& options, const std::string& split, int64_t rows);
// Validates, then writes both splits (replacing their old shards).
RandomShardStats write_random_shards(const RandomShardOptions& options);
std::string format_random_shard_report(const RandomShardStats& stats);

}  // namespace st
