// `shardtune prepare --random`: random-token shards for benchmarks. Shapes, id range, masks and
// attributes; determinism; that ShardDataset reads them as a consistent pair of splits; that
// bad option values are refused naming the option; and the speed the benchmark relies on.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <set>
#include <string>
#include <vector>

#include "cli/commands.hpp"
#include "core/error.hpp"
#include "core/timer.hpp"
#include "data/prepare.hpp"
#include "io/h5util.hpp"
#include "io/shards.hpp"
#include "tests/common/test_util.hpp"

namespace fs = std::filesystem;

namespace {

using st::test::TempDir;

st::RandomShardOptions options(const std::string& dir, int64_t rows, int64_t L, int64_t V) {
  st::RandomShardOptions o;
  o.output_dir = dir;
  o.rows = rows;
  o.seq_len = L;
  o.vocab = V;
  o.seed = 42;
  return o;
}

st::Batch read_all(const st::ShardDataset& ds) {
  std::vector<int64_t> rows(static_cast<size_t>(ds.size()));
  for (size_t i = 0; i < rows.size(); ++i) rows[i] = static_cast<int64_t>(i);
  st::Batch b;
  ds.read_rows(rows, b);
  return b;
}

TEST(RandomShards, ShapesIdsMasksAndAttributes) {
  TempDir dir("random-shards");
  const int64_t N = 100, L = 33, V = 40;
  const st::RandomShardStats s = st::write_random_shards(options(dir.path, N, L, V));
  ASSERT_EQ(s.shard_files.size(), 2u);
  EXPECT_EQ(fs::path(s.shard_files[0]).filename(), "train-00000.h5");
  EXPECT_EQ(fs::path(s.shard_files[1]).filename(), "validation-00000.h5");
  EXPECT_EQ(s.val_rows, N / 16);

  const auto train = st::ShardDataset::open(dir.path, "train");
  const auto val = st::ShardDataset::open(dir.path, "validation");
  ASSERT_EQ(train.size(), N);
  ASSERT_EQ(val.size(), N / 16);
  for (const st::ShardDataset* ds : {&train, &val}) {
    const st::ShardInfo& info = ds->info();
    EXPECT_EQ(info.task, "random");
    EXPECT_EQ(info.arch, "causal");
    EXPECT_EQ(info.seq_len, L);
    EXPECT_EQ(info.tokenizer_sha256, "random-vocab-40");
    EXPECT_EQ(info.tokenizer_vocab_size, V);
    EXPECT_EQ(info.bos_id, 1);
    EXPECT_EQ(info.eos_id, 2);
    EXPECT_EQ(info.pad_id, 0);
    EXPECT_EQ(info.loss_on, "all");
    EXPECT_TRUE(info.label_names.empty());
    EXPECT_EQ(info.rows_written, ds->size());

    const st::Batch b = read_all(*ds);
    std::set<int32_t> seen;
    for (int64_t r = 0; r < b.rows; ++r) {
      EXPECT_EQ(b.lengths[static_cast<size_t>(r)], L);
      EXPECT_EQ(b.labels[static_cast<size_t>(r)], -1);
      EXPECT_EQ(ds->loss_tokens()[static_cast<size_t>(r)], L - 1);
      const int32_t* ids = b.ids.data() + r * L;
      const uint8_t* mask = b.loss_mask.data() + r * L;
      EXPECT_EQ(ids[0], 1);
      EXPECT_EQ(mask[0], 0);
      for (int64_t t = 1; t < L; ++t) {
        ASSERT_GE(ids[t], 3) << "row " << r << " position " << t;
        ASSERT_LT(ids[t], V) << "row " << r << " position " << t;
        ASSERT_EQ(mask[t], 1);
        seen.insert(ids[t]);
      }
    }
    EXPECT_EQ(b.loss_tokens(), b.rows * (L - 1));
    // Uniform over the 37 ids in [3, 40): 3,200 training draws miss one of them with probability
    // below 37 * (36/37)^3200 < 1e-36 (and the seed is fixed).
    if (ds == &train) {
      EXPECT_EQ(seen.size(), static_cast<size_t>(V - 3));
    }
  }
  // The two splits agree on what train checks (tokenizer, task) but hold different rows.
  EXPECT_EQ(train.info().tokenizer_sha256, val.info().tokenizer_sha256);
  EXPECT_EQ(train.info().task, val.info().task);
  const st::Batch bt = read_all(train), bv = read_all(val);
  EXPECT_FALSE(std::equal(bv.ids.begin(), bv.ids.end(), bt.ids.begin()));
}

TEST(RandomShards, UncompressedChunksOfUpTo64Rows) {
  TempDir dir("random-layout");
  const auto s = st::write_random_shards(options(dir.path, 200, 16, 1000));
  for (const auto& [file, rows] : {std::pair<std::string, hsize_t>{s.shard_files[0], 64}, {s.shard_files[1], 12}}) {
    st::h5::Handle f = st::h5::open_file_read(file);
    for (const char* name : {"ids", "loss_mask"}) {
      st::h5::Handle ds(H5Dopen2(f, name, H5P_DEFAULT), st::h5::Handle::Kind::dataset);
      st::h5::Handle dcpl(H5Dget_create_plist(ds), st::h5::Handle::Kind::plist);
      ASSERT_EQ(H5Pget_layout(dcpl), H5D_CHUNKED) << file << " " << name;
      hsize_t chunk[2] = {0, 0};
      ASSERT_EQ(H5Pget_chunk(dcpl, 2, chunk), 2);
      EXPECT_EQ(chunk[0], rows) << file << " " << name;  // min(64, N)
      EXPECT_EQ(chunk[1], 16u) << file << " " << name;
      EXPECT_EQ(H5Pget_nfilters(dcpl), 0) << file << " " << name;
    }
  }
}

TEST(RandomShards, SameOptionsGiveTheSameIdsAndAnotherSeedDoesNot) {
  const st::RandomShardOptions a = options("unused", 8, 64, 32000);
  st::RandomShardOptions b = a;
  b.seed = 43;
  const auto pa = st::make_random_rows(a, "train", 8);
  EXPECT_EQ(pa.rows.ids, st::make_random_rows(a, "train", 8).rows.ids);
  EXPECT_NE(pa.rows.ids, st::make_random_rows(b, "train", 8).rows.ids);
  EXPECT_NE(pa.rows.ids, st::make_random_rows(a, "validation", 8).rows.ids);
  // The first rows do not depend on how many rows are drawn.
  const auto more = st::make_random_rows(a, "train", 16);
  EXPECT_TRUE(std::equal(pa.rows.ids.begin(), pa.rows.ids.end(), more.rows.ids.begin()));
}

TEST(RandomShards, ExplicitValidationRowsAndRewrite) {
  TempDir dir("random-val");
  st::RandomShardOptions o = options(dir.path, 10, 8, 100);
  EXPECT_EQ(st::random_val_rows(o), 1);  // N/16 rounds to 0: at least one row
  o.val_rows = 7;
  st::write_random_shards(o);
  EXPECT_EQ(st::ShardDataset::open(dir.path, "validation").size(), 7);
  o.rows = 20;  // rewriting replaces the splits
  st::write_random_shards(o);
  EXPECT_EQ(st::ShardDataset::open(dir.path, "train").size(), 20);
}

TEST(RandomShards, BadValuesAreRefusedNamingTheOption) {
  TempDir dir("random-bad");
  auto refused = [&](st::RandomShardOptions o, const std::string& option) {
    st::test::expect_input_error([&] { st::write_random_shards(o); }, {option});
  };
  auto o = options(dir.path, 16, 8, 100);
  auto bad = o;
  bad.vocab = 2;
  refused(bad, "--vocab");
  bad.vocab = 3;  // [3, 3) is empty
  refused(bad, "--vocab");
  bad = o;
  bad.seq_len = 1;
  refused(bad, "--seq-len");
  bad = o;
  bad.rows = 0;
  refused(bad, "--rows");
  bad = o;
  bad.val_rows = 0;
  refused(bad, "--val-rows");
  bad = o;
  bad.output_dir = "";
  refused(bad, "--random");
  bad = o;
  bad.rows = int64_t{1} << 31;
  bad.seq_len = 1024;
  refused(bad, "--seq-len");
  EXPECT_TRUE(st::list_shard_files(dir.path, "train").empty());  // nothing written
}

// `shardtune prepare ...` as main() runs it: argv[0] is the subcommand.
int prepare(std::vector<std::string> args) {
  args.insert(args.begin(), "prepare");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  return st::cmd_prepare(static_cast<int>(argv.size()), argv.data());
}

TEST(RandomShards, CommandLineWritesBothSplits) {
  TempDir dir("random-cli");
  ASSERT_EQ(prepare({"--random", dir.path, "--rows", "40", "--seq-len", "16", "--vocab", "64", "--seed", "5",
                     "--val-rows", "3"}),
            0);
  const auto train = st::ShardDataset::open(dir.path, "train");
  EXPECT_EQ(train.size(), 40);
  EXPECT_EQ(train.info().tokenizer_sha256, "random-vocab-64");
  EXPECT_NE(train.info().created_by.find("--random"), std::string::npos);
  EXPECT_EQ(st::ShardDataset::open(dir.path, "validation").size(), 3);
}

TEST(RandomShardsDeathTest, CommandLineRefusesBadValuesWithExit2NamingTheOption) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  TempDir dir("random-cli-bad");
  const std::string d = dir.path;
  EXPECT_EXIT(prepare({"--random", d, "--rows", "8", "--seq-len", "16", "--vocab", "2"}),
              ::testing::ExitedWithCode(2), "--vocab must be in \\[4, ");
  EXPECT_EXIT(prepare({"--random", d, "--rows", "8", "--seq-len", "1", "--vocab", "100"}),
              ::testing::ExitedWithCode(2), "--seq-len must be in \\[2, ");
  EXPECT_EXIT(prepare({"--random", d, "--rows", "8", "--vocab", "100"}), ::testing::ExitedWithCode(2),
              "--random needs --seq-len");
  EXPECT_EXIT(prepare({"--random", d, "--rows", "8", "--seq-len", "16", "--vocab", "100", "--split", "train"}),
              ::testing::ExitedWithCode(2), "--split cannot be combined with --random");
  EXPECT_EXIT(prepare({"--synthetic", d, "--rows", "8"}), ::testing::ExitedWithCode(2),
              "--rows only applies with --random");
  EXPECT_TRUE(st::list_shard_files(d, "train").empty());
}

TEST(RandomShards, BenchmarkSizeIsFast) {
  // The benchmark's shards are 256 x 1024; the brief asks for 4096 x 1024 in a couple of seconds.
  TempDir dir("random-fast");
  st::Stopwatch sw;
  const auto s = st::write_random_shards(options(dir.path, 4096, 1024, 32000));
  const double seconds = sw.seconds();
  EXPECT_LT(seconds, 3.0);
  EXPECT_EQ(st::ShardDataset::open(dir.path, "train").size(), 4096);
  EXPECT_EQ(s.val_rows, 256);
  std::printf("[ random    ] 4096 + 256 rows x 1024 tokens written in %.2f s\n", seconds);
}

}  // namespace
