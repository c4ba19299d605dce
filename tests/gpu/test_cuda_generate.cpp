// `shardtune generate` on the GPU: the decode-attention kernel against the CPU reference (f64 on
// the same bf16-rounded inputs), the KV-cached bf16 decoder against the uncached bf16 forward,
// and greedy decoding on CUDA against the CPU's on the tiny golden Llama and on stories260K.
//
// Tolerances: the kernel rounds only its output to bf16 (f32 scores and sums): kBf16Tol. The
// cached and the uncached bf16 forwards round at the same ~10 sites per block but attention
// differently (f32 here, the flash kernel's bf16 P there): the model-level bound 2e-2 of
// test_cuda_model.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "cli/generate_options.hpp"
#include "cli/inference_model.hpp"
#include "data/tokenizer.hpp"
#include "model/llama.hpp"
#include "model/llama_cache.hpp"
#include "ops/decode_attention.hpp"
#include "tests/common/paths.hpp"
#include "tests/gpu/gpu_util.hpp"
#include "train/families.hpp"
#include "train/generate.hpp"

namespace fs = std::filesystem;

namespace st {
namespace {

using test::kBf16Tol;
using test::rel_l2;

void check_decode_attention(int64_t n, int64_t past, int64_t Hq, int64_t Hkv, int64_t D, int64_t capacity) {
  Rng rng(n * 1000 + past * 10 + D);
  const Tensor q = test::random_bf16_values({n, Hq * D}, rng);
  const Tensor k = test::random_bf16_values({capacity, Hkv * D}, rng);
  const Tensor v = test::random_bf16_values({capacity, Hkv * D}, rng);
  DecodeAttentionShape s{Hq, Hkv, D, past, 1.0 / std::sqrt(static_cast<double>(D))};
  Tensor ref = Tensor::zeros({n, Hq * D}, DType::f64);
  decode_attention(s, q, k, v, ref);
  const Tensor gq = test::to_device(q, DType::bf16), gk = test::to_device(k, DType::bf16),
               gv = test::to_device(v, DType::bf16);
  Tensor gout = Tensor::zeros({n, Hq * D}, DType::bf16, Device::cuda);
  decode_attention(s, gq, gk, gv, gout);
  EXPECT_LT(rel_l2(gout, ref), kBf16Tol) << "n=" << n << " past=" << past << " Hq=" << Hq << " Hkv=" << Hkv << " D=" << D;
}

TEST(CudaGenerate, DecodeAttentionMatchesTheCpuReference) {
  ST_REQUIRE_GPU();
  check_decode_attention(1, 0, 4, 2, 8, 4);       // the first token, stories260K's head size
  check_decode_attention(1, 37, 8, 4, 8, 64);     // one decoding step, GQA
  check_decode_attention(1, 300, 32, 8, 128, 512);  // Llama-3-8B-like heads, more keys than warps
  check_decode_attention(17, 0, 4, 4, 64, 17);    // a prefill
  check_decode_attention(5, 11, 6, 2, 256, 32);   // a chunk after a prefix, the largest head
  check_decode_attention(3, 2, 4, 1, 40, 8);      // multi-query, a head size not a multiple of 32
}

RunConfig config_of(std::vector<std::string> args) {
  args.insert(args.begin(), {"generate", "--prompt", "x"});
  std::vector<char*> argv;
  for (std::string& s : args) argv.push_back(s.data());
  GenerateFlags f;
  RunConfig cfg;
  EXPECT_TRUE(parse_generate_options(static_cast<int>(argv.size()), argv.data(), f, cfg));
  return cfg;
}

std::unique_ptr<ModelRunner> load(RunConfig cfg, DType dt, Device dev, int64_t seq_len) {
  return load_inference_model(cfg, model_family(cfg), dt, dev, 1, seq_len, 1, Method::lora, "test");
}

TEST(CudaGenerate, CachedLogitsEqualTheUncachedForwardInBf16) {
  ST_REQUIRE_GPU();
  const std::string tiny = test::repo_root() + "/tests/golden/llama_tiny";
  std::unique_ptr<ModelRunner> m =
      load(config_of({"--model", tiny, "--adapter", test::repo_root() + "/tests/golden/llama_tiny_lora_adapter"}),
           DType::bf16, Device::cuda, 40);
  const std::vector<int32_t> ids{1, 5, 17, 42, 9, 33, 7, 90, 11, 64, 3, 28, 61, 2, 55, 8, 19, 77, 40, 6};
  LogitsInput in;
  in.B = 1;
  in.T = static_cast<int64_t>(ids.size());
  in.ids = ids;
  in.lengths = {static_cast<int32_t>(ids.size())};
  const Tensor full = m->logits(in);  // [1, T, V] f32
  const int64_t V = full.dim(2);
  std::unique_ptr<TokenDecoder> dec = m->decoder(in.T, 6);
  double worst = 0;
  for (int64_t t = 0; t < in.T; ++t) {
    const std::vector<float> got =
        t < 6 ? (t == 5 ? dec->step(std::vector<int32_t>(ids.begin(), ids.begin() + 6)) : std::vector<float>())
              : dec->step({ids[static_cast<size_t>(t)]});
    if (got.empty()) continue;
    Tensor g = Tensor::empty({V}, DType::f32);
    std::copy(got.begin(), got.end(), g.ptr<float>());
    const Tensor ref = full.view({in.T, V}).slice(t, t + 1).view({V});
    worst = std::max(worst, rel_l2(g, ref));
  }
  std::printf("[gpu generate] cached vs uncached bf16 logits: worst rel L2 %.2e\n", worst);
  EXPECT_LT(worst, 2e-2);
}

// Greedy continuations on CUDA (f32: the same arithmetic as the CPU up to summation order) equal
// the CPU's; in bf16 they may part at a near tie, so the bf16 run reports how far it agrees.
// Returns how many CUDA f32 tokens were compared with the CPU's (up to the first near tie).
size_t greedy_cpu_vs_cuda(const std::string& model, const std::string& adapter, const std::vector<int32_t>& prompt,
                          int64_t max_new) {
  std::vector<std::string> args{"--model", model};
  if (!adapter.empty()) args.insert(args.end(), {"--adapter", adapter});
  GenerateOptions o;
  o.max_new_tokens = max_new;
  o.stop_at_eos = false;
  o.keep_logits = true;
  std::vector<double> cpu_margins;
  double scale = 1;
  const int64_t cap = static_cast<int64_t>(prompt.size()) + max_new;
  std::vector<std::vector<int32_t>> out;
  for (const auto& [dt, dev] : {std::pair{DType::f32, Device::cpu}, std::pair{DType::f32, Device::cuda},
                                std::pair{DType::bf16, Device::cuda}}) {
    std::unique_ptr<ModelRunner> m = load(config_of(args), dt, dev, cap);
    std::unique_ptr<TokenDecoder> dec = m->decoder(cap, static_cast<int64_t>(prompt.size()));
    const GenerateResult r = generate_tokens(*dec, prompt, o, 0);
    out.push_back(r.new_ids);
    if (dev == Device::cpu) {
      cpu_margins = r.margins;
      for (const float x : r.first_logits) scale = std::max(scale, std::fabs(static_cast<double>(x)));
    }
    std::printf("[gpu generate] %s %s %s: %.0f tokens/s\n", fs::path(model).filename().c_str(), dtype_name(dt),
                device_name(dev), r.tokens_per_second());
  }
  // f32 on both: logits agree to ~1e-6 relative (summation order), so only a step whose margin is
  // below 1e-4 of the logits' scale may legitimately differ; compare up to the first such step.
  size_t comparable = out[0].size();
  for (size_t s = 0; s < cpu_margins.size(); ++s)
    if (cpu_margins[s] < 1e-4 * scale) {
      comparable = s;
      std::printf("[gpu generate] %s: near tie at step %zu (margin %.1e): compared up to it\n",
                  fs::path(model).filename().c_str(), s, cpu_margins[s]);
      break;
    }
  EXPECT_EQ(std::vector<int32_t>(out[1].begin(), out[1].begin() + comparable),
            std::vector<int32_t>(out[0].begin(), out[0].begin() + comparable))
      << model << ": CUDA f32 greedy differs from the CPU's";
  size_t agree = 0;
  while (agree < out[2].size() && out[2][agree] == out[0][agree]) ++agree;
  std::printf("[gpu generate] %s: bf16 CUDA greedy agrees with CPU f32 for %zu of %lld tokens\n",
              fs::path(model).filename().c_str(), agree, static_cast<long long>(max_new));
  return comparable;
}

TEST(CudaGenerate, GreedyOnCudaEqualsTheCpu) {
  ST_REQUIRE_GPU();
  const std::string root = test::repo_root();
  // Each call EXPECTs equal ids up to the first near tie; here, that the comparison was not empty.
  EXPECT_GT(greedy_cpu_vs_cuda(root + "/tests/golden/llama_tiny", "", {1, 5, 17, 42, 9, 33}, 24), 0u);
  EXPECT_GT(greedy_cpu_vs_cuda(root + "/tests/golden/llama_tiny", root + "/tests/golden/llama_tiny_lora_adapter",
                               {1, 77, 3}, 24), 0u);
  const std::string shared = test::shared_data_dir();
  if (shared.empty()) {
    std::printf("[gpu generate] ../shared/data is absent: stories260K not checked\n");
    return;
  }
  const std::string stories = shared + "/models/stories260K";
  const Tokenizer tok = Tokenizer::load(stories + "/tokenizer.model");
  std::vector<int32_t> prompt{tok.bos_id()};
  for (const int32_t t : tok.encode("Once upon a time")) prompt.push_back(t);
  EXPECT_GT(greedy_cpu_vs_cuda(stories, "", prompt, 64), 0u);
}

}  // namespace
}  // namespace st
