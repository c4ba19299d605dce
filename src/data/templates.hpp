// Prompt templates and the truncation of a (prompt, answer) pair to max_seq_len.
//
// A row is [bos] + encode(prompt) + encode(answer) + [eos]; the answer tokens (and eos) are the
// "answer span". Truncation is never silent: fit_row() reports what it cut, or drops the row.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace st {

class Tokenizer;

// Which tokens are training targets.
enum class LossOn { answer, all };
LossOn parse_loss_on(const std::string& name);  // "answer" | "all"; InputError otherwise
const char* loss_on_name(LossOn l);

// --- SST-2 as a causal LM: "Review: {sentence}\nSentiment:" then " positive" / " negative".
std::string sst2_prompt(std::string_view sentence);
// The answer word without its leading space (the tokenizer's dummy prefix supplies the "▁").
const char* sst2_label_word(int32_t label);  // 0 "negative", 1 "positive"
inline constexpr const char* kSst2LabelNames = "negative,positive";
inline constexpr const char* kSst2TemplateName = "sst2";

// --- SST-2 text-to-text (T5 / FlanT5 convention), for encoder-decoder models: the encoder reads
// "sst2 sentence: {sentence}", the decoder writes "negative" / "positive" (sst2_label_word).
std::string sst2_seq2seq_prompt(std::string_view sentence);
inline constexpr const char* kSst2Seq2SeqTemplateName = "sst2-t5";

// --- Instruction following (Alpaca records).
//   "alpaca": the Stanford Alpaca prompt, with the no-input variant when the input is empty.
//   "plain":  "### Instruction:\n{instruction}\n### Input:\n{input}\n### Response:\n" (the
//             Input section left out when the input is empty).
enum class InstructTemplate { alpaca, plain };
InstructTemplate parse_instruct_template(const std::string& name);  // InputError otherwise
const char* instruct_template_name(InstructTemplate t);
// `has_input` picks the variant; it is decided on the untruncated input, so a row whose input is
// cut to nothing keeps the with-input layout.
std::string instruct_prompt(InstructTemplate t, std::string_view instruction, std::string_view input,
                            bool has_input);
inline std::string instruct_prompt(InstructTemplate t, std::string_view instruction, std::string_view input) {
  return instruct_prompt(t, instruction, input, !input.empty());
}

// --- Fitting a row into L tokens.
struct FitOptions {
  int64_t max_seq_len = 128;  // L
  bool add_bos = true;
  bool add_eos = true;
  int32_t bos_id = 1;
  int32_t eos_id = 2;
};

struct FittedRow {
  std::vector<int32_t> ids;  // length <= L
  int32_t answer_start = 0;  // index of the first answer token
  bool prompt_cut = false;   // content words were removed from the prompt
  bool answer_cut = false;   // the answer span lost tokens from its end (eos first)
  bool truncated() const { return prompt_cut || answer_cut; }
};

// Builds the prompt text from its content fields (possibly cut).
using PromptBuilder = std::function<std::string(const std::vector<std::string_view>& content)>;

// Fits [bos] + encode(build(content)) + answer_ids + [eos] into options.max_seq_len tokens.
// When it does not fit, the answer span is cut from its end, but the prompt must leave room for
// at least min(answer span length, L/4) (at least 1) answer tokens. To make that room, content
// fields are cut word by word from their end, in the order given (SST-2: {sentence}; Alpaca:
// {input, instruction}), re-encoding the whole prompt for each candidate so tokenization stays
// natural. For each field the most words are kept that fit. The search bisects the number of
// words kept (about log2(words) encodings instead of one per word); it gives the same cut as
// removing one word at a time whenever dropping words never adds tokens, which holds for
// SentencePiece segmentations in practice, and it only ever returns a prompt it has encoded
// and checked. Returns nullopt (the row is dropped) when even the prompt with every content
// field empty leaves no room.
std::optional<FittedRow> fit_row(const Tokenizer& tok, const std::vector<std::string_view>& content,
                                 const PromptBuilder& build, const std::vector<int32_t>& answer_ids,
                                 const FitOptions& options);

// seq2seq encoder inputs are fitted by fit_row with no answer ids (and add_bos false): the
// prompt's content is cut word by word so that it and the eos fit in max_seq_len.
//
// seq2seq decoder target: answer_ids + [eos] (when add_eos), cut from its end to max_target_len
// tokens with the eos kept last. Empty when answer_ids is empty (the caller drops the row).
struct FittedTarget {
  std::vector<int32_t> ids;  // length <= max_target_len
  bool cut = false;          // answer tokens were removed
};
FittedTarget fit_target(const std::vector<int32_t>& answer_ids, int64_t max_target_len, bool add_eos,
                        int32_t eos_id);

// Writes the loss mask of one row into mask[0, L): ones on [answer_start, length) for
// LossOn::answer, on [1, length) for LossOn::all, zeros elsewhere (position 0 is never a target).
void fill_loss_mask(LossOn loss_on, int64_t length, int64_t answer_start, int64_t seq_len, uint8_t* mask);

// Byte offsets just past each whitespace-separated word of `s` (what truncation cuts at).
std::vector<size_t> word_ends(std::string_view s);

}  // namespace st
