#include "data/synthetic.hpp"

#include <algorithm>
#include <array>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_set>

#include "core/atomic_file.hpp"
#include "core/error.hpp"
#include "core/timer.hpp"
#include "data/templates.hpp"
#include "data/tokenizer.hpp"

namespace st {

namespace fs = std::filesystem;

namespace {

template <typename T, size_t N>
const T& pick(Rng& rng, const std::array<T, N>& a) {
  return a[static_cast<size_t>(rng.below(N))];
}
bool chance(Rng& rng, double p) { return rng.uniform() < p; }
int64_t uniform_int(Rng& rng, int64_t lo, int64_t hi) {  // [lo, hi]
  return lo + static_cast<int64_t>(rng.below(static_cast<uint64_t>(hi - lo + 1)));
}

// ------------------------------------------------------------------------------ sentiment

constexpr std::array<const char*, 20> kPositive = {
    "good",     "great",  "wonderful", "excellent", "delightful", "charming", "brilliant",
    "superb",   "lovely", "moving",    "clever",    "fresh",      "beautiful", "funny",
    "smart",    "warm",   "gripping",  "touching",  "stunning",   "enjoyable"};
constexpr std::array<const char*, 20> kNegative = {
    "bad",   "awful",  "boring", "dull",     "terrible",    "weak",    "tedious",
    "messy", "bland",  "poor",   "clumsy",   "lifeless",    "painful", "stale",
    "ugly",  "silly",  "flat",   "tiresome", "forgettable", "annoying"};
constexpr std::array<const char*, 20> kSubjects = {
    "movie",    "film",     "story",     "plot",      "acting",   "script",  "cast",
    "ending",   "music",    "direction", "dialogue",  "pacing",   "humor",   "premise",
    "sequel",   "picture",  "screenplay", "lead",     "soundtrack", "camera work"};
constexpr std::array<const char*, 3> kDeterminers = {"the", "this", "that"};
constexpr std::array<const char*, 2> kVerbs = {"is", "was"};
constexpr std::array<const char*, 8> kIntensifiers = {"very",   "really", "quite",      "truly",
                                                      "so",     "rather", "incredibly", "pretty"};
constexpr std::array<const char*, 10> kPrefixFiller = {
    "honestly ,", "overall ,", "in the end ,", "i think", "to be fair ,",
    "for me ,",   "frankly ,", "all in all ,", "if you ask me ,", "as a whole ,"};
constexpr std::array<const char*, 10> kSuffixFiller = {
    "from start to finish", "for most of its running time", "in every scene", "at least for me",
    "on the big screen",    "by the end",                   "in the second half", "as far as i can tell",
    "with a cast of unknowns", "for a summer release"};
constexpr std::array<const char*, 5> kConnectors = {", and", "but", ", while", ", yet", "; and"};

struct Clause {
  std::string text;
  int polarity;  // +1 / -1
};

// A clause with polarity `want` (+1/-1, or 0 for either); `negated` uses a negation form.
Clause make_clause(Rng& rng, bool negated, int want) {
  if (want == 0) want = chance(rng, 0.5) ? 1 : -1;
  const int adj_pol = negated ? -want : want;
  const std::string adj = adj_pol > 0 ? pick(rng, kPositive) : pick(rng, kNegative);
  const std::string subj = std::string(pick(rng, kDeterminers)) + " " + pick(rng, kSubjects);
  const std::string verb = pick(rng, kVerbs);
  std::string text;
  if (!negated) {
    if (chance(rng, 0.3)) {
      text = std::string("a ") + (chance(rng, 0.4) ? std::string(pick(rng, kIntensifiers)) + " " : "") + adj +
             " " + pick(rng, kSubjects);
    } else {
      text = subj + " " + verb + " " + (chance(rng, 0.4) ? std::string(pick(rng, kIntensifiers)) + " " : "") + adj;
    }
  } else {
    switch (rng.below(3)) {
      case 0:
        text = subj + " " + verb + " not " + (chance(rng, 0.3) ? std::string(pick(rng, kIntensifiers)) + " " : "") + adj;
        break;
      case 1: text = subj + " " + verb + " never " + adj; break;
      default: text = subj + " " + verb + " anything but " + adj; break;
    }
  }
  return {text, want};
}

int64_t word_count(const std::string& s) {
  return static_cast<int64_t>(word_ends(s).size());
}

}  // namespace

Sst2Row synth_sentiment_row(Rng& rng) {
  for (;;) {
    std::vector<Clause> clauses;
    const double r = rng.uniform();
    if (r < 0.45) {
      clauses.push_back(make_clause(rng, false, 0));
    } else if (r < 0.70) {
      clauses.push_back(make_clause(rng, true, 0));
    } else {
      const int k = chance(rng, 0.5) ? 2 : 3;
      for (int i = 0; i < k; ++i) {
        // Two clauses must agree (a tie has no label); three decide by majority.
        const int want = (k == 2 && i == 1) ? clauses[0].polarity : 0;
        clauses.push_back(make_clause(rng, chance(rng, 0.3), want));
      }
    }
    int sum = 0;
    std::string s;
    for (size_t i = 0; i < clauses.size(); ++i) {
      if (i) s += std::string(" ") + pick(rng, kConnectors) + " ";
      s += clauses[i].text;
      sum += clauses[i].polarity;
    }
    bool has_prefix = chance(rng, 0.35), has_suffix = chance(rng, 0.3);
    if (has_prefix) s = std::string(pick(rng, kPrefixFiller)) + " " + s;
    if (has_suffix) s += std::string(" ") + pick(rng, kSuffixFiller);
    while (word_count(s) < 4) {
      if (!has_prefix) {
        s = std::string(pick(rng, kPrefixFiller)) + " " + s;
        has_prefix = true;
      } else {
        s += std::string(" ") + pick(rng, kSuffixFiller);
      }
    }
    if (chance(rng, 0.5)) s += " .";
    if (word_count(s) > 20) continue;  // too long: draw again
    return {0, s, sum > 0 ? 1 : 0};
  }
}

namespace {

// ------------------------------------------------------------------------------ instruct

constexpr std::array<const char*, 24> kWords = {
    "apple",  "river",  "chair",  "cloud",  "lamp",   "tiger",  "bread",  "stone",
    "garden", "pencil", "window", "rocket", "violin", "candle", "forest", "mirror",
    "button", "ladder", "island", "blanket", "horse", "basket", "planet", "kettle"};
constexpr std::array<std::array<const char*, 2>, 20> kAntonyms = {{
    {"hot", "cold"},     {"big", "small"},   {"fast", "slow"},   {"happy", "sad"},
    {"light", "dark"},   {"up", "down"},     {"open", "closed"}, {"early", "late"},
    {"full", "empty"},   {"old", "new"},     {"hard", "soft"},   {"high", "low"},
    {"wet", "dry"},      {"loud", "quiet"},  {"rich", "poor"},   {"strong", "weak"},
    {"long", "short"},   {"thick", "thin"},  {"near", "far"},    {"clean", "dirty"}}};
constexpr std::array<std::array<const char*, 2>, 12> kCapitals = {{
    {"Zorbia", "Mellow"},   {"Quenland", "Tarsk"},  {"Vellmark", "Osprey"}, {"Drunia", "Halvik"},
    {"Pelloria", "Kestrin"}, {"Ombrith", "Sallow"}, {"Trevania", "Marrow"}, {"Yslandor", "Fennick"},
    {"Gorvath", "Brisk"},   {"Lumaria", "Cindel"},  {"Kastovia", "Rheen"},  {"Nembra", "Dulcet"}}};
constexpr std::array<std::array<const char*, 2>, 10> kCreatures = {{
    {"glimmerfish", "blue"}, {"snorkbat", "green"},  {"puffling", "yellow"}, {"dravel", "red"},
    {"mooncrab", "silver"},  {"thistlefox", "orange"}, {"wobbit", "purple"}, {"ferrox", "black"},
    {"quillmouse", "white"}, {"zephyrat", "pink"}}};

// kWordPolarity and kReviewPolarity give the base model what an instruction-tuned model already knows: the polarity of
// the sentiment adjectives and the label words "positive"/"negative", on single words and on
// simple one-clause *restaurant* reviews. The movie-review task (its "Review: ... Sentiment:"
// format, its subjects, negation and mixed clauses) is left for fine-tuning to learn.
enum Task { kReverse, kSort, kAdd, kAntonym, kCount, kRepeat, kMax, kWordPolarity, kReviewPolarity, kFact, kNumTasks };

// Lookup tasks draw from small fixed tables; they may repeat across splits.
bool is_lookup_task(int task) { return task == kAntonym || task == kFact || task == kWordPolarity; }

std::vector<std::string> distinct_words(Rng& rng, int64_t n) {
  std::vector<std::string> out;
  while (static_cast<int64_t>(out.size()) < n) {
    std::string w = pick(rng, kWords);
    if (std::find(out.begin(), out.end(), w) == out.end()) out.push_back(std::move(w));
  }
  return out;
}

std::vector<int64_t> numbers(Rng& rng, int64_t n, int64_t lo, int64_t hi) {
  std::vector<int64_t> v;
  for (int64_t i = 0; i < n; ++i) v.push_back(uniform_int(rng, lo, hi));
  return v;
}

template <typename T>
std::string join(const std::vector<T>& v, const char* sep) {
  std::ostringstream os;
  for (size_t i = 0; i < v.size(); ++i) os << (i ? sep : "") << v[i];
  return os.str();
}

InstructRow synth_task(Rng& rng, int task) {
  InstructRow r;
  switch (task) {
    case kReverse: {
      static constexpr std::array<const char*, 3> ins = {
          "Reverse the order of the words.", "Write the words in reverse order.", "List these words backwards."};
      r.instruction = pick(rng, ins);
      auto w = distinct_words(rng, uniform_int(rng, 3, 5));
      r.input = join(w, " ");
      std::reverse(w.begin(), w.end());
      r.output = join(w, " ");
      break;
    }
    case kSort: {
      static constexpr std::array<const char*, 2> ins = {"Sort the numbers from smallest to largest.",
                                                         "Put these numbers in ascending order."};
      r.instruction = pick(rng, ins);
      auto v = numbers(rng, uniform_int(rng, 3, 5), 0, 50);
      r.input = join(v, " ");
      std::sort(v.begin(), v.end());
      r.output = join(v, " ");
      break;
    }
    case kAdd: {
      static constexpr std::array<const char*, 2> ins = {"Add the two numbers.", "What is the sum of these numbers?"};
      r.instruction = pick(rng, ins);
      const int64_t a = uniform_int(rng, 0, 50), b = uniform_int(rng, 0, 50);
      r.input = str(a, " + ", b);
      r.output = str(a + b);
      break;
    }
    case kAntonym: {
      static constexpr std::array<const char*, 2> ins = {"Give the opposite of this word.",
                                                         "What is the antonym of the word?"};
      r.instruction = pick(rng, ins);
      const auto& pair = pick(rng, kAntonyms);
      const size_t dir = static_cast<size_t>(rng.below(2));
      r.input = pair[dir];
      r.output = pair[1 - dir];
      break;
    }
    case kCount: {
      static constexpr std::array<const char*, 2> ins = {"Count the items in the list.",
                                                         "How many items are in this list?"};
      r.instruction = pick(rng, ins);
      const int64_t n = uniform_int(rng, 1, 9);
      std::vector<std::string> items;
      for (int64_t i = 0; i < n; ++i) items.push_back(pick(rng, kWords));
      r.input = join(items, ", ");
      r.output = str(n);
      break;
    }
    case kRepeat: {
      const std::string w = pick(rng, kWords);
      const int64_t n = uniform_int(rng, 2, 6);
      if (chance(rng, 0.5)) {
        r.instruction = str("Repeat the word ", w, " ", n, " times.");
      } else {
        r.instruction = str("Repeat the word ", n, " times.");
        r.input = w;
      }
      r.output = join(std::vector<std::string>(static_cast<size_t>(n), w), " ");
      break;
    }
    case kMax: {
      static constexpr std::array<const char*, 2> ins = {"Pick the largest number.", "Which number is the biggest?"};
      r.instruction = pick(rng, ins);
      const auto v = numbers(rng, uniform_int(rng, 3, 6), 0, 99);
      r.input = join(v, " ");
      r.output = str(*std::max_element(v.begin(), v.end()));
      break;
    }
    case kWordPolarity:
    case kReviewPolarity: {
      static constexpr std::array<const char*, 2> word_ins = {"Is this word positive or negative?",
                                                              "Say whether the word is positive or negative."};
      static constexpr std::array<const char*, 2> review_ins = {"Is this review positive or negative?",
                                                                "Classify the sentiment of this review."};
      static constexpr std::array<const char*, 10> places = {"food", "service", "hotel", "room",  "staff",
                                                             "meal", "view",    "menu",  "coffee", "dessert"};
      const bool positive = chance(rng, 0.5);
      const std::string adj = positive ? pick(rng, kPositive) : pick(rng, kNegative);
      if (task == kWordPolarity) {
        r.instruction = pick(rng, word_ins);
        r.input = adj;
      } else {
        r.instruction = pick(rng, review_ins);
        r.input = str(pick(rng, kDeterminers), " ", pick(rng, places), " ", pick(rng, kVerbs), " ",
                      chance(rng, 0.4) ? str(pick(rng, kIntensifiers), " ") : std::string(), adj);
      }
      r.output = positive ? "positive" : "negative";
      break;
    }
    default: {  // kFact
      if (chance(rng, 0.55)) {
        const auto& c = pick(rng, kCapitals);
        r.instruction = str("What is the capital of ", c[0], "?");
        r.output = str("The capital of ", c[0], " is ", c[1], ".");
      } else {
        const auto& c = pick(rng, kCreatures);
        r.instruction = str("What color is a ", c[0], "?");
        r.output = str("A ", c[0], " is ", c[1], ".");
      }
      break;
    }
  }
  return r;
}

}  // namespace

InstructRow synth_instruct_row(Rng& rng) {
  return synth_task(rng, static_cast<int>(rng.below(kNumTasks)));
}

namespace {

// Independent streams per dataset, so changing one row count leaves the other data unchanged.
constexpr uint64_t kSentimentStream = 0x5e47u, kInstructStream = 0x1a57u;

int64_t val_rows_for(int64_t train_rows) { return std::max<int64_t>(1, train_rows / 10); }

}  // namespace

void synth_sentiment_splits(uint64_t seed, int64_t train_rows, std::vector<Sst2Row>& train,
                            std::vector<Sst2Row>& dev) {
  Rng rng(splitmix64(seed ^ kSentimentStream));
  train.clear();
  dev.clear();
  std::unordered_set<std::string> seen;
  for (int64_t i = 0; i < train_rows; ++i) {
    Sst2Row r = synth_sentiment_row(rng);
    r.line = i + 2;  // line in the TSV (after the header)
    seen.insert(r.sentence);
    train.push_back(std::move(r));
  }
  const int64_t want = val_rows_for(train_rows);
  int64_t attempts = 0;
  while (static_cast<int64_t>(dev.size()) < want) {
    if (++attempts > 1000 * want) ST_THROW("synthetic sentiment: cannot draw ", want, " dev sentences unseen in train");
    Sst2Row r = synth_sentiment_row(rng);
    if (!seen.insert(r.sentence).second) continue;
    r.line = static_cast<int64_t>(dev.size()) + 2;
    dev.push_back(std::move(r));
  }
}

void synth_instruct_splits(uint64_t seed, int64_t train_rows, std::vector<InstructRow>& train,
                           std::vector<InstructRow>& val) {
  Rng rng(splitmix64(seed ^ kInstructStream));
  train.clear();
  val.clear();
  std::unordered_set<std::string> seen;
  auto key = [](const InstructRow& r) { return r.instruction + '\x1f' + r.input; };
  for (int64_t i = 0; i < train_rows; ++i) {
    InstructRow r = synth_instruct_row(rng);
    r.line = i + 1;
    seen.insert(key(r));
    train.push_back(std::move(r));
  }
  const int64_t want = val_rows_for(train_rows);
  int64_t attempts = 0;
  while (static_cast<int64_t>(val.size()) < want) {
    if (++attempts > 1000 * want) ST_THROW("synthetic instruct: cannot draw ", want, " val records unseen in train");
    const int task = static_cast<int>(rng.below(kNumTasks));
    InstructRow r = synth_task(rng, task);
    if (!is_lookup_task(task) && seen.count(key(r))) continue;
    r.line = static_cast<int64_t>(val.size()) + 1;
    val.push_back(std::move(r));
  }
}

namespace {

std::string sentiment_tsv(const std::vector<Sst2Row>& rows) {
  std::string s = "sentence\tlabel\n";
  for (const auto& r : rows) s += str(r.sentence, '\t', r.label, '\n');
  return s;
}

std::string instruct_jsonl(const std::vector<InstructRow>& rows) {
  std::string s;
  for (const auto& r : rows) {
    nlohmann::ordered_json j;
    j["instruction"] = r.instruction;
    j["input"] = r.input;
    j["output"] = r.output;
    s += j.dump() + '\n';
  }
  return s;
}

}  // namespace

SyntheticResult write_synthetic_dataset(const SyntheticOptions& opt) {
  ST_CHECK_INPUT(!opt.dir.empty(), "--synthetic: empty output directory");
  constexpr int64_t kMaxRows = 10000000;  // the generator holds every row in memory
  ST_CHECK_INPUT(opt.sentiment_rows >= 1 && opt.sentiment_rows <= kMaxRows, "--sentiment-rows must be in [1, ", kMaxRows,
                 "] (got ", opt.sentiment_rows, ")");
  ST_CHECK_INPUT(opt.instruct_rows >= 1 && opt.instruct_rows <= kMaxRows, "--instruct-rows must be in [1, ", kMaxRows,
                 "] (got ", opt.instruct_rows, ")");
  ST_CHECK_INPUT(opt.vocab_size >= 300, "--vocab-size must be >= 300 (256 byte pieces, 3 specials and the "
                                        "characters of the text; got ", opt.vocab_size, ")");
  std::error_code ec;
  fs::create_directories(opt.dir, ec);
  if (ec || !fs::is_directory(opt.dir)) ST_THROW_INPUT(opt.dir, ": cannot create directory (", ec.message(), ")");

  SyntheticResult res;
  Stopwatch sw;
  std::vector<Sst2Row> s_train, s_dev;
  std::vector<InstructRow> i_train, i_val;
  synth_sentiment_splits(opt.seed, opt.sentiment_rows, s_train, s_dev);
  synth_instruct_splits(opt.seed, opt.instruct_rows, i_train, i_val);
  res.sentiment_train = static_cast<int64_t>(s_train.size());
  res.sentiment_dev = static_cast<int64_t>(s_dev.size());
  res.instruct_train = static_cast<int64_t>(i_train.size());
  res.instruct_val = static_cast<int64_t>(i_val.size());

  const fs::path dir(opt.dir);
  const std::vector<std::pair<std::string, std::string>> texts = {
      {"sentiment_train.tsv", sentiment_tsv(s_train)},
      {"sentiment_dev.tsv", sentiment_tsv(s_dev)},
      {"instruct_train.jsonl", instruct_jsonl(i_train)},
      {"instruct_val.jsonl", instruct_jsonl(i_val)},
  };
  for (const auto& [name, text] : texts) {
    const std::string path = (dir / name).string();
    atomic_write_file(path, text);
    res.files.push_back(path);
  }

  // Tokenizer training text: every row exactly as the model sees it (prompt, then answer), at
  // natural frequencies, so the fixed template text and the label words become single pieces.
  // Rows keep their newlines: "\n" then becomes a piece of its own, and "Sentiment" after it a
  // piece without the word-start marker, as in the encoded prompts.
  std::vector<std::string> lines;
  for (const auto* rows : {&s_train, &s_dev})
    for (const auto& r : *rows) lines.push_back(sst2_prompt(r.sentence) + " " + sst2_label_word(r.label));
  for (const auto* rows : {&i_train, &i_val})
    for (const auto& r : *rows)
      lines.push_back(instruct_prompt(InstructTemplate::alpaca, r.instruction, r.input) + " " + r.output);
  res.generate_seconds = sw.seconds();

  sw.restart();
  TokenizerTrainOptions topt;
  topt.model_prefix = (dir / "tokenizer").string();
  topt.vocab_size = opt.vocab_size;
  topt.model_type = "bpe";
  topt.seed = static_cast<uint32_t>(opt.seed);
  topt.num_threads = opt.num_threads;
  train_tokenizer(lines, topt);
  res.tokenizer_seconds = sw.seconds();
  res.files.push_back(topt.model_prefix + ".model");
  res.files.push_back(topt.model_prefix + ".vocab");
  return res;
}

}  // namespace st
