#include "data/templates.hpp"

#include <algorithm>

#include "core/error.hpp"
#include "data/tokenizer.hpp"

namespace st {

LossOn parse_loss_on(const std::string& name) {
  if (name == "answer") return LossOn::answer;
  if (name == "all") return LossOn::all;
  ST_THROW_INPUT("loss_on must be 'answer' or 'all' (got '", name, "')");
}

const char* loss_on_name(LossOn l) { return l == LossOn::answer ? "answer" : "all"; }

std::string sst2_prompt(std::string_view sentence) {
  std::string s = "Review: ";
  s.append(sentence);
  s += "\nSentiment:";
  return s;
}

std::string sst2_seq2seq_prompt(std::string_view sentence) {
  std::string s = "sst2 sentence: ";
  s.append(sentence);
  return s;
}

const char* sst2_label_word(int32_t label) {
  ST_CHECK(label == 0 || label == 1, "SST-2 label must be 0 or 1, got ", label);
  return label == 1 ? "positive" : "negative";
}

InstructTemplate parse_instruct_template(const std::string& name) {
  if (name == "alpaca") return InstructTemplate::alpaca;
  if (name == "plain") return InstructTemplate::plain;
  ST_THROW_INPUT("template must be 'alpaca' or 'plain' (got '", name, "')");
}

const char* instruct_template_name(InstructTemplate t) {
  return t == InstructTemplate::alpaca ? "alpaca" : "plain";
}

std::string instruct_prompt(InstructTemplate t, std::string_view instruction, std::string_view input,
                            bool has_input) {
  std::string s;
  if (t == InstructTemplate::alpaca) {
    if (has_input) {
      s = "Below is an instruction that describes a task, paired with an input that provides further "
          "context. Write a response that appropriately completes the request.\n\n### Instruction:\n";
      s.append(instruction);
      s += "\n\n### Input:\n";
      s.append(input);
      s += "\n\n### Response:\n";
    } else {
      s = "Below is an instruction that describes a task. Write a response that appropriately "
          "completes the request.\n\n### Instruction:\n";
      s.append(instruction);
      s += "\n\n### Response:\n";
    }
  } else {
    s = "### Instruction:\n";
    s.append(instruction);
    if (has_input) {
      s += "\n### Input:\n";
      s.append(input);
    }
    s += "\n### Response:\n";
  }
  return s;
}

std::vector<size_t> word_ends(std::string_view s) {
  auto ws = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f'; };
  std::vector<size_t> ends;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && ws(s[i])) ++i;
    if (i >= s.size()) break;
    while (i < s.size() && !ws(s[i])) ++i;
    ends.push_back(i);
  }
  return ends;
}

std::optional<FittedRow> fit_row(const Tokenizer& tok, const std::vector<std::string_view>& content,
                                 const PromptBuilder& build, const std::vector<int32_t>& answer_ids,
                                 const FitOptions& opt) {
  ST_CHECK(opt.max_seq_len >= 2, "max_seq_len must be >= 2, got ", opt.max_seq_len);
  const int64_t L = opt.max_seq_len;
  const int64_t bos = opt.add_bos ? 1 : 0;

  std::vector<int32_t> span = answer_ids;  // answer + eos: cut from its end
  if (opt.add_eos) span.push_back(opt.eos_id);
  const int64_t span_len = static_cast<int64_t>(span.size());
  const int64_t need = std::min<int64_t>(span_len, std::max<int64_t>(1, L / 4));

  std::vector<std::string_view> fields = content;
  std::vector<int32_t> prompt = tok.encode(build(fields));
  FittedRow row;

  auto prompt_fits = [&](int64_t prompt_len) { return bos + prompt_len + need <= L; };
  if (!prompt_fits(static_cast<int64_t>(prompt.size()))) {
    row.prompt_cut = true;
    bool fitted = false;
    for (size_t f = 0; f < fields.size() && !fitted; ++f) {
      const std::string_view full = content[f];
      const std::vector<size_t> ends = word_ends(full);
      auto cut_to = [&](size_t words) { return full.substr(0, words == 0 ? 0 : ends[words - 1]); };
      auto try_words = [&](size_t words, std::vector<int32_t>& ids) {
        fields[f] = cut_to(words);
        ids = tok.encode(build(fields));
        return prompt_fits(static_cast<int64_t>(ids.size()));
      };
      std::vector<int32_t> ids;
      if (!try_words(0, ids)) {
        prompt = std::move(ids);  // field emptied; go on to the next one
        continue;
      }
      // fits(lo) holds, fits(hi) does not (hi = all words, which is where we came from).
      size_t lo = 0, hi = ends.size();
      std::vector<int32_t> best = std::move(ids);
      while (hi - lo > 1) {
        const size_t mid = lo + (hi - lo) / 2;
        if (try_words(mid, ids)) {
          lo = mid;
          best = std::move(ids);
        } else {
          hi = mid;
        }
      }
      fields[f] = cut_to(lo);
      prompt = std::move(best);
      fitted = true;
    }
    if (!fitted) return std::nullopt;
  }

  const int64_t room = L - bos - static_cast<int64_t>(prompt.size());
  const int64_t keep = std::min(span_len, room);
  row.answer_cut = keep < span_len;
  row.ids.reserve(static_cast<size_t>(bos + static_cast<int64_t>(prompt.size()) + keep));
  if (opt.add_bos) row.ids.push_back(opt.bos_id);
  row.ids.insert(row.ids.end(), prompt.begin(), prompt.end());
  row.answer_start = static_cast<int32_t>(row.ids.size());
  row.ids.insert(row.ids.end(), span.begin(), span.begin() + keep);
  return row;
}

FittedTarget fit_target(const std::vector<int32_t>& answer_ids, int64_t max_target_len, bool add_eos,
                        int32_t eos_id) {
  ST_CHECK(max_target_len >= 2, "max_target_len must be >= 2, got ", max_target_len);
  FittedTarget t;
  if (answer_ids.empty()) return t;
  const int64_t eos = add_eos ? 1 : 0;
  const int64_t keep = std::min<int64_t>(static_cast<int64_t>(answer_ids.size()), max_target_len - eos);
  t.cut = keep < static_cast<int64_t>(answer_ids.size());
  t.ids.assign(answer_ids.begin(), answer_ids.begin() + keep);
  if (add_eos) t.ids.push_back(eos_id);
  return t;
}

void fill_loss_mask(LossOn loss_on, int64_t length, int64_t answer_start, int64_t seq_len, uint8_t* mask) {
  const int64_t begin = loss_on == LossOn::answer ? std::max<int64_t>(1, answer_start) : 1;
  for (int64_t t = 0; t < seq_len; ++t) mask[t] = (t >= begin && t < length) ? 1 : 0;
}

}  // namespace st
