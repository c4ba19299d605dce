// HDF5 dataset shards: the tokenized training data.
//
// Two layouts, told apart by the file attribute `arch`.
//
// arch "causal" (decoder-only LMs): N padded rows of length L (the shard's "sequence length"):
//   /ids           int32 [N, L]  token ids, right-padded with pad_id
//   /loss_mask     uint8 [N, L]  1 where the token is a training target (it is predicted from
//                                the previous position; position 0 is never a target)
//   /lengths       int32 [N]     number of real tokens in the row (<= L)
//   /answer_start  int32 [N]     index of the first answer token (== length when no answer)
//   /labels        int32 [N]     class label (SST-2: 0 negative, 1 positive); -1 when absent
//
// arch "seq2seq" (encoder-decoder LMs, T5): an encoder input and a decoder target per row:
//   /ids            int32 [N, L]   encoder input ids, right-padded with pad_id
//   /lengths        int32 [N]      encoder input lengths (<= L)
//   /targets        int32 [N, Lt]  decoder labels, right-padded with pad_id; the decoder input
//                                  is [decoder_start_id, targets[0 .. len-2]] (shifted right)
//   /target_lengths int32 [N]      target lengths (<= Lt); every target token is a loss target
//   /answer_start   int32 [N]      0 (kept so per-row metadata reads alike)
//   /labels         int32 [N]      class label or -1
// There is no /loss_mask: a row's loss targets are its target_lengths[r] target tokens.
//
// Datasets are chunked ([min(64, N), L] or [.., Lt], and [min(65536, N)]) and compressed
// (shuffle + deflate level kShardDeflateLevel; write_shards can be told to skip compression:
// random-token shards, whose ids do not compress). File attributes:
//   format_version (int), task ("sst2" | "instruct" | "random"), arch ("causal" | "seq2seq"), split,
//   source_file, source_sha256, tokenizer_path, tokenizer_sha256, tokenizer_vocab_size, bos_id,
//   eos_id, pad_id, max_seq_len (L), loss_on ("answer" | "all"; "target" for seq2seq),
//   prompt_template, num_rows, label_names (SST-2: "negative,positive"), label_token_ids
//   (int32[num_labels]: the first token of each label word, whose scores give the classification
//   accuracy; seq2seq: the word's first token at the start of the target, scored at the
//   decoder's first position), rows_read, rows_written, rows_truncated, rows_dropped, created_by,
//   and for seq2seq: target_len (Lt) and decoder_start_id (T5: the pad id, 0).
// A shard is written to "<name>.tmp" and renamed when complete, so a file with the final name
// is always whole. source_sha256 and tokenizer_sha256 are SHA-256 hex digests of the files'
// bytes. Two attributes beyond the list: add_bos, add_eos (0|1), how the rows were built.
// The rows_* counts are those of the whole split (the same in every shard of it); num_rows is
// the shard's own N; label_names is "" and label_token_ids empty for "instruct" and "random".
// Causal files written before seq2seq existed read unchanged: a missing arch means "causal",
// missing target_len / decoder_start_id mean 0 (seq2seq files must have target_len).
//
// Shard names: "<dir>/<split>-NNNNN.h5" (the glob "<split>-*.h5" restricted to a numeric
// suffix, so split "train" never picks up "train-extra-00000.h5").
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace st {

constexpr int kShardFormatVersion = 1;
constexpr int kShardDeflateLevel = 4;  // write_shards' default; 0 = chunked, not compressed

struct ShardInfo {
  int format_version = 0;
  std::string task;   // "sst2" | "instruct" | "random"
  std::string arch = "causal";  // "causal" | "seq2seq"
  std::string split;
  std::string source_file;
  std::string tokenizer_sha256;
  int64_t tokenizer_vocab_size = 0;
  int32_t bos_id = -1, eos_id = -1, pad_id = 0;
  int64_t seq_len = 0;  // L (seq2seq: of the encoder input)
  int64_t target_len = 0;        // Lt: seq2seq target length; 0 for causal
  int32_t decoder_start_id = 0;  // seq2seq: first decoder input token (T5: pad, 0)
  std::string loss_on;
  std::string prompt_template;
  std::vector<std::string> label_names;
  std::vector<int32_t> label_token_ids;
  // Provenance (written by write_shards, read back from the first shard).
  std::string source_sha256;
  std::string tokenizer_path;
  std::string created_by;
  bool add_bos = true, add_eos = true;
  int64_t rows_read = 0, rows_written = 0, rows_truncated = 0, rows_dropped = 0;
  // The split's content identity (write_shards: a SHA-256 over every shard's content_sha256 and
  // row count); "" for shards written before it existed.
  std::string split_sha256;
};

// Rows to write, in memory: the datasets of one split before it is cut into shards.
// Causal rows fill loss_mask and leave the target fields empty; seq2seq rows fill targets and
// target_lengths and leave loss_mask empty.
struct ShardRows {
  int64_t seq_len = 0;               // L
  std::vector<int32_t> ids;          // [N, L], padded
  std::vector<uint8_t> loss_mask;    // [N, L] (causal)
  std::vector<int32_t> lengths;      // [N]
  std::vector<int32_t> answer_start; // [N]
  std::vector<int32_t> labels;       // [N]
  int64_t target_len = 0;               // Lt (seq2seq)
  std::vector<int32_t> targets;         // [N, Lt], padded (seq2seq)
  std::vector<int32_t> target_lengths;  // [N] (seq2seq)
  int64_t size() const { return static_cast<int64_t>(lengths.size()); }
};

// Writes `rows` as "<out_dir>/<split>-00000.h5", ... with at most `shard_rows` rows each
// (0 = one shard); info.split names the files and info.seq_len must equal rows.seq_len (and,
// for info.arch "seq2seq", info.target_len rows.target_len: the seq2seq layout). Creates
// out_dir if needed. The new set is written beside the split's existing shards as
// "<name>.tmp" files and fsynced; only then are the old shards moved aside ("<name>.old"), the
// new ones renamed into place and the old ones deleted, so a failure while writing (disk full:
// the message names the cause) leaves the old split untouched, and old and new shards never mix.
// Every shard also records content_sha256 (its rows), split_sha256 (the whole split), its
// shard_index and num_shards, which ShardDataset::open checks. Returns the final paths in order.
// deflate_level: 1-9 compresses every dataset (with the shuffle filter), 0 leaves them chunked
// but uncompressed.
std::vector<std::string> write_shards(const std::string& out_dir, const ShardInfo& info,
                                      const ShardRows& rows, int64_t shard_rows,
                                      int deflate_level = kShardDeflateLevel);

// Paths of "<dir>/<split>-NNNNN.h5" in shard order (empty when none).
std::vector<std::string> list_shard_files(const std::string& dir, const std::string& split);

// What identifies a split's content for checkpoints (train/checkpoint.hpp): its row count and
// its split_sha256 attribute, read from the shards' attributes only (fast); for shards written
// before split_sha256 existed, a SHA-256 over the files' bytes. InputError as ShardDataset::open
// when there are no shards.
struct SplitIdentity {
  int64_t rows = 0;
  std::string sha256;
  std::string str() const;  // "<rows> rows, sha256 <hex>"
};
SplitIdentity split_identity(const std::string& dir_or_file, const std::string& split);

// Host-side batch of rows, filled by ShardDataset::read_rows. Causal shards fill loss_mask
// (target fields empty, target_len 0); seq2seq shards fill targets and target_lengths (loss_mask
// empty).
struct Batch {
  int64_t rows = 0;
  int64_t seq_len = 0;               // L of the shard (rows are padded to it)
  std::vector<int32_t> ids;          // [rows, seq_len] (seq2seq: encoder input)
  std::vector<uint8_t> loss_mask;    // [rows, seq_len] (causal)
  std::vector<int32_t> lengths;      // [rows]
  std::vector<int32_t> answer_start; // [rows]
  std::vector<int32_t> labels;       // [rows], -1 when absent
  int64_t target_len = 0;               // Lt of a seq2seq shard, 0 for causal
  std::vector<int32_t> targets;         // [rows, target_len]
  std::vector<int32_t> target_lengths;  // [rows]
  // Sequence packing (train/packing.hpp): the rows above are documents, and training row p is
  // the next pack_rows[p] of them laid end to end (empty: each row is a training row of its own).
  // read_rows leaves it empty.
  std::vector<int32_t> pack_rows;
  int64_t max_length() const;        // longest row (encoder input) in the batch
  int64_t max_target_length() const; // longest target in the batch (0 for causal)
  // Number of loss targets: causal, mask ones at positions >= 1; seq2seq, the sum of
  // target_lengths.
  int64_t loss_tokens() const;
};

// All shards of one split: "<dir>/<split>-NNNNN.h5" in shard order, or a single .h5 file path.
// Every shard must agree on format version, tokenizer checksum, task, arch, sequence length,
// target length and split identity (split_sha256, num_shards, each shard_index); a shard that
// disagrees is refused naming the file and the field. Opening validates every value once: the
// stored dtypes (int32; loss_mask uint8), shapes, token ids >= 0, lengths, answer_start and
// target lengths within the row, masks 0/1 and 0 from the row's length on, labels -1 or an
// index into label_names, and the rows against the file's content_sha256; a refusal names the
// file, the dataset and the first bad row. Token ids against a model's vocabulary are checked
// by check_token_ids once the model is known. The metadata of the split (info()) is that of its
// first shard.
class ShardDataset {
 public:
  // InputError when nothing matches (naming the dir and split), when a file is not a shard of
  // this format_version, or when shards disagree (naming the file and the attribute).
  static ShardDataset open(const std::string& dir_or_file, const std::string& split);

  int64_t size() const { return num_rows_; }
  int64_t seq_len() const { return info_.seq_len; }
  int64_t target_len() const { return info_.target_len; }  // 0 for causal
  bool seq2seq() const { return info_.arch == "seq2seq"; }
  const ShardInfo& info() const { return info_; }
  const std::vector<std::string>& files() const { return files_; }

  // InputError naming the file, dataset and first row holding a token id >= vocab (ids, and
  // targets of seq2seq shards), or the attribute (label_token_ids, pad_id, bos_id, eos_id,
  // decoder_start_id) outside it; `whose` names the vocabulary's owner in the message
  // ("the model config.json"). Uses the row maxima kept at open: no file is read.
  void check_token_ids(int64_t vocab, const std::string& whose) const;

  // Read the given global row indices (any order, duplicates allowed) into `out`, in that
  // order, with hyperslab reads of only those rows.
  void read_rows(const std::vector<int64_t>& rows, Batch& out) const;

  // Per-row metadata, loaded at open (small).
  const std::vector<int32_t>& lengths() const { return lengths_; }
  // Number of loss targets in each row: mask ones at positions >= 1 (causal), the target length
  // (seq2seq).
  const std::vector<int32_t>& loss_tokens() const { return loss_tokens_; }
  const std::vector<int32_t>& target_lengths() const { return target_lengths_; }  // empty for causal
  const std::vector<int32_t>& labels() const { return labels_; }
  const std::vector<int32_t>& answer_start() const { return answer_start_; }

 private:
  struct OpenFiles;                      // HDF5 handles, defined in shards.cpp
  std::shared_ptr<OpenFiles> open_files_;
  ShardInfo info_;
  std::vector<std::string> files_;
  std::vector<int64_t> file_row_begin_;  // global index of each file's first row; size files+1
  int64_t num_rows_ = 0;
  std::vector<int32_t> lengths_, loss_tokens_, labels_, answer_start_, target_lengths_;
  std::vector<int32_t> max_id_, max_target_id_;  // largest token id of each row (ids; seq2seq targets)
};

}  // namespace st
