// The embedded synthetic dataset: what shardtune trains on when no real data is at hand.
//
// Two small tasks a ~1M-parameter Llama learns from random init in a few hundred CPU steps:
//   sentiment   SST-2-style movie-review sentences (lowercase, 4-20 words) built from clause
//               templates with positive/negative adjective lists; some clauses negated
//               ("is not good" -> negative, "is never dull" -> positive), some sentences mixed
//               (2 clauses that agree, or 3 clauses: the label is the sign of the sum of
//               polarities), neutral filler around them.
//   instruct    Alpaca records from 8 deterministic tasks: reverse a word list, sort numbers,
//               add two numbers, antonym from a table, count list items, repeat a word N times,
//               pick the largest number, made-up fact lookups (capitals, creature colours).
// Everything is drawn from st::Rng (xoshiro256**), so a seed gives the same bytes everywhere.
// Validation splits (~10% of the train size) are separate draws from the same distribution
// that never repeat a train sentence, nor a train (instruction, input) pair of the open-ended
// tasks; the lookup tasks (antonym, facts) ask about the same fixed tables in both splits,
// since recalling them is what those tasks teach.
//
// write_synthetic_dataset() writes into a directory:
//   sentiment_train.tsv, sentiment_dev.tsv      SST-2 format (header "sentence<TAB>label")
//   instruct_train.jsonl, instruct_val.jsonl    one {"instruction","input","output"} per line
//   tokenizer.model, tokenizer.vocab            SentencePiece BPE trained on all of the above as
//                                               the model sees it (prompts and answers)
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/rng.hpp"
#include "data/text_sources.hpp"

namespace st {

struct SyntheticOptions {
  std::string dir;
  uint64_t seed = 1234;
  int64_t sentiment_rows = 4000;  // train rows; the dev split gets max(1, rows / 10)
  int64_t instruct_rows = 3000;   // train rows; the val split gets max(1, rows / 10)
  int vocab_size = 512;
  int num_threads = 2;            // SentencePiece trainer threads
};

struct SyntheticResult {
  std::vector<std::string> files;  // paths written, in the order above
  int64_t sentiment_train = 0, sentiment_dev = 0, instruct_train = 0, instruct_val = 0;
  double generate_seconds = 0, tokenizer_seconds = 0;
};

// Throws InputError for bad options (rows < 1, vocab_size too small for SentencePiece).
SyntheticResult write_synthetic_dataset(const SyntheticOptions& options);

// One draw of each generator (for tests and for in-memory use). Labels: 1 positive, 0 negative.
Sst2Row synth_sentiment_row(Rng& rng);
InstructRow synth_instruct_row(Rng& rng);

// The train and validation splits exactly as write_synthetic_dataset() writes them.
void synth_sentiment_splits(uint64_t seed, int64_t train_rows, std::vector<Sst2Row>& train,
                            std::vector<Sst2Row>& dev);
void synth_instruct_splits(uint64_t seed, int64_t train_rows, std::vector<InstructRow>& train,
                           std::vector<InstructRow>& val);

}  // namespace st
