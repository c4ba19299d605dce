// shardtune prepare: UTF-8 validation, text sources, templates and truncation, the synthetic
// dataset and tokenizer, the SST-2 and Alpaca pipelines, and the real shared data when present.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <numeric>
#include <optional>
#include <filesystem>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "core/sha256.hpp"
#include "data/prepare.hpp"
#include "data/synthetic.hpp"
#include "data/templates.hpp"
#include "data/text_sources.hpp"
#include "data/tokenizer.hpp"
#include "data/utf8.hpp"
#include "io/h5util.hpp"
#include "io/shards.hpp"
#include "tests/common/paths.hpp"
#include "tests/common/test_util.hpp"

namespace fs = std::filesystem;

namespace {

using st::test::TempDir;

// One small synthetic dataset + tokenizer per test program (about 0.1 s).
const std::string& synth_dir() { return st::test::synthetic_data_dir("prepare-synth", 7, 400, 300); }
std::string synth_tokenizer() { return synth_dir() + "/tokenizer.model"; }

std::vector<int32_t> concat(std::initializer_list<std::vector<int32_t>> parts) {
  std::vector<int32_t> out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

using st::test::error_of;

using st::test::contains;

// ---------------------------------------------------------------------------------- UTF-8

TEST(Utf8, AcceptsWellFormedSequences) {
  EXPECT_TRUE(st::utf8_valid(""));
  EXPECT_TRUE(st::utf8_valid("plain ascii\t\n"));
  EXPECT_TRUE(st::utf8_valid("caf\xC3\xA9"));                 // U+00E9
  EXPECT_TRUE(st::utf8_valid("\xE2\x82\xAC"));                // U+20AC
  EXPECT_TRUE(st::utf8_valid("\xED\x9F\xBF"));                // U+D7FF, just below the surrogates
  EXPECT_TRUE(st::utf8_valid("\xEE\x80\x80"));                // U+E000, just above them
  EXPECT_TRUE(st::utf8_valid("\xF0\x9D\x84\x9E"));            // U+1D11E
  EXPECT_TRUE(st::utf8_valid("\xF4\x8F\xBF\xBF"));            // U+10FFFF, the last code point
  EXPECT_TRUE(st::utf8_valid(std::string("a\0b", 3)));        // NUL is valid UTF-8
}

TEST(Utf8, RejectsMalformedSequencesAtTheRightOffset) {
  struct Case {
    std::string s;
    size_t offset;
  };
  const std::vector<Case> bad = {
      {"ab\x80", 2},                 // stray continuation byte
      {"\xC0\x80", 0},               // overlong NUL
      {"x\xC1\xBF", 1},              // overlong
      {"\xE0\x80\x80", 0},           // overlong 3-byte
      {"\xF0\x80\x80\x80", 0},       // overlong 4-byte
      {"ok\xED\xA0\x80", 2},         // UTF-16 surrogate U+D800
      {"\xF4\x90\x80\x80", 0},       // above U+10FFFF
      {"\xF5\x80\x80\x80", 0},       // invalid lead
      {"\xFF", 0},
      {"abc\xE2\x82", 3},            // truncated at the end
      {"\xE2\x28\xA1", 0},           // bad continuation
      {"\xC3\xA9\xC3", 2},           // good then truncated
  };
  for (const auto& c : bad) {
    size_t off = 12345;
    EXPECT_FALSE(st::utf8_valid(c.s, &off)) << "accepted a bad sequence of " << c.s.size() << " bytes";
    EXPECT_EQ(off, c.offset);
  }
  EXPECT_EQ(st::strip_utf8_bom("\xEF\xBB\xBFsentence"), "sentence");
  EXPECT_EQ(st::strip_utf8_bom("sentence"), "sentence");
}

// ---------------------------------------------------------------------------------- sources

TEST(TextSources, Sst2CountsBadRowsByReasonWithLineNumbers) {
  const std::string tsv =
      "sentence\tlabel\n"
      "a good film .\t1\n"           // 2
      "a dull film\t0\r\n"           // 3 (CRLF)
      "missing label here\t\n"       // 4
      "two label\t2\n"               // 5
      "bad \xFF\xFE bytes\t1\n"      // 6
      "too\tmany\tcolumns\n"         // 7
      "no tab at all\n"              // 8
      "\n"                           // 9
      "  \t1\n"                      // 10
      "  padded sentence  \t 0 \n";  // 11
  const st::Sst2Source src = st::parse_sst2_tsv(tsv, "mem.tsv");
  EXPECT_EQ(src.rows_read, 10);
  ASSERT_EQ(src.rows.size(), 3u);
  EXPECT_EQ(src.rows[0].sentence, "a good film .");
  EXPECT_EQ(src.rows[0].label, 1);
  EXPECT_EQ(src.rows[0].line, 2);
  EXPECT_EQ(src.rows[1].sentence, "a dull film");
  EXPECT_EQ(src.rows[1].label, 0);
  EXPECT_EQ(src.rows[2].sentence, "padded sentence");
  EXPECT_EQ(src.rows[2].line, 11);
  namespace br = st::bad_reason;
  EXPECT_EQ(src.bad.count_of(br::kMissingLabel), 1);
  EXPECT_EQ(src.bad.count_of(br::kInvalidLabel), 1);
  EXPECT_EQ(src.bad.count_of(br::kBadUtf8), 1);
  EXPECT_EQ(src.bad.count_of(br::kWrongColumns), 2);
  EXPECT_EQ(src.bad.count_of(br::kEmptyLine), 1);
  EXPECT_EQ(src.bad.count_of(br::kEmptySentence), 1);
  EXPECT_EQ(src.bad.total(), 7);
  EXPECT_EQ(src.bad.first.at(br::kWrongColumns), (std::vector<int64_t>{7, 8}));
  EXPECT_EQ(src.bad.first.at(br::kBadUtf8), (std::vector<int64_t>{6}));
  EXPECT_TRUE(contains(src.bad.summary(), "wrong column count: 2 (lines 7, 8)")) << src.bad.summary();
  EXPECT_EQ(src.sha256, st::sha256_hex(tsv));

  // --limit counts data rows, good or bad.
  EXPECT_EQ(st::parse_sst2_tsv(tsv, "mem.tsv", 4).rows_read, 4);
  EXPECT_EQ(st::parse_sst2_tsv(tsv, "mem.tsv", 4).rows.size(), 2u);
}

TEST(TextSources, Sst2HeaderIsRequiredAndColumnsFoundByName) {
  EXPECT_TRUE(contains(error_of([] { st::parse_sst2_tsv("text\tlabel\nx\t1\n", "h.tsv"); }), "h.tsv:1"));
  EXPECT_TRUE(contains(error_of([] { st::parse_sst2_tsv("", "e.tsv"); }), "e.tsv"));
  const auto src = st::parse_sst2_tsv("\xEF\xBB\xBFlabel\tsentence\n1\tswapped columns\n", "s.tsv");
  ASSERT_EQ(src.rows.size(), 1u);
  EXPECT_EQ(src.rows[0].sentence, "swapped columns");
  EXPECT_EQ(src.rows[0].label, 1);
  EXPECT_TRUE(contains(error_of([] { st::read_sst2_tsv("/nonexistent/x.tsv"); }), "/nonexistent/x.tsv"));
}

TEST(TextSources, AlpacaJsonListCountsBadRecords) {
  const std::string json = R"([
    {"instruction": "Add the two numbers.", "input": "2 + 3", "output": "5"},
    {"instruction": "Say hi.", "input": "", "output": ""},
    {"instruction": "", "input": "x", "output": "y"},
    "not an object",
    {"instruction": 5, "output": "y"},
    {"instruction": "Name a colour.", "output": "blue", "history": []},
    {"instruction": "Spaces only.", "input": "", "output": " \n "}
  ])";
  const st::InstructSource src = st::parse_alpaca(json, "list.json");
  EXPECT_EQ(src.rows_read, 7);
  ASSERT_EQ(src.rows.size(), 2u);
  EXPECT_EQ(src.rows[0].input, "2 + 3");
  EXPECT_EQ(src.rows[1].instruction, "Name a colour.");
  EXPECT_EQ(src.rows[1].input, "");  // missing input is an empty input
  EXPECT_EQ(src.rows[1].line, 6);
  namespace br = st::bad_reason;
  EXPECT_EQ(src.bad.unit, "record");
  EXPECT_EQ(src.bad.count_of(br::kEmptyOutput), 2);
  EXPECT_EQ(src.bad.first.at(br::kEmptyOutput), (std::vector<int64_t>{2, 7}));
  EXPECT_EQ(src.bad.count_of(br::kEmptyInstruction), 1);
  EXPECT_EQ(src.bad.count_of(br::kNotObject), 1);
  EXPECT_EQ(src.bad.count_of(br::kNonStringField), 1);
  EXPECT_EQ(st::parse_alpaca(json, "list.json", 3).rows_read, 3);
}

TEST(TextSources, AlpacaJsonlCountsMalformedLinesWithLineNumbers) {
  const std::string jsonl =
      R"({"instruction":"Reverse the order of the words.","input":"apple river","output":"river apple"})" "\n"
      R"({"instruction":"x","input":"","output":"   "})" "\n"
      R"({"instruction": "broken", "input": })" "\n"
      "\n"
      "{\"instruction\":\"bad \xFF\",\"input\":\"\",\"output\":\"y\"}\n"
      "[1, 2]\n"
      R"({"instruction":"Count the items in the list.","input":"a, b","output":"2"})";
  const st::InstructSource src = st::parse_alpaca(jsonl, "rows.jsonl");
  EXPECT_EQ(src.rows_read, 6);  // the blank line carries no record
  ASSERT_EQ(src.rows.size(), 2u);
  EXPECT_EQ(src.rows[0].line, 1);
  EXPECT_EQ(src.rows[1].line, 7);
  EXPECT_EQ(src.rows[1].output, "2");
  namespace br = st::bad_reason;
  EXPECT_EQ(src.bad.unit, "line");
  EXPECT_EQ(src.bad.first.at(br::kEmptyOutput), (std::vector<int64_t>{2}));
  EXPECT_EQ(src.bad.first.at(br::kMalformedJson), (std::vector<int64_t>{3}));
  EXPECT_EQ(src.bad.first.at(br::kBadUtf8), (std::vector<int64_t>{5}));
  EXPECT_EQ(src.bad.first.at(br::kNotObject), (std::vector<int64_t>{6}));
  EXPECT_EQ(src.bad.total(), 4);
}

TEST(TextSources, MalformedJsonFileIsInputErrorNamingFileAndPosition) {
  TempDir dir("prepare-badjson");
  const std::string path = dir.path + "/broken.json";
  st::test::write_file(path, "[\n  {\"instruction\": \"a\", \"output\": \"b\"},\n  {\"instruction\": \"c\" \"output\": \"d\"}\n]\n");
  const std::string msg = error_of([&] { st::read_alpaca(path); });
  EXPECT_TRUE(contains(msg, path)) << msg;
  EXPECT_TRUE(contains(msg, "line 3")) << msg;
  // And through the whole pipeline.
  st::PrepareOptions o;
  o.input = path;
  o.tokenizer = synth_tokenizer();
  o.output_dir = dir.path + "/out";
  o.split = "train";
  const std::string msg2 = error_of([&] { st::prepare_dataset(o); });
  EXPECT_TRUE(contains(msg2, "broken.json")) << msg2;
}

// ---------------------------------------------------------------------------------- templates

TEST(Templates, ExactPromptTexts) {
  EXPECT_EQ(st::sst2_prompt("a fine film"), "Review: a fine film\nSentiment:");
  EXPECT_STREQ(st::sst2_label_word(0), "negative");
  EXPECT_STREQ(st::sst2_label_word(1), "positive");
  using T = st::InstructTemplate;
  EXPECT_EQ(st::instruct_prompt(T::alpaca, "Do X.", "some input"),
            "Below is an instruction that describes a task, paired with an input that provides further context. "
            "Write a response that appropriately completes the request.\n\n"
            "### Instruction:\nDo X.\n\n### Input:\nsome input\n\n### Response:\n");
  EXPECT_EQ(st::instruct_prompt(T::alpaca, "Do X.", ""),
            "Below is an instruction that describes a task. Write a response that appropriately completes the "
            "request.\n\n### Instruction:\nDo X.\n\n### Response:\n");
  EXPECT_EQ(st::instruct_prompt(T::plain, "Do X.", "in"), "### Instruction:\nDo X.\n### Input:\nin\n### Response:\n");
  EXPECT_EQ(st::instruct_prompt(T::plain, "Do X.", ""), "### Instruction:\nDo X.\n### Response:\n");
  EXPECT_THROW(st::parse_instruct_template("chatml"), st::InputError);
  EXPECT_THROW(st::parse_loss_on("foo"), st::InputError);
  EXPECT_EQ(st::word_ends("  ab c\n\nde "), (std::vector<size_t>{4, 6, 10}));
}

// Fits with a plain template: content = {input, instruction}.
struct FitCase {
  const st::Tokenizer& tok;
  std::string instruction, input;
  std::vector<int32_t> answer;
  st::PromptBuilder build = [](const std::vector<std::string_view>& c) {
    return st::instruct_prompt(st::InstructTemplate::plain, c[1], c[0], true);
  };
  std::optional<st::FittedRow> fit(int64_t L) const {
    st::FitOptions f;
    f.max_seq_len = L;
    f.bos_id = tok.bos_id();
    f.eos_id = tok.eos_id();
    return st::fit_row(tok, {input, instruction}, build, answer, f);
  }
  size_t prompt_len(std::string_view instr, std::string_view in) const {
    return tok.encode(build({in, instr})).size();
  }
};

std::string word_prefix(const std::string& s, size_t words) {
  const auto ends = st::word_ends(s);
  return s.substr(0, words == 0 ? 0 : ends[words - 1]);
}

TEST(Truncation, AnswerIsCutFromItsEndEosFirst) {
  const st::Tokenizer tok = st::Tokenizer::load(synth_tokenizer());
  FitCase c{tok, "Repeat the word 6 times.", "lamp", tok.encode("lamp lamp lamp lamp lamp lamp lamp lamp lamp")};
  const int64_t p = static_cast<int64_t>(c.prompt_len(c.instruction, c.input));
  const int64_t span = static_cast<int64_t>(c.answer.size()) + 1;
  ASSERT_GE(span, 4);
  ASSERT_LE((1 + p + span - 1) / 4, span - 2) << "the L/4 reservation must not force a prompt cut here";
  // Room for everything but the eos.
  auto r = c.fit(1 + p + span - 1);
  ASSERT_TRUE(r.has_value());
  EXPECT_FALSE(r->prompt_cut);
  EXPECT_TRUE(r->answer_cut);
  EXPECT_EQ(r->ids, concat({{tok.bos_id()}, tok.encode(c.build({c.input, c.instruction})), c.answer}));
  // Two tokens less: the eos and the last answer token go.
  r = c.fit(1 + p + span - 2);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->answer_start, 1 + p);
  EXPECT_EQ(std::vector<int32_t>(r->ids.begin() + r->answer_start, r->ids.end()),
            std::vector<int32_t>(c.answer.begin(), c.answer.end() - 1));
  // Everything fits: nothing is cut and the eos ends the row.
  r = c.fit(1 + p + span);
  ASSERT_TRUE(r.has_value());
  EXPECT_FALSE(r->truncated());
  EXPECT_EQ(r->ids.back(), tok.eos_id());
}

TEST(Truncation, InputIsCutWordByWordBeforeTheInstruction) {
  const st::Tokenizer tok = st::Tokenizer::load(synth_tokenizer());
  FitCase c{tok, "List these words backwards now please.",
            "apple river chair cloud lamp tiger bread stone garden pencil window rocket violin candle",
            tok.encode("candle violin rocket")};
  const int64_t span = static_cast<int64_t>(c.answer.size()) + 1;
  // L leaves the whole answer (L/4 >= span) and the instruction, plus a little of the input.
  const int64_t L = std::max<int64_t>(4 * span, 1 + static_cast<int64_t>(c.prompt_len(c.instruction, "")) + span + 3);
  ASSERT_GT(1 + static_cast<int64_t>(c.prompt_len(c.instruction, c.input)) + span, L) << "case must need a cut";
  auto r = c.fit(L);
  ASSERT_TRUE(r.has_value());
  EXPECT_TRUE(r->prompt_cut);
  EXPECT_FALSE(r->answer_cut);
  EXPECT_LE(static_cast<int64_t>(r->ids.size()), L);
  const std::vector<int32_t> prompt(r->ids.begin() + 1, r->ids.begin() + r->answer_start);
  // The prompt is the template over a word prefix of the input, the instruction whole, and the
  // longest such prefix that fits.
  const size_t nwords = st::word_ends(c.input).size();
  size_t kept = nwords + 1;
  for (size_t k = 0; k < nwords; ++k)
    if (tok.encode(c.build({word_prefix(c.input, k), c.instruction})) == prompt) kept = k;
  ASSERT_LE(kept, nwords) << "prompt is not the template over a word prefix of the input";
  EXPECT_GT(1 + static_cast<int64_t>(c.prompt_len(c.instruction, word_prefix(c.input, kept + 1))) + span, L);

  // Tighter: the input goes entirely and the instruction is cut too.
  const int64_t L2 = 1 + static_cast<int64_t>(c.prompt_len("", "")) + 6;
  ASSERT_LE(std::min<int64_t>(span, L2 / 4), 6) << "the empty template plus the answer room must fit";
  r = c.fit(L2);
  ASSERT_TRUE(r.has_value());
  const int64_t need = std::min<int64_t>(span, std::max<int64_t>(1, L2 / 4));
  EXPECT_GE(static_cast<int64_t>(r->ids.size()) - r->answer_start, need);
  const std::vector<int32_t> prompt2(r->ids.begin() + 1, r->ids.begin() + r->answer_start);
  bool found = false;
  for (size_t k = 0; k < st::word_ends(c.instruction).size(); ++k)
    found = found || tok.encode(c.build({"", word_prefix(c.instruction, k)})) == prompt2;
  EXPECT_TRUE(found) << "expected an empty input and a cut instruction";
}

TEST(Truncation, PromptLeavesRoomForAQuarterOfTheRowAndRowsThatCannotFitAreDropped) {
  const st::Tokenizer tok = st::Tokenizer::load(synth_tokenizer());
  std::string long_answer;
  for (int i = 0; i < 40; ++i) long_answer += "river stone ";
  FitCase c{tok, "Write the words in reverse order.", long_answer, tok.encode(long_answer)};
  const int64_t L = 64;
  auto r = c.fit(L);
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(static_cast<int64_t>(r->ids.size()), L);
  EXPECT_GE(L - r->answer_start, L / 4);
  EXPECT_TRUE(r->prompt_cut);
  EXPECT_TRUE(r->answer_cut);

  // A template that alone leaves no room is dropped.
  st::FitOptions f;
  f.max_seq_len = 8;
  f.bos_id = tok.bos_id();
  f.eos_id = tok.eos_id();
  const auto fixed = [](const std::vector<std::string_view>&) {
    return std::string("a fixed template that is much longer than eight tokens");
  };
  EXPECT_FALSE(st::fit_row(tok, {"content"}, fixed, tok.encode("ok"), f).has_value());
}

TEST(Truncation, LossMasks) {
  uint8_t m[8];
  st::fill_loss_mask(st::LossOn::answer, 6, 4, 8, m);
  EXPECT_EQ(std::vector<uint8_t>(m, m + 8), (std::vector<uint8_t>{0, 0, 0, 0, 1, 1, 0, 0}));
  st::fill_loss_mask(st::LossOn::all, 6, 4, 8, m);
  EXPECT_EQ(std::vector<uint8_t>(m, m + 8), (std::vector<uint8_t>{0, 1, 1, 1, 1, 1, 0, 0}));
}

// ---------------------------------------------------------------------------------- tokenizer

TEST(Tokenizer, LoadsTheSyntheticModelAndEncodesAnyText) {
  const st::Tokenizer tok = st::Tokenizer::load(synth_tokenizer());
  EXPECT_EQ(tok.vocab_size(), 512);
  EXPECT_EQ(tok.unk_id(), 0);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(tok.pad_id(), 0);  // the model has none
  EXPECT_EQ(tok.sha256(), st::sha256_file_hex(synth_tokenizer()));
  // Byte fallback: text never seen in training round-trips without unk.
  const std::string text = "Grüße, 日本! {tab}\tand 12345";
  const auto ids = tok.encode(text);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), tok.unk_id()), 0);
  EXPECT_EQ(tok.decode(ids), text);
  EXPECT_EQ(tok.piece(tok.encode("positive")[0]), "\xE2\x96\x81positive");
  EXPECT_THROW(tok.piece(512), st::Error);
  EXPECT_THROW(tok.piece(-1), st::Error);
}

TEST(Tokenizer, MissingOrInvalidModelIsInputErrorNamingThePath) {
  TempDir dir("prepare-tok");
  EXPECT_TRUE(contains(error_of([&] { st::Tokenizer::load(dir.path + "/none.model"); }), "none.model"));
  st::test::write_file(dir.path + "/junk.model", "this is not a protobuf");
  EXPECT_TRUE(contains(error_of([&] { st::Tokenizer::load(dir.path + "/junk.model"); }), "junk.model"));
  st::test::write_file(dir.path + "/empty.model", "");
  EXPECT_TRUE(contains(error_of([&] { st::Tokenizer::load(dir.path + "/empty.model"); }), "empty.model"));
}

// ---------------------------------------------------------------------------------- synthetic

TEST(Synthetic, DeterministicFromTheSeedWithDefaultSizes) {
  TempDir a("synth-a"), b("synth-b"), c("synth-c");
  st::SyntheticOptions o;
  o.dir = a.path;
  const st::SyntheticResult ra = st::write_synthetic_dataset(o);
  o.dir = b.path;
  st::write_synthetic_dataset(o);
  EXPECT_EQ(ra.sentiment_train, 4000);
  EXPECT_EQ(ra.sentiment_dev, 400);
  EXPECT_EQ(ra.instruct_train, 3000);
  EXPECT_EQ(ra.instruct_val, 300);
  ASSERT_EQ(ra.files.size(), 6u);
  for (const auto& f : ra.files) {
    const std::string name = fs::path(f).filename().string();
    EXPECT_EQ(st::test::read_file(a.path + "/" + name), st::test::read_file(b.path + "/" + name)) << name;
    EXPECT_FALSE(fs::exists(a.path + "/" + name + ".tmp"));
  }
  o.dir = c.path;
  o.seed = 99;
  o.sentiment_rows = 50;
  o.instruct_rows = 50;
  st::write_synthetic_dataset(o);
  EXPECT_NE(st::test::read_file(a.path + "/sentiment_dev.tsv"), st::test::read_file(c.path + "/sentiment_dev.tsv"));
}

TEST(Synthetic, SentimentSplitsAreDisjointBalancedAndShort) {
  std::vector<st::Sst2Row> train, dev;
  st::synth_sentiment_splits(1234, 4000, train, dev);
  ASSERT_EQ(train.size(), 4000u);
  ASSERT_EQ(dev.size(), 400u);
  std::set<std::string> train_sentences;
  int64_t positive = 0;
  for (const auto& r : train) {
    train_sentences.insert(r.sentence);
    positive += r.label;
    const size_t words = st::word_ends(r.sentence).size();
    EXPECT_GE(words, 4u) << r.sentence;
    EXPECT_LE(words, 20u) << r.sentence;
    EXPECT_TRUE(st::utf8_valid(r.sentence));
  }
  EXPECT_GT(positive, 4000 * 35 / 100);
  EXPECT_LT(positive, 4000 * 65 / 100);
  for (const auto& r : dev) EXPECT_EQ(train_sentences.count(r.sentence), 0u) << r.sentence;
  // Negation flips the adjective: a plain "is not good" clause is negative.
  int negated = 0;
  for (const auto& r : train)
    if (st::word_ends(r.sentence).size() <= 8 && r.sentence.find(" is not good") != std::string::npos &&
        r.sentence.find(',') == std::string::npos && r.sentence.find("but") == std::string::npos) {
      EXPECT_EQ(r.label, 0) << r.sentence;
      ++negated;
    }
  EXPECT_GT(negated, 0);
}

TEST(Synthetic, InstructTasksHaveCorrectAnswers) {
  std::vector<st::InstructRow> train, val;
  st::synth_instruct_splits(1234, 3000, train, val);
  ASSERT_EQ(train.size(), 3000u);
  ASSERT_EQ(val.size(), 300u);
  int adds = 0, sorts = 0, reverses = 0;
  std::set<std::string> train_keys;
  for (const auto& r : train) {
    train_keys.insert(r.instruction + "\x1f" + r.input);
    EXPECT_FALSE(r.instruction.empty());
    EXPECT_FALSE(r.output.empty());
    if (r.instruction == "Add the two numbers.") {
      int a = 0, b = 0;
      ASSERT_EQ(std::sscanf(r.input.c_str(), "%d + %d", &a, &b), 2) << r.input;
      EXPECT_EQ(r.output, std::to_string(a + b));
      ++adds;
    } else if (r.instruction == "Put these numbers in ascending order.") {
      std::istringstream in(r.input), out(r.output);
      std::vector<int> x, y;
      for (int v; in >> v;) x.push_back(v);
      for (int v; out >> v;) y.push_back(v);
      std::sort(x.begin(), x.end());
      EXPECT_EQ(x, y) << r.input << " -> " << r.output;
      ++sorts;
    } else if (r.instruction == "Reverse the order of the words.") {
      std::istringstream in(r.input), out(r.output);
      std::vector<std::string> x, y;
      for (std::string w; in >> w;) x.push_back(w);
      for (std::string w; out >> w;) y.push_back(w);
      std::reverse(x.begin(), x.end());
      EXPECT_EQ(x, y);
      ++reverses;
    }
  }
  // Polarity answers: the label word of the adjective that ends the input.
  int polarity = 0;
  for (const auto& r : train) {
    if (r.instruction.find("positive or negative") == std::string::npos && r.instruction.find("sentiment") == std::string::npos)
      continue;
    const std::string last = r.input.substr(r.input.rfind(' ') == std::string::npos ? 0 : r.input.rfind(' ') + 1);
    const bool pos = std::set<std::string>{"good", "great", "wonderful", "excellent", "delightful", "charming",
                                           "brilliant", "superb", "lovely", "moving", "clever", "fresh",
                                           "beautiful", "funny", "smart", "warm", "gripping", "touching",
                                           "stunning", "enjoyable"}.count(last) > 0;
    EXPECT_EQ(r.output, pos ? "positive" : "negative") << r.input;
    ++polarity;
  }
  EXPECT_GT(polarity, 300);
  EXPECT_GT(adds, 50);
  EXPECT_GT(sorts, 50);
  EXPECT_GT(reverses, 50);
  // Open-ended validation records never repeat a train (instruction, input) pair.
  for (const auto& r : val) {
    const bool lookup = r.instruction.rfind("What is the capital", 0) == 0 || r.instruction.rfind("What color", 0) == 0 ||
                        r.instruction == "Give the opposite of this word." ||
                        r.instruction == "What is the antonym of the word?" ||
                        r.instruction == "Is this word positive or negative?" ||
                        r.instruction == "Say whether the word is positive or negative.";
    if (!lookup) {
      EXPECT_EQ(train_keys.count(r.instruction + "\x1f" + r.input), 0u) << r.instruction << " | " << r.input;
    }
  }
}

TEST(Synthetic, BadOptionsAreInputErrors) {
  TempDir dir("synth-bad");
  st::SyntheticOptions o;
  o.dir = dir.path;
  o.sentiment_rows = 0;
  EXPECT_TRUE(contains(error_of([&] { st::write_synthetic_dataset(o); }), "--sentiment-rows"));
  o.sentiment_rows = 10;
  o.vocab_size = 100;
  EXPECT_TRUE(contains(error_of([&] { st::write_synthetic_dataset(o); }), "--vocab-size"));
}

// ---------------------------------------------------------------------------------- SST-2

const char* kSmallTsv =
    "sentence\tlabel\n"
    "a good film .\t1\n"                  // 2
    "the plot is dull\t0\n"               // 3
    "missing label here\t\n"              // 4
    "two label\t2\n"                      // 5
    "bad \xFF\xFE bytes\t1\n"             // 6
    "too\tmany\tcolumns\n"                // 7
    "honestly , the plot is clever , and the acting is warm , but the music is never dull from start to "
    "finish and the cast was superb in every scene\t1\n"  // 8: longer than L
    "this movie was not good\t0\n";       // 9

struct Sst2Fixture {
  TempDir dir{"prepare-sst2"};
  std::string tsv = dir.path + "/small.tsv";
  Sst2Fixture() { st::test::write_file(tsv, kSmallTsv); }
  st::PrepareOptions options(const std::string& loss_on, int64_t L) const {
    st::PrepareOptions o;
    o.input = tsv;
    o.tokenizer = synth_tokenizer();
    o.output_dir = dir.path + "/shards";
    o.split = "train";
    o.loss_on = loss_on;
    o.max_seq_len = L;
    return o;
  }
};

TEST(PrepareSst2, ShapesPaddingMasksLabelsAndTruncation) {
  Sst2Fixture fx;
  const st::Tokenizer tok = st::Tokenizer::load(synth_tokenizer());
  const int64_t L = 24;
  const st::Sst2Source src = st::read_sst2_tsv(fx.tsv);
  ASSERT_EQ(src.rows.size(), 4u);
  const std::vector<int32_t> label_ids = {tok.encode("negative")[0], tok.encode("positive")[0]};
  ASSERT_NE(label_ids[0], label_ids[1]);

  for (const std::string loss_on : {"answer", "all"}) {
    SCOPED_TRACE(loss_on);
    const st::PrepareStats stats = st::prepare_dataset(fx.options(loss_on, L));
    EXPECT_EQ(stats.task, "sst2");
    EXPECT_EQ(stats.rows_read, 8);
    EXPECT_EQ(stats.rows_written, 4);
    EXPECT_EQ(stats.rows_dropped, 0);
    EXPECT_EQ(stats.bad.total(), 4);
    namespace br = st::bad_reason;
    EXPECT_EQ(stats.bad.count_of(br::kMissingLabel), 1);
    EXPECT_EQ(stats.bad.count_of(br::kInvalidLabel), 1);
    EXPECT_EQ(stats.bad.count_of(br::kBadUtf8), 1);
    EXPECT_EQ(stats.bad.count_of(br::kWrongColumns), 1);
    EXPECT_EQ(stats.label_token_ids, label_ids);
    ASSERT_EQ(stats.shard_files.size(), 1u);
    EXPECT_EQ(fs::path(stats.shard_files[0]).filename(), "train-00000.h5");

    const st::ShardDataset ds = st::ShardDataset::open(fx.dir.path + "/shards", "train");
    ASSERT_EQ(ds.size(), 4);
    ASSERT_EQ(ds.seq_len(), L);
    st::Batch b;
    ds.read_rows({0, 1, 2, 3}, b);
    ASSERT_EQ(b.ids.size(), static_cast<size_t>(4 * L));
    int64_t truncated = 0;
    for (int64_t i = 0; i < 4; ++i) {
      const auto& row = src.rows[static_cast<size_t>(i)];
      const int32_t len = b.lengths[static_cast<size_t>(i)];
      const int32_t as = b.answer_start[static_cast<size_t>(i)];
      const int32_t* ids = b.ids.data() + i * L;
      const uint8_t* mask = b.loss_mask.data() + i * L;
      EXPECT_EQ(b.labels[static_cast<size_t>(i)], row.label);
      const auto full = concat({{tok.bos_id()}, tok.encode(st::sst2_prompt(row.sentence)),
                                tok.encode(st::sst2_label_word(row.label)), {tok.eos_id()}});
      if (static_cast<int64_t>(full.size()) <= L) {
        EXPECT_EQ(std::vector<int32_t>(ids, ids + len), full) << row.sentence;
      } else {
        ++truncated;
        EXPECT_EQ(row.line, 8);
        EXPECT_LE(len, L);
        // The answer (and eos) is kept whole; the sentence was cut.
        EXPECT_EQ(ids[len - 1], tok.eos_id());
        EXPECT_EQ(ids[len - 2], label_ids[1]);
        const std::string prompt = tok.decode(std::vector<int32_t>(ids + 1, ids + as));
        EXPECT_EQ(prompt.rfind("Review: honestly , the plot", 0), 0u) << prompt;
        EXPECT_NE(prompt.find("\nSentiment:"), std::string::npos) << prompt;
        EXPECT_EQ(prompt.find("scene"), std::string::npos) << prompt;
      }
      EXPECT_EQ(ids[0], tok.bos_id());
      EXPECT_EQ(ids[as], label_ids[static_cast<size_t>(row.label)]);
      EXPECT_EQ(as, len - 2);  // one answer token + eos
      for (int64_t t = 0; t < L; ++t) {
        if (t >= len) {
          EXPECT_EQ(ids[t], tok.pad_id());
        }
        const bool target = loss_on == std::string("answer") ? (t >= as && t < len) : (t >= 1 && t < len);
        EXPECT_EQ(mask[t], target ? 1 : 0) << "row " << i << " t " << t;
      }
      EXPECT_EQ(ds.loss_tokens()[static_cast<size_t>(i)], loss_on == std::string("answer") ? 2 : len - 1);
    }
    EXPECT_EQ(truncated, 1);
    EXPECT_EQ(stats.rows_truncated, 1);
    EXPECT_EQ(stats.rows_prompt_cut, 1);
    EXPECT_EQ(stats.tokens, std::accumulate(b.lengths.begin(), b.lengths.end(), int64_t{0}));
    EXPECT_EQ(stats.loss_tokens, b.loss_tokens());
    EXPECT_EQ(stats.max_length, b.max_length());

    // Attributes.
    const st::ShardInfo& info = ds.info();
    EXPECT_EQ(info.format_version, st::kShardFormatVersion);
    EXPECT_EQ(info.task, "sst2");
    EXPECT_EQ(info.arch, "causal");
    EXPECT_EQ(info.split, "train");
    EXPECT_EQ(info.tokenizer_sha256, tok.sha256());
    EXPECT_EQ(info.tokenizer_vocab_size, 512);
    EXPECT_EQ(info.bos_id, 1);
    EXPECT_EQ(info.eos_id, 2);
    EXPECT_EQ(info.pad_id, 0);
    EXPECT_EQ(info.loss_on, loss_on);
    EXPECT_EQ(info.prompt_template, "sst2");
    EXPECT_EQ(info.label_names, (std::vector<std::string>{"negative", "positive"}));
    EXPECT_EQ(info.label_token_ids, label_ids);
    EXPECT_EQ(info.source_sha256, st::sha256_file_hex(fx.tsv));
    EXPECT_EQ(info.source_file, fs::path(fx.tsv).lexically_normal().string());
    EXPECT_EQ(info.rows_read, 8);
    EXPECT_EQ(info.rows_written, 4);
    EXPECT_EQ(info.rows_truncated, 1);
    EXPECT_EQ(info.rows_dropped, 0);
    const st::h5::Handle f = st::h5::open_file_read(stats.shard_files[0]);
    EXPECT_EQ(st::h5::read_attr_int(f, "num_rows", "t"), 4);
    EXPECT_EQ(st::h5::read_attr_string(f, "label_names", "t"), "negative,positive");
    EXPECT_EQ(st::h5::read_attr_int(f, "max_seq_len", "t"), L);
    EXPECT_EQ(st::h5::read_attr_string(f, "tokenizer_path", "t"), synth_tokenizer());
    EXPECT_FALSE(st::h5::read_attr_string(f, "created_by", "t").empty());
  }
}

TEST(PrepareSst2, ReportNamesEveryCount) {
  Sst2Fixture fx;
  const st::PrepareStats stats = st::prepare_dataset(fx.options("answer", 24));
  const std::string report = st::format_prepare_report(stats);
  for (const char* part : {"read 8", "written 4", "truncated 1", "dropped 0", "bad 4", "missing label: 1 (line 4)",
                           "invalid label: 1 (line 5)", "bad UTF-8: 1 (line 6)", "wrong column count: 1 (line 7)",
                           "train-00000.h5"})
    EXPECT_TRUE(contains(report, part)) << "missing '" << part << "' in\n" << report;
}

TEST(PrepareSst2, NoRowFitsIsAnInputErrorAndOptionsAreChecked) {
  Sst2Fixture fx;
  EXPECT_TRUE(contains(error_of([&] { st::prepare_dataset(fx.options("answer", 3)); }), "no rows to write"));
  EXPECT_TRUE(contains(error_of([&] { st::prepare_dataset(fx.options("answer", 0)); }), "--max-seq-len"));
  EXPECT_TRUE(contains(error_of([&] { st::prepare_dataset(fx.options("foo", 16)); }), "--loss-on"));
  auto o = fx.options("answer", 16);
  o.split = "";
  EXPECT_TRUE(contains(error_of([&] { st::prepare_dataset(o); }), "--split"));
  o = fx.options("answer", 16);
  o.input = fx.dir.path + "/data.csv";
  EXPECT_TRUE(contains(error_of([&] { st::prepare_dataset(o); }), "--format"));
  EXPECT_EQ(st::resolve_input_format("auto", "x.TSV"), "sst2");
  EXPECT_EQ(st::resolve_input_format("auto", "x.jsonl"), "alpaca");
  EXPECT_EQ(st::resolve_input_format("alpaca", "x.txt"), "alpaca");
}

TEST(PrepareSst2, RefusesATokenizerWhoseLabelWordsShareTheFirstToken) {
  // A tokenizer trained on text without the letters of "positive"/"negative" spells both as
  // "▁" followed by byte pieces, so both start with the same "▁" piece.
  TempDir dir("prepare-sametok");
  std::vector<std::string> lines;
  for (int i = 0; i < 50; ++i) lines.push_back("xyz qqq zzz " + std::to_string(i));
  st::TokenizerTrainOptions t;
  t.model_prefix = dir.path + "/tiny";
  t.vocab_size = 280;
  st::train_tokenizer(lines, t);
  const st::Tokenizer tok = st::Tokenizer::load(t.model_prefix + ".model");
  ASSERT_EQ(tok.encode("negative")[0], tok.encode("positive")[0]) << "test premise: both start with one piece";
  st::Sst2Source src = st::parse_sst2_tsv(kSmallTsv, "small.tsv");
  st::PrepareOptions o;
  o.split = "x";
  const std::string msg = error_of([&] { st::prepare_sst2_rows(src, tok, o); });
  EXPECT_TRUE(contains(msg, "same token")) << msg;
  EXPECT_TRUE(contains(msg, "tiny.model")) << msg;
}

// ---------------------------------------------------------------------------------- Alpaca

TEST(PrepareAlpaca, JsonListAndJsonlWithBadRows) {
  TempDir dir("prepare-alpaca");
  const st::Tokenizer tok = st::Tokenizer::load(synth_tokenizer());
  const std::string list = dir.path + "/demo.json";
  st::test::write_file(list, R"([
    {"instruction": "Add the two numbers.", "input": "2 + 3", "output": "5"},
    {"instruction": "Say hi.", "input": "", "output": ""},
    {"instruction": "Name a colour.", "input": "", "output": "blue"}
  ])");
  st::PrepareOptions o;
  o.input = list;
  o.tokenizer = synth_tokenizer();
  o.output_dir = dir.path + "/shards";
  o.split = "val";
  o.max_seq_len = 128;
  st::PrepareStats s = st::prepare_dataset(o);
  EXPECT_EQ(s.task, "instruct");
  EXPECT_EQ(s.rows_read, 3);
  EXPECT_EQ(s.rows_written, 2);
  EXPECT_EQ(s.bad.count_of(st::bad_reason::kEmptyOutput), 1);
  st::ShardDataset ds = st::ShardDataset::open(o.output_dir, "val");
  ASSERT_EQ(ds.size(), 2);
  EXPECT_EQ(ds.info().task, "instruct");
  EXPECT_EQ(ds.info().prompt_template, "alpaca");
  EXPECT_TRUE(ds.info().label_names.empty());
  EXPECT_TRUE(ds.info().label_token_ids.empty());
  st::Batch b;
  ds.read_rows({0, 1}, b);
  using T = st::InstructTemplate;
  const auto row0 = concat({{1}, tok.encode(st::instruct_prompt(T::alpaca, "Add the two numbers.", "2 + 3")),
                            tok.encode("5"), {2}});
  const auto row1 = concat({{1}, tok.encode(st::instruct_prompt(T::alpaca, "Name a colour.", "")),
                            tok.encode("blue"), {2}});
  EXPECT_EQ(std::vector<int32_t>(b.ids.begin(), b.ids.begin() + b.lengths[0]), row0);
  EXPECT_EQ(std::vector<int32_t>(b.ids.begin() + 128, b.ids.begin() + 128 + b.lengths[1]), row1);
  EXPECT_EQ(b.labels, (std::vector<int32_t>{-1, -1}));
  EXPECT_EQ(b.answer_start[0], static_cast<int32_t>(row0.size() - tok.encode("5").size() - 1));

  // JSONL with the plain template, loss on all tokens, a malformed line and an empty output.
  const std::string jsonl = dir.path + "/rows.jsonl";
  st::test::write_file(jsonl,
                       R"({"instruction":"Reverse the order of the words.","input":"apple river","output":"river apple"})"
                       "\n"
                       R"({"instruction":"x","input":"","output":""})"
                       "\n"
                       R"({"instruction": "broken", )"
                       "\n"
                       R"({"instruction":"Count the items in the list.","input":"","output":"2"})"
                       "\n");
  o.input = jsonl;
  o.prompt_template = "plain";
  o.loss_on = "all";
  o.split = "train";
  s = st::prepare_dataset(o);
  EXPECT_EQ(s.rows_read, 4);
  EXPECT_EQ(s.rows_written, 2);
  EXPECT_EQ(s.bad.first.at(st::bad_reason::kMalformedJson), (std::vector<int64_t>{3}));
  EXPECT_EQ(s.bad.first.at(st::bad_reason::kEmptyOutput), (std::vector<int64_t>{2}));
  EXPECT_TRUE(contains(st::format_prepare_report(s), "malformed JSON: 1 (line 3)"));
  ds = st::ShardDataset::open(o.output_dir, "train");
  ASSERT_EQ(ds.size(), 2);
  EXPECT_EQ(ds.info().prompt_template, "plain");
  EXPECT_EQ(ds.info().loss_on, "all");
  ds.read_rows({1}, b);
  const auto row = concat({{1}, tok.encode(st::instruct_prompt(T::plain, "Count the items in the list.", "")),
                           tok.encode("2"), {2}});
  EXPECT_EQ(std::vector<int32_t>(b.ids.begin(), b.ids.begin() + b.lengths[0]), row);
  EXPECT_EQ(ds.loss_tokens()[1], b.lengths[0] - 1);
  // The other split is still there, untouched.
  EXPECT_EQ(st::ShardDataset::open(o.output_dir, "val").size(), 2);
}

TEST(PrepareAlpaca, ARowThatCannotLeaveRoomForItsAnswerIsDropped) {
  TempDir dir("prepare-drop");
  const st::Tokenizer tok = st::Tokenizer::load(synth_tokenizer());
  std::string long_output;
  for (int i = 0; i < 30; ++i) long_output += "stone ";
  // The alpaca template is long enough (E tokens) for such an L to exist: E + 1 > 3L/4.
  const auto tmpl = st::InstructTemplate::alpaca;
  const int64_t empty_prompt = static_cast<int64_t>(tok.encode(st::instruct_prompt(tmpl, "", "")).size());
  const int64_t short_span = static_cast<int64_t>(tok.encode("3").size()) + 1;
  const int64_t long_span = static_cast<int64_t>(tok.encode(long_output).size()) + 1;
  // The smallest L where the short answer fits beside the empty template but the long answer's
  // L/4 reservation does not.
  int64_t L = 0;
  for (int64_t l = 4; l < 400 && L == 0; ++l)
    if (1 + empty_prompt + std::min(short_span, std::max<int64_t>(1, l / 4)) <= l &&
        1 + empty_prompt + std::min(long_span, std::max<int64_t>(1, l / 4)) > l)
      L = l;
  ASSERT_GT(L, 0) << "no L separates the two rows";
  const std::string jsonl = dir.path + "/drop.jsonl";
  st::test::write_file(jsonl, R"({"instruction":"Count the items in the list.","input":"","output":"3"})" "\n"
                              R"({"instruction":"Repeat the word.","input":"","output":")" + long_output + "\"}\n");
  st::PrepareOptions o;
  o.input = jsonl;
  o.tokenizer = synth_tokenizer();
  o.output_dir = dir.path + "/shards";
  o.split = "train";
  o.max_seq_len = L;
  const st::PrepareStats s = st::prepare_dataset(o);
  EXPECT_EQ(s.rows_read, 2);
  EXPECT_EQ(s.rows_written, 1);
  EXPECT_EQ(s.rows_dropped, 1);
  EXPECT_EQ(s.dropped_lines, (std::vector<int64_t>{2}));
  EXPECT_TRUE(contains(st::format_prepare_report(s), "dropped 1 (line 2)")) << st::format_prepare_report(s);
  EXPECT_EQ(st::ShardDataset::open(o.output_dir, "train").info().rows_dropped, 1);
}

// ---------------------------------------------------------------------------------- real data

TEST(PrepareSharedData, Sst2DevWithLlama2AndStories260KTokenizers) {
  const std::string data = st::test::shared_data_dir();
  if (data.empty()) GTEST_SKIP() << "../shared/data not found next to the repository";
  TempDir dir("prepare-real-sst2");
  for (const std::string& tok_path : {data + "/tokenizers/llama2/tokenizer.model",
                                     data + "/models/stories260K/tokenizer.model"}) {
    SCOPED_TRACE(tok_path);
    st::PrepareOptions o;
    o.input = data + "/sst2/dev.tsv";
    o.tokenizer = tok_path;
    o.output_dir = dir.path;
    o.split = "dev";
    const st::PrepareStats s = st::prepare_dataset(o);
    EXPECT_EQ(s.rows_read, 872);
    EXPECT_EQ(s.bad.total(), 0);
    EXPECT_EQ(s.rows_dropped, 0);
    EXPECT_EQ(s.rows_written, 872);
    ASSERT_EQ(s.label_token_ids.size(), 2u);
    EXPECT_NE(s.label_token_ids[0], s.label_token_ids[1]);
    const st::ShardDataset ds = st::ShardDataset::open(dir.path, "dev");
    EXPECT_EQ(ds.size(), 872);
    int64_t positive = 0;
    for (int32_t l : ds.labels()) positive += l;
    EXPECT_EQ(positive, 444);  // GLUE SST-2 dev: 444 positive, 428 negative
    EXPECT_LE(s.max_length, 128);
    EXPECT_EQ(ds.info().tokenizer_sha256, st::sha256_file_hex(tok_path));
  }
}

TEST(PrepareSharedData, AlpacaDemo) {
  const std::string data = st::test::shared_data_dir();
  if (data.empty()) GTEST_SKIP() << "../shared/data not found next to the repository";
  TempDir dir("prepare-real-alpaca");
  st::PrepareOptions o;
  o.input = data + "/instruct/alpaca_en_demo.json";
  o.tokenizer = data + "/tokenizers/llama2/tokenizer.model";
  o.output_dir = dir.path;
  o.split = "train";
  o.shard_rows = 256;
  const st::PrepareStats s = st::prepare_dataset(o);
  EXPECT_EQ(s.rows_read, 999);
  EXPECT_EQ(s.bad.total(), 0);
  EXPECT_EQ(s.rows_written + s.rows_dropped, 999);
  EXPECT_EQ(s.shard_files.size(), static_cast<size_t>((s.rows_written + 255) / 256));
  const st::ShardDataset ds = st::ShardDataset::open(dir.path, "train");
  EXPECT_EQ(ds.size(), s.rows_written);
  // Every row keeps at least min(answer, L/4) answer tokens.
  for (int64_t i = 0; i < ds.size(); ++i)
    EXPECT_GE(ds.lengths()[static_cast<size_t>(i)] - ds.answer_start()[static_cast<size_t>(i)], 1);
  EXPECT_GT(s.rows_truncated, 0);  // many demo responses are longer than 128 tokens
}

}  // namespace
