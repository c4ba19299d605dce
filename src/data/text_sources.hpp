// Reading the text sources of `shardtune prepare`.
//
//   SST-2 TSV     a header line naming the columns `sentence` and `label` (tab-separated, in
//                 any order, other columns allowed), then one row per line; label 0 or 1.
//   Alpaca JSON   a JSON list of objects, or JSONL (one object per line), with string fields
//                 `instruction`, `input` (may be missing or empty) and `output`.
//
// Bad rows are skipped and counted by reason with the first few line (record) numbers, so
// prepare can report them; only a file that cannot be read at all (missing, no header, a
// malformed JSON list) is an InputError naming the file and the position.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace st {

// Reasons a row is skipped (the keys of BadRows::count).
namespace bad_reason {
inline constexpr const char* kWrongColumns = "wrong column count";
inline constexpr const char* kMissingLabel = "missing label";
inline constexpr const char* kInvalidLabel = "invalid label";
inline constexpr const char* kBadUtf8 = "bad UTF-8";
inline constexpr const char* kEmptyLine = "empty line";
inline constexpr const char* kEmptySentence = "empty sentence";
inline constexpr const char* kMalformedJson = "malformed JSON";
inline constexpr const char* kNotObject = "not a JSON object";
inline constexpr const char* kNonStringField = "non-string field";
inline constexpr const char* kEmptyInstruction = "empty instruction";
inline constexpr const char* kEmptyOutput = "empty output";
}  // namespace bad_reason

struct BadRows {
  static constexpr size_t kKeepFirst = 5;  // line numbers kept per reason
  std::string unit = "line";               // what `first` counts: "line" or "record" (1-based)
  std::map<std::string, int64_t> count;                // reason -> rows
  std::map<std::string, std::vector<int64_t>> first;   // reason -> first kKeepFirst positions

  void add(const std::string& reason, int64_t where);
  int64_t total() const;
  int64_t count_of(const std::string& reason) const;
  // "missing label: 2 (lines 4, 9); bad UTF-8: 1 (line 7)", or "none".
  std::string summary() const;
};

struct Sst2Row {
  int64_t line = 0;      // 1-based line in the file (the header is line 1)
  std::string sentence;  // surrounding whitespace removed
  int32_t label = 0;     // 0 negative, 1 positive
};

struct InstructRow {
  int64_t line = 0;  // 1-based line (JSONL) or record number (JSON list)
  std::string instruction, input, output;
};

template <typename Row>
struct TextSource {
  std::string path;
  std::string sha256;    // of the file's bytes
  int64_t rows_read = 0; // data rows looked at (good + bad), header excluded
  std::vector<Row> rows; // good rows, in file order
  BadRows bad;
};
using Sst2Source = TextSource<Sst2Row>;
using InstructSource = TextSource<InstructRow>;

// `limit` > 0 stops after that many data rows (good or bad); 0 reads everything.
Sst2Source read_sst2_tsv(const std::string& path, int64_t limit = 0);
InstructSource read_alpaca(const std::string& path, int64_t limit = 0);

// The same from text in memory; `name` stands for the file in messages.
Sst2Source parse_sst2_tsv(std::string_view text, const std::string& name, int64_t limit = 0);
InstructSource parse_alpaca(std::string_view text, const std::string& name, int64_t limit = 0);

// Whitespace (space, tab, CR, LF, VT, FF) trimmed from both ends.
std::string_view trim_ascii(std::string_view s);

}  // namespace st
