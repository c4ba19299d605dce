// Encoder-decoder (seq2seq) data: the seq2seq shard layout (write_shards + ShardDataset), its
// refusal next to causal shards, `prepare --arch seq2seq` for SST-2 and Alpaca (synthetic
// tokenizer always, the real T5 tokenizer when ../shared/data is present), random seq2seq
// shards, and the command-line checks.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <filesystem>
#include <functional>
#include <numeric>
#include <string>
#include <vector>

#include "cli/commands.hpp"
#include "core/error.hpp"
#include "core/rng.hpp"
#include "data/prepare.hpp"
#include "data/synthetic.hpp"
#include "data/templates.hpp"
#include "data/text_sources.hpp"
#include "data/tokenizer.hpp"
#include "io/h5util.hpp"
#include "io/shards.hpp"
#include "tests/common/paths.hpp"
#include "tests/common/test_util.hpp"

namespace fs = std::filesystem;

namespace {

using st::test::TempDir;

using st::test::error_of;

using st::test::contains;

std::vector<int32_t> concat(std::initializer_list<std::vector<int32_t>> parts) {
  std::vector<int32_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

// Row r of a padded [N, width] array, its first `len` entries.
std::vector<int32_t> row_of(const std::vector<int32_t>& a, int64_t width, size_t r, int64_t len) {
  const auto begin = a.begin() + static_cast<std::ptrdiff_t>(r * static_cast<size_t>(width));
  return std::vector<int32_t>(begin, begin + len);
}

// One small synthetic dataset + tokenizer per test program.
const std::string& synth_dir() { return st::test::synthetic_data_dir("seq2seq-synth", 17, 100, 100); }
std::string synth_tokenizer() { return synth_dir() + "/tokenizer.model"; }

// ---------------------------------------------------------------------------------- shards

constexpr int64_t kRows = 50, kL = 12, kLt = 7;

// Hand-made seq2seq rows: every length in range, padding 0, ids that name their row and position.
st::PreparedRows handmade_rows(int64_t n = kRows, int64_t L = kL, int64_t Lt = kLt) {
  st::PreparedRows p;
  st::ShardRows& r = p.rows;
  r.seq_len = L;
  r.target_len = Lt;
  r.ids.assign(static_cast<size_t>(n * L), 0);
  r.targets.assign(static_cast<size_t>(n * Lt), 0);
  st::Rng rng(3);
  for (int64_t i = 0; i < n; ++i) {
    const auto len = static_cast<int32_t>(1 + rng.below(static_cast<uint64_t>(L)));
    const auto tlen = static_cast<int32_t>(1 + rng.below(static_cast<uint64_t>(Lt)));
    for (int32_t t = 0; t < len; ++t) r.ids[static_cast<size_t>(i * L + t)] = static_cast<int32_t>(1000 * i + t + 3);
    for (int32_t t = 0; t < tlen; ++t)
      r.targets[static_cast<size_t>(i * Lt + t)] = static_cast<int32_t>(100000 + 1000 * i + t);
    r.lengths.push_back(len);
    r.target_lengths.push_back(tlen);
    r.answer_start.push_back(0);
    r.labels.push_back(static_cast<int32_t>(i % 3) - 1);
  }
  st::ShardInfo& info = p.info;
  info.format_version = st::kShardFormatVersion;
  info.task = "instruct";
  info.arch = std::string("seq2seq");
  info.split = "train";
  info.tokenizer_sha256 = "handmade";
  info.tokenizer_vocab_size = 200000;
  info.bos_id = -1;
  info.eos_id = 1;
  info.pad_id = 0;
  info.seq_len = L;
  info.target_len = Lt;
  info.decoder_start_id = 0;
  info.loss_on = "target";
  info.prompt_template = "alpaca";
  info.add_bos = false;
  info.label_names = {"negative", "positive"};  // the rows' labels 0 and 1 name these
  info.label_token_ids = {100000, 100001};
  return p;
}

TEST(ShardsSeq2Seq, RoundTripOverSeveralShardsInAnyOrder) {
  TempDir dir("s2s-roundtrip");
  const st::PreparedRows p = handmade_rows();
  const auto files = st::write_shards(dir.path, p.info, p.rows, 16);
  ASSERT_EQ(files.size(), 4u);  // 16 + 16 + 16 + 2

  const st::ShardDataset ds = st::ShardDataset::open(dir.path, "train");
  ASSERT_EQ(ds.size(), kRows);
  EXPECT_TRUE(ds.seq2seq());
  EXPECT_EQ(ds.seq_len(), kL);
  EXPECT_EQ(ds.target_len(), kLt);
  EXPECT_EQ(ds.info().arch, "seq2seq");
  EXPECT_EQ(ds.info().target_len, kLt);
  EXPECT_EQ(ds.info().decoder_start_id, 0);
  EXPECT_EQ(ds.info().loss_on, "target");
  EXPECT_FALSE(ds.info().add_bos);
  EXPECT_EQ(ds.lengths(), p.rows.lengths);
  EXPECT_EQ(ds.labels(), p.rows.labels);
  EXPECT_EQ(ds.target_lengths(), p.rows.target_lengths);
  EXPECT_EQ(ds.loss_tokens(), p.rows.target_lengths);  // every target token is a loss target

  st::Batch b;
  st::Rng rng(9);
  for (int round = 0; round < 4; ++round) {
    std::vector<int64_t> rows = {49, 0, 15, 16, 16, 48, 31, 32, 0};
    for (int k = 0; k < 30; ++k) rows.push_back(static_cast<int64_t>(rng.below(kRows)));
    ds.read_rows(rows, b);
    ASSERT_EQ(b.rows, static_cast<int64_t>(rows.size()));
    ASSERT_EQ(b.seq_len, kL);
    ASSERT_EQ(b.target_len, kLt);
    ASSERT_EQ(b.ids.size(), rows.size() * kL);
    ASSERT_EQ(b.targets.size(), rows.size() * kLt);
    ASSERT_EQ(b.target_lengths.size(), rows.size());
    EXPECT_TRUE(b.loss_mask.empty());
    int64_t tokens = 0, max_len = 0, max_tlen = 0;
    for (size_t i = 0; i < rows.size(); ++i) {
      const auto g = static_cast<size_t>(rows[i]);
      ASSERT_EQ(row_of(b.ids, kL, i, kL), row_of(p.rows.ids, kL, g, kL)) << "ids of row " << g << " at " << i;
      ASSERT_EQ(row_of(b.targets, kLt, i, kLt), row_of(p.rows.targets, kLt, g, kLt)) << "targets of row " << g;
      EXPECT_EQ(b.lengths[i], p.rows.lengths[g]);
      EXPECT_EQ(b.target_lengths[i], p.rows.target_lengths[g]);
      EXPECT_EQ(b.labels[i], p.rows.labels[g]);
      EXPECT_EQ(b.answer_start[i], 0);
      tokens += p.rows.target_lengths[g];
      max_len = std::max<int64_t>(max_len, p.rows.lengths[g]);
      max_tlen = std::max<int64_t>(max_tlen, p.rows.target_lengths[g]);
    }
    EXPECT_EQ(b.loss_tokens(), tokens);
    EXPECT_EQ(b.max_length(), max_len);
    EXPECT_EQ(b.max_target_length(), max_tlen);
  }

  // The targets dataset is chunked like ids: [min(64, N), Lt], shuffle + deflate.
  st::h5::Handle f = st::h5::open_file_read(files[0]);
  st::h5::Handle dset(H5Dopen2(f, "targets", H5P_DEFAULT), st::h5::Handle::Kind::dataset);
  st::h5::Handle dcpl(H5Dget_create_plist(dset), st::h5::Handle::Kind::plist);
  hsize_t chunk[2] = {0, 0};
  ASSERT_EQ(H5Pget_chunk(dcpl, 2, chunk), 2);
  EXPECT_EQ(chunk[0], 16u);
  EXPECT_EQ(chunk[1], static_cast<hsize_t>(kLt));
  EXPECT_EQ(H5Pget_nfilters(dcpl), 2);
  EXPECT_FALSE(st::h5::exists(f, "loss_mask"));
  EXPECT_EQ(st::h5::read_attr_string(f, "arch", "t"), "seq2seq");
  EXPECT_EQ(st::h5::read_attr_int(f, "target_len", "t"), kLt);
  EXPECT_EQ(st::h5::read_attr_int(f, "decoder_start_id", "t"), 0);
}

TEST(ShardsSeq2Seq, ABatchReusedForACausalSplitDropsTheTargets) {
  TempDir dir("s2s-reuse");
  const st::PreparedRows p = handmade_rows();
  st::write_shards(dir.path, p.info, p.rows, 0);
  st::write_random_shards([&] {
    st::RandomShardOptions o;
    o.output_dir = dir.path + "/causal";
    o.rows = 8;
    o.seq_len = 6;
    o.vocab = 50;
    return o;
  }());
  st::Batch b;
  st::ShardDataset::open(dir.path, "train").read_rows({3, 4}, b);
  ASSERT_EQ(b.target_lengths.size(), 2u);
  const st::ShardDataset causal = st::ShardDataset::open(dir.path + "/causal", "train");
  EXPECT_FALSE(causal.seq2seq());
  EXPECT_EQ(causal.target_len(), 0);
  EXPECT_TRUE(causal.target_lengths().empty());
  causal.read_rows({0, 1}, b);
  EXPECT_EQ(b.target_len, 0);
  EXPECT_TRUE(b.targets.empty());
  EXPECT_TRUE(b.target_lengths.empty());
  EXPECT_EQ(b.max_target_length(), 0);
  EXPECT_EQ(b.loss_mask.size(), 12u);
  EXPECT_EQ(b.loss_tokens(), 2 * 5);  // causal count: mask ones from position 1
}

TEST(ShardsSeq2Seq, WriteRefusesRowsThatDisagreeWithTheLayout) {
  TempDir dir("s2s-write-bad");
  const st::PreparedRows good = handmade_rows(4);
  auto refused = [&](const st::ShardInfo& info, const st::ShardRows& rows, const std::string& part) {
    try {
      st::write_shards(dir.path, info, rows, 0);
      ADD_FAILURE() << "accepted rows that should fail with '" << part << "'";
    } catch (const st::Error& e) {
      EXPECT_TRUE(contains(e.what(), part)) << e.what();
    }
  };
  st::ShardInfo info = good.info;
  info.target_len = kLt + 1;
  refused(info, good.rows, "target_len mismatch");
  st::ShardRows rows = good.rows;
  rows.targets.pop_back();
  refused(good.info, rows, "targets has");
  rows = good.rows;
  rows.target_lengths[2] = kLt + 1;
  refused(good.info, rows, "target length");
  rows = good.rows;
  rows.loss_mask.assign(rows.ids.size(), 1);
  refused(good.info, rows, "loss_mask");
  info = good.info;
  info.arch = std::string("causal");  // causal info with seq2seq rows
  info.target_len = 0;
  refused(info, good.rows, "loss_mask has 0 elements");
  info.arch = std::string("encoder");
  refused(info, good.rows, "causal or seq2seq");
  EXPECT_TRUE(st::list_shard_files(dir.path, "train").empty());
}

TEST(ShardsSeq2Seq, RefusesMixedArchOrTargetLengthInOneSplit) {
  TempDir causal_dir("s2s-mix-causal"), s2s_dir("s2s-mix-s2s");
  // A causal split of two shards (random rows, L = kL) and a seq2seq split of two.
  st::RandomShardOptions ro;
  ro.output_dir = causal_dir.path;
  ro.rows = 20;
  ro.seq_len = kL;
  ro.vocab = 100;
  st::PreparedRows c = st::make_random_rows(ro, "train", 20);
  c.info.tokenizer_sha256 = "handmade";
  c.info.task = "instruct";
  st::write_shards(causal_dir.path, c.info, c.rows, 10);
  const st::PreparedRows p = handmade_rows(20);
  const auto files = st::write_shards(s2s_dir.path, p.info, p.rows, 10);

  // A seq2seq shard among causal ones: refused naming it and 'arch'.
  const std::string intruder = causal_dir.path + "/train-00001.h5";
  fs::copy_file(files[1], intruder, fs::copy_options::overwrite_existing);
  std::string msg = error_of([&] { st::ShardDataset::open(causal_dir.path, "train"); });
  EXPECT_TRUE(contains(msg, intruder) && contains(msg, "'arch'")) << msg;

  // Another target length in the second seq2seq shard.
  {
    st::h5::Handle f = st::h5::open_file_rw(files[1]);
    st::h5::write_attr(f, "target_len", int64_t{kLt + 3});
  }
  msg = error_of([&] { st::ShardDataset::open(s2s_dir.path, "train"); });
  EXPECT_TRUE(contains(msg, files[1]) && contains(msg, "'target_len'")) << msg;

  // A seq2seq shard without target_len at all.
  {
    st::h5::Handle f = st::h5::open_file_rw(files[1]);
    ASSERT_GE(H5Adelete(f, "target_len"), 0);
  }
  msg = error_of([&] { st::ShardDataset::open(files[1], "train"); });
  EXPECT_TRUE(contains(msg, files[1]) && contains(msg, "target_len")) << msg;
  // An unknown arch.
  {
    st::h5::Handle f = st::h5::open_file_rw(files[0]);
    st::h5::write_attr(f, "arch", std::string("encoder-only"));
  }
  msg = error_of([&] { st::ShardDataset::open(files[0], "train"); });
  EXPECT_TRUE(contains(msg, files[0]) && contains(msg, "'arch'") && contains(msg, "encoder-only")) << msg;
}

TEST(ShardsSeq2Seq, CausalShardsKeepTheirLayoutAndOpenWithoutTheNewAttributes) {
  TempDir dir("s2s-old-causal");
  st::RandomShardOptions ro;
  ro.output_dir = dir.path;
  ro.rows = 10;
  ro.seq_len = 8;
  ro.vocab = 30;
  const auto s = st::write_random_shards(ro);
  const std::string file = s.shard_files[0];
  {
    // The causal layout of format version 1, unchanged: no seq2seq datasets or attributes.
    st::h5::Handle f = st::h5::open_file_rw(file);
    for (const char* name : {"ids", "loss_mask", "lengths", "answer_start", "labels"})
      EXPECT_TRUE(st::h5::exists(f, name)) << name;
    for (const char* name : {"targets", "target_lengths"}) EXPECT_FALSE(st::h5::exists(f, name)) << name;
    EXPECT_FALSE(st::h5::has_attr(f, "target_len"));
    EXPECT_FALSE(st::h5::has_attr(f, "decoder_start_id"));
    // A file from before the arch attribute reads as causal.
    ASSERT_GE(H5Adelete(f, "arch"), 0);
  }
  const st::ShardDataset ds = st::ShardDataset::open(file, "train");
  EXPECT_EQ(ds.info().arch, "causal");
  EXPECT_FALSE(ds.seq2seq());
  EXPECT_EQ(ds.target_len(), 0);
  EXPECT_EQ(ds.info().decoder_start_id, 0);
  EXPECT_EQ(ds.loss_tokens(), std::vector<int32_t>(10, 7));
}

// ---------------------------------------------------------------------------------- prepare

const char* kTsv =
    "sentence\tlabel\n"
    "a good film .\t1\n"
    "the plot is dull\t0\n"
    "honestly , the plot is clever , and the acting is warm , but the music is never dull from start to "
    "finish and the cast was superb in every scene\t1\n";

st::PrepareOptions seq2seq_options(const std::string& input, const std::string& tokenizer, const std::string& out,
                                   int64_t L, int64_t Lt) {
  st::PrepareOptions o;
  o.input = input;
  o.tokenizer = tokenizer;
  o.output_dir = out;
  o.split = "train";
  o.arch = std::string("seq2seq");
  o.max_seq_len = L;
  o.max_target_len = Lt;
  return o;
}

TEST(PrepareSeq2Seq, Sst2TextToTextRowsTruncationAndReport) {
  TempDir dir("s2s-sst2");
  const st::Tokenizer tok = st::Tokenizer::load(synth_tokenizer());
  const std::string tsv = dir.path + "/small.tsv";
  st::test::write_file(tsv, kTsv);
  const st::Sst2Source src = st::read_sst2_tsv(tsv);
  ASSERT_EQ(src.rows.size(), 3u);
  // L: the two short rows fit whole (prompt + eos), the long one does not.
  auto full_len = [&](size_t r) { return static_cast<int64_t>(tok.encode(st::sst2_seq2seq_prompt(src.rows[r].sentence)).size()) + 1; };
  const int64_t L = std::max(full_len(0), full_len(1)) + 2, Lt = 4;
  ASSERT_GT(full_len(2), L);
  const st::PrepareStats s = st::prepare_dataset(seq2seq_options(tsv, synth_tokenizer(), dir.path + "/out", L, Lt));
  EXPECT_EQ(s.arch, "seq2seq");
  EXPECT_EQ(s.rows_written, 3);
  EXPECT_EQ(s.rows_truncated, 1);
  EXPECT_EQ(s.rows_prompt_cut, 1);
  EXPECT_EQ(s.rows_answer_cut, 0);
  const std::vector<int32_t> label_ids = {tok.encode("negative")[0], tok.encode("positive")[0]};
  EXPECT_EQ(s.label_token_ids, label_ids);

  const st::ShardDataset ds = st::ShardDataset::open(dir.path + "/out", "train");
  ASSERT_TRUE(ds.seq2seq());
  const st::ShardInfo& info = ds.info();
  EXPECT_EQ(info.task, "sst2");
  EXPECT_EQ(info.prompt_template, st::kSst2Seq2SeqTemplateName);
  EXPECT_EQ(info.target_len, Lt);
  EXPECT_EQ(info.decoder_start_id, tok.pad_id());
  EXPECT_EQ(info.label_names, (std::vector<std::string>{"negative", "positive"}));
  EXPECT_EQ(info.label_token_ids, label_ids);
  EXPECT_FALSE(info.add_bos);  // the default add_bos = true does not apply to seq2seq
  EXPECT_TRUE(info.add_eos);
  EXPECT_EQ(info.rows_truncated, 1);

  st::Batch b;
  ds.read_rows({0, 1, 2}, b);
  for (size_t i = 0; i < 3; ++i) {
    const auto& row = src.rows[i];
    const std::vector<int32_t> input = row_of(b.ids, L, i, b.lengths[i]);
    const std::vector<int32_t> target = row_of(b.targets, Lt, i, b.target_lengths[i]);
    EXPECT_EQ(target, concat({tok.encode(st::sst2_label_word(row.label)), {tok.eos_id()}}));
    EXPECT_EQ(target[0], label_ids[static_cast<size_t>(row.label)]);
    EXPECT_EQ(b.labels[i], row.label);
    EXPECT_EQ(input.back(), tok.eos_id());
    EXPECT_NE(input.front(), tok.bos_id());
    const auto full = concat({tok.encode(st::sst2_seq2seq_prompt(row.sentence)), {tok.eos_id()}});
    if (static_cast<int64_t>(full.size()) <= L) {
      EXPECT_EQ(input, full);
    } else {  // the long sentence: cut word by word, eos kept last
      EXPECT_LE(b.lengths[i], L);
      const std::string text = tok.decode(std::vector<int32_t>(input.begin(), input.end() - 1));
      EXPECT_EQ(text.rfind("sst2 sentence: honestly , the plot", 0), 0u) << text;
      EXPECT_FALSE(contains(text, "scene")) << text;
    }
    for (int64_t t = b.lengths[i]; t < L; ++t) EXPECT_EQ(b.ids[i * L + static_cast<size_t>(t)], tok.pad_id());
    for (int64_t t = b.target_lengths[i]; t < Lt; ++t)
      EXPECT_EQ(b.targets[i * Lt + static_cast<size_t>(t)], tok.pad_id());
  }
  EXPECT_EQ(s.loss_tokens, b.loss_tokens());
  EXPECT_EQ(s.target_tokens, b.loss_tokens());
  EXPECT_EQ(s.max_target_length, b.max_target_length());
  EXPECT_EQ(s.tokens, std::accumulate(b.lengths.begin(), b.lengths.end(), int64_t{0}));

  const std::string report = st::format_prepare_report(s);
  for (const char* part : {"arch       seq2seq", "input cut 1", "target cut 0", "targets    ", "of target_len 4",
                           "of seq_len "})
    EXPECT_TRUE(contains(report, part)) << "missing '" << part << "' in\n" << report;
  // The causal report names its arch too.
  st::PrepareOptions causal = seq2seq_options(tsv, synth_tokenizer(), dir.path + "/causal", 32, 64);
  causal.arch = std::string("causal");
  EXPECT_TRUE(contains(st::format_prepare_report(st::prepare_dataset(causal)), "arch       causal"));
}

TEST(PrepareSeq2Seq, InstructionPromptToOutputWithCutsAndDrops) {
  TempDir dir("s2s-instruct");
  const st::Tokenizer tok = st::Tokenizer::load(synth_tokenizer());
  const std::string jsonl = dir.path + "/rows.jsonl";
  st::test::write_file(jsonl,
                       R"({"instruction":"Add the two numbers.","input":"2 + 3","output":"5"})" "\n"
                       R"({"instruction":"Reverse the order of the words.","input":"apple river chair cloud","output":"cloud chair river apple"})" "\n"
                       R"({"instruction":"Name a colour.","input":"","output":"blue"})" "\n");
  // Lt: the short outputs fit whole (with the eos), the reversed word list does not.
  const int64_t L = 96;
  const int64_t Lt = static_cast<int64_t>(std::max(tok.encode("5").size(), tok.encode("blue").size())) + 1;
  ASSERT_GT(static_cast<int64_t>(tok.encode("cloud chair river apple").size()) + 1, Lt);
  for (const std::string tmpl_name : {"alpaca", "plain"}) {
    SCOPED_TRACE(tmpl_name);
    st::PrepareOptions o = seq2seq_options(jsonl, synth_tokenizer(), dir.path + "/out", L, Lt);
    o.prompt_template = tmpl_name;
    const st::PrepareStats s = st::prepare_dataset(o);
    EXPECT_EQ(s.task, "instruct");
    EXPECT_EQ(s.rows_written, 3);
    const st::ShardDataset ds = st::ShardDataset::open(o.output_dir, "train");
    EXPECT_EQ(ds.info().prompt_template, tmpl_name);
    EXPECT_TRUE(ds.info().label_token_ids.empty());
    st::Batch b;
    ds.read_rows({0, 1, 2}, b);
    const st::InstructTemplate tmpl = st::parse_instruct_template(tmpl_name);
    const std::vector<std::array<std::string, 3>> rows = {{"Add the two numbers.", "2 + 3", "5"},
                                                          {"Reverse the order of the words.", "apple river chair cloud",
                                                           "cloud chair river apple"},
                                                          {"Name a colour.", "", "blue"}};
    int64_t cut = 0;
    for (size_t i = 0; i < 3; ++i) {
      EXPECT_EQ(row_of(b.ids, L, i, b.lengths[i]),
                concat({tok.encode(st::instruct_prompt(tmpl, rows[i][0], rows[i][1])), {tok.eos_id()}}));
      const auto out = tok.encode(rows[i][2]);
      const std::vector<int32_t> target = row_of(b.targets, Lt, i, b.target_lengths[i]);
      if (static_cast<int64_t>(out.size()) + 1 <= Lt) {
        EXPECT_EQ(target, concat({out, {tok.eos_id()}}));
      } else {  // cut from its end, eos kept last
        ++cut;
        EXPECT_EQ(target, concat({std::vector<int32_t>(out.begin(), out.begin() + Lt - 1), {tok.eos_id()}}));
      }
      EXPECT_EQ(b.labels[i], -1);
    }
    EXPECT_EQ(cut, 1) << "the reversed word list is longer than " << Lt - 1 << " tokens";
    EXPECT_EQ(s.rows_answer_cut, cut);
    EXPECT_EQ(s.rows_truncated, cut);
  }

  // An input cut to a tiny L: the template's structure stays (content cut), eos last.
  st::PrepareOptions o = seq2seq_options(jsonl, synth_tokenizer(), dir.path + "/tight", 0, Lt);
  o.prompt_template = "plain";
  const int64_t empty = static_cast<int64_t>(tok.encode(st::instruct_prompt(st::InstructTemplate::plain, "", "x")).size());
  o.max_seq_len = empty + 3;
  const st::PrepareStats s = st::prepare_dataset(o);
  EXPECT_EQ(s.rows_written, 3);
  EXPECT_GE(s.rows_prompt_cut, 2);
  const st::ShardDataset ds = st::ShardDataset::open(o.output_dir, "train");
  st::Batch b;
  ds.read_rows({1}, b);
  EXPECT_LE(b.lengths[0], o.max_seq_len);
  EXPECT_EQ(b.ids[static_cast<size_t>(b.lengths[0] - 1)], tok.eos_id());
  EXPECT_TRUE(contains(tok.decode(row_of(b.ids, o.max_seq_len, 0, b.lengths[0] - 1)), "### Response:"));

  // A target that encodes to nothing is dropped and counted (the reader already refuses empty
  // outputs, so this goes through prepare_instruct_rows directly).
  st::InstructSource src;
  src.path = "mem.jsonl";
  src.rows_read = 2;
  src.rows.push_back({1, "Say nothing.", "", ""});
  src.rows.push_back({2, "Say blue.", "", "blue"});
  st::PrepareOptions mem;
  mem.split = "x";
  mem.arch = std::string("seq2seq");
  mem.max_target_len = 16;
  const st::PreparedRows p = st::prepare_instruct_rows(src, tok, mem);
  EXPECT_EQ(p.stats.rows_written, 1);
  EXPECT_EQ(p.stats.rows_dropped, 1);
  EXPECT_EQ(p.stats.dropped_lines, (std::vector<int64_t>{1}));
  EXPECT_EQ(p.rows.target_lengths, (std::vector<int32_t>{static_cast<int32_t>(tok.encode("blue").size() + 1)}));
}

TEST(PrepareSeq2Seq, AddEosFalseLeavesBothSidesWithoutEos) {
  const st::Tokenizer tok = st::Tokenizer::load(synth_tokenizer());
  st::PrepareOptions o = seq2seq_options("m.tsv", synth_tokenizer(), "unused", 32, 4);
  o.add_eos = false;
  const st::PreparedRows p = st::prepare_sst2_rows(st::parse_sst2_tsv(kTsv, "m.tsv", 1), tok, o);
  ASSERT_EQ(p.rows.size(), 1);
  EXPECT_EQ(row_of(p.rows.ids, 32, 0, p.rows.lengths[0]), tok.encode("sst2 sentence: a good film ."));
  EXPECT_EQ(row_of(p.rows.targets, 4, 0, p.rows.target_lengths[0]), tok.encode("positive"));
  EXPECT_FALSE(p.info.add_eos);
}

TEST(PrepareSeq2Seq, OptionsAreCheckedNamingTheFlag) {
  TempDir dir("s2s-options");
  const std::string tsv = dir.path + "/small.tsv";
  st::test::write_file(tsv, kTsv);
  st::PrepareOptions o = seq2seq_options(tsv, synth_tokenizer(), dir.path + "/out", 16, 1);
  EXPECT_TRUE(contains(error_of([&] { st::prepare_dataset(o); }), "--max-target-len must be in [2, "));
  o.max_target_len = 8;
  o.arch = std::string("t5");
  EXPECT_TRUE(contains(error_of([&] { st::prepare_dataset(o); }), "--arch must be causal or seq2seq"));
  // The library entry points check too.
  const st::Tokenizer tok = st::Tokenizer::load(synth_tokenizer());
  EXPECT_TRUE(contains(error_of([&] { st::prepare_sst2_rows(st::parse_sst2_tsv(kTsv, "m.tsv"), tok, o); }), "--arch"));
  EXPECT_TRUE(st::list_shard_files(dir.path + "/out", "train").empty());
}

// ---------------------------------------------------------------------------------- real T5 data

TEST(PrepareSeq2SeqSharedData, Sst2DevWithTheT5Tokenizer) {
  const std::string data = st::test::shared_data_dir();
  if (data.empty()) GTEST_SKIP() << "../shared/data not found next to the repository";
  const std::string tok_path = data + "/tokenizers/t5/spiece.model";
  if (!fs::exists(tok_path)) GTEST_SKIP() << tok_path << " not found";
  TempDir dir("s2s-t5-sst2");
  const st::Tokenizer tok = st::Tokenizer::load(tok_path);
  ASSERT_EQ(tok.bos_id(), -1) << "T5 tokenizers have no BOS";
  ASSERT_EQ(tok.eos_id(), 1);
  ASSERT_EQ(tok.pad_id(), 0);

  st::PrepareOptions o = seq2seq_options(data + "/sst2/dev.tsv", tok_path, dir.path, 128, 4);
  o.split = "dev";
  o.limit = 12;
  const st::PrepareStats s = st::prepare_dataset(o);  // add_bos true by default: ignored for seq2seq
  EXPECT_EQ(s.rows_read, 12);
  EXPECT_EQ(s.rows_written, 12);
  EXPECT_EQ(s.rows_truncated, 0);
  // "▁negative" and "▁positive" in the T5 vocabulary (what transformers' T5Tokenizer gives too).
  EXPECT_EQ(s.label_token_ids, (std::vector<int32_t>{2841, 1465}));
  EXPECT_EQ(s.max_target_length, 2);

  const st::ShardDataset ds = st::ShardDataset::open(dir.path, "dev");
  EXPECT_EQ(ds.info().decoder_start_id, 0);
  EXPECT_EQ(ds.info().bos_id, -1);
  EXPECT_EQ(ds.info().eos_id, 1);
  EXPECT_EQ(ds.info().label_token_ids, (std::vector<int32_t>{2841, 1465}));
  const st::Sst2Source src = st::read_sst2_tsv(data + "/sst2/dev.tsv", 12);
  st::Batch b;
  ds.read_rows({0, 5, 11}, b);
  size_t k = 0;
  for (size_t r : {0u, 5u, 11u}) {
    const auto& row = src.rows[r];
    EXPECT_EQ(row_of(b.ids, 128, k, b.lengths[k]), concat({tok.encode("sst2 sentence: " + row.sentence), {1}}))
        << row.sentence;
    EXPECT_EQ(row_of(b.targets, 4, k, b.target_lengths[k]),
              (std::vector<int32_t>{row.label == 1 ? 1465 : 2841, 1}));
    EXPECT_EQ(b.labels[k], row.label);
    ++k;
  }
}

TEST(PrepareSeq2SeqSharedData, AlpacaRowsWithTheT5Tokenizer) {
  const std::string data = st::test::shared_data_dir();
  if (data.empty()) GTEST_SKIP() << "../shared/data not found next to the repository";
  const std::string tok_path = data + "/tokenizers/t5/spiece.model";
  if (!fs::exists(tok_path)) GTEST_SKIP() << tok_path << " not found";
  TempDir dir("s2s-t5-alpaca");
  const st::Tokenizer tok = st::Tokenizer::load(tok_path);
  st::PrepareOptions o = seq2seq_options(data + "/instruct/alpaca_en_demo.json", tok_path, dir.path, 256, 32);
  o.limit = 4;
  const st::PrepareStats s = st::prepare_dataset(o);
  EXPECT_EQ(s.rows_read, 4);
  ASSERT_EQ(s.rows_written, 4);
  const st::InstructSource src = st::read_alpaca(o.input, 4);
  const st::ShardDataset ds = st::ShardDataset::open(dir.path, "train");
  st::Batch b;
  ds.read_rows({0, 1, 2, 3}, b);
  int64_t cut = 0;
  for (size_t i = 0; i < 4; ++i) {
    const auto& r = src.rows[i];
    const auto input = concat({tok.encode(st::instruct_prompt(st::InstructTemplate::alpaca, r.instruction, r.input)), {1}});
    if (static_cast<int64_t>(input.size()) <= 256) {
      EXPECT_EQ(row_of(b.ids, 256, i, b.lengths[i]), input);
    }
    const auto out = tok.encode(r.output);
    const std::vector<int32_t> target = row_of(b.targets, 32, i, b.target_lengths[i]);
    EXPECT_EQ(target.back(), 1);
    const size_t kept = std::min<size_t>(out.size(), 31);
    cut += kept < out.size();
    EXPECT_EQ(std::vector<int32_t>(target.begin(), target.end() - 1),
              std::vector<int32_t>(out.begin(), out.begin() + static_cast<std::ptrdiff_t>(kept)));
  }
  EXPECT_EQ(s.rows_answer_cut, cut);
  EXPECT_GT(cut, 0) << "demo responses run longer than 31 T5 tokens";
}

// ---------------------------------------------------------------------------------- random

st::RandomShardOptions random_options(const std::string& dir, int64_t rows, int64_t L, int64_t Lt, int64_t V) {
  st::RandomShardOptions o;
  o.output_dir = dir;
  o.rows = rows;
  o.seq_len = L;
  o.vocab = V;
  o.arch = std::string("seq2seq");
  o.target_len = Lt;
  o.seed = 42;
  return o;
}

TEST(RandomShardsSeq2Seq, ShapesIdsAndAttributes) {
  TempDir dir("s2s-random");
  const int64_t N = 64, L = 20, Lt = 9, V = 50;
  const st::RandomShardStats s = st::write_random_shards(random_options(dir.path, N, L, Lt, V));
  EXPECT_EQ(s.arch, "seq2seq");
  EXPECT_EQ(s.target_len, Lt);
  EXPECT_TRUE(contains(st::format_random_shard_report(s), "seq2seq"));
  for (const std::string split : {"train", "validation"}) {
    const st::ShardDataset ds = st::ShardDataset::open(dir.path, split);
    ASSERT_EQ(ds.size(), split == "train" ? N : N / 16);
    ASSERT_TRUE(ds.seq2seq());
    const st::ShardInfo& info = ds.info();
    EXPECT_EQ(info.task, "random");
    EXPECT_EQ(info.seq_len, L);
    EXPECT_EQ(info.target_len, Lt);
    EXPECT_EQ(info.decoder_start_id, 0);
    EXPECT_EQ(info.pad_id, 0);
    EXPECT_EQ(info.eos_id, 2);
    EXPECT_FALSE(info.add_bos);
    EXPECT_TRUE(info.add_eos);
    EXPECT_EQ(info.tokenizer_sha256, "random-vocab-50");
    std::vector<int64_t> rows(static_cast<size_t>(ds.size()));
    std::iota(rows.begin(), rows.end(), 0);
    st::Batch b;
    ds.read_rows(rows, b);
    EXPECT_EQ(b.loss_tokens(), ds.size() * Lt);
    for (size_t r = 0; r < rows.size(); ++r) {
      ASSERT_EQ(b.lengths[r], L);
      ASSERT_EQ(b.target_lengths[r], Lt);
      ASSERT_EQ(ds.loss_tokens()[r], Lt);
      ASSERT_EQ(b.labels[r], -1);
      for (int64_t t = 0; t < L; ++t) {
        const int32_t id = b.ids[r * L + static_cast<size_t>(t)];
        if (t == L - 1) {
          ASSERT_EQ(id, 2);
        } else {
          ASSERT_TRUE(id >= 3 && id < V) << id;
        }
      }
      for (int64_t t = 0; t < Lt; ++t) {
        const int32_t id = b.targets[r * Lt + static_cast<size_t>(t)];
        if (t == Lt - 1) {
          ASSERT_EQ(id, 2);
        } else {
          ASSERT_TRUE(id >= 3 && id < V) << id;
        }
      }
    }
  }
}

TEST(RandomShardsSeq2Seq, DeterministicAndApartFromTheCausalDraws) {
  const st::RandomShardOptions a = random_options("unused", 8, 32, 12, 32000);
  st::RandomShardOptions other_seed = a;
  other_seed.seed = 43;
  const auto pa = st::make_random_rows(a, "train", 8);
  const auto again = st::make_random_rows(a, "train", 8);
  EXPECT_EQ(pa.rows.ids, again.rows.ids);
  EXPECT_EQ(pa.rows.targets, again.rows.targets);
  EXPECT_TRUE(pa.rows.loss_mask.empty());
  EXPECT_NE(pa.rows.targets, st::make_random_rows(other_seed, "train", 8).rows.targets);
  EXPECT_NE(pa.rows.targets, st::make_random_rows(a, "validation", 8).rows.targets);
  // The first rows do not depend on how many are drawn.
  const auto more = st::make_random_rows(a, "train", 16);
  EXPECT_TRUE(std::equal(pa.rows.targets.begin(), pa.rows.targets.end(), more.rows.targets.begin()));
  // Encoder rows are the causal rows' ids without their BOS; targets are another stream.
  st::RandomShardOptions causal = a;
  causal.arch = std::string("causal");
  causal.target_len = 0;
  const auto pc = st::make_random_rows(causal, "train", 8);
  for (size_t r = 0; r < 8; ++r) {
    EXPECT_EQ(row_of(pa.rows.ids, 32, r, 31), std::vector<int32_t>(pc.rows.ids.begin() + static_cast<std::ptrdiff_t>(r * 32 + 1),
                                                                   pc.rows.ids.begin() + static_cast<std::ptrdiff_t>(r * 32 + 32)));
    EXPECT_NE(row_of(pa.rows.targets, 12, r, 11), row_of(pa.rows.ids, 32, r, 11));
  }
}

TEST(RandomShardsSeq2Seq, BadValuesAreRefusedNamingTheOption) {
  TempDir dir("s2s-random-bad");
  auto o = random_options(dir.path, 8, 16, 4, 100);
  o.target_len = 1;
  st::test::expect_input_error([&] { st::write_random_shards(o); }, {"--target-len must be in [2, "});
  o.target_len = 0;
  st::test::expect_input_error([&] { st::write_random_shards(o); }, {"--target-len"});
  o = random_options(dir.path, 8, 16, 4, 100);
  o.arch = std::string("causal");
  st::test::expect_input_error([&] { st::write_random_shards(o); }, {"--target-len only applies with --arch seq2seq"});
  o.arch = std::string("t5");
  st::test::expect_input_error([&] { st::write_random_shards(o); }, {"--arch must be causal or seq2seq"});
  EXPECT_TRUE(st::list_shard_files(dir.path, "train").empty());
}

// ---------------------------------------------------------------------------------- command line

// `shardtune prepare ...` as main() runs it: argv[0] is the subcommand.
int prepare(std::vector<std::string> args) {
  args.insert(args.begin(), "prepare");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  return st::cmd_prepare(static_cast<int>(argv.size()), argv.data());
}

TEST(PrepareSeq2Seq, CommandLineWritesSeq2SeqShards) {
  TempDir dir("s2s-cli");
  ASSERT_EQ(prepare({"--input", synth_dir() + "/sentiment_dev.tsv", "--tokenizer", synth_tokenizer(), "--output",
                     dir.path, "--split", "dev", "--arch", "seq2seq", "--max-seq-len", "40", "--max-target-len", "3",
                     "--add-bos", "false"}),
            0);
  const st::ShardDataset ds = st::ShardDataset::open(dir.path, "dev");
  EXPECT_TRUE(ds.seq2seq());
  EXPECT_EQ(ds.target_len(), 3);
  EXPECT_EQ(ds.seq_len(), 40);
  EXPECT_EQ(ds.size(), 10);
  EXPECT_TRUE(contains(ds.info().created_by, "--arch seq2seq"));

  ASSERT_EQ(prepare({"--random", dir.path + "/random", "--rows", "16", "--seq-len", "8", "--vocab", "64", "--arch",
                     "seq2seq", "--target-len", "5"}),
            0);
  const st::ShardDataset r = st::ShardDataset::open(dir.path + "/random", "train");
  EXPECT_TRUE(r.seq2seq());
  EXPECT_EQ(r.target_len(), 5);
  EXPECT_EQ(r.size(), 16);
}

TEST(PrepareSeq2SeqDeathTest, CommandLineRefusesBadFlagsWithExit2NamingTheFlag) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  TempDir dir("s2s-cli-bad");
  const std::string d = dir.path;
  const std::vector<std::string> text = {"--input", synth_dir() + "/sentiment_dev.tsv", "--tokenizer",
                                         synth_tokenizer(), "--output", d, "--split", "dev"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = text;
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  EXPECT_EXIT(prepare(with({"--arch", "t5"})), ::testing::ExitedWithCode(2), "--arch must be causal or seq2seq");
  EXPECT_EXIT(prepare(with({"--arch", "seq2seq", "--max-target-len", "1"})), ::testing::ExitedWithCode(2),
              "--max-target-len must be in \\[2, ");
  EXPECT_EXIT(prepare(with({"--max-target-len", "8"})), ::testing::ExitedWithCode(2),
              "--max-target-len only applies with --arch seq2seq");
  EXPECT_EXIT(prepare(with({"--arch", "seq2seq", "--add-bos", "true"})), ::testing::ExitedWithCode(2),
              "--add-bos true cannot be combined with --arch seq2seq");
  EXPECT_EXIT(prepare(with({"--arch", "seq2seq", "--loss-on", "all"})), ::testing::ExitedWithCode(2),
              "--loss-on applies to --arch causal only");
  EXPECT_EXIT(prepare(with({"--arch", "seq2seq", "--target-len", "4"})), ::testing::ExitedWithCode(2),
              "--target-len only applies with --random");
  const std::vector<std::string> random = {"--random", d, "--rows", "8", "--seq-len", "16", "--vocab", "100"};
  auto rnd = [&](std::vector<std::string> extra) {
    std::vector<std::string> a = random;
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  EXPECT_EXIT(prepare(rnd({"--arch", "seq2seq"})), ::testing::ExitedWithCode(2),
              "--random --arch seq2seq needs --target-len");
  EXPECT_EXIT(prepare(rnd({"--target-len", "4"})), ::testing::ExitedWithCode(2),
              "--target-len only applies with --arch seq2seq");
  EXPECT_EXIT(prepare(rnd({"--arch", "seq2seq", "--target-len", "1"})), ::testing::ExitedWithCode(2),
              "--target-len must be in \\[2, ");
  EXPECT_EXIT(prepare(rnd({"--arch", "seq2seq", "--target-len", "4", "--max-target-len", "4"})),
              ::testing::ExitedWithCode(2), "--max-target-len cannot be combined with --random");
  EXPECT_EXIT(prepare({"--synthetic", d, "--arch", "seq2seq"}), ::testing::ExitedWithCode(2),
              "--arch cannot be combined with --synthetic");
  EXPECT_TRUE(st::list_shard_files(d, "dev").empty());
  EXPECT_TRUE(st::list_shard_files(d, "train").empty());
}

}  // namespace
