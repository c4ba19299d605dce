// HDF5 dataset shards: the tokenized training data.
//
// One shard file holds N padded rows of length L (the "sequence length" of the shard):
//   /ids           int32 [N, L]  token ids, right-padded with pad_id
//   /loss_mask     uint8 [N, L]  1 where the token is a training target (it is predicted from
//                                the previous position; position 0 is never a target)
//   /lengths       int32 [N]     number of real tokens in the row (<= L)
//   /answer_start  int32 [N]     index of the first answer token (== length when no answer)
//   /labels        int32 [N]     class label (SST-2: 0 negative, 1 positive); -1 when absent
// Datasets are chunked ([min(64, N), L] and [min(65536, N)]) and compressed (shuffle + deflate
// level kShardDeflateLevel; write_shards can be told to skip compression: random-token shards,
// whose ids do not compress). File attributes:
//   format_version (int), task ("sst2" | "instruct" | "random"), arch ("causal"), split, source_file,
//   source_sha256, tokenizer_path, tokenizer_sha256, tokenizer_vocab_size, bos_id, eos_id,
//   pad_id, max_seq_len, loss_on ("answer" | "all"), prompt_template, num_rows,
//   label_names (SST-2: "negative,positive"), label_token_ids (int32[num_labels]: the first
//   token of each label word, whose scores give the classification accuracy),
//   rows_read, rows_written, rows_truncated, rows_dropped, created_by.
// A shard is written to "<name>.tmp" and renamed when complete, so a file with the final name
// is always whole. source_sha256 and tokenizer_sha256 are SHA-256 hex digests of the files'
// bytes. Two attributes beyond the list: add_bos, add_eos (0|1), how the rows were built.
// The rows_* counts are those of the whole split (the same in every shard of it); num_rows is
// the shard's own N; label_names is "" and label_token_ids empty for "instruct" and "random".
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
  std::string arch;   // "causal"
  std::string split;
  std::string source_file;
  std::string tokenizer_sha256;
  int64_t tokenizer_vocab_size = 0;
  int32_t bos_id = -1, eos_id = -1, pad_id = 0;
  int64_t seq_len = 0;  // L
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
};

// Rows to write, in memory: the datasets of one split before it is cut into shards.
struct ShardRows {
  int64_t seq_len = 0;               // L
  std::vector<int32_t> ids;          // [N, L], padded
  std::vector<uint8_t> loss_mask;    // [N, L]
  std::vector<int32_t> lengths;      // [N]
  std::vector<int32_t> answer_start; // [N]
  std::vector<int32_t> labels;       // [N]
  int64_t size() const { return static_cast<int64_t>(lengths.size()); }
};

// Writes `rows` as "<out_dir>/<split>-00000.h5", ... with at most `shard_rows` rows each
// (0 = one shard); info.split names the files and info.seq_len must equal rows.seq_len. Creates
// out_dir if needed and first deletes that split's existing shards (and stale .tmp files), so
// old shards never mix in. Every shard is written as "<name>.tmp"; all are renamed at the end,
// so an interrupted run leaves no file with a final name. Returns the final paths in order.
// deflate_level: 1-9 compresses every dataset (with the shuffle filter), 0 leaves them chunked
// but uncompressed.
std::vector<std::string> write_shards(const std::string& out_dir, const ShardInfo& info,
                                      const ShardRows& rows, int64_t shard_rows,
                                      int deflate_level = kShardDeflateLevel);

// Paths of "<dir>/<split>-NNNNN.h5" in shard order (empty when none).
std::vector<std::string> list_shard_files(const std::string& dir, const std::string& split);

// Host-side batch of rows, filled by ShardDataset::read_rows.
struct Batch {
  int64_t rows = 0;
  int64_t seq_len = 0;               // L of the shard (rows are padded to it)
  std::vector<int32_t> ids;          // [rows, seq_len]
  std::vector<uint8_t> loss_mask;    // [rows, seq_len]
  std::vector<int32_t> lengths;      // [rows]
  std::vector<int32_t> answer_start; // [rows]
  std::vector<int32_t> labels;       // [rows], -1 when absent
  int64_t max_length() const;        // longest row in the batch
  int64_t loss_tokens() const;       // number of targets (mask ones at positions >= 1)
};

// All shards of one split: "<dir>/<split>-NNNNN.h5" in shard order, or a single .h5 file path.
// Every shard must agree on format version, tokenizer checksum, task, arch and sequence length;
// a shard that disagrees is refused naming the file and the field. The metadata of the split
// (info()) is that of its first shard.
class ShardDataset {
 public:
  // InputError when nothing matches (naming the dir and split), when a file is not a shard of
  // this format_version, or when shards disagree (naming the file and the attribute).
  static ShardDataset open(const std::string& dir_or_file, const std::string& split);

  int64_t size() const { return num_rows_; }
  int64_t seq_len() const { return info_.seq_len; }
  const ShardInfo& info() const { return info_; }
  const std::vector<std::string>& files() const { return files_; }

  // Read the given global row indices (any order, duplicates allowed) into `out`, in that
  // order, with hyperslab reads of only those rows.
  void read_rows(const std::vector<int64_t>& rows, Batch& out) const;

  // Per-row metadata, loaded at open (small).
  const std::vector<int32_t>& lengths() const { return lengths_; }
  // Number of loss targets in each row (mask ones at positions >= 1).
  const std::vector<int32_t>& loss_tokens() const { return loss_tokens_; }
  const std::vector<int32_t>& labels() const { return labels_; }
  const std::vector<int32_t>& answer_start() const { return answer_start_; }

 private:
  struct OpenFiles;                      // HDF5 handles, defined in shards.cpp
  std::shared_ptr<OpenFiles> open_files_;
  ShardInfo info_;
  std::vector<std::string> files_;
  std::vector<int64_t> file_row_begin_;  // global index of each file's first row; size files+1
  int64_t num_rows_ = 0;
  std::vector<int32_t> lengths_, loss_tokens_, labels_, answer_start_;
};

}  // namespace st
