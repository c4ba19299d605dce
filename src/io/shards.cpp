#include "io/shards.hpp"

#include <algorithm>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <numeric>

#include "core/atomic_file.hpp"
#include "core/error.hpp"
#include "core/sha256.hpp"
#include "io/h5util.hpp"

namespace st {

namespace fs = std::filesystem;

namespace {

// HDF5 (serial build) is not thread-safe: every call from this file holds this lock.
std::mutex& h5_mutex() {
  static std::mutex m;
  return m;
}

// Chunk cache for the [N, L] datasets. Training reads rows in random order, so every chunk
// of 64 rows is visited 64 times an epoch: caching whole shards avoids decompressing it again
// each time. The budget is shared by all open shards (ids get 4/5, loss_mask 1/5, by element
// size), each dataset gets at most its own uncompressed size and at least a few chunks.
constexpr size_t kChunkCacheBudgetBytes = size_t{320} << 20;

// Hash slots: HDF5 advises a prime about 100 times the number of chunks that fit.
size_t chunk_cache_slots(size_t cache_bytes, size_t chunk_bytes) {
  size_t n = std::clamp<size_t>(100 * (cache_bytes / std::max<size_t>(chunk_bytes, 1)), 521, 100003);
  auto is_prime = [](size_t v) {
    for (size_t d = 2; d * d <= v; ++d)
      if (v % d == 0) return false;
    return true;
  };
  while (!is_prime(n)) ++n;
  return n;
}

bool valid_split_name(const std::string& s) {
  if (s.empty()) return false;
  for (char c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.')) return false;
  return true;
}

// "<split>-NNNNN<suffix>" (suffix ".h5", or ".h5.tmp" / ".h5.old" while a split is replaced):
// returns the shard index, or -1.
int64_t shard_index(const std::string& filename, const std::string& split, const std::string& suffix = ".h5") {
  const std::string prefix = split + "-";
  if (filename.size() <= prefix.size() + suffix.size()) return -1;
  if (filename.compare(0, prefix.size(), prefix) != 0) return -1;
  if (filename.compare(filename.size() - suffix.size(), suffix.size(), suffix) != 0) return -1;
  const std::string digits = filename.substr(prefix.size(), filename.size() - prefix.size() - suffix.size());
  if (digits.empty() || digits.size() > 12) return -1;
  for (char c : digits)
    if (c < '0' || c > '9') return -1;
  return std::stoll(digits);
}

std::string shard_name(const std::string& split, int64_t index) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "-%05lld.h5", static_cast<long long>(index));
  return split + buf;
}

std::string join(const std::vector<std::string>& v, char sep) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += sep;
    s += v[i];
  }
  return s;
}

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  if (s.empty()) return out;
  size_t pos = 0;
  while (true) {
    const size_t c = s.find(',', pos);
    out.push_back(s.substr(pos, c == std::string::npos ? std::string::npos : c - pos));
    if (c == std::string::npos) return out;
    pos = c + 1;
  }
}

// Replaces the split's shards in `dir` with the complete, synced `tmps` (to be renamed to
// `finals`): the old shards are first renamed to "<name>.old", the new ones renamed into place,
// then the old ones removed. If a rename fails, what was moved is moved back and the old split
// is left as it was. (A crash inside this window, a few renames long, can leave old shards as
// .old files: ShardDataset::open names them when the split is incomplete.)
void swap_in_shards(const std::string& dir, const std::string& split, const std::vector<std::string>& tmps,
                    const std::vector<std::string>& finals) {
  std::error_code ec;
  std::vector<std::string> old;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (shard_index(name, split, ".h5.old") >= 0) fs::remove(entry.path(), ec);  // an earlier crash's
    else if (shard_index(name, split) >= 0) old.push_back(entry.path().string());
  }
  std::vector<std::string> moved_old, placed;
  auto undo = [&] {
    for (const auto& p : placed) ::unlink(p.c_str());
    for (const auto& p : moved_old) (void)::rename((p + ".old").c_str(), p.c_str());
    for (const auto& t : tmps) ::unlink(t.c_str());
  };
  for (const auto& p : old) {
    if (::rename(p.c_str(), (p + ".old").c_str()) != 0) {
      const int err = errno;
      undo();
      ST_THROW("cannot replace the shards of split '", split, "' in ", dir, ": rename of ", p, " failed: ",
               std::strerror(err), " (the old shards are unchanged)");
    }
    moved_old.push_back(p);
  }
  for (size_t i = 0; i < tmps.size(); ++i) {
    if (::rename(tmps[i].c_str(), finals[i].c_str()) != 0) {
      const int err = errno;
      undo();
      ST_THROW("cannot replace the shards of split '", split, "' in ", dir, ": rename of ", tmps[i], " failed: ",
               std::strerror(err), " (the old shards are unchanged)");
    }
    placed.push_back(finals[i]);
  }
  durable_sync_dir(dir);
  for (const auto& p : moved_old) fs::remove(p + ".old", ec);
}

// SHA-256 of rows [begin, end) of a split, over the bytes of its datasets in a fixed order
// (little-endian, as stored): "shardtune-shards-v1", N, L and Lt as int64, then ids, loss_mask
// (causal) or targets and target_lengths (seq2seq), lengths, answer_start, labels. write_shards
// stores it as the shard's content_sha256; ShardDataset::open recomputes it from what it reads.
class ContentHash {
 public:
  ContentHash(int64_t n, int64_t L, int64_t Lt) {
    h_.update("shardtune-shards-v1");
    for (int64_t v : {n, L, Lt}) h_.update(&v, sizeof(v));
  }
  template <typename T>
  void add(const T* p, size_t count) { h_.update(p, count * sizeof(T)); }
  std::string hex() { return h_.hex_digest(); }

 private:
  Sha256 h_;
};

std::string rows_content_sha256(const ShardRows& rows, bool seq2seq, int64_t begin, int64_t end) {
  const auto b = static_cast<size_t>(begin), n = static_cast<size_t>(end - begin);
  const auto L = static_cast<size_t>(rows.seq_len), Lt = static_cast<size_t>(seq2seq ? rows.target_len : 0);
  ContentHash h(end - begin, rows.seq_len, seq2seq ? rows.target_len : 0);
  h.add(rows.ids.data() + b * L, n * L);
  if (seq2seq) {
    h.add(rows.targets.data() + b * Lt, n * Lt);
    h.add(rows.target_lengths.data() + b, n);
  } else {
    h.add(rows.loss_mask.data() + b * L, n * L);
  }
  h.add(rows.lengths.data() + b, n);
  h.add(rows.answer_start.data() + b, n);
  h.add(rows.labels.data() + b, n);
  return h.hex();
}

// The split's identity: its shards' content checksums and row counts, in shard order.
std::string split_sha256_of(const std::vector<std::string>& content, const std::vector<int64_t>& rows) {
  Sha256 h;
  h.update("shardtune-split-v1");
  for (size_t i = 0; i < content.size(); ++i) {
    h.update(content[i]);
    h.update(&rows[i], sizeof(int64_t));
  }
  return h.hex_digest();
}

struct ShardSetAttrs {
  std::string content_sha256, split_sha256;
  int64_t index = 0, count = 1;
};

void write_shard_file(const std::string& path, const ShardInfo& info, const ShardRows& rows,
                      int64_t begin, int64_t end, int deflate, const ShardSetAttrs& set) {
  const int64_t n = end - begin;
  const hsize_t N = static_cast<hsize_t>(n), L = static_cast<hsize_t>(rows.seq_len);
  const auto b = static_cast<size_t>(begin);
  h5::Handle f = h5::create_file(path);
  const std::vector<hsize_t> chunk2 = {std::min<hsize_t>(64, std::max<hsize_t>(1, N)), L};
  const std::vector<hsize_t> chunk1 = {std::min<hsize_t>(65536, std::max<hsize_t>(1, N))};
  const bool seq2seq = info.arch == "seq2seq";
  h5::write_dataset(f, "ids", H5T_NATIVE_INT32, rows.ids.data() + b * L, {N, L}, chunk2, deflate);
  if (seq2seq) {
    const hsize_t Lt = static_cast<hsize_t>(rows.target_len);
    h5::write_dataset(f, "targets", H5T_NATIVE_INT32, rows.targets.data() + b * Lt, {N, Lt}, {chunk2[0], Lt},
                      deflate);
    h5::write_dataset(f, "target_lengths", H5T_NATIVE_INT32, rows.target_lengths.data() + b, {N}, chunk1, deflate);
  } else {
    h5::write_dataset(f, "loss_mask", H5T_NATIVE_UINT8, rows.loss_mask.data() + b * L, {N, L}, chunk2, deflate);
  }
  h5::write_dataset(f, "lengths", H5T_NATIVE_INT32, rows.lengths.data() + b, {N}, chunk1, deflate);
  h5::write_dataset(f, "answer_start", H5T_NATIVE_INT32, rows.answer_start.data() + b, {N}, chunk1, deflate);
  h5::write_dataset(f, "labels", H5T_NATIVE_INT32, rows.labels.data() + b, {N}, chunk1, deflate);

  h5::write_attr(f, "format_version", int64_t{kShardFormatVersion});
  h5::write_attr(f, "task", info.task);
  h5::write_attr(f, "arch", info.arch);
  h5::write_attr(f, "split", info.split);
  h5::write_attr(f, "source_file", info.source_file);
  h5::write_attr(f, "source_sha256", info.source_sha256);
  h5::write_attr(f, "tokenizer_path", info.tokenizer_path);
  h5::write_attr(f, "tokenizer_sha256", info.tokenizer_sha256);
  h5::write_attr(f, "tokenizer_vocab_size", info.tokenizer_vocab_size);
  h5::write_attr(f, "bos_id", int64_t{info.bos_id});
  h5::write_attr(f, "eos_id", int64_t{info.eos_id});
  h5::write_attr(f, "pad_id", int64_t{info.pad_id});
  h5::write_attr(f, "max_seq_len", info.seq_len);
  h5::write_attr(f, "loss_on", info.loss_on);
  h5::write_attr(f, "prompt_template", info.prompt_template);
  h5::write_attr(f, "num_rows", n);
  h5::write_attr(f, "label_names", join(info.label_names, ','));
  h5::write_attr(f, "label_token_ids", info.label_token_ids);
  h5::write_attr(f, "add_bos", int64_t{info.add_bos ? 1 : 0});
  h5::write_attr(f, "add_eos", int64_t{info.add_eos ? 1 : 0});
  h5::write_attr(f, "rows_read", info.rows_read);
  h5::write_attr(f, "rows_written", info.rows_written);
  h5::write_attr(f, "rows_truncated", info.rows_truncated);
  h5::write_attr(f, "rows_dropped", info.rows_dropped);
  h5::write_attr(f, "created_by", info.created_by);
  if (seq2seq) {
    h5::write_attr(f, "target_len", info.target_len);
    h5::write_attr(f, "decoder_start_id", int64_t{info.decoder_start_id});
  }
  h5::write_attr(f, "content_sha256", set.content_sha256);
  h5::write_attr(f, "split_sha256", set.split_sha256);
  h5::write_attr(f, "shard_index", set.index);
  h5::write_attr(f, "num_shards", set.count);
  h5::close_file_checked(f, path);  // a write that fails only when flushed (disk full) is an error
}

}  // namespace

std::vector<std::string> list_shard_files(const std::string& dir, const std::string& split) {
  std::vector<std::pair<int64_t, std::string>> found;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    const int64_t idx = shard_index(name, split);
    if (idx >= 0 && entry.is_regular_file(ec)) found.emplace_back(idx, entry.path().string());
  }
  std::sort(found.begin(), found.end());
  std::vector<std::string> paths;
  for (auto& [idx, path] : found) paths.push_back(std::move(path));
  return paths;
}

std::vector<std::string> write_shards(const std::string& out_dir, const ShardInfo& info,
                                      const ShardRows& rows, int64_t shard_rows, int deflate_level) {
  ST_CHECK_INPUT(valid_split_name(info.split), "split name '", info.split,
                 "' must be non-empty and use only letters, digits, '_', '-' and '.'");
  ST_CHECK(info.seq_len == rows.seq_len && rows.seq_len > 0, "seq_len mismatch: info ", info.seq_len,
           ", rows ", rows.seq_len);
  ST_CHECK(info.arch == "causal" || info.arch == "seq2seq", "ShardInfo.arch must be causal or seq2seq (got '",
           info.arch, "')");
  const int64_t n = rows.size();
  const auto N = static_cast<size_t>(n);
  const auto L = static_cast<size_t>(rows.seq_len);
  ST_CHECK(rows.ids.size() == N * L && rows.answer_start.size() == N && rows.labels.size() == N,
           "ShardRows arrays disagree with ", n, " rows of length ", L);
  if (info.arch == "seq2seq") {
    ST_CHECK(info.target_len == rows.target_len && rows.target_len > 0, "seq2seq target_len mismatch: info ",
             info.target_len, ", rows ", rows.target_len);
    const auto Lt = static_cast<size_t>(rows.target_len);
    ST_CHECK(rows.targets.size() == N * Lt && rows.target_lengths.size() == N,
             "seq2seq ShardRows: targets has ", rows.targets.size(), " and target_lengths ", rows.target_lengths.size(),
             " elements for ", n, " rows of target length ", Lt);
    ST_CHECK(rows.loss_mask.empty(), "seq2seq ShardRows must not have a loss_mask (every target token is a target)");
    for (size_t r = 0; r < N; ++r)
      ST_CHECK(rows.target_lengths[r] >= 0 && static_cast<size_t>(rows.target_lengths[r]) <= Lt, "seq2seq row ", r,
               " has target length ", rows.target_lengths[r], " (target_len ", Lt, ")");
  } else {
    ST_CHECK(rows.loss_mask.size() == rows.ids.size(), "ShardRows loss_mask has ", rows.loss_mask.size(),
             " elements for ", n, " rows of length ", L);
    ST_CHECK(info.target_len == 0 && rows.target_len == 0 && rows.targets.empty() && rows.target_lengths.empty(),
             "causal shards have no targets (target_len info ", info.target_len, ", rows ", rows.target_len, ")");
  }
  ST_CHECK(shard_rows >= 0, "shard_rows must be >= 0");
  ST_CHECK(deflate_level >= 0 && deflate_level <= 9, "deflate_level must be in [0, 9] (got ", deflate_level, ")");

  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec || !fs::is_directory(out_dir)) ST_THROW_INPUT(out_dir, ": cannot create the output directory (", ec.message(), ")");

  const int64_t per = shard_rows > 0 ? shard_rows : std::max<int64_t>(n, 1);
  const int64_t num_shards = std::max<int64_t>(1, (n + per - 1) / per);
  const bool seq2seq = info.arch == "seq2seq";
  std::vector<std::string> content;
  std::vector<int64_t> counts;
  for (int64_t s = 0; s < num_shards; ++s) {
    const int64_t b = s * per, e = std::min(n, (s + 1) * per);
    content.push_back(rows_content_sha256(rows, seq2seq, b, e));
    counts.push_back(e - b);
  }
  const std::string split_sha = split_sha256_of(content, counts);

  std::lock_guard<std::mutex> lock(h5_mutex());
  // Leftovers of an interrupted run of this split (never valid data) go first.
  for (const auto& entry : fs::directory_iterator(out_dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (shard_index(name, info.split, ".h5.tmp") >= 0) fs::remove(entry.path(), ec);
  }

  // The new set is written beside the old one, under temporary names; the old shards are
  // replaced only once every new one is complete and durable, so a failure (disk full) leaves
  // the old split as it was.
  std::vector<std::string> finals, tmps;
  try {
    for (int64_t s = 0; s < num_shards; ++s) {
      const std::string final_path = (fs::path(out_dir) / shard_name(info.split, s)).string();
      tmps.push_back(final_path + ".tmp");
      finals.push_back(final_path);
      write_shard_file(tmps.back(), info, rows, s * per, std::min(n, (s + 1) * per), deflate_level,
                       ShardSetAttrs{content[static_cast<size_t>(s)], split_sha, s, num_shards});
    }
    for (const auto& t : tmps) durable_sync(t);
  } catch (...) {
    for (const auto& t : tmps) fs::remove(t, ec);
    throw;
  }
  swap_in_shards(out_dir, info.split, tmps, finals);
  return finals;
}

std::string SplitIdentity::str() const { return st::str(rows, " rows, sha256 ", sha256); }

SplitIdentity split_identity(const std::string& dir_or_file, const std::string& split) {
  std::error_code ec;
  std::vector<std::string> files;
  if (fs::is_regular_file(dir_or_file, ec)) files = {dir_or_file};
  else if (fs::is_directory(dir_or_file, ec)) files = list_shard_files(dir_or_file, split);
  if (files.empty()) ST_THROW_INPUT(dir_or_file, ": no shards of split '", split, "'");
  SplitIdentity id;
  std::string legacy;  // files without split_sha256: their bytes
  std::lock_guard<std::mutex> lock(h5_mutex());
  for (const std::string& path : files) {
    h5::Handle f = h5::open_file_read(path);
    id.rows += h5::read_attr_int(f, "num_rows", path);
    if (h5::has_attr(f, "split_sha256")) {
      const std::string s = h5::read_attr_string(f, "split_sha256", path);
      if (!id.sha256.empty() && s != id.sha256)
        ST_THROW_INPUT(path, ": attribute 'split_sha256' differs from ", files.front(), "'s (shards of two prepare runs)");
      id.sha256 = s;
    } else {
      legacy += sha256_file_hex(path);
    }
  }
  if (!legacy.empty()) id.sha256 = sha256_hex(id.sha256 + legacy);
  return id;
}

// ------------------------------------------------------------------------------------ reading

struct ShardDataset::OpenFiles {
  struct File {
    h5::Handle file, ids, loss_mask, targets;  // loss_mask for causal, targets for seq2seq
  };
  std::vector<File> files;
};

int64_t Batch::max_length() const {
  int64_t m = 0;
  for (int32_t len : lengths) m = std::max<int64_t>(m, len);
  return m;
}

int64_t Batch::max_target_length() const {
  int64_t m = 0;
  for (int32_t len : target_lengths) m = std::max<int64_t>(m, len);
  return m;
}

int64_t Batch::loss_tokens() const {
  if (target_len > 0) return std::accumulate(target_lengths.begin(), target_lengths.end(), int64_t{0});
  int64_t n = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t t = 1; t < seq_len; ++t) n += loss_mask[static_cast<size_t>(r * seq_len + t)] != 0;
  return n;
}

namespace {

ShardInfo read_shard_info(hid_t f, const std::string& where) {
  ShardInfo info;
  // The version first: a file of another format may lack the other attributes.
  const int64_t version = h5::read_attr_int(f, "format_version", where);
  if (version != kShardFormatVersion)
    ST_THROW_INPUT(where, ": attribute 'format_version' is ", version, " but this build reads version ",
                   kShardFormatVersion, " (re-run shardtune prepare)");
  info.format_version = static_cast<int>(version);
  info.task = h5::read_attr_string(f, "task", where);
  if (h5::has_attr(f, "arch")) info.arch = h5::read_attr_string(f, "arch", where);
  if (info.arch != "causal" && info.arch != "seq2seq")
    ST_THROW_INPUT(where, ": attribute 'arch' is '", info.arch, "' but this build reads 'causal' or 'seq2seq'");
  info.split = h5::read_attr_string(f, "split", where);
  info.source_file = h5::read_attr_string(f, "source_file", where);
  info.tokenizer_sha256 = h5::read_attr_string(f, "tokenizer_sha256", where);
  info.tokenizer_vocab_size = h5::read_attr_int(f, "tokenizer_vocab_size", where);
  info.bos_id = static_cast<int32_t>(h5::read_attr_int(f, "bos_id", where));
  info.eos_id = static_cast<int32_t>(h5::read_attr_int(f, "eos_id", where));
  info.pad_id = static_cast<int32_t>(h5::read_attr_int(f, "pad_id", where));
  info.seq_len = h5::read_attr_int(f, "max_seq_len", where);
  info.loss_on = h5::read_attr_string(f, "loss_on", where);
  info.prompt_template = h5::read_attr_string(f, "prompt_template", where);
  info.label_names = split_commas(h5::read_attr_string(f, "label_names", where));
  info.label_token_ids = h5::read_attr_i32_vector(f, "label_token_ids", where);
  info.rows_read = h5::read_attr_int(f, "rows_read", where);
  info.rows_written = h5::read_attr_int(f, "rows_written", where);
  info.rows_truncated = h5::read_attr_int(f, "rows_truncated", where);
  info.rows_dropped = h5::read_attr_int(f, "rows_dropped", where);
  info.created_by = h5::read_attr_string(f, "created_by", where);
  // Optional (provenance only).
  if (h5::has_attr(f, "source_sha256")) info.source_sha256 = h5::read_attr_string(f, "source_sha256", where);
  if (h5::has_attr(f, "tokenizer_path")) info.tokenizer_path = h5::read_attr_string(f, "tokenizer_path", where);
  if (h5::has_attr(f, "add_bos")) info.add_bos = h5::read_attr_int(f, "add_bos", where) != 0;
  if (h5::has_attr(f, "add_eos")) info.add_eos = h5::read_attr_int(f, "add_eos", where) != 0;
  if (h5::has_attr(f, "target_len")) info.target_len = h5::read_attr_int(f, "target_len", where);
  if (h5::has_attr(f, "split_sha256")) info.split_sha256 = h5::read_attr_string(f, "split_sha256", where);
  if (h5::has_attr(f, "decoder_start_id"))
    info.decoder_start_id = static_cast<int32_t>(h5::read_attr_int(f, "decoder_start_id", where));
  if (info.arch == "seq2seq" && info.target_len <= 0)
    ST_THROW_INPUT(where, ": seq2seq shard needs attribute 'target_len' > 0 (got ", info.target_len, ")");
  if (info.arch == "causal" && info.target_len != 0)
    ST_THROW_INPUT(where, ": causal shard has attribute 'target_len' ", info.target_len, " (expected none or 0)");
  if (info.label_names.size() != info.label_token_ids.size())
    ST_THROW_INPUT(where, ": attribute 'label_token_ids' has ", info.label_token_ids.size(),
                   " entries but 'label_names' names ", info.label_names.size());
  return info;
}

h5::Handle open_cached_dataset(hid_t f, const char* name, size_t dataset_bytes, size_t chunk_bytes,
                               size_t budget_bytes, const std::string& where) {
  const size_t bytes = std::max(4 * chunk_bytes, std::min(dataset_bytes, budget_bytes));
  h5::Handle dapl(H5Pcreate(H5P_DATASET_ACCESS), h5::Handle::Kind::plist);
  H5Pset_chunk_cache(dapl, chunk_cache_slots(bytes, chunk_bytes), bytes, H5D_CHUNK_CACHE_W0_DEFAULT);
  h5::Handle ds(H5Dopen2(f, name, dapl), h5::Handle::Kind::dataset);
  if (!ds.valid()) ST_THROW_INPUT(where, ": cannot open dataset '", name, "'");
  return ds;
}

void require_dims(hid_t f, const char* name, const std::vector<hsize_t>& want, const std::string& where) {
  const auto dims = h5::dataset_dims(f, name, where);
  if (dims != want) {
    std::string got, exp;
    for (auto d : dims) got += (got.empty() ? "" : ", ") + std::to_string(d);
    for (auto d : want) exp += (exp.empty() ? "" : ", ") + std::to_string(d);
    ST_THROW_INPUT(where, ": dataset '", name, "' has shape [", got, "], expected [", exp, "]");
  }
}

// "int32", "float64", ... of a stored datatype.
std::string type_name(hid_t type) {
  const size_t bits = H5Tget_size(type) * 8;
  switch (H5Tget_class(type)) {
    case H5T_INTEGER: return str(H5Tget_sign(type) == H5T_SGN_NONE ? "uint" : "int", bits);
    case H5T_FLOAT: return str("float", bits);
    case H5T_STRING: return "string";
    default: return "a non-numeric type";
  }
}

// The stored datatype must be the integer type the layout names (a float64 or int64 dataset
// would be converted silently on reading: values rounded or clamped).
void require_type(hid_t f, const char* name, size_t bytes, bool is_signed, const std::string& where) {
  h5::Handle ds(H5Dopen2(f, name, H5P_DEFAULT), h5::Handle::Kind::dataset);
  if (!ds.valid()) ST_THROW_INPUT(where, ": cannot open dataset '", name, "'");
  h5::Handle type(H5Dget_type(ds), h5::Handle::Kind::datatype);
  const bool ok = H5Tget_class(type) == H5T_INTEGER && H5Tget_size(type) == bytes &&
                  (H5Tget_sign(type) == H5T_SGN_2) == is_signed;
  if (!ok)
    ST_THROW_INPUT(where, ": dataset '", name, "' is stored as ", type_name(type), ", but shards hold ",
                   is_signed ? "int" : "uint", bytes * 8, " (write shards with `shardtune prepare`)");
}

// Reads a [N, W] dataset in blocks of whole chunks (64 rows), so memory stays small for large
// shards, and hands each block to fn(first_row, rows, values).
template <typename T, typename F>
void scan_rows(hid_t ds, hid_t mem_type, hsize_t N, hsize_t W, const char* name, const std::string& where, F fn) {
  const hsize_t block = std::max<hsize_t>(64, (hsize_t{8} << 20) / (W * sizeof(T)) / 64 * 64);
  std::vector<T> buf;
  h5::Handle fspace(H5Dget_space(ds), h5::Handle::Kind::dataspace);
  for (hsize_t r0 = 0; r0 < N; r0 += block) {
    const hsize_t cnt[2] = {std::min(block, N - r0), W};
    const hsize_t start[2] = {r0, 0};
    buf.resize(cnt[0] * cnt[1]);
    H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, nullptr, cnt, nullptr);
    h5::Handle mspace(H5Screate_simple(2, cnt, nullptr), h5::Handle::Kind::dataspace);
    if (H5Dread(ds, mem_type, mspace, fspace, H5P_DEFAULT, buf.data()) < 0)
      ST_THROW_INPUT(where, ": cannot read dataset '", name, "' (truncated or corrupt file?)");
    fn(r0, cnt[0], buf.data());
  }
}

// Token ids of a [N, W] dataset: none negative (first bad row named), and the largest id of
// each row kept for the vocabulary check (ShardDataset::check_token_ids).
void scan_token_ids(hid_t ds, hsize_t N, hsize_t W, const char* name, const std::string& where, int32_t* row_max,
                    ContentHash& hash) {
  scan_rows<int32_t>(ds, H5T_NATIVE_INT32, N, W, name, where, [&](hsize_t r0, hsize_t rows, const int32_t* v) {
    hash.add(v, rows * W);
    for (hsize_t i = 0; i < rows; ++i) {
      const int32_t* row = v + i * W;
      const auto [lo, hi] = std::minmax_element(row, row + W);
      if (*lo < 0)
        ST_THROW_INPUT(where, ": dataset '", name, "' row ", r0 + i, " holds token id ", *lo, " at position ", lo - row,
                       " (token ids are >= 0)");
      row_max[r0 + i] = *hi;
    }
  });
}

// Loss targets per row of a causal shard (mask ones at positions >= 1); the mask is 0 or 1,
// and 0 from the row's length on (padding is never a target).
void count_mask_targets(hid_t loss_mask, hsize_t N, hsize_t L, const int32_t* lengths, int32_t* out,
                        const std::string& where, ContentHash& hash) {
  scan_rows<uint8_t>(loss_mask, H5T_NATIVE_UINT8, N, L, "loss_mask", where, [&](hsize_t r0, hsize_t rows, const uint8_t* v) {
    hash.add(v, rows * L);
    for (hsize_t i = 0; i < rows; ++i) {
      const uint8_t* m = v + i * L;
      int32_t c = 0;
      for (hsize_t t = 0; t < L; ++t) {
        if (m[t] > 1 || (m[t] && t >= static_cast<hsize_t>(lengths[r0 + i])))
          ST_THROW_INPUT(where, ": dataset 'loss_mask' row ", r0 + i, " is ", int(m[t]), " at position ", t,
                         m[t] > 1 ? " (a mask is 0 or 1)" : str(", at or beyond the row's length ", lengths[r0 + i]));
        c += t >= 1 && m[t];
      }
      out[r0 + i] = c;
    }
  });
}

}  // namespace

ShardDataset ShardDataset::open(const std::string& dir_or_file, const std::string& split) {
  std::error_code ec;
  ShardDataset ds;
  if (fs::is_regular_file(dir_or_file, ec)) {
    ds.files_ = {dir_or_file};
  } else if (fs::is_directory(dir_or_file, ec)) {
    ds.files_ = list_shard_files(dir_or_file, split);
    if (ds.files_.empty()) {
      bool left_old = false;
      for (const auto& e : fs::directory_iterator(dir_or_file, ec))
        left_old = left_old || shard_index(e.path().filename().string(), split, ".h5.old") >= 0;
      ST_THROW_INPUT(dir_or_file, ": no shards of split '", split, "' (expected ",
                     (fs::path(dir_or_file) / shard_name(split, 0)).string(), ", ...; run shardtune prepare)",
                     left_old ? str("; ", split, "-*.h5.old files are the shards an interrupted prepare was replacing: "
                                    "rename them back to .h5 or prepare the split again")
                              : std::string());
    }
  } else {
    ST_THROW_INPUT(dir_or_file, ": no such shard file or directory (split '", split, "')");
  }

  std::lock_guard<std::mutex> lock(h5_mutex());
  auto open_files = std::make_shared<OpenFiles>();
  ds.file_row_begin_ = {0};
  std::vector<std::string> contents;
  std::vector<int64_t> counts;
  int64_t num_shards = -1;
  for (const auto& path : ds.files_) {
    OpenFiles::File of;
    of.file = h5::open_file_read(path);
    const ShardInfo info = read_shard_info(of.file, path);
    if (ds.file_row_begin_.size() == 1) {
      ds.info_ = info;
    } else {
      const std::string& first = ds.files_.front();
      auto differ = [&](const char* attr, const auto& a, const auto& b) {
        if (a != b)
          ST_THROW_INPUT(path, ": attribute '", attr, "' is '", a, "' but '", b, "' in ", first,
                         " (shards of one split must come from one prepare run)");
      };
      differ("tokenizer_sha256", info.tokenizer_sha256, ds.info_.tokenizer_sha256);
      differ("task", info.task, ds.info_.task);
      differ("arch", info.arch, ds.info_.arch);
      differ("max_seq_len", info.seq_len, ds.info_.seq_len);
      differ("target_len", info.target_len, ds.info_.target_len);
      differ("split_sha256", info.split_sha256, ds.info_.split_sha256);
    }
    const bool seq2seq = info.arch == "seq2seq";
    const int64_t n = h5::read_attr_int(of.file, "num_rows", path);
    const int64_t L = info.seq_len, Lt = info.target_len;
    if (n < 0 || L <= 0) ST_THROW_INPUT(path, ": bad num_rows ", n, " or max_seq_len ", L);
    if (L > (int64_t{1} << 24) || Lt > (int64_t{1} << 24))
      ST_THROW_INPUT(path, ": max_seq_len ", L, " / target_len ", Lt, " beyond 2^24 tokens is not a shard row length");
    const hsize_t N = static_cast<hsize_t>(n), HL = static_cast<hsize_t>(L), HLt = static_cast<hsize_t>(Lt);
    require_dims(of.file, "ids", {N, HL}, path);
    if (seq2seq) {
      require_dims(of.file, "targets", {N, HLt}, path);
      require_dims(of.file, "target_lengths", {N}, path);
    } else {
      require_dims(of.file, "loss_mask", {N, HL}, path);
    }
    require_dims(of.file, "lengths", {N}, path);
    require_dims(of.file, "answer_start", {N}, path);
    require_dims(of.file, "labels", {N}, path);
    for (const char* name : {"ids", "lengths", "answer_start", "labels"}) require_type(of.file, name, 4, true, path);
    if (seq2seq) {
      require_type(of.file, "targets", 4, true, path);
      require_type(of.file, "target_lengths", 4, true, path);
    } else {
      require_type(of.file, "loss_mask", 1, false, path);
    }
    if (h5::has_attr(of.file, "num_shards")) {
      const int64_t count = h5::read_attr_int(of.file, "num_shards", path);
      const int64_t index = h5::read_attr_int(of.file, "shard_index", path);
      const int64_t expect = static_cast<int64_t>(ds.file_row_begin_.size()) - 1;
      if (num_shards >= 0 && count != num_shards)
        ST_THROW_INPUT(path, ": attribute 'num_shards' is ", count, " but ", num_shards, " in ", ds.files_.front(),
                       " (shards of one split must come from one prepare run)");
      num_shards = count;
      if (ds.files_.size() > 1 && index != expect)
        ST_THROW_INPUT(path, ": attribute 'shard_index' is ", index, " but the file is shard ", expect,
                       " of the split (a shard is missing or renamed)");
    }

    const size_t begin = ds.lengths_.size();
    ds.lengths_.resize(begin + N);
    ds.answer_start_.resize(begin + N);
    ds.labels_.resize(begin + N);
    ds.loss_tokens_.resize(begin + N, 0);
    ds.max_id_.resize(begin + N, 0);
    if (seq2seq) {
      ds.target_lengths_.resize(begin + N);
      ds.max_target_id_.resize(begin + N, 0);
    }
    if (n > 0) {
      h5::read_dataset(of.file, "lengths", H5T_NATIVE_INT32, ds.lengths_.data() + begin, path);
      h5::read_dataset(of.file, "answer_start", H5T_NATIVE_INT32, ds.answer_start_.data() + begin, path);
      h5::read_dataset(of.file, "labels", H5T_NATIVE_INT32, ds.labels_.data() + begin, path);
      if (seq2seq)
        h5::read_dataset(of.file, "target_lengths", H5T_NATIVE_INT32, ds.target_lengths_.data() + begin, path);
    }
    const int64_t num_labels = static_cast<int64_t>(info.label_names.size());
    for (size_t r = begin; r < begin + N; ++r) {
      if (ds.lengths_[r] < 0 || ds.lengths_[r] > L || ds.answer_start_[r] < 0 || ds.answer_start_[r] > ds.lengths_[r])
        ST_THROW_INPUT(path, ": row ", r - begin, " has length ", ds.lengths_[r], " and answer_start ",
                       ds.answer_start_[r], " (max_seq_len ", L, ")");
      if (seq2seq && (ds.target_lengths_[r] < 0 || ds.target_lengths_[r] > Lt))
        ST_THROW_INPUT(path, ": row ", r - begin, " has target length ", ds.target_lengths_[r], " (target_len ", Lt,
                       ")");
      if (ds.labels_[r] < -1 || ds.labels_[r] >= num_labels)
        ST_THROW_INPUT(path, ": dataset 'labels' row ", r - begin, " is ", ds.labels_[r],
                       num_labels ? str(", outside -1 (none) and 0..", num_labels - 1, " (label_names '",
                                        join(info.label_names, ','), "')")
                                  : std::string(": this split has no label_names, so every label is -1"));
    }

    // Whole chunks (the last one is stored full size too), plus one chunk of slack. The file's
    // share of the budget is split by element bytes per row: causal ids 4L : loss_mask L,
    // seq2seq ids 4L : targets 4Lt.
    const size_t per_file = kChunkCacheBudgetBytes / ds.files_.size();
    const size_t chunk_rows = std::clamp<size_t>(static_cast<size_t>(N), 1, 64);
    const size_t stored_rows = ((static_cast<size_t>(N) + chunk_rows - 1) / chunk_rows + 1) * chunk_rows;
    const size_t ids_row = 4 * static_cast<size_t>(HL);
    const size_t other_row = seq2seq ? 4 * static_cast<size_t>(HLt) : static_cast<size_t>(HL);
    const size_t ids_budget = per_file / (ids_row + other_row) * ids_row;
    of.ids = open_cached_dataset(of.file, "ids", stored_rows * ids_row, chunk_rows * ids_row, ids_budget, path);
    h5::Handle& other = seq2seq ? of.targets : of.loss_mask;
    other = open_cached_dataset(of.file, seq2seq ? "targets" : "loss_mask", stored_rows * other_row,
                                chunk_rows * other_row, per_file - ids_budget, path);
    // Every value is read once here (the validation, which also reads the file's content back
    // into its checksum); the reads prime the chunk cache the training reads then use.
    ContentHash hash(n, L, seq2seq ? Lt : 0);
    scan_token_ids(of.ids, N, HL, "ids", path, ds.max_id_.data() + begin, hash);
    if (seq2seq) {
      scan_token_ids(of.targets, N, HLt, "targets", path, ds.max_target_id_.data() + begin, hash);
      hash.add(ds.target_lengths_.data() + begin, N);
      std::copy(ds.target_lengths_.begin() + static_cast<std::ptrdiff_t>(begin), ds.target_lengths_.end(),
                ds.loss_tokens_.begin() + static_cast<std::ptrdiff_t>(begin));
    } else {
      count_mask_targets(of.loss_mask, N, HL, ds.lengths_.data() + begin, ds.loss_tokens_.data() + begin, path, hash);
    }
    hash.add(ds.lengths_.data() + begin, N);
    hash.add(ds.answer_start_.data() + begin, N);
    hash.add(ds.labels_.data() + begin, N);
    const std::string content = hash.hex();
    if (h5::has_attr(of.file, "content_sha256")) {
      const std::string stored = h5::read_attr_string(of.file, "content_sha256", path);
      if (stored != content)
        ST_THROW_INPUT(path, ": the rows do not match the file's content_sha256 (", stored.substr(0, 12), "... stored, ",
                       content.substr(0, 12), "... read): the shard was modified or damaged after prepare; prepare it again");
    }
    contents.push_back(content);
    counts.push_back(n);
    ds.file_row_begin_.push_back(ds.file_row_begin_.back() + n);
    open_files->files.push_back(std::move(of));
  }
  if (num_shards >= 0 && num_shards != static_cast<int64_t>(ds.files_.size()) && ds.files_.size() > 1)
    ST_THROW_INPUT(ds.files_.front(), ": the split was written as ", num_shards, " shards, ", ds.files_.size(),
                   " are here (a shard is missing, or shards of two prepare runs are mixed)");
  if (!ds.info_.split_sha256.empty() && ds.files_.size() > 1 &&
      split_sha256_of(contents, counts) != ds.info_.split_sha256)
    ST_THROW_INPUT(ds.files_.front(), ": the shards' content does not add up to the split's split_sha256 (shards of "
                   "two prepare runs are mixed); prepare the split again");
  ds.num_rows_ = ds.file_row_begin_.back();
  ds.open_files_ = std::move(open_files);
  return ds;
}

void ShardDataset::check_token_ids(int64_t vocab, const std::string& whose) const {
  auto where = [&](size_t r) {
    const size_t f = static_cast<size_t>(std::upper_bound(file_row_begin_.begin(), file_row_begin_.end(),
                                                          static_cast<int64_t>(r)) - file_row_begin_.begin() - 1);
    return std::pair<std::string, int64_t>(files_[f], static_cast<int64_t>(r) - file_row_begin_[f]);
  };
  for (const auto* v : {&max_id_, &max_target_id_})
    for (size_t r = 0; r < v->size(); ++r)
      if ((*v)[r] >= vocab) {
        const auto [file, row] = where(r);
        ST_THROW_INPUT(file, ": dataset '", v == &max_id_ ? "ids" : "targets", "' row ", row, " holds token id ",
                       (*v)[r], ", outside ", whose, "'s vocabulary of ", vocab,
                       " (shards written with another tokenizer, or a damaged file)");
      }
  auto attr = [&](const char* name, int64_t id, bool optional) {
    if (optional && id == -1) return;
    if (id < 0 || id >= vocab)
      ST_THROW_INPUT(files_.front(), ": attribute '", name, "' is ", id, ", outside ", whose, "'s vocabulary of ", vocab);
  };
  for (int32_t id : info_.label_token_ids) attr("label_token_ids", id, false);
  attr("pad_id", info_.pad_id, false);
  attr("bos_id", info_.bos_id, true);
  attr("eos_id", info_.eos_id, true);
  if (seq2seq()) attr("decoder_start_id", info_.decoder_start_id, false);
}

namespace {

// Reads the sorted, distinct rows `unique` of a [*, width] dataset into buf ([unique.size(),
// width] elements of elem_bytes): one read per run of consecutive rows. (A single
// union-of-hyperslabs selection reads the same bytes, but HDF5 1.10 maps an irregular selection
// to chunks element by element: it measured 6-20x slower than these regular per-run selections.)
void read_row_runs(hid_t dataset, hid_t type, const std::vector<int64_t>& unique, hsize_t width, size_t elem_bytes,
                   void* buf, const char* name, const std::string& where) {
  h5::Handle fspace(H5Dget_space(dataset), h5::Handle::Kind::dataspace);
  auto* bytes = static_cast<unsigned char*>(buf);
  for (size_t i = 0; i < unique.size();) {
    size_t j = i + 1;
    while (j < unique.size() && unique[j] == unique[j - 1] + 1) ++j;
    const hsize_t start[2] = {static_cast<hsize_t>(unique[i]), 0};
    const hsize_t count[2] = {static_cast<hsize_t>(j - i), width};
    if (H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, nullptr, count, nullptr) < 0)
      ST_THROW(where, ": hyperslab selection failed");
    h5::Handle mspace(H5Screate_simple(2, count, nullptr), h5::Handle::Kind::dataspace);
    if (H5Dread(dataset, type, mspace, fspace, H5P_DEFAULT, bytes + i * width * elem_bytes) < 0)
      ST_THROW_INPUT(where, ": cannot read dataset '", name, "' (truncated or corrupt file?)");
    i = j;
  }
}

}  // namespace

void ShardDataset::read_rows(const std::vector<int64_t>& rows, Batch& out) const {
  ST_CHECK(open_files_, "ShardDataset not opened");
  const bool s2s = seq2seq();
  const int64_t L = info_.seq_len, Lt = s2s ? info_.target_len : 0;
  const size_t n = rows.size();
  out.rows = static_cast<int64_t>(n);
  out.seq_len = L;
  out.target_len = Lt;
  out.ids.assign(n * static_cast<size_t>(L), info_.pad_id);
  out.loss_mask.assign(s2s ? 0 : n * static_cast<size_t>(L), 0);
  out.targets.assign(n * static_cast<size_t>(Lt), info_.pad_id);
  out.target_lengths.resize(s2s ? n : 0);
  out.lengths.resize(n);
  out.answer_start.resize(n);
  out.labels.resize(n);
  out.pack_rows.clear();

  // Group the requests by file: (local row, position in the output).
  const size_t nfiles = files_.size();
  std::vector<std::vector<std::pair<int64_t, size_t>>> per_file(nfiles);
  for (size_t i = 0; i < n; ++i) {
    const int64_t g = rows[i];
    if (g < 0 || g >= num_rows_)
      ST_THROW("ShardDataset::read_rows: row ", g, " outside [0, ", num_rows_, ") of ", files_.front(),
               files_.size() > 1 ? " ..." : "");
    const size_t f = static_cast<size_t>(
        std::upper_bound(file_row_begin_.begin(), file_row_begin_.end(), g) - file_row_begin_.begin() - 1);
    per_file[f].emplace_back(g - file_row_begin_[f], i);
    out.lengths[i] = lengths_[static_cast<size_t>(g)];
    out.answer_start[i] = answer_start_[static_cast<size_t>(g)];
    out.labels[i] = labels_[static_cast<size_t>(g)];
    if (s2s) out.target_lengths[i] = target_lengths_[static_cast<size_t>(g)];
  }

  std::lock_guard<std::mutex> lock(h5_mutex());
  std::vector<int64_t> unique;
  std::vector<int32_t> ids_buf, targets_buf;
  std::vector<uint8_t> mask_buf;
  const hsize_t HL = static_cast<hsize_t>(L), HLt = static_cast<hsize_t>(Lt);
  for (size_t f = 0; f < nfiles; ++f) {
    const auto& req = per_file[f];
    if (req.empty()) continue;
    const auto& of = open_files_->files[f];
    unique.clear();
    for (const auto& r : req) unique.push_back(r.first);
    std::sort(unique.begin(), unique.end());
    unique.erase(std::unique(unique.begin(), unique.end()), unique.end());

    ids_buf.resize(unique.size() * HL);
    read_row_runs(of.ids, H5T_NATIVE_INT32, unique, HL, sizeof(int32_t), ids_buf.data(), "ids", files_[f]);
    if (s2s) {
      targets_buf.resize(unique.size() * HLt);
      read_row_runs(of.targets, H5T_NATIVE_INT32, unique, HLt, sizeof(int32_t), targets_buf.data(), "targets",
                    files_[f]);
    } else {
      mask_buf.resize(unique.size() * HL);
      read_row_runs(of.loss_mask, H5T_NATIVE_UINT8, unique, HL, 1, mask_buf.data(), "loss_mask", files_[f]);
    }

    for (const auto& [local, pos] : req) {
      const size_t u = static_cast<size_t>(std::lower_bound(unique.begin(), unique.end(), local) - unique.begin());
      std::memcpy(out.ids.data() + pos * HL, ids_buf.data() + u * HL, HL * sizeof(int32_t));
      if (s2s) {
        std::memcpy(out.targets.data() + pos * HLt, targets_buf.data() + u * HLt, HLt * sizeof(int32_t));
      } else {
        std::memcpy(out.loss_mask.data() + pos * HL, mask_buf.data() + u * HL, HL);
      }
    }
  }
}

}  // namespace st
