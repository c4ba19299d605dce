// HDF5 shards: write_shards + ShardDataset (several shards, random reads with duplicates,
// stale shards, refusal of mismatched or foreign shards).
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <functional>
#include <numeric>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "data/prepare.hpp"
#include "data/synthetic.hpp"
#include "data/text_sources.hpp"
#include "data/tokenizer.hpp"
#include "io/h5util.hpp"
#include "io/shards.hpp"
#include "tests/common/paths.hpp"
#include "tests/common/test_util.hpp"

namespace fs = std::filesystem;

namespace {

using st::test::TempDir;

// A synthetic tokenizer and its sentiment data, made once per test program.
const std::string& synth_dir() { return st::test::synthetic_data_dir("shards-synth", 11, 200, 50); }

using st::test::error_of;

using st::test::contains;

// 200 synthetic sentiment rows prepared in memory (the expected values), L = 32.
const st::PreparedRows& prepared() {
  static const st::PreparedRows p = [] {
    const st::Tokenizer tok = st::Tokenizer::load(synth_dir() + "/tokenizer.model");
    st::PrepareOptions o;
    o.split = "train";
    o.max_seq_len = 32;
    o.loss_on = "all";
    return st::prepare_sst2_rows(st::read_sst2_tsv(synth_dir() + "/sentiment_train.tsv"), tok, o);
  }();
  return p;
}

std::vector<std::string> write_split(const std::string& dir, const std::string& split, int64_t shard_rows) {
  st::ShardInfo info = prepared().info;
  info.split = split;
  return st::write_shards(dir, info, prepared().rows, shard_rows);
}

TEST(Shards, ManyShardsReadBackInAnyOrderWithDuplicates) {
  TempDir dir("shards-many");
  const auto& p = prepared();
  const int64_t n = p.rows.size(), L = p.rows.seq_len;
  ASSERT_EQ(n, 200);
  const auto files = write_split(dir.path, "train", 30);
  ASSERT_EQ(files.size(), 7u);  // 6 x 30 + 20
  EXPECT_EQ(fs::path(files[0]).filename(), "train-00000.h5");
  EXPECT_EQ(fs::path(files[6]).filename(), "train-00006.h5");
  for (const auto& e : fs::directory_iterator(dir.path))
    EXPECT_NE(e.path().extension(), ".tmp") << e.path();

  const st::ShardDataset ds = st::ShardDataset::open(dir.path, "train");
  EXPECT_EQ(ds.size(), n);
  EXPECT_EQ(ds.seq_len(), L);
  EXPECT_EQ(ds.files(), files);
  EXPECT_EQ(ds.lengths(), p.rows.lengths);
  EXPECT_EQ(ds.labels(), p.rows.labels);
  EXPECT_EQ(ds.answer_start(), p.rows.answer_start);
  for (int64_t i = 0; i < n; ++i) {
    int32_t targets = 0;
    for (int64_t t = 1; t < L; ++t) targets += p.rows.loss_mask[static_cast<size_t>(i * L + t)];
    ASSERT_EQ(ds.loss_tokens()[static_cast<size_t>(i)], targets) << "row " << i;
    EXPECT_EQ(targets, p.rows.lengths[static_cast<size_t>(i)] - 1);  // loss_on = all
  }

  // Arbitrary order across shard boundaries, with duplicates, repeated reads into one Batch.
  st::Rng rng(5);
  st::Batch b;
  for (int round = 0; round < 5; ++round) {
    std::vector<int64_t> rows = {199, 0, 29, 30, 30, 199, 59, 1, 0};
    for (int k = 0; k < 40; ++k) rows.push_back(static_cast<int64_t>(rng.below(static_cast<uint64_t>(n))));
    ds.read_rows(rows, b);
    ASSERT_EQ(b.rows, static_cast<int64_t>(rows.size()));
    ASSERT_EQ(b.seq_len, L);
    int64_t max_len = 0, targets = 0;
    for (size_t i = 0; i < rows.size(); ++i) {
      const auto g = static_cast<size_t>(rows[i]);
      ASSERT_TRUE(std::equal(b.ids.begin() + static_cast<std::ptrdiff_t>(i * L),
                             b.ids.begin() + static_cast<std::ptrdiff_t>((i + 1) * L),
                             p.rows.ids.begin() + static_cast<std::ptrdiff_t>(g * L)))
          << "ids of requested row " << rows[i] << " at position " << i;
      ASSERT_TRUE(std::equal(b.loss_mask.begin() + static_cast<std::ptrdiff_t>(i * L),
                             b.loss_mask.begin() + static_cast<std::ptrdiff_t>((i + 1) * L),
                             p.rows.loss_mask.begin() + static_cast<std::ptrdiff_t>(g * L)));
      EXPECT_EQ(b.lengths[i], p.rows.lengths[g]);
      EXPECT_EQ(b.answer_start[i], p.rows.answer_start[g]);
      EXPECT_EQ(b.labels[i], p.rows.labels[g]);
      max_len = std::max<int64_t>(max_len, p.rows.lengths[g]);
      targets += ds.loss_tokens()[g];
    }
    EXPECT_EQ(b.max_length(), max_len);
    EXPECT_EQ(b.loss_tokens(), targets);
  }
  ds.read_rows({}, b);
  EXPECT_EQ(b.rows, 0);
  EXPECT_TRUE(b.ids.empty());
  EXPECT_THROW(ds.read_rows({n}, b), st::Error);
  EXPECT_THROW(ds.read_rows({-1}, b), st::Error);

  // A single shard file opens on its own (the split argument is ignored).
  const st::ShardDataset one = st::ShardDataset::open(files[6], "ignored");
  EXPECT_EQ(one.size(), 20);
  one.read_rows({19, 0}, b);
  EXPECT_EQ(b.lengths[0], p.rows.lengths[199]);
  EXPECT_EQ(b.lengths[1], p.rows.lengths[180]);
}

TEST(Shards, RewritingASplitDeletesItsStaleShardsOnly) {
  TempDir dir("shards-stale");
  write_split(dir.path, "train", 30);   // 7 shards
  write_split(dir.path, "train-extra", 100);  // another split whose name extends "train"
  st::test::write_file(dir.path + "/train-00099.h5.tmp", "left by an interrupted run");
  const auto files = write_split(dir.path, "train", 0);  // now one shard
  ASSERT_EQ(files.size(), 1u);
  EXPECT_EQ(st::list_shard_files(dir.path, "train"), files);
  EXPECT_FALSE(fs::exists(dir.path + "/train-00001.h5"));
  EXPECT_FALSE(fs::exists(dir.path + "/train-00099.h5.tmp"));
  EXPECT_EQ(st::list_shard_files(dir.path, "train-extra").size(), 2u);
  EXPECT_EQ(st::ShardDataset::open(dir.path, "train").size(), 200);
  EXPECT_EQ(st::ShardDataset::open(dir.path, "train-extra").size(), 200);
}

TEST(Shards, RefusesAShardWithAnotherTokenizerChecksum) {
  TempDir dir("shards-sha");
  const auto files = write_split(dir.path, "train", 120);
  ASSERT_EQ(files.size(), 2u);
  {
    st::h5::Handle f = st::h5::open_file_rw(files[1]);
    st::h5::write_attr(f, "tokenizer_sha256", std::string(64, '0'));
  }
  const std::string msg = error_of([&] { st::ShardDataset::open(dir.path, "train"); });
  EXPECT_TRUE(contains(msg, files[1])) << msg;
  EXPECT_TRUE(contains(msg, "tokenizer_sha256")) << msg;
}

TEST(Shards, RefusesAShardOfAnotherSequenceLengthOrTask) {
  TempDir dir("shards-task");
  const auto files = write_split(dir.path, "train", 120);
  {
    st::h5::Handle f = st::h5::open_file_rw(files[1]);
    st::h5::write_attr(f, "task", std::string("instruct"));
  }
  std::string msg = error_of([&] { st::ShardDataset::open(dir.path, "train"); });
  EXPECT_TRUE(contains(msg, files[1]) && contains(msg, "'task'")) << msg;
  {
    st::h5::Handle f = st::h5::open_file_rw(files[1]);
    st::h5::write_attr(f, "task", std::string("sst2"));
    st::h5::write_attr(f, "max_seq_len", int64_t{64});
  }
  msg = error_of([&] { st::ShardDataset::open(dir.path, "train"); });
  EXPECT_TRUE(contains(msg, files[1]) && contains(msg, "max_seq_len")) << msg;
}

TEST(Shards, RefusesAHandWrittenShardOfAnotherFormatVersion) {
  TempDir dir("shards-version");
  write_split(dir.path, "train", 0);
  // A file written by hand: right name, right datasets, format_version 2.
  const std::string path = dir.path + "/train-00001.h5";
  {
    st::h5::Handle f = st::h5::create_file(path);
    const std::vector<int32_t> ids(4 * 32, 7), lengths(4, 32), zeros(4, 0);
    const std::vector<uint8_t> mask(4 * 32, 1);
    st::h5::write_dataset(f, "ids", H5T_NATIVE_INT32, ids.data(), {4, 32});
    st::h5::write_dataset(f, "loss_mask", H5T_NATIVE_UINT8, mask.data(), {4, 32});
    st::h5::write_dataset(f, "lengths", H5T_NATIVE_INT32, lengths.data(), {4});
    st::h5::write_dataset(f, "answer_start", H5T_NATIVE_INT32, zeros.data(), {4});
    st::h5::write_dataset(f, "labels", H5T_NATIVE_INT32, zeros.data(), {4});
    st::h5::write_attr(f, "format_version", int64_t{2});
    st::h5::write_attr(f, "tokenizer_sha256", prepared().info.tokenizer_sha256);
  }
  const std::string msg = error_of([&] { st::ShardDataset::open(dir.path, "train"); });
  EXPECT_TRUE(contains(msg, path)) << msg;
  EXPECT_TRUE(contains(msg, "format_version")) << msg;
  // Opened alone, too.
  EXPECT_TRUE(contains(error_of([&] { st::ShardDataset::open(path, "train"); }), "format_version"));
}

TEST(Shards, RefusesWhenNoShardMatches) {
  TempDir dir("shards-none");
  write_split(dir.path, "train", 0);
  std::string msg = error_of([&] { st::ShardDataset::open(dir.path, "validation"); });
  EXPECT_TRUE(contains(msg, dir.path) && contains(msg, "validation")) << msg;
  msg = error_of([&] { st::ShardDataset::open(dir.path + "/missing", "train"); });
  EXPECT_TRUE(contains(msg, "missing")) << msg;
  // Not an HDF5 file at all.
  st::test::write_file(dir.path + "/junk-00000.h5", "not hdf5");
  msg = error_of([&] { st::ShardDataset::open(dir.path, "junk"); });
  EXPECT_TRUE(contains(msg, "junk-00000.h5")) << msg;
}

TEST(Shards, RefusesAShardWhoseDatasetsDisagreeWithItsAttributes) {
  TempDir dir("shards-shape");
  const auto files = write_split(dir.path, "train", 0);
  {
    st::h5::Handle f = st::h5::open_file_rw(files[0]);
    st::h5::write_attr(f, "num_rows", int64_t{201});
  }
  const std::string msg = error_of([&] { st::ShardDataset::open(dir.path, "train"); });
  EXPECT_TRUE(contains(msg, files[0]) && contains(msg, "'ids'")) << msg;
}

TEST(Shards, ChunkingAndCompressionAsDocumented) {
  TempDir dir("shards-layout");
  const auto files = write_split(dir.path, "train", 0);
  st::h5::Handle f = st::h5::open_file_read(files[0]);
  for (const char* name : {"ids", "loss_mask"}) {
    st::h5::Handle ds(H5Dopen2(f, name, H5P_DEFAULT), st::h5::Handle::Kind::dataset);
    st::h5::Handle dcpl(H5Dget_create_plist(ds), st::h5::Handle::Kind::plist);
    ASSERT_EQ(H5Pget_layout(dcpl), H5D_CHUNKED) << name;
    hsize_t chunk[2] = {0, 0};
    ASSERT_EQ(H5Pget_chunk(dcpl, 2, chunk), 2);
    EXPECT_EQ(chunk[0], 64u) << name;
    EXPECT_EQ(chunk[1], 32u) << name;
    const int nfilters = H5Pget_nfilters(dcpl);
    std::vector<H5Z_filter_t> filters;
    for (int i = 0; i < nfilters; ++i) {
      unsigned flags = 0, cd[8];
      size_t ncd = 8;
      filters.push_back(H5Pget_filter2(dcpl, static_cast<unsigned>(i), &flags, &ncd, cd, 0, nullptr, nullptr));
      if (filters.back() == H5Z_FILTER_DEFLATE) {
        ASSERT_GE(ncd, 1u);
        EXPECT_EQ(cd[0], 4u);
      }
    }
    EXPECT_EQ(filters, (std::vector<H5Z_filter_t>{H5Z_FILTER_SHUFFLE, H5Z_FILTER_DEFLATE})) << name;
  }
}

}  // namespace
