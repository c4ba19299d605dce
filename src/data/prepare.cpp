#include "data/prepare.hpp"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <limits>
#include <optional>
#include <sstream>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "core/timer.hpp"
#include "data/tokenizer.hpp"

namespace st {

namespace fs = std::filesystem;

namespace {

constexpr int64_t kMaxSeqLenLimit = 1 << 20;
constexpr size_t kKeepDroppedLines = 5;

std::string lower_extension(const std::string& path) {
  std::string ext = fs::path(path).extension().string();
  for (char& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return ext;
}

bool valid_split_name(const std::string& s) {
  if (s.empty()) return false;
  for (char c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.')) return false;
  return true;
}

std::string absolute_path(const std::string& p) {
  std::error_code ec;
  fs::path a = fs::absolute(p, ec);
  return ec ? p : a.lexically_normal().string();
}

// One source row to fit: its content fields (in cutting order), how to build the prompt,
// the answer ids and the label.
struct RowSpec {
  int64_t line = 0;
  std::vector<std::string_view> content;
  PromptBuilder build;
  std::vector<int32_t> answer_ids;
  int32_t label = -1;
};

// Runs fn(i) for i in [0, n) on OpenMP threads; the first exception is rethrown afterwards
// (exceptions must not leave a parallel region).
template <typename Fn>
void parallel_for(int64_t n, const Fn& fn) {
  std::exception_ptr error;
#pragma omp parallel for schedule(dynamic, 64)
  for (int64_t i = 0; i < n; ++i) {
    try {
      fn(static_cast<size_t>(i));
    } catch (...) {
#pragma omp critical(prepare_parallel_error)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

void validate_arch_options(const PrepareOptions& o) {
  ST_CHECK_INPUT(o.arch == "causal" || o.arch == "seq2seq", "--arch must be causal or seq2seq (got '", o.arch, "')");
  if (o.arch == "seq2seq")
    ST_CHECK_INPUT(o.max_target_len >= 2 && o.max_target_len <= kMaxSeqLenLimit, "--max-target-len must be in [2, ",
                   kMaxSeqLenLimit, "] (got ", o.max_target_len, "; a target is at least one token and the eos)");
}

bool is_seq2seq(const PrepareOptions& o) { return o.arch == "seq2seq"; }

// seq2seq: no BOS (T5 tokenizers have none), whatever add_bos says.
FitOptions fit_options(const PrepareOptions& o, const Tokenizer& tok) {
  validate_arch_options(o);
  FitOptions f;
  f.max_seq_len = o.max_seq_len;
  f.add_bos = o.add_bos && !is_seq2seq(o);
  f.add_eos = o.add_eos;
  f.bos_id = tok.bos_id();
  f.eos_id = tok.eos_id();
  if (f.add_bos && f.bos_id < 0)
    ST_THROW_INPUT(tok.path(), ": tokenizer has no BOS token (use --add-bos false)");
  if (f.add_eos && f.eos_id < 0)
    ST_THROW_INPUT(tok.path(), ": tokenizer has no EOS token (use --add-eos false)");
  return f;
}

// What causal and seq2seq shards share: the tokenizer, the options and the counts.
void fill_common_info(PreparedRows& out, const Tokenizer& tok, const PrepareOptions& o, const FitOptions& fopt) {
  PrepareStats& st = out.stats;
  st.mean_length = st.rows_written ? static_cast<double>(st.tokens) / static_cast<double>(st.rows_written) : 0.0;
  st.arch = o.arch;
  st.split = o.split;
  st.tokenizer = tok.path();
  st.tokenizer_sha256 = tok.sha256();
  st.tokenizer_vocab_size = tok.vocab_size();

  ShardInfo& info = out.info;
  info.format_version = kShardFormatVersion;
  info.arch = o.arch;
  info.split = o.split;
  info.tokenizer_sha256 = tok.sha256();
  info.tokenizer_vocab_size = tok.vocab_size();
  info.bos_id = tok.bos_id();
  info.eos_id = tok.eos_id();
  info.pad_id = tok.pad_id();
  info.seq_len = o.max_seq_len;
  info.add_bos = fopt.add_bos;
  info.add_eos = fopt.add_eos;
  info.rows_written = st.rows_written;
  info.rows_truncated = st.rows_truncated;
  info.rows_dropped = st.rows_dropped;
}

void count_dropped(PrepareStats& st, int64_t line) {
  ++st.rows_dropped;
  if (st.dropped_lines.size() < kKeepDroppedLines) st.dropped_lines.push_back(line);
}

// causal: prompt + answer in one row of L tokens, with the loss mask of options.loss_on.
PreparedRows fit_and_pack_causal(const std::vector<RowSpec>& specs, const Tokenizer& tok, const PrepareOptions& o,
                                 const FitOptions& fopt) {
  const LossOn loss_on = parse_loss_on(o.loss_on);
  const int64_t n = static_cast<int64_t>(specs.size());
  std::vector<std::optional<FittedRow>> fitted(specs.size());
  parallel_for(n, [&](size_t i) {
    const auto& s = specs[i];
    fitted[i] = fit_row(tok, s.content, s.build, s.answer_ids, fopt);
  });

  PreparedRows out;
  auto& rows = out.rows;
  auto& st = out.stats;
  const int64_t L = o.max_seq_len;
  rows.seq_len = L;
  st.seq_len = L;
  for (size_t i = 0; i < specs.size(); ++i) {
    if (!fitted[i]) {
      count_dropped(st, specs[i].line);
      continue;
    }
    const FittedRow& f = *fitted[i];
    const auto len = static_cast<int64_t>(f.ids.size());
    const size_t base = rows.ids.size();
    rows.ids.resize(base + static_cast<size_t>(L), tok.pad_id());
    std::copy(f.ids.begin(), f.ids.end(), rows.ids.begin() + static_cast<std::ptrdiff_t>(base));
    rows.loss_mask.resize(base + static_cast<size_t>(L));
    fill_loss_mask(loss_on, len, f.answer_start, L, rows.loss_mask.data() + base);
    rows.lengths.push_back(static_cast<int32_t>(len));
    rows.answer_start.push_back(f.answer_start);
    rows.labels.push_back(specs[i].label);

    ++st.rows_written;
    st.rows_truncated += f.truncated();
    st.rows_prompt_cut += f.prompt_cut;
    st.rows_answer_cut += f.answer_cut;
    st.tokens += len;
    st.max_length = std::max(st.max_length, len);
    for (int64_t t = 1; t < L; ++t) st.loss_tokens += rows.loss_mask[base + static_cast<size_t>(t)];
  }
  fill_common_info(out, tok, o, fopt);
  out.info.loss_on = loss_on_name(loss_on);
  return out;
}

// seq2seq: the prompt is the encoder input (fit_row with no answer: content cut, eos kept), the
// answer ids the decoder target (fit_target).
PreparedRows fit_and_pack_seq2seq(const std::vector<RowSpec>& specs, const Tokenizer& tok, const PrepareOptions& o,
                                  const FitOptions& fopt) {
  struct Fitted {
    FittedRow input;
    FittedTarget target;
  };
  const int64_t n = static_cast<int64_t>(specs.size());
  std::vector<std::optional<Fitted>> fitted(specs.size());
  parallel_for(n, [&](size_t i) {
    const auto& s = specs[i];
    FittedTarget target = fit_target(s.answer_ids, o.max_target_len, fopt.add_eos, fopt.eos_id);
    if (target.ids.empty()) return;  // nothing to learn: dropped
    std::optional<FittedRow> input = fit_row(tok, s.content, s.build, {}, fopt);
    if (input) fitted[i] = Fitted{std::move(*input), std::move(target)};
  });

  PreparedRows out;
  auto& rows = out.rows;
  auto& st = out.stats;
  const int64_t L = o.max_seq_len, Lt = o.max_target_len;
  rows.seq_len = L;
  rows.target_len = Lt;
  st.seq_len = L;
  st.target_len = Lt;
  for (size_t i = 0; i < specs.size(); ++i) {
    if (!fitted[i]) {
      count_dropped(st, specs[i].line);
      continue;
    }
    const FittedRow& in = fitted[i]->input;
    const FittedTarget& tg = fitted[i]->target;
    const auto len = static_cast<int64_t>(in.ids.size()), tlen = static_cast<int64_t>(tg.ids.size());
    rows.ids.resize(rows.ids.size() + static_cast<size_t>(L), tok.pad_id());
    std::copy(in.ids.begin(), in.ids.end(), rows.ids.end() - L);
    rows.targets.resize(rows.targets.size() + static_cast<size_t>(Lt), tok.pad_id());
    std::copy(tg.ids.begin(), tg.ids.end(), rows.targets.end() - Lt);
    rows.lengths.push_back(static_cast<int32_t>(len));
    rows.target_lengths.push_back(static_cast<int32_t>(tlen));
    rows.answer_start.push_back(0);
    rows.labels.push_back(specs[i].label);

    ++st.rows_written;
    st.rows_truncated += in.prompt_cut || tg.cut;
    st.rows_prompt_cut += in.prompt_cut;
    st.rows_answer_cut += tg.cut;
    st.tokens += len;
    st.max_length = std::max(st.max_length, len);
    st.target_tokens += tlen;
    st.max_target_length = std::max(st.max_target_length, tlen);
  }
  st.loss_tokens = st.target_tokens;
  st.mean_target_length =
      st.rows_written ? static_cast<double>(st.target_tokens) / static_cast<double>(st.rows_written) : 0.0;
  fill_common_info(out, tok, o, fopt);
  out.info.loss_on = "target";
  out.info.target_len = Lt;
  out.info.decoder_start_id = tok.pad_id();
  return out;
}

// Fits every row (in parallel: SentencePiece encoding is const and thread-safe), then lays the
// survivors out as padded arrays in input order.
PreparedRows fit_and_pack(const std::vector<RowSpec>& specs, const Tokenizer& tok, const PrepareOptions& o,
                          const FitOptions& fopt) {
  return is_seq2seq(o) ? fit_and_pack_seq2seq(specs, tok, o, fopt) : fit_and_pack_causal(specs, tok, o, fopt);
}

template <typename Source>
void finish_source_stats(PreparedRows& p, const Source& src) {
  p.stats.input = src.path;
  p.stats.rows_read = src.rows_read;
  p.stats.bad = src.bad;
  p.info.rows_read = src.rows_read;
  p.info.source_file = absolute_path(src.path);
  p.info.source_sha256 = src.sha256;
}

}  // namespace

void validate_prepare_options(const PrepareOptions& o) {
  ST_CHECK_INPUT(!o.input.empty(), "missing required option --input");
  ST_CHECK_INPUT(!o.tokenizer.empty(), "missing required option --tokenizer");
  ST_CHECK_INPUT(!o.output_dir.empty(), "missing required option --output");
  ST_CHECK_INPUT(!o.split.empty(), "missing required option --split");
  ST_CHECK_INPUT(valid_split_name(o.split), "--split '", o.split,
                 "' must use only letters, digits, '_', '-' and '.'");
  ST_CHECK_INPUT(o.format == "auto" || o.format == "sst2" || o.format == "alpaca",
                 "--format must be auto, sst2 or alpaca (got '", o.format, "')");
  ST_CHECK_INPUT(o.max_seq_len >= 2 && o.max_seq_len <= kMaxSeqLenLimit, "--max-seq-len must be in [2, ",
                 kMaxSeqLenLimit, "] (got ", o.max_seq_len, ")");
  ST_CHECK_INPUT(o.loss_on == "answer" || o.loss_on == "all", "--loss-on must be answer or all (got '",
                 o.loss_on, "')");
  ST_CHECK_INPUT(o.prompt_template == "alpaca" || o.prompt_template == "plain",
                 "--template must be alpaca or plain (got '", o.prompt_template, "')");
  ST_CHECK_INPUT(o.shard_rows >= 0, "--shard-rows must be >= 0 (got ", o.shard_rows, ")");
  ST_CHECK_INPUT(o.limit >= 0, "--limit must be >= 0 (got ", o.limit, ")");
  validate_arch_options(o);
}

std::string resolve_input_format(const std::string& format, const std::string& input_path) {
  if (format == "sst2" || format == "alpaca") return format;
  ST_CHECK_INPUT(format == "auto", "--format must be auto, sst2 or alpaca (got '", format, "')");
  const std::string ext = lower_extension(input_path);
  if (ext == ".tsv") return "sst2";
  if (ext == ".json" || ext == ".jsonl") return "alpaca";
  ST_THROW_INPUT(input_path, ": cannot tell the format from the extension '", ext,
                 "' (--format auto knows .tsv, .json, .jsonl); pass --format sst2 or --format alpaca");
}

PreparedRows prepare_sst2_rows(const Sst2Source& src, const Tokenizer& tok, const PrepareOptions& o) {
  const FitOptions fopt = fit_options(o, tok);
  // The answer word's ids (seq2seq: the whole target, so its first token is the decoder's first
  // prediction); their first tokens must differ for first-token accuracy to mean anything.
  std::vector<int32_t> word_ids[2];
  std::vector<int32_t> label_token_ids;
  for (int32_t label = 0; label < 2; ++label) {
    word_ids[label] = tok.encode(sst2_label_word(label));
    if (word_ids[label].empty())
      ST_THROW_INPUT(tok.path(), ": tokenizer encodes '", sst2_label_word(label), "' to no tokens");
    label_token_ids.push_back(word_ids[label][0]);
  }
  if (label_token_ids[0] == label_token_ids[1])
    ST_THROW_INPUT(tok.path(), ": 'negative' and 'positive' begin with the same token ", label_token_ids[0],
                   " ('", tok.piece(label_token_ids[0]), "'), so the label cannot be read from the first "
                   "answer token; use another tokenizer");

  std::vector<RowSpec> specs;
  specs.reserve(src.rows.size());
  const PromptBuilder build = is_seq2seq(o)
                                  ? PromptBuilder([](const std::vector<std::string_view>& c) { return sst2_seq2seq_prompt(c[0]); })
                                  : PromptBuilder([](const std::vector<std::string_view>& c) { return sst2_prompt(c[0]); });
  for (const auto& r : src.rows) {
    RowSpec s;
    s.line = r.line;
    s.content = {r.sentence};
    s.build = build;
    s.answer_ids = word_ids[r.label];
    s.label = r.label;
    specs.push_back(std::move(s));
  }
  PreparedRows p = fit_and_pack(specs, tok, o, fopt);
  p.info.task = "sst2";
  p.info.prompt_template = is_seq2seq(o) ? kSst2Seq2SeqTemplateName : kSst2TemplateName;
  p.info.label_names = {"negative", "positive"};
  p.info.label_token_ids = label_token_ids;
  p.stats.task = "sst2";
  p.stats.label_names = p.info.label_names;
  p.stats.label_token_ids = label_token_ids;
  for (int32_t id : label_token_ids) p.stats.label_pieces.push_back(tok.piece(id));
  finish_source_stats(p, src);
  return p;
}

PreparedRows prepare_instruct_rows(const InstructSource& src, const Tokenizer& tok, const PrepareOptions& o) {
  const FitOptions fopt = fit_options(o, tok);
  const InstructTemplate tmpl = parse_instruct_template(o.prompt_template);
  std::vector<RowSpec> specs(src.rows.size());
  parallel_for(static_cast<int64_t>(src.rows.size()), [&](size_t i) {
    const auto& r = src.rows[i];
    RowSpec& s = specs[i];
    s.line = r.line;
    // Cut the input first, then the instruction; the layout follows the untruncated input.
    s.content = {r.input, r.instruction};
    const bool has_input = !r.input.empty();
    s.build = [tmpl, has_input](const std::vector<std::string_view>& c) {
      return instruct_prompt(tmpl, c[1], c[0], has_input);
    };
    s.answer_ids = tok.encode(r.output);
    s.label = -1;
  });
  PreparedRows p = fit_and_pack(specs, tok, o, fopt);
  p.info.task = "instruct";
  p.info.prompt_template = instruct_template_name(tmpl);
  p.stats.task = "instruct";
  finish_source_stats(p, src);
  return p;
}

PrepareStats prepare_dataset(const PrepareOptions& o) {
  validate_prepare_options(o);
  const std::string format = resolve_input_format(o.format, o.input);
  Stopwatch sw;
  const Tokenizer tok = Tokenizer::load(o.tokenizer);

  PreparedRows p;
  if (format == "sst2") {
    p = prepare_sst2_rows(read_sst2_tsv(o.input, o.limit), tok, o);
  } else {
    p = prepare_instruct_rows(read_alpaca(o.input, o.limit), tok, o);
  }
  PrepareStats& st = p.stats;
  st.output_dir = o.output_dir;
  if (st.rows_written == 0)
    ST_THROW_INPUT(o.input, ": no rows to write (", st.rows_read, " read; bad: ", st.bad.summary(),
                   "; dropped as too long for --max-seq-len ", o.max_seq_len,
                   is_seq2seq(o) ? " or with an empty target" : "", ": ", st.rows_dropped, ")");

  p.info.tokenizer_path = absolute_path(o.tokenizer);
  p.info.created_by = o.created_by;
  st.shard_files = write_shards(o.output_dir, p.info, p.rows, o.shard_rows);
  st.seconds = sw.seconds();
  return st;
}

std::string format_prepare_report(const PrepareStats& s) {
  std::ostringstream os;
  char buf[64];
  const bool seq2seq = s.arch == "seq2seq";
  os << "prepare " << s.task << ": " << s.input << " -> " << s.output_dir << " (split " << s.split << ")\n";
  os << "  arch       " << s.arch
     << (seq2seq ? " (encoder input + decoder target per row, loss on every target token)" : " (decoder-only rows)")
     << "\n";
  os << "  rows       read " << s.rows_read << ", written " << s.rows_written << ", truncated " << s.rows_truncated
     << (seq2seq ? " (input cut " : " (prompt cut ") << s.rows_prompt_cut
     << (seq2seq ? ", target cut " : ", answer cut ") << s.rows_answer_cut << "), dropped " << s.rows_dropped;
  if (!s.dropped_lines.empty()) {
    os << " (" << s.bad.unit << (s.dropped_lines.size() > 1 ? "s " : " ");
    for (size_t i = 0; i < s.dropped_lines.size(); ++i) os << (i ? ", " : "") << s.dropped_lines[i];
    if (s.rows_dropped > static_cast<int64_t>(s.dropped_lines.size())) os << ", ...";
    os << ")";
  }
  os << ", bad " << s.bad.total() << "\n";
  os << "  bad rows   " << s.bad.summary() << "\n";
  const double fill = s.rows_written && s.seq_len
                          ? 100.0 * static_cast<double>(s.tokens) / static_cast<double>(s.rows_written * s.seq_len)
                          : 0.0;
  std::snprintf(buf, sizeof(buf), "%.1f", s.mean_length);
  if (seq2seq) {
    os << "  inputs     " << s.tokens << " tokens; length mean " << buf << ", max " << s.max_length << " of seq_len "
       << s.seq_len;
  } else {
    os << "  tokens     " << s.tokens << " (" << s.loss_tokens << " loss targets); length mean " << buf << ", max "
       << s.max_length << " of seq_len " << s.seq_len;
  }
  std::snprintf(buf, sizeof(buf), "%.1f", fill);
  os << " (" << buf << "% filled)\n";
  if (seq2seq) {
    const double tfill = s.rows_written && s.target_len ? 100.0 * static_cast<double>(s.target_tokens) /
                                                              static_cast<double>(s.rows_written * s.target_len)
                                                        : 0.0;
    std::snprintf(buf, sizeof(buf), "%.1f", s.mean_target_length);
    os << "  targets    " << s.target_tokens << " tokens (all loss targets); length mean " << buf << ", max "
       << s.max_target_length << " of target_len " << s.target_len;
    std::snprintf(buf, sizeof(buf), "%.1f", tfill);
    os << " (" << buf << "% filled)\n";
  }
  if (!s.label_token_ids.empty()) {
    os << "  labels    ";
    for (size_t i = 0; i < s.label_token_ids.size(); ++i)
      os << (i ? ", " : " ") << (i < s.label_names.size() ? s.label_names[i] : "?") << " -> " << s.label_token_ids[i] << " '"
         << (i < s.label_pieces.size() ? s.label_pieces[i] : "") << "'";
    os << "\n";
  }
  os << "  tokenizer  " << s.tokenizer << " (vocab " << s.tokenizer_vocab_size << ", sha256 "
     << s.tokenizer_sha256.substr(0, 16) << "...)\n";
  std::snprintf(buf, sizeof(buf), "%.2f", s.seconds);
  os << "  shards     " << s.shard_files.size() << " written in " << buf << " s:";
  const size_t show = std::min<size_t>(s.shard_files.size(), 4);
  for (size_t i = 0; i < show; ++i) os << " " << fs::path(s.shard_files[i]).filename().string();
  if (s.shard_files.size() > show) os << " ... " << fs::path(s.shard_files.back()).filename().string();
  return os.str();
}

// ------------------------------------------------------------ random-token shards (benchmarks)

namespace {

// Cap on the ids of both splits together (16 GiB of int32): a typo, not a benchmark, beyond it.
constexpr int64_t kMaxRandomTokens = int64_t{1} << 32;

// Uniform in [0, range) from 64 random bits: the high half of the 128-bit product (Lemire). The
// bias is at most range / 2^64 per value, far below anything a benchmark could see.
inline uint64_t scale_to_range(uint64_t bits, uint64_t range) {
  __extension__ using u128 = unsigned __int128;
  return static_cast<uint64_t>((static_cast<u128>(bits) * range) >> 64);
}

// The random stream of a split's ids (and, with the suffix ":targets", of its seq2seq targets:
// ':' cannot occur in a split name, so no split's ids share it).
uint64_t random_stream(const std::string& name) {
  uint64_t stream = 0;
  for (char c : name) stream = stream * 131 + static_cast<unsigned char>(c);
  return stream;
}

// Random ids for `len` tokens: ids[t] = first + hash(base + offset + t) scaled to [first, vocab).
void fill_random_ids(int32_t* ids, int64_t len, uint64_t base, uint64_t offset, uint64_t range) {
  for (int64_t t = 0; t < len; ++t)
    ids[t] = kRandomFirstId +
             static_cast<int32_t>(scale_to_range(splitmix64(base + offset + static_cast<uint64_t>(t)), range));
}

// seq2seq: turns the causal rows of `p` ([bos, u_1, ..., u_{L-1}] with a loss mask) into encoder
// rows [u_1, ..., u_{L-1}, eos] and adds full-length targets [u'_1, ..., u'_{Lt-1}, eos].
void make_random_seq2seq_targets(const RandomShardOptions& o, const std::string& split, PreparedRows& p) {
  ShardRows& r = p.rows;
  const int64_t n = r.size(), L = r.seq_len, Lt = o.target_len;
  const uint64_t key = counter_key(o.seed, random_stream(split + ":targets"));
  const auto range = static_cast<uint64_t>(o.vocab - kRandomFirstId);
  r.loss_mask.clear();
  r.loss_mask.shrink_to_fit();
  r.answer_start.assign(static_cast<size_t>(n), 0);
  r.target_len = Lt;
  r.targets.resize(static_cast<size_t>(n * Lt));
  r.target_lengths.assign(static_cast<size_t>(n), static_cast<int32_t>(Lt));
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < n; ++row) {
    int32_t* ids = r.ids.data() + row * L;
    std::copy(ids + 1, ids + L, ids);
    ids[L - 1] = kRandomEosId;
    int32_t* tg = r.targets.data() + row * Lt;
    fill_random_ids(tg, Lt - 1, key + static_cast<uint64_t>(row) * static_cast<uint64_t>(Lt), 0, range);
    tg[Lt - 1] = kRandomEosId;
  }
}

}  // namespace

void validate_random_shard_options(const RandomShardOptions& o) {
  ST_CHECK_INPUT(!o.output_dir.empty(), "--random needs a directory (--random DIR)");
  ST_CHECK_INPUT(o.rows >= 1 && o.rows <= kMaxRandomTokens, "--rows must be in [1, ", kMaxRandomTokens, "] (got ",
                 o.rows, ")");
  ST_CHECK_INPUT(o.seq_len >= 2 && o.seq_len <= kMaxSeqLenLimit, "--seq-len must be in [2, ", kMaxSeqLenLimit,
                 "] (got ", o.seq_len, "; a row is BOS plus at least one target)");
  ST_CHECK_INPUT(o.vocab >= kRandomFirstId + 1 && o.vocab <= std::numeric_limits<int32_t>::max(),
                 "--vocab must be in [", kRandomFirstId + 1, ", ", std::numeric_limits<int32_t>::max(), "] (got ",
                 o.vocab, "; ids 0-2 are pad, BOS and EOS, random ids are drawn from [3, vocab))");
  ST_CHECK_INPUT(o.val_rows == -1 || (o.val_rows >= 1 && o.val_rows <= kMaxRandomTokens), "--val-rows must be in [1, ",
                 kMaxRandomTokens, "] (got ", o.val_rows, ")");
  ST_CHECK_INPUT(o.arch == "causal" || o.arch == "seq2seq", "--arch must be causal or seq2seq (got '", o.arch, "')");
  if (o.arch == "seq2seq") {
    ST_CHECK_INPUT(o.target_len >= 2 && o.target_len <= kMaxSeqLenLimit, "--target-len must be in [2, ",
                   kMaxSeqLenLimit, "] (got ", o.target_len, "; a target is at least one token and the eos)");
  } else {
    ST_CHECK_INPUT(o.target_len == 0, "--target-len only applies with --arch seq2seq");
  }
  const int64_t rows = o.rows + random_val_rows(o);
  const int64_t row_tokens = o.seq_len + o.target_len;
  ST_CHECK_INPUT(rows <= kMaxRandomTokens / row_tokens, "--rows and --val-rows (", rows, ") times --seq-len (",
                 o.seq_len, ")", o.target_len ? " plus --target-len" : "", " exceed ", kMaxRandomTokens, " tokens");
}

int64_t random_val_rows(const RandomShardOptions& o) {
  return o.val_rows == -1 ? std::max<int64_t>(1, o.rows / 16) : o.val_rows;
}

PreparedRows make_random_rows(const RandomShardOptions& o, const std::string& split, int64_t n) {
  ST_CHECK(n >= 0 && o.seq_len >= 2 && o.vocab > kRandomFirstId, "make_random_rows: bad shape ", n, " x ",
           o.seq_len, " or vocab ", o.vocab);
  ST_CHECK(o.arch != "seq2seq" || o.target_len >= 2, "make_random_rows: seq2seq target_len ", o.target_len, " < 2");
  const int64_t L = o.seq_len;
  const auto NL = static_cast<size_t>(n * L);
  PreparedRows p;
  ShardRows& r = p.rows;
  r.seq_len = L;
  r.ids.resize(NL);
  r.loss_mask.resize(NL);
  r.lengths.assign(static_cast<size_t>(n), static_cast<int32_t>(L));
  r.answer_start.assign(static_cast<size_t>(n), static_cast<int32_t>(L));  // no answer: loss on all
  r.labels.assign(static_cast<size_t>(n), -1);
  // Element (row, t) is hash(key + row * L + t): independent of the thread count.
  const uint64_t key = counter_key(o.seed, random_stream(split));
  const auto range = static_cast<uint64_t>(o.vocab - kRandomFirstId);
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < n; ++row) {
    int32_t* ids = r.ids.data() + row * L;
    uint8_t* mask = r.loss_mask.data() + row * L;
    ids[0] = kRandomBosId;
    mask[0] = 0;
    fill_random_ids(ids + 1, L - 1, key + static_cast<uint64_t>(row) * static_cast<uint64_t>(L), 1, range);
    std::fill(mask + 1, mask + L, uint8_t{1});
  }

  if (o.arch == "seq2seq") make_random_seq2seq_targets(o, split, p);

  ShardInfo& info = p.info;
  info.format_version = kShardFormatVersion;
  info.task = "random";
  info.arch = o.arch;
  info.split = split;
  info.source_file = str("random tokens (seed ", o.seed, ", vocab ", o.vocab, ")");
  info.tokenizer_sha256 = str("random-vocab-", o.vocab);
  info.tokenizer_vocab_size = o.vocab;
  info.bos_id = kRandomBosId;
  info.eos_id = kRandomEosId;
  info.pad_id = kRandomPadId;
  info.seq_len = L;
  info.loss_on = "all";
  info.prompt_template = "none";
  info.add_bos = o.arch != "seq2seq";
  info.add_eos = o.arch == "seq2seq";
  if (o.arch == "seq2seq") {
    info.loss_on = "target";
    info.target_len = o.target_len;
    info.decoder_start_id = kRandomPadId;
  }
  info.rows_read = n;
  info.rows_written = n;
  info.created_by = o.created_by;
  return p;
}

RandomShardStats write_random_shards(const RandomShardOptions& o) {
  validate_random_shard_options(o);
  Stopwatch sw;
  RandomShardStats st;
  st.output_dir = o.output_dir;
  st.train_rows = o.rows;
  st.val_rows = random_val_rows(o);
  st.seq_len = o.seq_len;
  st.vocab = o.vocab;
  st.arch = o.arch;
  st.target_len = o.target_len;
  st.seed = o.seed;
  for (const auto& [split, n] : {std::pair<std::string, int64_t>{"train", st.train_rows}, {"validation", st.val_rows}}) {
    const PreparedRows p = make_random_rows(o, split, n);
    for (auto& f : write_shards(o.output_dir, p.info, p.rows, 0, /*deflate_level=*/0)) st.shard_files.push_back(f);
  }
  st.seconds = sw.seconds();
  return st;
}

std::string format_random_shard_report(const RandomShardStats& s) {
  std::ostringstream os;
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f", s.seconds);
  os << "prepare random: " << s.output_dir << " (seed " << s.seed << ")\n";
  if (s.arch == "seq2seq") {
    os << "  rows       train " << s.train_rows << ", validation " << s.val_rows << " (seq2seq): encoder input "
       << s.seq_len << " and target " << s.target_len << " tokens, uniform ids in [" << kRandomFirstId << ", "
       << s.vocab << ") then EOS (id " << kRandomEosId << "); loss on all " << s.target_len
       << " target tokens; decoder start id " << kRandomPadId << "\n";
  } else {
    os << "  rows       train " << s.train_rows << ", validation " << s.val_rows << ", each " << s.seq_len
       << " tokens: BOS then uniform ids in [" << kRandomFirstId << ", " << s.vocab << "), loss on all "
       << s.seq_len - 1 << " targets\n";
  }
  os << "  tokenizer  none (tokenizer_sha256 random-vocab-" << s.vocab << ", vocab " << s.vocab << ")\n";
  os << "  shards     " << s.shard_files.size() << " written in " << buf << " s:";
  for (const auto& f : s.shard_files) os << " " << fs::path(f).filename().string();
  return os.str();
}

}  // namespace st
