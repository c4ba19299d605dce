#include "train/generate.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <numeric>

#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "core/rng.hpp"
#include "core/timer.hpp"
#include "train/model_runner.hpp"

namespace st {

int32_t argmax_token(const std::vector<float>& logits) {
  if (logits.empty()) ST_THROW("argmax_token: no logits");
  size_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i)
    if (logits[i] > logits[best] || (std::isnan(logits[best]) && !std::isnan(logits[i]))) best = i;
  return static_cast<int32_t>(best);
}

double top2_margin(const std::vector<float>& logits) {
  if (logits.size() < 2) ST_THROW("top2_margin: fewer than two logits");
  float a = -INFINITY, b = -INFINITY;
  for (const float x : logits) {
    if (x > a) b = a, a = x;
    else if (x > b) b = x;
  }
  return static_cast<double>(a) - static_cast<double>(b);
}

std::vector<double> sampling_distribution(const std::vector<float>& logits, const SamplingParams& p) {
  if (!(p.temperature > 0)) ST_THROW("sampling_distribution: temperature ", p.temperature, " (greedy has none)");
  const size_t V = logits.size();
  if (V == 0) ST_THROW("sampling_distribution: no logits");
  constexpr double kOut = -std::numeric_limits<double>::infinity();
  std::vector<double> s(V);
  for (size_t i = 0; i < V; ++i) s[i] = static_cast<double>(logits[i]) / p.temperature;
  if (p.top_k > 0 && static_cast<size_t>(p.top_k) < V) {
    std::vector<double> sorted = s;
    std::nth_element(sorted.begin(), sorted.begin() + (p.top_k - 1), sorted.end(), std::greater<double>());
    const double kth = sorted[static_cast<size_t>(p.top_k - 1)];
    for (double& x : s)
      if (x < kth) x = kOut;
  }
  // Softmax of the survivors.
  const double mx = *std::max_element(s.begin(), s.end());
  std::vector<double> prob(V);
  double sum = 0;
  for (size_t i = 0; i < V; ++i) sum += (prob[i] = s[i] == kOut ? 0.0 : std::exp(s[i] - mx));
  for (double& x : prob) x /= sum;
  if (p.top_p < 1.0) {
    std::vector<size_t> order(V);
    std::iota(order.begin(), order.end(), size_t{0});
    // Ascending probability; ties: the higher index first (so the lower index survives longer).
    std::sort(order.begin(), order.end(),
              [&](size_t a, size_t b) { return prob[a] != prob[b] ? prob[a] < prob[b] : a > b; });
    double cum = 0;
    for (size_t r = 0; r + 1 < V; ++r) {  // the last (most probable) is always kept
      cum += prob[order[r]];
      if (cum <= 1.0 - p.top_p) prob[order[r]] = 0;
      else break;
    }
    const double kept = std::accumulate(prob.begin(), prob.end(), 0.0);
    for (double& x : prob) x /= kept;
  }
  return prob;
}

int32_t choose_token(const std::vector<float>& logits, const SamplingParams& p, double u) {
  if (p.greedy()) return argmax_token(logits);
  const std::vector<double> prob = sampling_distribution(logits, p);
  double cum = 0;
  int32_t last_kept = 0;
  for (size_t i = 0; i < prob.size(); ++i) {
    if (prob[i] <= 0) continue;
    last_kept = static_cast<int32_t>(i);
    cum += prob[i];
    if (u < cum) return last_kept;
  }
  return last_kept;  // u within rounding of 1
}

double sampling_uniform(uint64_t seed, uint64_t stream, uint64_t step) {
  return static_cast<double>(splitmix64(counter_key(seed, stream) + step) >> 11) * 0x1.0p-53;
}

double GenerateResult::tokens_per_second() const {
  const double t = prefill_seconds + decode_seconds;
  return t > 0 ? static_cast<double>(new_ids.size()) / t : 0.0;
}

GenerateResult generate_tokens(TokenDecoder& dec, const std::vector<int32_t>& prompt, const GenerateOptions& o,
                               uint64_t stream) {
  if (prompt.empty()) ST_THROW_INPUT("generate: an empty prompt (no BOS token to start from)");
  if (o.max_new_tokens < 1) ST_THROW("generate_tokens: max_new_tokens ", o.max_new_tokens);
  GenerateResult r;
  dec.reset();
  Stopwatch sw;
  std::vector<float> logits = dec.step(prompt);
  r.prefill_seconds = sw.seconds();
  if (o.keep_logits) r.first_logits = logits;
  Stopwatch dw;
  for (int64_t s = 0; s < o.max_new_tokens; ++s) {
    const int32_t tok = choose_token(logits, o.sampling, o.sampling.greedy() ? 0.0 : sampling_uniform(o.seed, stream, static_cast<uint64_t>(s)));
    r.new_ids.push_back(tok);
    if (o.keep_logits) {
      r.last_logits = logits;
      r.margins.push_back(top2_margin(logits));
    }
    if (o.stop_at_eos && o.eos_id >= 0 && tok == o.eos_id) {
      r.stopped_at_eos = true;
      break;
    }
    if (s + 1 < o.max_new_tokens) logits = dec.step({tok});
  }
  r.decode_seconds = dw.seconds();
  return r;
}

namespace {

class UncachedDecoder final : public TokenDecoder {
 public:
  UncachedDecoder(ModelRunner& m, int64_t capacity) : m_(m), capacity_(capacity) {}
  void reset() override { seq_.clear(); }
  int64_t length() const override { return static_cast<int64_t>(seq_.size()); }
  int64_t capacity() const override { return capacity_; }
  std::vector<float> step(const std::vector<int32_t>& ids) override {
    if (ids.empty() || length() + static_cast<int64_t>(ids.size()) > capacity_)
      ST_THROW("uncached decoder: ", ids.size(), " tokens after ", length(), " exceed ", capacity_, " positions");
    seq_.insert(seq_.end(), ids.begin(), ids.end());
    LogitsInput in;
    in.B = 1;
    in.T = length();
    in.ids = seq_;
    in.lengths = {static_cast<int32_t>(seq_.size())};
    const Tensor l = m_.logits(in);  // [1, T, V] f32
    const int64_t V = l.dim(2);
    const float* last = l.ptr<float>() + (in.T - 1) * V;
    return std::vector<float>(last, last + V);
  }

 private:
  ModelRunner& m_;
  int64_t capacity_;
  std::vector<int32_t> seq_;
};

}  // namespace

std::unique_ptr<TokenDecoder> uncached_decoder(ModelRunner& model, int64_t capacity) {
  return std::make_unique<UncachedDecoder>(model, capacity);
}

std::vector<std::string> read_prompt_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) ST_THROW_INPUT(path, ": cannot open the prompt file");
  const bool jsonl = path.size() >= 6 && path.compare(path.size() - 6, 6, ".jsonl") == 0;
  std::vector<std::string> prompts;
  std::string line;
  for (int64_t no = 1; std::getline(in, line); ++no) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    if (!jsonl) {
      prompts.push_back(line);
      continue;
    }
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const std::exception& e) {
      ST_THROW_INPUT(path, ":", no, ": not a JSON object (", e.what(), ")");
    }
    if (!j.is_object() || !j.contains("prompt") || !j["prompt"].is_string())
      ST_THROW_INPUT(path, ":", no, ": needs a string field \"prompt\"");
    prompts.push_back(j["prompt"].get<std::string>());
  }
  if (prompts.empty()) ST_THROW_INPUT(path, ": no prompt in the file");
  return prompts;
}

}  // namespace st
