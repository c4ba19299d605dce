// Sampling from a model (`shardtune generate`): the choice of each next token from the logits
// and the loop that feeds a prompt and the chosen tokens through a KV-cached TokenDecoder
// (train/model_runner.hpp).
//
// The choice follows Hugging Face's generate(): temperature 0 is greedy decoding (argmax, the
// lowest index on ties; transformers' do_sample=False), otherwise sampling from
//   softmax(top_p(top_k(logits / temperature)))
// with the warpers in transformers' order, in double precision on the host:
//   top_k (k > 0): keep every token whose scaled logit is >= the k-th largest (ties at the
//                  boundary are kept, as TopKLogitsWarper's `<` comparison keeps them);
//   top_p (p < 1): sort the survivors by probability, ascending (ties by descending index);
//                  drop those whose cumulative probability is <= 1 - p, always keeping the most
//                  probable one (TopPLogitsWarper with min_tokens_to_keep = 1).
// The draw is counter-based (core/rng.hpp): step s of prompt i uses uniform u = hash(seed, i, s)
// in [0, 1), the token is the first (by index) whose cumulative kept probability exceeds u. The
// same seed and logits give the same tokens on every run and machine.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace st {

class ModelRunner;
class TokenDecoder;

struct SamplingParams {
  double temperature = 0;  // 0: greedy
  int64_t top_k = 0;       // 0: off
  double top_p = 1.0;      // 1: off
  bool greedy() const { return temperature == 0; }
};

// The largest minus the second-largest logit (0 on a tie; needs two logits).
double top2_margin(const std::vector<float>& logits);
// Index of the largest logit (the lowest index on ties; NaN logits are never chosen unless all are).
int32_t argmax_token(const std::vector<float>& logits);
// The probability of each token under `p` (temperature > 0): zero for the tokens top-k / top-p
// remove, the kept ones renormalised; sums to 1.
std::vector<double> sampling_distribution(const std::vector<float>& logits, const SamplingParams& p);
// The token for uniform u in [0, 1): argmax when greedy, else the first index whose cumulative
// probability exceeds u.
int32_t choose_token(const std::vector<float>& logits, const SamplingParams& p, double u);
// The uniform of step `step` of prompt `stream` for `seed`: 53 bits, in [0, 1).
double sampling_uniform(uint64_t seed, uint64_t stream, uint64_t step);

struct GenerateOptions {
  SamplingParams sampling;
  int64_t max_new_tokens = 64;
  bool stop_at_eos = true;
  int64_t eos_id = -1;     // -1: none
  uint64_t seed = 1234;
  bool keep_logits = false;  // keep the logits of the first and last step (tests)
};

struct GenerateResult {
  std::vector<int32_t> new_ids;  // with the EOS token when generation stopped at it
  bool stopped_at_eos = false;
  double prefill_seconds = 0, decode_seconds = 0;
  std::vector<float> first_logits, last_logits;  // with keep_logits
  std::vector<double> margins;  // with keep_logits: each step's largest minus second-largest logit
  double tokens_per_second() const;  // new tokens over prefill + decoding time
};

// Generates from `prompt` (non-empty) with the decoder, which is reset first; `stream` (the
// prompt's index) selects the draws. The decoder must hold prompt + max_new_tokens - 1 positions.
GenerateResult generate_tokens(TokenDecoder& dec, const std::vector<int32_t>& prompt, const GenerateOptions& o,
                               uint64_t stream);

// A decoder without a cache (`generate --kv-cache false`, and the measure of what the cache
// saves): each step runs the model's full forward (ModelRunner::logits) over the whole sequence
// so far and returns its last row. A decoder family's model only.
std::unique_ptr<TokenDecoder> uncached_decoder(ModelRunner& model, int64_t capacity);

// The prompts of a --prompt-file: a .jsonl file holds one JSON object per non-blank line with a
// string field "prompt"; any other file one prompt per line (blank lines skipped, a trailing
// '\r' removed). InputError naming the file and line for anything else, or for no prompt at all.
std::vector<std::string> read_prompt_file(const std::string& path);

}  // namespace st
