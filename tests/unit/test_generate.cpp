// `shardtune generate` (issue 17 item 2): the sampler (greedy, temperature, top-k, top-p, the
// seeded draws), the KV-cached decoder against the uncached forward (f64: every position's
// logits, greedy continuations), the options, and transformers' greedy generations
// (tests/golden/generate_golden.json, made by tests/golden/make_generate_golden.py) when present.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <numeric>

#include <nlohmann/json.hpp>

#include "cli/generate_options.hpp"
#include "cli/inference_model.hpp"
#include "core/error.hpp"
#include "core/rng.hpp"
#include "data/tokenizer.hpp"
#include "model/llama.hpp"
#include "model/llama_cache.hpp"
#include "train/families.hpp"
#include "train/generate.hpp"
#include "train/setup.hpp"
#include "../common/paths.hpp"
#include "../common/test_util.hpp"

namespace fs = std::filesystem;

namespace st {
namespace {

// ---- The sampler --------------------------------------------------------------------------

std::vector<float> logits_of_probs(const std::vector<double>& p) {
  std::vector<float> l;
  for (double x : p) l.push_back(x > 0 ? static_cast<float>(std::log(x)) : -1e30f);
  return l;
}

TEST(Sampler, GreedyIsTheFirstLargestLogit) {
  EXPECT_EQ(argmax_token({0.f, 2.f, 1.f, 2.f}), 1);
  EXPECT_EQ(argmax_token({5.f}), 0);
  EXPECT_EQ(argmax_token({NAN, -1.f, -2.f}), 1);
  EXPECT_EQ(choose_token({0.f, 2.f, 1.f, 2.f}, SamplingParams{}, 0.99), 1);  // temperature 0: u is unused
}

TEST(Sampler, TemperatureAloneIsTheSoftmaxOfTheScaledLogits) {
  const std::vector<float> l{0.5f, -1.f, 2.f, 0.f};
  const double T = 0.7;
  const std::vector<double> p = sampling_distribution(l, {T, 0, 1.0});
  double z = 0;
  for (float x : l) z += std::exp(x / T);
  for (size_t i = 0; i < l.size(); ++i) EXPECT_NEAR(p[i], std::exp(l[i] / T) / z, 1e-15) << i;
}

TEST(Sampler, TopKKeepsTheKLargestAndTheirTies) {
  // k = 2: the 3s; k = 3: the 3s and both 2s (a tie at the k-th value is kept, as transformers'
  // TopKLogitsWarper keeps every score not below the k-th); k >= V: everything.
  const std::vector<float> l{1.f, 3.f, 3.f, 2.f, 2.f, 0.f};
  auto kept = [&](int64_t k) {
    std::vector<int> out;
    const std::vector<double> p = sampling_distribution(l, {1.0, k, 1.0});
    for (size_t i = 0; i < p.size(); ++i) out.push_back(p[i] > 0);
    return out;
  };
  EXPECT_EQ(kept(2), (std::vector<int>{0, 1, 1, 0, 0, 0}));
  EXPECT_EQ(kept(3), (std::vector<int>{0, 1, 1, 1, 1, 0}));
  EXPECT_EQ(kept(1), (std::vector<int>{0, 1, 1, 0, 0, 0}));
  EXPECT_EQ(kept(6), (std::vector<int>{1, 1, 1, 1, 1, 1}));
  EXPECT_EQ(kept(100), (std::vector<int>{1, 1, 1, 1, 1, 1}));
  // The kept ones renormalised: k = 2 gives 1/2 each.
  const std::vector<double> p = sampling_distribution(l, {1.0, 2, 1.0});
  EXPECT_NEAR(p[1], 0.5, 1e-15);
  EXPECT_NEAR(p[2], 0.5, 1e-15);
}

TEST(Sampler, TopPDropsTheLeastProbableTailOfMassAtMostOneMinusP) {
  // Probabilities 0.5, 0.3, 0.15, 0.05; top_p = 0.75: ascending cumulative 0.05, 0.20 <= 0.25 are
  // dropped, 0.50 > 0.25 stops: 0.5 and 0.3 remain, renormalised to 5/8 and 3/8.
  const std::vector<float> l = logits_of_probs({0.5, 0.3, 0.15, 0.05});
  std::vector<double> p = sampling_distribution(l, {1.0, 0, 0.75});
  EXPECT_NEAR(p[0], 0.625, 1e-7);  // the logits are f32: log(p) rounded
  EXPECT_NEAR(p[1], 0.375, 1e-7);
  EXPECT_EQ(p[2], 0.0);
  EXPECT_EQ(p[3], 0.0);
  // top_p = 0.9: 1 - p = 0.1: only 0.05 goes.
  p = sampling_distribution(l, {1.0, 0, 0.9});
  EXPECT_EQ(p[3], 0.0);
  EXPECT_NEAR(p[2], 0.15 / 0.95, 1e-7);
  // A tiny top_p keeps the most probable token alone (min_tokens_to_keep = 1).
  p = sampling_distribution(l, {1.0, 0, 1e-9});
  EXPECT_EQ(p, (std::vector<double>{1.0, 0.0, 0.0, 0.0}));
  // top-k first, then top-p on the survivors: k = 3 leaves 0.5, 0.3, 0.15 (renormalised by 0.95:
  // 0.526, 0.316, 0.158); top_p = 0.8 drops the 0.158 (<= 0.2) and keeps the rest.
  p = sampling_distribution(l, {1.0, 3, 0.8});
  EXPECT_NEAR(p[0], 0.5 / 0.8, 1e-7);
  EXPECT_NEAR(p[1], 0.3 / 0.8, 1e-7);
  EXPECT_EQ(p[2], 0.0);
  EXPECT_EQ(p[3], 0.0);
}

TEST(Sampler, ColdTemperatureIsGreedy) {
  // Distinct logits 0.1 apart: at T = 1e-3 the runner-up has weight exp(-100) relative to the top.
  std::vector<float> l(50);
  for (size_t i = 0; i < l.size(); ++i) l[i] = 0.1f * static_cast<float>((i * 17) % 50);
  const int32_t g = argmax_token(l);
  // (The others keep weights down to exp(-700) ~ 1e-304 > 0: only u = 0 itself, drawn with
  // probability 2^-53, falls below their cumulative mass; the smallest positive draw is 2^-53.)
  for (double u : {0x1.0p-53, 0.25, 0.5, 0.999999, 1.0 - 0x1.0p-53}) EXPECT_EQ(choose_token(l, {1e-3, 0, 1.0}, u), g) << u;
  for (uint64_t s = 0; s < 1000; ++s) EXPECT_EQ(choose_token(l, {1e-3, 0, 1.0}, sampling_uniform(1, 0, s)), g);
}

TEST(Sampler, DrawsAreSeededAndDeterministic) {
  for (uint64_t step = 0; step < 100; ++step) {
    const double u = sampling_uniform(7, 3, step);
    EXPECT_GE(u, 0.0);
    EXPECT_LT(u, 1.0);
    EXPECT_EQ(u, sampling_uniform(7, 3, step));
  }
  int same_seed = 0, same_stream = 0;
  for (uint64_t step = 0; step < 100; ++step) {
    same_seed += sampling_uniform(7, 3, step) == sampling_uniform(8, 3, step);
    same_stream += sampling_uniform(7, 3, step) == sampling_uniform(7, 4, step);
  }
  EXPECT_EQ(same_seed, 0);
  EXPECT_EQ(same_stream, 0);
}

TEST(Sampler, FrequenciesFollowTheExactDistribution) {
  // N draws with the generator's uniforms: each kept token's count is Binomial(N, p_i), so
  // |count - N p_i| <= 5 sqrt(N p_i (1 - p_i)) fails with probability < 6e-7 per token for a fair
  // generator (the draws are fixed by the seed, so the test is deterministic); tokens removed by
  // top-k / top-p are never drawn.
  const std::vector<float> l{1.0f, 0.2f, -0.5f, 2.0f, 0.9f, -3.0f, 1.5f, 0.0f};
  const SamplingParams sp{0.8, 6, 0.95};
  const std::vector<double> p = sampling_distribution(l, sp);
  EXPECT_EQ(p[5], 0.0);  // top-k removes the two smallest (-3, -0.5)
  EXPECT_EQ(p[2], 0.0);
  const int64_t N = 200000;
  std::vector<int64_t> count(l.size(), 0);
  for (int64_t i = 0; i < N; ++i) ++count[static_cast<size_t>(choose_token(l, sp, sampling_uniform(42, 0, i)))];
  int kept = 0;
  for (size_t i = 0; i < l.size(); ++i) {
    if (p[i] == 0) {
      EXPECT_EQ(count[i], 0) << "token " << i << " was removed but drawn";
      continue;
    }
    ++kept;
    const double mean = N * p[i], sd = std::sqrt(N * p[i] * (1 - p[i]));
    EXPECT_LE(std::fabs(static_cast<double>(count[i]) - mean), 5 * sd) << "token " << i << " p=" << p[i];
  }
  EXPECT_GE(kept, 4);  // the case exercises a real choice
}

// ---- The KV cache against the uncached forward -------------------------------------------

LlamaConfig tiny_config() {
  LlamaConfig c;
  c.vocab_size = 37;
  c.hidden_size = 16;
  c.intermediate_size = 24;
  c.num_layers = 3;
  c.num_heads = 4;
  c.num_kv_heads = 2;  // grouped-query
  c.head_dim = 4;
  c.max_position_embeddings = 32;
  c.rms_norm_eps = 1e-6;
  c.qkv_bias = true;  // Qwen2's biases
  return c;
}

// The logits [T, V] of one uncached forward over ids (f64 CPU).
std::vector<double> full_logits(LlamaModel& m, const std::vector<int32_t>& ids) {
  const int64_t T = static_cast<int64_t>(ids.size());
  LlamaActivations a = llama_activations(m, 1, T, false, false);
  LlamaBatch b;
  b.B = 1;
  b.T = T;
  auto i32 = [](const std::vector<int32_t>& v) {
    Tensor t = Tensor::empty({static_cast<int64_t>(v.size())}, DType::i32);
    std::copy(v.begin(), v.end(), t.ptr<int32_t>());
    return t;
  };
  b.ids = i32(ids);
  b.targets = i32(std::vector<int32_t>(ids.size(), -1));
  b.weight = Tensor::zeros({T}, DType::f32);
  b.lengths = i32({static_cast<int32_t>(T)});
  llama_forward(m, a, b, LayerContext{}, false);
  const Tensor l = a.logits.slice(0, T).to_cpu(DType::f64);
  return std::vector<double>(l.ptr<double>(), l.ptr<double>() + l.numel());
}

double max_abs_diff(const double* a, const double* b, int64_t n) {
  double e = 0;
  for (int64_t i = 0; i < n; ++i) e = std::max(e, std::fabs(a[i] - b[i]));
  return e;
}

TEST(KvCache, EveryPositionEqualsTheUncachedForwardInF64) {
  LlamaModel m = llama_build(tiny_config(), DType::f64, Device::cpu);
  llama_init_random(m, 5, 0.3);
  const int64_t V = m.cfg.vocab_size;
  std::vector<int32_t> ids{1, 7, 30, 2, 11, 5, 19, 36, 0, 4, 22, 13, 9, 28, 3, 17};
  const std::vector<double> ref = full_logits(m, ids);
  // Prefill of 5 tokens, then one at a time; then again after a reset (the cache reused).
  LlamaKvCache kv = llama_kv_cache(m, static_cast<int64_t>(ids.size()), 5);
  double worst = 0;
  for (int pass = 0; pass < 2; ++pass) {
    kv.reset();
    Tensor l = llama_decode(m, kv, std::vector<int32_t>(ids.begin(), ids.begin() + 5));
    worst = std::max(worst, max_abs_diff(l.ptr<double>(), ref.data() + 4 * V, V));
    for (size_t t = 5; t < ids.size(); ++t) {
      l = llama_decode(m, kv, {ids[t]});
      worst = std::max(worst, max_abs_diff(l.ptr<double>(), ref.data() + static_cast<int64_t>(t) * V, V));
    }
    EXPECT_EQ(kv.length, static_cast<int64_t>(ids.size()));
  }
  // Prefill in chunks of 3 (n > 1 after past > 0: the causal offset inside a step).
  kv.reset();
  for (size_t t = 0; t + 3 <= 15; t += 3) {
    const Tensor l = llama_decode(m, kv, std::vector<int32_t>(ids.begin() + t, ids.begin() + t + 3));
    worst = std::max(worst, max_abs_diff(l.ptr<double>(), ref.data() + static_cast<int64_t>(t + 2) * V, V));
  }
  std::printf("[generate] KV-cached vs uncached logits (f64): max abs diff %.1e\n", worst);
  EXPECT_LT(worst, 1e-12);  // f64 rounding of O(1) logits through 3 layers
  EXPECT_THROW(llama_decode(m, kv, {1, 2}), Error);  // 15 + 2 > capacity 16
  test::expect_input_error([&] { llama_kv_cache(m, 33, 1); }, {"max_position_embeddings"});
}

RunConfig run_config(const std::vector<std::string>& args) {
  std::vector<std::string> a{"generate"};
  a.insert(a.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& s : a) argv.push_back(s.data());
  GenerateFlags f;
  RunConfig cfg;
  EXPECT_TRUE(parse_generate_options(static_cast<int>(argv.size()), argv.data(), f, cfg));
  return cfg;
}

std::unique_ptr<ModelRunner> load(RunConfig cfg, DType dt, int64_t seq_len) {
  return load_inference_model(cfg, model_family(cfg), dt, Device::cpu, 1, seq_len, 1, Method::lora, "test");
}

std::string tiny_dir() { return test::repo_root() + "/tests/golden/llama_tiny"; }
std::string tiny_adapter() { return test::repo_root() + "/tests/golden/llama_tiny_lora_adapter"; }

TEST(KvCache, GreedyWithAdapterEqualsUncachedArgmaxAtEveryStep) {
  // The golden tiny Llama with its PEFT adapter, f64: each greedy token is the argmax of the
  // uncached forward over the sequence so far, and the cached step's logits equal its last row.
  for (const bool adapter : {false, true}) {
    std::vector<std::string> args{"--prompt", "x", "--model", tiny_dir(), "--dtype", "f64"};
    if (adapter) args.insert(args.end(), {"--adapter", tiny_adapter()});
    std::unique_ptr<ModelRunner> m = load(run_config(args), DType::f64, 32);
    const std::vector<int32_t> prompt{1, 5, 17, 42, 9, 33};
    GenerateOptions o;
    o.max_new_tokens = 20;
    o.stop_at_eos = false;
    o.keep_logits = true;
    std::unique_ptr<TokenDecoder> dec = m->decoder(static_cast<int64_t>(prompt.size()) + o.max_new_tokens - 1, 6);
    const GenerateResult r = generate_tokens(*dec, prompt, o, 0);
    ASSERT_EQ(r.new_ids.size(), 20u);
    std::vector<int32_t> seq = prompt;
    double worst = 0, scale = 0;
    for (size_t s = 0; s < r.new_ids.size(); ++s) {
      LogitsInput in;
      in.B = 1;
      in.T = static_cast<int64_t>(seq.size());
      in.ids = seq;
      in.lengths = {static_cast<int32_t>(seq.size())};
      const Tensor full = m->logits(in);  // f32 copy of the f64 logits
      const int64_t V = full.dim(2);
      const float* last = full.ptr<float>() + (in.T - 1) * V;
      EXPECT_EQ(r.new_ids[s], argmax_token(std::vector<float>(last, last + V))) << "step " << s;
      if (s == 0)
        for (int64_t v = 0; v < V; ++v) {
          worst = std::max(worst, std::fabs(double(last[v]) - r.first_logits[v]));
          scale = std::max(scale, std::fabs(double(last[v])));
        }
      seq.push_back(r.new_ids[s]);
    }
    // The uncached decoder (generate --kv-cache false) gives the same tokens.
    std::unique_ptr<TokenDecoder> plain = uncached_decoder(*m, static_cast<int64_t>(prompt.size()) + o.max_new_tokens - 1);
    EXPECT_EQ(generate_tokens(*plain, prompt, o, 0).new_ids, r.new_ids);
    std::printf("[generate] tiny Llama%s: 20 greedy tokens, cached = uncached argmax; first-step diff %.1e\n",
                adapter ? " + adapter" : "", worst);
    // Both are f32 roundings of f64 logits equal to ~1e-15: at most one f32 ulp apart.
    EXPECT_LE(worst, 0x1.0p-23 * scale);
  }
}

TEST(KvCache, SamplingIsDeterministicForASeed) {
  std::unique_ptr<ModelRunner> m = load(run_config({"--prompt", "x", "--model", tiny_dir()}), DType::f32, 32);
  GenerateOptions o;
  o.sampling = {1.0, 0, 1.0};
  o.max_new_tokens = 16;
  o.stop_at_eos = false;
  std::unique_ptr<TokenDecoder> dec = m->decoder(3 + 16, 3);
  const std::vector<int32_t> prompt{1, 77, 3};
  const GenerateResult a = generate_tokens(*dec, prompt, o, 0), b = generate_tokens(*dec, prompt, o, 0);
  EXPECT_EQ(a.new_ids, b.new_ids);
  o.seed = 99;
  const GenerateResult c = generate_tokens(*dec, prompt, o, 0);
  EXPECT_NE(a.new_ids, c.new_ids);  // 16 draws at temperature 1 over 128 tokens: equal by chance ~never
}

TEST(KvCache, EosStopsGeneration) {
  // With the EOS id set to the first greedy token, generation stops after it (and keeps it, as
  // transformers does); without stop_at_eos it goes on.
  std::unique_ptr<ModelRunner> m = load(run_config({"--prompt", "x", "--model", tiny_dir()}), DType::f32, 32);
  std::unique_ptr<TokenDecoder> dec = m->decoder(3 + 8, 3);
  GenerateOptions o;
  o.max_new_tokens = 8;
  const std::vector<int32_t> prompt{1, 77, 3};
  const GenerateResult free_run = generate_tokens(*dec, prompt, o, 0);
  o.eos_id = free_run.new_ids[0];
  const GenerateResult stopped = generate_tokens(*dec, prompt, o, 0);
  EXPECT_TRUE(stopped.stopped_at_eos);
  EXPECT_EQ(stopped.new_ids, std::vector<int32_t>{free_run.new_ids[0]});
  o.stop_at_eos = false;
  EXPECT_EQ(generate_tokens(*dec, prompt, o, 0).new_ids, free_run.new_ids);
}

TEST(KvCache, T5IsRefusedByName) {
  std::unique_ptr<ModelRunner> m =
      load(run_config({"--prompt", "x", "--model", test::repo_root() + "/tests/golden/t5_t5"}), DType::f32, 8);
  test::expect_input_error([&] { m->decoder(8, 4); }, {"t5", "generate"});
}

// ---- Options ------------------------------------------------------------------------------

void expect_refused(std::vector<std::string> args, const std::vector<std::string>& parts) {
  args.insert(args.begin(), "generate");
  std::vector<char*> argv;
  for (std::string& s : args) argv.push_back(s.data());
  GenerateFlags f;
  RunConfig cfg;
  test::expect_input_error([&] { parse_generate_options(static_cast<int>(argv.size()), argv.data(), f, cfg); }, parts);
}

TEST(GenerateOptions, DefaultsAndValues) {
  std::vector<std::string> a{"generate", "--prompt", "a", "--prompt", "b c", "--max-new-tokens", "5", "--temperature",
                             "0.7", "--top-k", "40", "--top-p=0.9", "--seed", "3", "--model", "/m", "--stop-at-eos",
                             "false"};
  std::vector<char*> argv;
  for (std::string& s : a) argv.push_back(s.data());
  GenerateFlags f;
  RunConfig cfg;
  ASSERT_TRUE(parse_generate_options(static_cast<int>(argv.size()), argv.data(), f, cfg));
  EXPECT_EQ(f.prompts, (std::vector<std::string>{"a", "b c"}));
  EXPECT_EQ(f.max_new_tokens, 5);
  EXPECT_EQ(f.temperature, 0.7);
  EXPECT_EQ(f.top_k, 40);
  EXPECT_EQ(f.top_p, 0.9);
  EXPECT_FALSE(f.stop_at_eos);
  EXPECT_EQ(cfg.seed, 3u);
  EXPECT_EQ(cfg.model, "/m");
  GenerateFlags d;
  EXPECT_EQ(d.max_new_tokens, 64);
  EXPECT_EQ(d.temperature, 0.0);
  EXPECT_TRUE(d.stop_at_eos);
}

TEST(GenerateOptions, BadValuesAreRefusedNamingTheOption) {
  expect_refused({"--prompt", "a", "--max-new-tokens", "0"}, {"--max-new-tokens", "[1,"});
  expect_refused({"--prompt", "a", "--max-new-tokens", "12x"}, {"--max-new-tokens", "not an integer"});
  expect_refused({"--prompt", "a", "--temperature", "-1"}, {"--temperature", ">= 0"});
  expect_refused({"--prompt", "a", "--temperature", "nan"}, {"--temperature", "finite"});
  expect_refused({"--prompt", "a", "--temperature", "1", "--top-p", "0"}, {"--top-p", "(0, 1]"});
  expect_refused({"--prompt", "a", "--temperature", "1", "--top-p", "1.5"}, {"--top-p", "(0, 1]"});
  expect_refused({"--prompt", "a", "--temperature", "1", "--top-k", "-2"}, {"--top-k"});
  expect_refused({"--prompt", "a", "--top-k", "5"}, {"--top-k", "--temperature"});
  expect_refused({"--prompt", "a", "--stop-at-eos", "maybe"}, {"stop-at-eos"});
  expect_refused({"--max-new-tokens", "3"}, {"--prompt"});
  expect_refused({"--prompt", "a", "--temprature", "1"}, {"temprature"});
  expect_refused({"--prompt", "a", "--seed", "-1"}, {"seed"});
}

TEST(GenerateOptions, PromptFiles) {
  test::TempDir d("gen_prompts");
  test::write_file(d.path + "/p.txt", "first prompt\r\n\n  \nsecond one\n");
  EXPECT_EQ(read_prompt_file(d.path + "/p.txt"), (std::vector<std::string>{"first prompt", "second one"}));
  test::write_file(d.path + "/p.jsonl", "{\"prompt\": \"a\\nb\", \"x\": 1}\n\n{\"prompt\": \"c\"}\n");
  EXPECT_EQ(read_prompt_file(d.path + "/p.jsonl"), (std::vector<std::string>{"a\nb", "c"}));
  test::write_file(d.path + "/bad.jsonl", "{\"prompt\": \"a\"}\n{\"text\": \"b\"}\n");
  test::expect_input_error([&] { read_prompt_file(d.path + "/bad.jsonl"); }, {"bad.jsonl:2", "\"prompt\""});
  test::write_file(d.path + "/empty.txt", "\n\n");
  test::expect_input_error([&] { read_prompt_file(d.path + "/empty.txt"); }, {"empty.txt", "no prompt"});
  test::expect_input_error([&] { read_prompt_file(d.path + "/missing.txt"); }, {"missing.txt"});
}

// ---- transformers' greedy generations ----------------------------------------------------

// Relative L2 error of got against ref.
double rel_error(const std::vector<float>& got, const std::vector<double>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num += (got[i] - ref[i]) * (got[i] - ref[i]);
    den += ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

TEST(GenerateGolden, GreedyEqualsTransformers) {
  const std::string path = test::repo_root() + "/tests/golden/generate_golden.json";
  if (!fs::exists(path))
    GTEST_SKIP() << path << " is absent: run tests/golden/make_generate_golden.py where PyTorch exists";
  const nlohmann::json golden = nlohmann::json::parse(test::read_file(path));
  const std::string shared = test::shared_data_dir();
  // f32 against float64 transformers: logits agree to ~1e-5 relative (the bound 1e-4 of
  // test_golden.cpp's stories260K parity), so a step whose top-1 / top-2 margin is below 1e-4 of
  // its largest logit may pick the other token: ids are compared up to the first such step.
  constexpr double kF32Logits = 1e-4, kNearTie = 1e-4;
  int checked = 0;
  for (const nlohmann::json& c : golden.at("cases")) {
    const std::string model = c.at("model");
    std::string dir;
    if (model == "stories260K") {
      if (shared.empty()) {
        std::printf("[generate] ../shared/data is absent: stories260K case skipped\n");
        continue;
      }
      dir = shared + "/models/stories260K";
    } else {
      dir = test::repo_root() + "/" + model;
    }
    std::vector<std::string> args{"--prompt", "x", "--model", dir, "--dtype", "f32"};
    const std::string adapter = c.at("adapter");
    if (!adapter.empty()) args.insert(args.end(), {"--adapter", test::repo_root() + "/" + adapter});
    const std::vector<int32_t> prompt = c.at("prompt_ids").get<std::vector<int32_t>>();
    const std::vector<int32_t> want = c.at("new_ids").get<std::vector<int32_t>>();
    const std::vector<double> margins = c.at("margins").get<std::vector<double>>();
    const std::string prompt_text = c.at("prompt");
    if (!prompt_text.empty()) {  // the tokenizer gives the fixture's ids
      const Tokenizer tok = Tokenizer::load(dir + "/tokenizer.model");
      std::vector<int32_t> enc{tok.bos_id()};
      for (int32_t t : tok.encode(prompt_text)) enc.push_back(t);
      EXPECT_EQ(enc, prompt) << prompt_text;
    }
    std::unique_ptr<ModelRunner> m = load(run_config(args), DType::f32, static_cast<int64_t>(prompt.size() + want.size()));
    GenerateOptions o;
    o.max_new_tokens = static_cast<int64_t>(want.size());
    o.eos_id = m->eos_id();
    o.keep_logits = true;
    std::unique_ptr<TokenDecoder> dec = m->decoder(static_cast<int64_t>(prompt.size() + want.size()),
                                                   static_cast<int64_t>(prompt.size()));
    const GenerateResult r = generate_tokens(*dec, prompt, o, 0);
    const std::vector<double> first = c.at("first_logits").get<std::vector<double>>();
    // The first near-tie step (if any): compare up to and including it only if it agreed.
    // (The scale of a margin: the largest first-step logit; the fixture keeps only the first and
    // last steps' logits.)
    double scale = 1;
    for (double x : first) scale = std::max(scale, std::fabs(x));
    size_t comparable = want.size();
    for (size_t s = 0; s < margins.size() && s < want.size(); ++s)
      if (margins[s] < kNearTie * scale) {
        comparable = s;
        break;
      }
    const std::string what = model + (adapter.empty() ? "" : " + adapter") + " " + prompt_text;
    const size_t n = std::min(comparable, std::min(want.size(), r.new_ids.size()));
    EXPECT_EQ(std::vector<int32_t>(r.new_ids.begin(), r.new_ids.begin() + n),
              std::vector<int32_t>(want.begin(), want.begin() + n))
        << what;
    if (comparable == want.size()) {
      EXPECT_EQ(r.new_ids, want) << what;
    }
    const double e_first = rel_error(r.first_logits, first);
    EXPECT_LT(e_first, kF32Logits) << what;
    double e_last = NAN;
    if (r.new_ids == want) {  // the same sequence: the last step's logits are comparable
      e_last = rel_error(r.last_logits, c.at("last_logits").get<std::vector<double>>());
      EXPECT_LT(e_last, kF32Logits) << what;
    }
    std::printf("[generate] golden %-40s %zu/%zu ids equal%s; logits rel error first %.1e last %.1e\n",
                what.c_str(), n, want.size(),
                comparable < want.size() ? str(" (near tie at step ", comparable, ")").c_str() : "", e_first, e_last);
    ++checked;
  }
  EXPECT_GT(checked, 0);
}

}  // namespace
}  // namespace st
