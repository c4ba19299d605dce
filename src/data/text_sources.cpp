#include "data/text_sources.hpp"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.hpp"
#include "core/sha256.hpp"
#include "data/utf8.hpp"

namespace st {

namespace br = bad_reason;

void BadRows::add(const std::string& reason, int64_t where) {
  ++count[reason];
  auto& v = first[reason];
  if (v.size() < kKeepFirst) v.push_back(where);
}

int64_t BadRows::total() const {
  int64_t n = 0;
  for (const auto& [reason, c] : count) n += c;
  return n;
}

int64_t BadRows::count_of(const std::string& reason) const {
  auto it = count.find(reason);
  return it == count.end() ? 0 : it->second;
}

std::string BadRows::summary() const {
  if (count.empty()) return "none";
  std::ostringstream os;
  bool first_reason = true;
  for (const auto& [reason, c] : count) {
    if (!first_reason) os << "; ";
    first_reason = false;
    os << reason << ": " << c << " (" << unit << (c > 1 ? "s " : " ");
    const auto& where = first.at(reason);
    for (size_t i = 0; i < where.size(); ++i) os << (i ? ", " : "") << where[i];
    if (c > static_cast<int64_t>(where.size())) os << ", ...";
    os << ")";
  }
  return os.str();
}

std::string_view trim_ascii(std::string_view s) {
  auto ws = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f'; };
  size_t b = 0, e = s.size();
  while (b < e && ws(s[b])) ++b;
  while (e > b && ws(s[e - 1])) --e;
  return s.substr(b, e - b);
}

namespace {

std::string read_text_file(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) ST_THROW_INPUT(path, ": input file not found");
  if (std::filesystem::is_directory(path, ec)) ST_THROW_INPUT(path, ": input is a directory, not a file");
  std::ifstream f(path, std::ios::binary);
  if (!f) ST_THROW_INPUT(path, ": cannot open input file");
  std::ostringstream os;
  os << f.rdbuf();
  if (f.bad()) ST_THROW_INPUT(path, ": read error");
  return os.str();
}

// Splits on '\n' and drops one trailing '\r' per line; a final newline adds no empty line.
std::vector<std::string_view> split_lines(std::string_view text) {
  std::vector<std::string_view> lines;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t nl = text.find('\n', pos);
    if (nl == std::string_view::npos) nl = text.size();
    std::string_view line = text.substr(pos, nl - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    lines.push_back(line);
    pos = nl + 1;
  }
  return lines;
}

std::vector<std::string_view> split_tabs(std::string_view line) {
  std::vector<std::string_view> cols;
  size_t pos = 0;
  while (true) {
    const size_t tab = line.find('\t', pos);
    if (tab == std::string_view::npos) {
      cols.push_back(line.substr(pos));
      return cols;
    }
    cols.push_back(line.substr(pos, tab - pos));
    pos = tab + 1;
  }
}

// 1-based line and column of a byte offset, for JSON error messages.
void line_column(std::string_view text, size_t offset, int64_t& line, int64_t& column) {
  line = 1;
  column = 1;
  for (size_t i = 0; i < offset && i < text.size(); ++i) {
    if (text[i] == '\n') {
      ++line;
      column = 1;
    } else {
      ++column;
    }
  }
}

// Fills `row` from one JSON value; returns the bad-row reason, or nullptr when the row is good.
const char* instruct_row_from_json(const nlohmann::json& j, InstructRow& row) {
  if (!j.is_object()) return br::kNotObject;
  auto field = [&j](const char* key, std::string& out) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) {
      out.clear();
      return true;
    }
    if (!it->is_string()) return false;
    out = it->get<std::string>();
    return true;
  };
  if (!field("instruction", row.instruction) || !field("input", row.input) || !field("output", row.output))
    return br::kNonStringField;
  if (trim_ascii(row.instruction).empty()) return br::kEmptyInstruction;
  if (trim_ascii(row.output).empty()) return br::kEmptyOutput;
  return nullptr;
}

}  // namespace

Sst2Source parse_sst2_tsv(std::string_view text, const std::string& name, int64_t limit) {
  Sst2Source src;
  src.path = name;
  src.sha256 = sha256_hex(text);
  const auto lines = split_lines(strip_utf8_bom(text));
  if (lines.empty()) ST_THROW_INPUT(name, ": empty file (expected a header line 'sentence<TAB>label')");

  const auto header = split_tabs(lines[0]);
  int sentence_col = -1, label_col = -1;
  for (size_t c = 0; c < header.size(); ++c) {
    const auto h = trim_ascii(header[c]);
    if (h == "sentence" && sentence_col < 0) sentence_col = static_cast<int>(c);
    if (h == "label" && label_col < 0) label_col = static_cast<int>(c);
  }
  if (sentence_col < 0 || label_col < 0)
    ST_THROW_INPUT(name, ":1: expected a header line naming the columns 'sentence' and 'label' "
                   "(tab-separated), got '", lines[0].substr(0, 80), "'");

  for (size_t i = 1; i < lines.size(); ++i) {
    if (limit > 0 && src.rows_read >= limit) break;
    const int64_t line_no = static_cast<int64_t>(i) + 1;
    const std::string_view line = lines[i];
    ++src.rows_read;
    if (trim_ascii(line).empty()) {
      src.bad.add(br::kEmptyLine, line_no);
      continue;
    }
    if (!utf8_valid(line)) {
      src.bad.add(br::kBadUtf8, line_no);
      continue;
    }
    const auto cols = split_tabs(line);
    if (cols.size() != header.size()) {
      src.bad.add(br::kWrongColumns, line_no);
      continue;
    }
    const auto label = trim_ascii(cols[static_cast<size_t>(label_col)]);
    if (label.empty()) {
      src.bad.add(br::kMissingLabel, line_no);
      continue;
    }
    if (label != "0" && label != "1") {
      src.bad.add(br::kInvalidLabel, line_no);
      continue;
    }
    const auto sentence = trim_ascii(cols[static_cast<size_t>(sentence_col)]);
    if (sentence.empty()) {
      src.bad.add(br::kEmptySentence, line_no);
      continue;
    }
    src.rows.push_back({line_no, std::string(sentence), label == "1" ? 1 : 0});
  }
  return src;
}

InstructSource parse_alpaca(std::string_view text, const std::string& name, int64_t limit) {
  InstructSource src;
  src.path = name;
  src.sha256 = sha256_hex(text);
  const std::string_view body = strip_utf8_bom(text);
  const std::string_view trimmed = trim_ascii(body);
  if (trimmed.empty()) ST_THROW_INPUT(name, ": empty file (expected a JSON list or JSONL of Alpaca records)");

  if (trimmed.front() == '[') {
    // A JSON list: the whole file must parse.
    src.bad.unit = "record";
    nlohmann::json doc;
    try {
      doc = nlohmann::json::parse(body.begin(), body.end());
    } catch (const nlohmann::json::parse_error& e) {
      int64_t line = 0, column = 0;
      line_column(body, e.byte > 0 ? e.byte - 1 : 0, line, column);
      ST_THROW_INPUT(name, ": malformed JSON at line ", line, ", column ", column, " (byte ", e.byte,
                     "): ", e.what());
    }
    if (!doc.is_array()) ST_THROW_INPUT(name, ": expected a JSON list of records");
    int64_t record = 0;
    for (const auto& j : doc) {
      if (limit > 0 && src.rows_read >= limit) break;
      ++record;
      ++src.rows_read;
      InstructRow row;
      row.line = record;
      if (const char* reason = instruct_row_from_json(j, row)) {
        src.bad.add(reason, record);
        continue;
      }
      src.rows.push_back(std::move(row));
    }
    return src;
  }

  // JSONL: one object per line; blank lines carry no record and are skipped.
  src.bad.unit = "line";
  const auto lines = split_lines(body);
  for (size_t i = 0; i < lines.size(); ++i) {
    if (limit > 0 && src.rows_read >= limit) break;
    const int64_t line_no = static_cast<int64_t>(i) + 1;
    const std::string_view line = lines[i];
    if (trim_ascii(line).empty()) continue;
    ++src.rows_read;
    if (!utf8_valid(line)) {
      src.bad.add(br::kBadUtf8, line_no);
      continue;
    }
    nlohmann::json j = nlohmann::json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) {
      src.bad.add(br::kMalformedJson, line_no);
      continue;
    }
    InstructRow row;
    row.line = line_no;
    if (const char* reason = instruct_row_from_json(j, row)) {
      src.bad.add(reason, line_no);
      continue;
    }
    src.rows.push_back(std::move(row));
  }
  return src;
}

Sst2Source read_sst2_tsv(const std::string& path, int64_t limit) {
  const std::string text = read_text_file(path);
  return parse_sst2_tsv(text, path, limit);
}

InstructSource read_alpaca(const std::string& path, int64_t limit) {
  const std::string text = read_text_file(path);
  return parse_alpaca(text, path, limit);
}

}  // namespace st
