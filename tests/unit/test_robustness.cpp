// Adversarial inputs and faults (issue 16), in process: option values that are not numbers or
// out of range, odd decks, hostile or damaged shards, a failed replacement of shards or of a
// saved directory, a run directory another run holds or a finished run lives in. Every case
// asserts the exit status the command would end with (InputError: 2), that the message names
// the file or option and the field, and that nothing valid was lost or left half-written. The
// cases that need the binary (a run, its checkpoints, a full disk) are in
// tests/e2e/test_robustness.cpp.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "config/run_config.hpp"
#include "core/allocator.hpp"
#include "core/atomic_file.hpp"
#include "core/error.hpp"
#include "io/h5util.hpp"
#include "io/metrics.hpp"
#include "io/shards.hpp"
#include "parallel/comm.hpp"
#include "train/checkpoint.hpp"
#include "train/run_dir.hpp"
#include "tests/common/paths.hpp"
#include "tests/common/test_util.hpp"

namespace fs = std::filesystem;

namespace st {
namespace {

using test::TempDir;

struct Refusal {
  int status = 0;  // the exit status the error maps to (0: nothing was thrown)
  std::string message;
};

Refusal refusal_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return {e.exit_status(), e.what()};
  } catch (const std::exception& e) {
    return {-1, std::string("NOT AN st::Error: ") + e.what()};
  }
  return {0, "NOT REFUSED"};
}

// Refused with exit status 2 and a message holding every part.
void expect_refused(const std::string& label, const std::function<void()>& fn, const std::vector<std::string>& parts) {
  SCOPED_TRACE(label);
  const Refusal r = refusal_of(fn);
  EXPECT_EQ(r.status, kExitInput) << r.message;
  for (const std::string& p : parts) EXPECT_NE(r.message.find(p), std::string::npos) << "'" << p << "' not in: " << r.message;
}

RunConfig parse(std::vector<std::string> args) {
  args.insert(args.begin(), "train");
  std::vector<char*> ptrs;
  for (auto& s : args) ptrs.push_back(s.data());
  RunConfig c;
  parse_run_config(static_cast<int>(ptrs.size()), ptrs.data(), "train", c);
  return c;
}

// ------------------------------------------------------------------------------ 1. options

TEST(Robustness, NumericOptionsMustBeFiniteAndInRange) {
  struct Case {
    std::vector<std::string> args;
    std::vector<std::string> expect;  // besides "command line"
  };
  const std::vector<Case> cases = {
      {{"--lr", "nan"}, {"lr", "finite"}},
      {{"--lr", "inf"}, {"lr", "finite"}},
      {{"--lr", "-inf"}, {"lr", "finite"}},
      {{"--lr", "1e400"}, {"lr", "finite"}},
      {{"--lr", "0"}, {"lr", "(0, 10]"}},
      {{"--lr", "0.1x"}, {"lr", "not a number"}},
      {{"--lr", ""}, {"lr", "needs a value"}},
      {{"--grad_clip", "nan"}, {"grad_clip", "finite"}},
      {{"--grad_clip", "inf"}, {"grad_clip", "finite"}},
      {{"--grad_clip", "-1"}, {"grad_clip"}},
      {{"--lora_dropout", "nan"}, {"lora_dropout", "finite"}},
      {{"--lora_dropout", "1"}, {"lora_dropout", "[0, 1)"}},
      {{"--adam_eps", "inf"}, {"adam_eps", "finite"}},
      {{"--adam_eps", "0"}, {"adam_eps"}},
      {{"--adam_beta1", "1"}, {"adam_beta1", "[0, 1)"}},
      {{"--adam_beta2", "nan"}, {"adam_beta2", "finite"}},
      {{"--min_lr_ratio", "1.5"}, {"min_lr_ratio"}},
      {{"--weight_decay", "-0.1"}, {"weight_decay"}},
      {{"--weight_decay", "5000"}, {"weight_decay", "lr x weight_decay"}},
      {{"--init_std", "nan"}, {"init_std", "finite"}},
      {{"--rms_norm_eps", "inf"}, {"rms_norm_eps", "finite"}},
      {{"--rope_theta", "0"}, {"rope_theta"}},
      {{"--lora_alpha", "nan"}, {"lora_alpha", "finite"}},
      {{"--watchdog_timeout", "-1"}, {"watchdog_timeout"}},
      {{"--watchdog_timeout", "1e300"}, {"watchdog_timeout"}},
      {{"--seed=-1"}, {"seed", "non-negative"}},
      {{"--seed", "18446744073709551616"}, {"seed", "out of range"}},
      {{"--seed", "1.5"}, {"seed", "not an integer"}},
      {{"--micro_batch_size", "0"}, {"micro_batch_size"}},
      {{"--micro_batch_size", "99999999999"}, {"micro_batch_size", "1048576"}},
      {{"--micro_batch_size", "9223372036854775808"}, {"micro_batch_size", "out of range"}},
      {{"--grad_accum", "0"}, {"grad_accum"}},
      {{"--epochs", "0"}, {"epochs"}},
      {{"--epochs", "10000000"}, {"epochs", "1000000"}},
      {{"--hidden_size", "0"}, {"hidden_size"}},
      {{"--hidden_size", "4194304"}, {"hidden_size", "1048576"}},
      {{"--num_layers", "100000"}, {"num_layers"}},
      {{"--num_kv_heads", "3"}, {"num_kv_heads", "divide"}},
      {{"--vocab_size", "-5"}, {"vocab_size"}},
      {{"--vocab_size", "4294967296"}, {"vocab_size", "2147483647"}},
      {{"--parallel", "tp", "--tp_size", "4294967298"}, {"tp_size", "65536"}},
      {{"--threads", "-1"}, {"threads"}},
      {{"--threads", "100000"}, {"threads"}},
      {{"--log_every", "0"}, {"log_every"}},
      {{"--keep_checkpoints", "0"}, {"keep_checkpoints"}},
      {{"--checkpoint_every", "-1"}, {"checkpoint_every"}},
      {{"--lora_r", "0"}, {"lora_r"}},
      {{"--max_position_embeddings", "0"}, {"max_position_embeddings"}},
      {{"--relative_attention_num_buckets", "1"}, {"relative_attention_num_buckets"}},
      {{"--eval_every", "-3"}, {"eval_every"}},
      {{"--max_train_rows", "-1"}, {"max_train_rows"}},
      {{"--memory_limit", "1e30"}, {"memory_limit"}},
      {{"--memory_limit", "nan"}, {"memory_limit"}},
      {{"--output_dir", ""}, {"output_dir"}},
      {{"--run_id", "a/b"}, {"run_id"}},
  };
  for (const Case& c : cases) {
    std::vector<std::string> args = {"--data", "d"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    std::vector<std::string> expect = c.expect;
    expect.push_back("command line");
    expect_refused(c.args.front(), [&] { parse(args); }, expect);
  }
  EXPECT_GE(cases.size(), 50u);
}

TEST(Robustness, ByteSizesRefuseWhatIsNotASize) {
  for (const char* bad : {"1e30", "inf", "nan", "-1GiB", "12 parsecs", ""})
    expect_refused(bad, [&] { parse_bytes(bad, "--gpu-memory"); }, {"--gpu-memory"});
  EXPECT_EQ(parse_bytes("40GiB", "x"), size_t{40} << 30);
}

// ------------------------------------------------------------------------------ 2. decks

class OddDecks : public ::testing::Test {
 protected:
  TempDir dir{"robust-decks"};
  std::string deck(const std::string& name, const std::string& text) {
    const std::string p = dir.path + "/" + name;
    test::write_file(p, text);
    return p;
  }
};

TEST_F(OddDecks, OddDecksAreRefusedNamingTheFileAndLine) {
  fs::create_directories(dir.path + "/adir");
  const std::string base = deck("base.cfg", "data = d\nlr = 0.001\n");
  struct Case {
    std::string label, path;
    std::vector<std::string> expect;
  };
  const std::vector<Case> cases = {
      {"a directory", dir.path + "/adir", {dir.path + "/adir", "is a directory"}},
      {"a device", "/dev/null", {"/dev/null", "not a regular file"}},
      {"include with no value", deck("noinc.cfg", "# x\ninclude =\nlr = 0.1\n"), {"noinc.cfg:2", "include needs"}},
      {"a key twice", deck("twice.cfg", "data = d\nlr = 0.1\nepochs = 2\nlr = 0.2\n"), {"twice.cfg:4", "'lr'", "first on line 2"}},
      {"no '='", deck("noeq.cfg", "data = d\n\nlr 0.1\n"), {"noeq.cfg:3", "key = value"}},
      {"a section", deck("section.cfg", "[train]\nlr = 0.1\n"), {"section.cfg:1", "sections"}},
      {"binary data", deck("bin.cfg", std::string("data = d\nlr = 0.\0\x01", 17)), {"bin.cfg:2", "binary"}},
      {"over 1 MiB", deck("huge.cfg", std::string(1100000, '#')), {"huge.cfg", "under 1 MiB"}},
      {"no key", deck("nokey.cfg", "data = d\n = 5\n"), {"nokey.cfg:2", "no key"}},
      {"an unknown key", deck("unknown.cfg", "data = d\n\nmicro_batch_sise = 1\n"), {"unknown.cfg:3", "micro_batch_sise", "did you mean"}},
      {"a NaN value", deck("nan.cfg", "data = d\nlr = nan\n"), {"nan.cfg:2", "lr", "finite"}},
      {"an out-of-range value", deck("range.cfg", "data = d\nlr = 50\n"), {"range.cfg:2", "lr", "(0, 10]"}},
      {"a missing base", deck("nobase.cfg", "include = missing.cfg\n"), {"missing.cfg", "deck not found", "nobase.cfg:1"}},
      {"a bad value in the base", deck("badbase.cfg", "include = nan.cfg\nepochs = 2\n"), {"nan.cfg:2", "badbase.cfg:1"}},
  };
  for (const Case& c : cases) expect_refused(c.label, [&] { parse({"--deck", c.path}); }, c.expect);
  // A bad value is refused even where the command line overrides it.
  expect_refused("overridden NaN", [&] { parse({"--deck", dir.path + "/nan.cfg", "--lr", "0.1"}); }, {"nan.cfg:2", "lr"});
  // The base deck was not touched by any of this.
  EXPECT_EQ(test::read_file(base), "data = d\nlr = 0.001\n");
}

TEST_F(OddDecks, ByteOrderMarkAndCrlfAreAccepted) {
  deck("base.cfg", "\xEF\xBB\xBF# base, saved by an editor that writes a BOM\r\ndata = d\r\nepochs = 3\r\n");
  const std::string run = deck("run.cfg", "\xEF\xBB\xBFinclude = base.cfg\r\nlr = 0.002\r\nrun_id = x\r\n");
  const RunConfig c = parse({"--deck", run});
  EXPECT_EQ(c.data, "d");
  EXPECT_EQ(c.epochs, 3);
  EXPECT_DOUBLE_EQ(c.lr, 0.002);
  EXPECT_EQ(c.run_id, "x");  // no '\r' left in a value
  EXPECT_EQ(c.origin.at("lr"), run + ":2");
}

// ------------------------------------------------------------------------------ 3. shards

// A valid causal split: 40 rows of L = 16 in two shards, ids in [3, 50), labels 0/1 with two
// label names, tokenizer vocabulary 64.
ShardInfo small_info(const std::string& split = "train") {
  ShardInfo info;
  info.format_version = kShardFormatVersion;
  info.task = "sst2";
  info.split = split;
  info.tokenizer_sha256 = "handmade";
  info.tokenizer_vocab_size = 64;
  info.bos_id = 1;
  info.eos_id = 2;
  info.pad_id = 0;
  info.seq_len = 16;
  info.loss_on = "answer";
  info.prompt_template = "sst2";
  info.label_names = {"negative", "positive"};
  info.label_token_ids = {5, 6};
  return info;
}

ShardRows small_rows(int64_t n = 40, int32_t salt = 0) {
  ShardRows r;
  r.seq_len = 16;
  for (int64_t i = 0; i < n; ++i) {
    const int32_t len = static_cast<int32_t>(4 + i % 12);
    for (int32_t t = 0; t < 16; ++t) {
      r.ids.push_back(t < len ? static_cast<int32_t>(3 + (i * 7 + t + salt) % 47) : 0);
      r.loss_mask.push_back(t >= 1 && t < len ? 1 : 0);
    }
    r.lengths.push_back(len);
    r.answer_start.push_back(len - 1);
    r.labels.push_back(static_cast<int32_t>(i % 2));
  }
  return r;
}

// Replaces dataset `name` of a shard by `values` stored as `file_type`.
template <typename T>
void rewrite(const std::string& file, const char* name, const std::vector<T>& values, hid_t mem_type, hid_t file_type) {
  h5::Handle f = h5::open_file_rw(file);
  const auto dims = h5::dataset_dims(f, name, file);
  H5Ldelete(f, name, H5P_DEFAULT);
  h5::Handle space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), h5::Handle::Kind::dataspace);
  h5::Handle ds(H5Dcreate2(f, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), h5::Handle::Kind::dataset);
  ASSERT_TRUE(ds.valid());
  ASSERT_GE(H5Dwrite(ds, mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()), 0);
}

template <typename T>
std::vector<T> read_all(const std::string& file, const char* name, hid_t mem_type) {
  h5::Handle f = h5::open_file_read(file);
  const auto dims = h5::dataset_dims(f, name, file);
  size_t n = 1;
  for (auto d : dims) n *= d;
  std::vector<T> v(n);
  h5::read_dataset(f, name, mem_type, v.data(), file);
  return v;
}

TEST(Robustness, DamagedOrHostileShardsAreRefusedNamingFileDatasetAndRow) {
  struct Case {
    std::string label;
    std::function<void(const std::vector<std::string>& files)> damage;
    std::vector<std::string> expect;  // besides the damaged file's path
  };
  const int64_t L = 16;
  const std::vector<Case> cases = {
      {"ids as float64", [](auto& f) { rewrite(f[1], "ids", read_all<double>(f[1], "ids", H5T_NATIVE_DOUBLE), H5T_NATIVE_DOUBLE, H5T_IEEE_F64LE); },
       {"'ids'", "float64", "int32"}},
      {"ids as int64", [](auto& f) { rewrite(f[1], "ids", read_all<int64_t>(f[1], "ids", H5T_NATIVE_INT64), H5T_NATIVE_INT64, H5T_STD_I64LE); },
       {"'ids'", "int64"}},
      {"loss_mask as int32", [](auto& f) { rewrite(f[1], "loss_mask", read_all<int32_t>(f[1], "loss_mask", H5T_NATIVE_INT32), H5T_NATIVE_INT32, H5T_STD_I32LE); },
       {"'loss_mask'", "int32", "uint8"}},
      {"labels as uint32", [](auto& f) { rewrite(f[1], "labels", read_all<uint32_t>(f[1], "labels", H5T_NATIVE_UINT32), H5T_NATIVE_UINT32, H5T_STD_U32LE); },
       {"'labels'", "uint32"}},
      {"a negative id", [L](auto& f) {
         auto v = read_all<int32_t>(f[1], "ids", H5T_NATIVE_INT32);
         v[7 * L + 2] = -4;
         rewrite(f[1], "ids", v, H5T_NATIVE_INT32, H5T_STD_I32LE);
       }, {"'ids'", "row 7", "-4"}},
      {"a mask of 2", [L](auto& f) {
         auto v = read_all<uint8_t>(f[1], "loss_mask", H5T_NATIVE_UINT8);
         v[3 * L + 1] = 2;
         rewrite(f[1], "loss_mask", v, H5T_NATIVE_UINT8, H5T_STD_U8LE);
       }, {"'loss_mask'", "row 3", "0 or 1"}},
      {"a target in the padding", [L](auto& f) {
         auto v = read_all<uint8_t>(f[1], "loss_mask", H5T_NATIVE_UINT8);
         v[0 * L + 15] = 1;  // row 0 of shard 1 (global row 20): length 4 + 20 % 12 = 12
         rewrite(f[1], "loss_mask", v, H5T_NATIVE_UINT8, H5T_STD_U8LE);
       }, {"'loss_mask'", "row 0", "beyond the row's length"}},
      {"a label beyond label_names", [](auto& f) {
         auto v = read_all<int32_t>(f[1], "labels", H5T_NATIVE_INT32);
         v[5] = 2;
         rewrite(f[1], "labels", v, H5T_NATIVE_INT32, H5T_STD_I32LE);
       }, {"'labels'", "row 5", "negative,positive"}},
      {"a label of -2", [](auto& f) {
         auto v = read_all<int32_t>(f[1], "labels", H5T_NATIVE_INT32);
         v[9] = -2;
         rewrite(f[1], "labels", v, H5T_NATIVE_INT32, H5T_STD_I32LE);
       }, {"'labels'", "row 9"}},
      {"a length beyond the row", [](auto& f) {
         auto v = read_all<int32_t>(f[1], "lengths", H5T_NATIVE_INT32);
         v[4] = 17;
         rewrite(f[1], "lengths", v, H5T_NATIVE_INT32, H5T_STD_I32LE);
       }, {"row 4", "length 17"}},
      {"answer_start beyond the length", [](auto& f) {
         auto v = read_all<int32_t>(f[1], "answer_start", H5T_NATIVE_INT32);
         v[6] = 15;
         rewrite(f[1], "answer_start", v, H5T_NATIVE_INT32, H5T_STD_I32LE);
       }, {"row 6", "answer_start 15"}},
      {"other valid ids (bit rot)", [L](auto& f) {
         auto v = read_all<int32_t>(f[1], "ids", H5T_NATIVE_INT32);
         v[2 * L + 1] ^= 1;
         rewrite(f[1], "ids", v, H5T_NATIVE_INT32, H5T_STD_I32LE);
       }, {"content_sha256", "modified or damaged"}},
      {"a shard of another prepare run", [](auto& f) {
         TempDir other("robust-other");
         const auto o = write_shards(other.path, small_info(), small_rows(40, 5), 20);
         fs::copy_file(o[1], f[1], fs::copy_options::overwrite_existing);
       }, {"split_sha256"}},
      {"a missing shard", [](auto& f) { fs::remove(f[1]); }, {"missing"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    TempDir dir("robust-shards");
    const std::vector<std::string> files = write_shards(dir.path, small_info(), small_rows(60), 20);
    ASSERT_EQ(files.size(), 3u);
    ASSERT_NO_THROW(ShardDataset::open(dir.path, "train"));
    c.damage(files);
    std::vector<std::string> expect = c.expect;
    expect.push_back(c.label == "a missing shard" || c.label == "a shard of another prepare run" ? dir.path : files[1]);
    expect_refused(c.label, [&] { ShardDataset::open(dir.path, "train"); }, expect);
  }
}

TEST(Robustness, TokenIdsAreCheckedAgainstTheModelsVocabulary) {
  TempDir dir("robust-vocab");
  ShardRows rows = small_rows(40);
  rows.ids[static_cast<size_t>(27 * 16 + 3)] = 63;  // row 7 of shard 1: inside the tokenizer, outside a 50-id model
  const auto files = write_shards(dir.path, small_info(), rows, 20);
  const ShardDataset d = ShardDataset::open(dir.path, "train");
  EXPECT_NO_THROW(d.check_token_ids(64, "the model"));
  expect_refused("id 63 of 50", [&] { d.check_token_ids(50, "the model x/config.json"); },
                 {files[1], "'ids'", "row 7", "63", "x/config.json", "50"});
  expect_refused("label token", [&] { d.check_token_ids(6, "the model"); }, {"'ids'"});
  // Attributes: label_token_ids and the special ids.
  ShardInfo info = small_info();
  info.label_token_ids = {5, 70};
  TempDir dir2("robust-vocab2");
  write_shards(dir2.path, info, small_rows(8), 0);
  expect_refused("label_token_ids", [&] { ShardDataset::open(dir2.path, "train").check_token_ids(64, "the model"); },
                 {"label_token_ids", "70"});
  info = small_info();
  info.pad_id = 64;
  TempDir dir3("robust-vocab3");
  write_shards(dir3.path, info, small_rows(8), 0);
  expect_refused("pad_id", [&] { ShardDataset::open(dir3.path, "train").check_token_ids(64, "the model"); }, {"pad_id", "64"});
}

TEST(Robustness, Seq2SeqTargetsAreCheckedToo) {
  TempDir dir("robust-s2s");
  ShardInfo info = small_info();
  info.arch = "seq2seq";
  info.target_len = 4;
  info.loss_on = "target";
  info.bos_id = -1;
  ShardRows r = small_rows(10);
  r.loss_mask.clear();
  r.target_len = 4;
  for (int64_t i = 0; i < 10; ++i) {
    for (int t = 0; t < 4; ++t) r.targets.push_back(t < 2 ? 5 + t : 0);
    r.target_lengths.push_back(2);
    r.answer_start[static_cast<size_t>(i)] = 0;
  }
  r.targets[4 * 6 + 1] = 99;  // row 6
  const auto files = write_shards(dir.path, info, r, 0);
  const ShardDataset d = ShardDataset::open(dir.path, "train");
  expect_refused("target id", [&] { d.check_token_ids(64, "the model"); }, {files[0], "'targets'", "row 6", "99"});
}

TEST(Robustness, AFailedPrepareLeavesTheOldSplitAndNamesTheCause) {
  TempDir dir("robust-swap");
  const auto old_files = write_shards(dir.path, small_info(), small_rows(60), 20);
  const std::string old_sha = ShardDataset::open(dir.path, "train").info().split_sha256;
  // The new set cannot be written: its first temporary file's name is taken by a directory.
  fs::create_directories(dir.path + "/train-00000.h5.tmp/x");
  expect_refused("blocked", [&] { write_shards(dir.path, small_info(), small_rows(30, 9), 0); },
                 {"train-00000.h5.tmp", "Is a directory"});
  const ShardDataset kept = ShardDataset::open(dir.path, "train");
  EXPECT_EQ(kept.size(), 60);
  EXPECT_EQ(kept.info().split_sha256, old_sha);
  // Once it can: the three old shards are replaced by one, none left over.
  fs::remove_all(dir.path + "/train-00000.h5.tmp");
  write_shards(dir.path, small_info(), small_rows(30, 9), 0);
  EXPECT_EQ(list_shard_files(dir.path, "train").size(), 1u);
  EXPECT_EQ(ShardDataset::open(dir.path, "train").size(), 30);
  for (const auto& e : fs::directory_iterator(dir.path)) EXPECT_EQ(e.path().extension(), ".h5") << e.path();
  // Shards an interrupted swap left aside are named when the split is missing.
  fs::rename(dir.path + "/train-00000.h5", dir.path + "/train-00000.h5.old");
  expect_refused("left aside", [&] { ShardDataset::open(dir.path, "train"); }, {".h5.old", "interrupted prepare"});
}

TEST(Robustness, SplitIdentityFollowsTheContentNotThePath) {
  TempDir a("robust-ida"), b("robust-idb");
  write_shards(a.path, small_info(), small_rows(40), 20);
  write_shards(b.path, small_info(), small_rows(40), 20);
  EXPECT_EQ(split_identity(a.path, "train").str(), split_identity(b.path, "train").str());  // same rows, other path
  write_shards(b.path, small_info(), small_rows(40, 1), 20);
  EXPECT_NE(split_identity(a.path, "train").sha256, split_identity(b.path, "train").sha256);
  EXPECT_EQ(split_identity(a.path, "train").rows, 40);
}

// ------------------------------------------------------------------------------ 6. replacing a directory

TEST(Robustness, ReplacingADirectoryIsAllOrNothing) {
  TempDir dir("robust-replace");
  const std::string out = dir.path + "/model";
  auto owned = [](const std::string& n) { return n == "a.txt" || n == "b.txt"; };
  replace_directory(out, [](const std::string& d) { test::write_file(d + "/a.txt", "old"); }, owned);
  // A writer failing half-way (disk full) leaves the old directory as it was, and no staging.
  expect_refused("failing writer", [&] {
    replace_directory(out, [](const std::string& d) {
      test::write_file(d + "/a.txt", "new");
      ST_THROW_INPUT(d, "/b.txt: No space left on device");
    }, owned);
  }, {"No space left on device"});
  EXPECT_EQ(test::read_file(out + "/a.txt"), "old");
  for (const auto& e : fs::directory_iterator(dir.path)) EXPECT_EQ(e.path().filename(), "model") << e.path();
  // A directory holding something this save does not write is not replaced.
  test::write_file(out + "/notes.md", "mine");
  expect_refused("foreign file", [&] { replace_directory(out, [](const std::string&) {}, owned); }, {out, "notes.md"});
  EXPECT_EQ(test::read_file(out + "/notes.md"), "mine");
  fs::remove(out + "/notes.md");
  // A regular file in the way is not replaced either.
  test::write_file(dir.path + "/file", "x");
  expect_refused("a file", [&] { replace_directory(dir.path + "/file", [](const std::string&) {}, owned); }, {"not a directory"});
  // The successful replacement.
  replace_directory(out, [](const std::string& d) { test::write_file(d + "/b.txt", "new"); }, owned);
  EXPECT_FALSE(fs::exists(out + "/a.txt"));
  EXPECT_EQ(test::read_file(out + "/b.txt"), "new");
}

// ------------------------------------------------------------------------------ 5, 7. run directories

RunConfig run_config(const std::string& out, std::vector<std::string> extra = {}, const std::string& id = "r") {
  std::vector<std::string> a = {"--data", "d", "--output_dir", out, "--run_id", id};
  a.insert(a.end(), extra.begin(), extra.end());
  return parse(a);
}

TEST(Robustness, ARunDirectoryIsClaimedByOneRun) {
  TempDir dir("robust-claim");
  auto world = make_dry_comm(1, 0, Device::cpu, "world");
  const std::string run = claim_run_directory(run_config(dir.path), true, *world);
  EXPECT_EQ(run, dir.path + "/r");
  // A second claim (another run; here another open file description in this process) is refused
  // naming the holder.
  expect_refused("held", [&] { lock_directory(run, "run directory"); },
                 {run, "in use by another run", "pid " + std::to_string(::getpid()), "host "});
  // Paths that are files: refused before anything is written.
  test::write_file(dir.path + "/afile", "x");
  expect_refused("output_dir a file", [&] { claim_run_directory(run_config(dir.path + "/afile"), true, *world); },
                 {"output_dir", "is a file"});
  test::write_file(dir.path + "/r2", "x");
  expect_refused("run dir a file", [&] { claim_run_directory(run_config(dir.path, {}, "r2"), true, *world); },
                 {"run_id", "is a file"});
  expect_refused("checkpoint_dir a file",
                 [&] { claim_run_directory(run_config(dir.path, {"--checkpoint_dir", dir.path + "/afile"}, "r3"), true, *world); },
                 {"checkpoint_dir", "is a file"});
  EXPECT_FALSE(fs::exists(dir.path + "/r3/metrics.h5"));
  // eval: directories of its own, never the training run's.
  EXPECT_EQ(claim_run_directory(run_config(dir.path), false, *world), dir.path + "/r/eval-1");
  EXPECT_EQ(claim_run_directory(run_config(dir.path), false, *world), dir.path + "/r/eval-2");
}

TEST(Robustness, AFinishedRunIsNotReplaced) {
  TempDir dir("robust-replace-run");
  const std::string run = dir.path + "/r", metrics = run + "/metrics.h5";
  auto write_run = [&](const char* outcome) {
    MetricsWriter w(metrics, {{"lr", "0.1"}});
    for (int64_t s = 1; s <= 3; ++s) {
      StepRecord rec;
      rec.step = s;
      w.append_step(rec);
    }
    SummaryRecord sum;
    sum.strings["outcome"] = outcome;
    w.write_summary(sum);
  };
  write_run("ok");
  const std::string before = test::read_file(metrics);
  expect_refused("resume none", [&] { check_run_replacement(run_config(dir.path), run, ""); },
                 {metrics, "outcome ok", "3 steps", "overwrite = true", "resume = auto"});
  expect_refused("resume auto, finished", [&] { check_run_replacement(run_config(dir.path, {"--resume", "auto"}), run, ""); },
                 {metrics, "outcome ok"});
  EXPECT_EQ(test::read_file(metrics), before);
  EXPECT_NO_THROW(check_run_replacement(run_config(dir.path, {"--overwrite", "true"}), run, ""));
  EXPECT_NO_THROW(check_run_replacement(run_config(dir.path), run, run + "/checkpoints/step-00000002"));  // a resume
  write_run("error");  // a requeued job that died before its first checkpoint starts again
  EXPECT_NO_THROW(check_run_replacement(run_config(dir.path, {"--resume", "auto"}), run, ""));
  expect_refused("failed after steps", [&] { check_run_replacement(run_config(dir.path), run, ""); }, {"outcome error"});
  {
    MetricsWriter w(metrics, {});  // an attempt refused during set-up: no step logged
    SummaryRecord sum;
    sum.strings["outcome"] = "error";
    w.write_summary(sum);
  }
  EXPECT_NO_THROW(check_run_replacement(run_config(dir.path), run, ""));
  // Complete checkpoints of an earlier run, without its metrics: a fresh start would delete them.
  fs::remove(metrics);
  fs::create_directories(run + "/checkpoints/step-00000004");
  test::write_file(run + "/checkpoints/step-00000004/COMPLETE", "{}");
  expect_refused("checkpoints", [&] { check_run_replacement(run_config(dir.path), run, ""); },
                 {"1 complete checkpoint", "overwrite = true"});
  EXPECT_TRUE(fs::exists(run + "/checkpoints/step-00000004/COMPLETE"));
}

}  // namespace
}  // namespace st
