// A Hugging Face checkpoint directory: model.safetensors, or shards listed by
// model.safetensors.index.json ({"weight_map": {tensor name: shard file}}), read tensor by tensor
// with shape and dtype checks. Also the small JSON file helpers the HF readers and writers share.
#pragma once

#include <map>
#include <nlohmann/json_fwd.hpp>
#include <set>
#include <string>
#include <vector>

#include "io/safetensors.hpp"

namespace st {

// Parses a JSON file; InputError naming `path` if it cannot be read or is not valid JSON.
nlohmann::json read_json_file(const std::string& path);
// Writes `text` to `path` through atomic_write_file (temp file, fsync, rename); Error naming the
// path on failure.
void write_text_file_atomic(const std::string& path, const std::string& text);

class CheckpointReader {
 public:
  // Opens every safetensors file of the checkpoint once and validates their headers (and the
  // index against them). InputError naming the directory or the index on any defect.
  static CheckpointReader open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  bool has(const std::string& name) const { return file_of_.count(name) != 0; }
  std::vector<std::string> names() const;  // sorted
  // The stored entry (dtype, shape) of a tensor; InputError if absent.
  const SafetensorsEntry& entry(const std::string& name) const;
  // The file holding a tensor (for messages); InputError if absent.
  const std::string& file_of(const std::string& name) const;

  // Reads a float tensor whose stored shape must equal `expected`, converted to `dtype` on
  // `device`, and marks it used. InputError naming the file and the tensor on a missing tensor,
  // a shape mismatch or a non-float dtype.
  Tensor read(const std::string& name, const Shape& expected, DType dtype, Device device, MemCategory cat);
  // Tensors never read (sorted): the caller warns or refuses.
  std::vector<std::string> unused_names() const;

 private:
  const SafetensorsFile& file_or_throw(const std::string& name) const;

  std::string dir_;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, size_t> file_of_;  // tensor name -> index into files_
  std::set<std::string> used_;
};

// transformers' default max_shard_size ("5GB", decimal).
inline constexpr uint64_t kHfDefaultMaxShardBytes = 5000000000ull;

// Writes a checkpoint's weights into `dir` (which must exist) as transformers does: one
// model.safetensors when their total size is at most max_shard_bytes (0: no limit), else
// model-00001-of-0000N.safetensors ... (tensors in order, a new shard when the next tensor would
// pass the limit; a tensor larger than the limit gets a shard of its own) and
// model.safetensors.index.json {"metadata": {"total_size": bytes}, "weight_map": {name: shard}}.
// Every file is written atomically, the index after its shards; weight files of an earlier save
// in the other layout (a single file, an index, shards of another count) are removed after.
// Returns the number of files holding weights.
size_t write_hf_weights(const std::string& dir, const std::vector<std::pair<std::string, Tensor>>& tensors,
                        uint64_t max_shard_bytes);

// Copy a SentencePiece model into a saved checkpoint directory as <dir>/tokenizer.model, atomically
// (InputError naming the source if it cannot be read, Error naming the destination if it cannot be
// written).
void copy_tokenizer(const std::string& tokenizer_path, const std::string& dir);

// The files a saved Hugging Face checkpoint directory of ours holds (config.json, weights,
// index, tokenizer.model, and .tmp leftovers of them): the only ones replace_directory may
// replace when a save goes over an existing directory.
bool hf_save_file(const std::string& name);

}  // namespace st
