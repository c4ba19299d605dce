// Whole-model gradients against finite differences on a tiny Llama in f64: full fine-tuning
// (tied and untied embeddings, GQA, a padded row) and LoRA (with dropout: its mask is a pure
// function of the seed, so the objective stays deterministic; without: adapters grouped by
// input), and activation checkpointing giving the same gradients as keeping every activation.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <string>

#include "adapters/apply.hpp"
#include "model/llama.hpp"
#include "tests/common/gradcheck.hpp"
#include "tests/common/llama_batch.hpp"

namespace st {
namespace {

LlamaConfig tiny_config(bool tied) {
  LlamaConfig c;
  c.vocab_size = 13;
  c.hidden_size = 8;
  c.intermediate_size = 12;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 4;
  c.max_position_embeddings = 16;
  c.rms_norm_eps = 1e-6;
  c.tie_word_embeddings = tied;
  return c;
}

LlamaBatch tiny_batch(int64_t B, int64_t T, uint64_t seed) {
  return test::random_llama_batch(B, T, seed, 13, 0.125f);
}

void randomize(Tensor& t, uint64_t seed, double scale) {
  Rng rng(seed);
  for (int64_t i = 0; i < t.numel(); ++i) t.ptr<double>()[i] = rng.uniform(-scale, scale);
}

// Non-zero LoRA B (seeded by seed + the layer's output width) so every adapter path carries gradient.
void randomize_lora_b(LlamaModel& m, uint64_t seed) {
  for (Linear* lin : llama_linears(m))
    if (lin->adapter) randomize(static_cast<LoraAdapter*>(lin->adapter.get())->B, seed + lin->out, 0.3);
}

// Full fine-tuning (base gradients), or LoRA of rank 2 with `dropout` (adapters drawn from
// lora_seed, non-zero B from b_seed) and a training context whose masks come from dropout_seed.
LayerContext prepare_training(LlamaModel& m, bool lora, double dropout, uint64_t lora_seed, uint64_t b_seed,
                              uint64_t dropout_seed) {
  LayerContext ctx;
  if (!lora) {
    llama_enable_base_training(m);
    return ctx;
  }
  LoraConfig lc;
  lc.r = 2;
  lc.dropout = dropout;
  attach_lora(m, lc, 12, lora_seed);
  randomize_lora_b(m, b_seed);
  ctx.training = true;
  ctx.dropout_seed = dropout_seed;
  return ctx;
}

// Checks every trainable parameter tensor of m (those `which` accepts) against finite differences.
void check_model_gradients(LlamaModel& m, bool checkpointing, const LayerContext& ctx,
                           const std::function<bool(const std::string&)>& which = nullptr, int64_t T = 6) {
  LlamaBatch batch = tiny_batch(2, T, 42);
  LlamaActivations acts = llama_activations(m, 2, T, checkpointing, true);
  std::vector<ParamRef> params = llama_trainable_params(m);
  ASSERT_FALSE(params.empty());
  for (auto& p : params) p.grad->zero_();
  llama_forward(m, acts, batch, ctx, true);
  llama_backward(m, acts, batch, ctx);
  auto f = [&] { return llama_forward(m, acts, batch, ctx, false); };
  for (auto& p : params) {
    if (p.name == "lm_head.weight" && m.cfg.tie_word_embeddings) continue;
    if (which && !which(p.name)) continue;
    Tensor analytic = p.grad->clone(MemCategory::other);
    const auto r = test::check_gradient(f, *p.value, analytic, 40);
    EXPECT_LT(r.max_rel_err, 1e-6) << p.name << ": " << r.worst;
  }
}

TEST(LlamaGrad, FullFineTuningUntied) {
  LlamaModel m = llama_build(tiny_config(false), DType::f64, Device::cpu);
  llama_init_random(m, 7, 0.5);
  llama_enable_base_training(m);
  check_model_gradients(m, false, LayerContext{});
}

TEST(LlamaGrad, FullFineTuningTiedWithCheckpointing) {
  LlamaModel m = llama_build(tiny_config(true), DType::f64, Device::cpu);
  llama_init_random(m, 8, 0.5);
  llama_enable_base_training(m);
  check_model_gradients(m, true, LayerContext{});
}

// Qwen2's q, k, v biases (non-zero, trained in full fine-tuning) with Llama 3's rotary scaling
// (original 16 positions over D = 4: one frequency in the smoothed band, one divided) and a tied
// head: the biases' gradients and those of the tensors the scaled rotation and the tied head feed
// (q, k, the embedding) against finite differences.
TEST(LlamaGrad, QkvBiasesAndLlama3RopeFullFineTuningTied) {
  LlamaConfig c = tiny_config(true);
  c.qkv_bias = true;
  c.rope_scaling.type = RopeScaling::Type::llama3;
  c.rope_scaling.factor = 4.0;
  c.rope_scaling.low_freq_factor = 1.0;
  c.rope_scaling.high_freq_factor = 4.0;
  c.rope_scaling.original_max_position_embeddings = 16;
  LlamaModel m = llama_build(c, DType::f64, Device::cpu);
  llama_init_random(m, 12, 0.5);
  for (LlamaBlock& b : m.blocks)
    for (Linear* l : {&b.q, &b.k, &b.v}) {
      ASSERT_TRUE(l->bias.defined()) << l->name;
      randomize(l->bias, 200 + l->out, 0.5);
    }
  llama_enable_base_training(m);
  int biases = 0;
  for (const ParamRef& p : llama_trainable_params(m)) biases += p.name.find(".bias") != std::string::npos;
  EXPECT_EQ(biases, 6);
  check_model_gradients(m, false, LayerContext{}, [](const std::string& n) {
    return n.find(".bias") != std::string::npos || n.find("layers.0.self_attn.q_proj.weight") != std::string::npos ||
           n.find("layers.1.self_attn.k_proj.weight") != std::string::npos || n == "model.embed_tokens.weight";
  });
}

TEST(LlamaGrad, LoraWithDropout) {
  LlamaModel m = llama_build(tiny_config(false), DType::f64, Device::cpu);
  llama_init_random(m, 9, 0.5);
  LoraConfig lc;
  lc.r = 3;
  lc.alpha = 6;
  lc.dropout = 0.2;
  EXPECT_EQ(attach_lora(m, lc, 12, 5), 2 * 7);
  randomize_lora_b(m, 100);
  std::vector<ParamRef> params = llama_trainable_params(m);
  EXPECT_EQ(params.size(), 28u);  // A and B of 14 adapters; the base is frozen
  for (auto& b : m.blocks) EXPECT_FALSE(b.q.grad.defined());
  LayerContext ctx;
  ctx.training = true;
  ctx.dropout_seed = 1234;
  check_model_gradients(m, false, ctx);
  check_model_gradients(m, true, ctx);
}

// Where the heads span the hidden size (Hq D = C, as in Llama 7B/13B), the backward keeps o's input
// gradient in dxn's buffer and SwiGLU's dgate over dh (session 15's smaller scratch): full
// fine-tuning and LoRA with dropout (the scratch buffer allocated for it), with and without
// checkpointing, against finite differences.
TEST(LlamaGrad, SharedBackwardBuffersWhereHeadsSpanTheHiddenSize) {
  LlamaConfig c = tiny_config(false);
  c.hidden_size = 16;  // 4 heads x 4 = C
  {
    LlamaModel m = llama_build(c, DType::f64, Device::cpu);
    llama_init_random(m, 21, 0.5);
    llama_enable_base_training(m);
    const LlamaActivations acts = llama_activations(m, 2, 6, false, true);
    EXPECT_EQ(acts.datt.data(), acts.dxn.data());
    EXPECT_FALSE(acts.scratch.defined());  // no adapter needs it
    check_model_gradients(m, false, LayerContext{});
    check_model_gradients(m, true, LayerContext{});
  }
  LlamaModel m = llama_build(c, DType::f64, Device::cpu);
  llama_init_random(m, 22, 0.5);
  LoraConfig lc;
  lc.r = 2;
  lc.alpha = 4;
  lc.dropout = 0.25;
  EXPECT_EQ(attach_lora(m, lc, 12, 6), 2 * 7);
  randomize_lora_b(m, 300);
  EXPECT_TRUE(llama_activations(m, 2, 6, false, true).scratch.defined());
  LayerContext ctx;
  ctx.training = true;
  ctx.dropout_seed = 77;
  check_model_gradients(m, false, ctx);
  check_model_gradients(m, true, ctx);
}

// LoRA without dropout: the adapters of q, k, v and of gate, up run as groups (one x A^T, dx and
// dA GEMM per group, each A a row block of the group's stacked A).
TEST(LlamaGrad, LoraGroupedByInput) {
  LlamaModel m = llama_build(tiny_config(false), DType::f64, Device::cpu);
  llama_init_random(m, 12, 0.5);
  LoraConfig lc;
  lc.r = 3;
  lc.alpha = 6;
  EXPECT_EQ(attach_lora(m, lc, 16, 5), 2 * 7);
  randomize_lora_b(m, 100);
  EXPECT_TRUE(static_cast<LoraAdapter*>(m.blocks[0].k.adapter.get())->group);
  LayerContext ctx;
  ctx.training = true;
  check_model_gradients(m, false, ctx, nullptr, 8);  // 16 rows: grouped calls need a multiple of 8
  check_model_gradients(m, true, ctx, nullptr, 8);
}

// Checkpointing any number of the first blocks (model/checkpointing.hpp) gives exactly the
// gradients of checkpointing none: full fine-tuning, and LoRA with dropout (the recompute reuses
// the adapters' saved state and the seed), on 4 blocks for every n = 0..4 (and "all").
TEST(LlamaGrad, CheckpointingGivesIdenticalGradients) {
  for (bool lora : {false, true}) {
    SCOPED_TRACE(lora ? "lora + dropout" : "full");
    auto grads = [&](Checkpointed ck, size_t* sets) {
      LlamaConfig cfg = tiny_config(false);
      cfg.num_layers = 4;
      LlamaModel m = llama_build(cfg, DType::f64, Device::cpu);
      llama_init_random(m, 10, 0.5);
      const LayerContext ctx = prepare_training(m, lora, 0.25, 5, 100, 99);
      LlamaBatch batch = tiny_batch(2, 6, 43);
      LlamaActivations acts = llama_activations(m, 2, 6, ck, true);
      *sets = acts.blocks.size();
      llama_forward(m, acts, batch, ctx, true);
      llama_backward(m, acts, batch, ctx);
      std::vector<Tensor> out;
      for (auto& p : llama_trainable_params(m)) out.push_back(p.grad->clone(MemCategory::other));
      return out;
    };
    size_t sets = 0;
    const auto ref = grads(Checkpointed::none(), &sets);
    EXPECT_EQ(sets, 4u);
    for (int64_t n : {int64_t{1}, int64_t{2}, int64_t{3}, int64_t{4}, Checkpointed::kAll}) {
      SCOPED_TRACE(n);
      const auto b = grads(Checkpointed{n}, &sets);
      EXPECT_EQ(sets, static_cast<size_t>(n >= 4 ? 1 : 4 - n + 1));  // the first n share one set
      ASSERT_EQ(ref.size(), b.size());
      for (size_t i = 0; i < ref.size(); ++i)
        for (int64_t j = 0; j < ref[i].numel(); ++j)
          ASSERT_EQ(ref[i].ptr<double>()[j], b[i].ptr<double>()[j]) << i << "/" << j;
    }
  }
}

// The LM head and the loss over chunks of rows (training activations of a batch whose logits are
// large; forced here with head_chunk = 5 on 12 rows: chunks of 5, 5, 2): the loss, the evaluation
// loss and every trainable gradient of whole logits, for full fine-tuning (the head's weight
// gradient added chunk by chunk, tied or not) and LoRA (frozen head; with dropout too), with and
// without checkpointing; the logits of chosen rows kept as the chunks pass; a second forward with
// grad before the backward refused; the chunk the activations choose.
TEST(LlamaGrad, ChunkedHeadGivesTheGradientsOfWholeLogits) {
  for (const bool tied : {false, true})
    for (const bool lora : {false, true})
      for (const bool ck : {false, true}) {
        SCOPED_TRACE(std::string(tied ? "tied" : "untied") + (lora ? " lora" : " full") + (ck ? " ckpt" : ""));
        LlamaModel m = llama_build(tiny_config(tied), DType::f64, Device::cpu);
        llama_init_random(m, 12, 0.5);
        const LayerContext ctx = prepare_training(m, lora, tied ? 0.25 : 0.0, 6, 101, 98);
        const LlamaBatch batch = tiny_batch(2, 6, 45);
        auto run = [&](int64_t chunk, double* loss, double* eval_loss, std::vector<Tensor>* grads) {
          LlamaActivations acts = llama_activations(m, 2, 6, ck, true, chunk);
          EXPECT_EQ(acts.head_chunk, chunk);
          EXPECT_EQ(acts.logits.dim(0), chunk > 0 ? chunk : 12);
          std::vector<ParamRef> params = llama_trainable_params(m);
          for (auto& p : params) p.grad->zero_();
          *loss = llama_forward(m, acts, batch, ctx, true);
          EXPECT_EQ(acts.head_dx_ready, chunk > 0);
          llama_backward(m, acts, batch, ctx);
          EXPECT_FALSE(acts.head_dx_ready);
          grads->clear();
          for (auto& p : params) grads->push_back(p.grad->clone(MemCategory::other));
          // The evaluation forward, keeping the logits of rows 0, 7 and 11 as its chunks pass.
          acts.capture_rows = {0, 7, 11};
          *eval_loss = llama_forward(m, acts, batch, LayerContext{}, false);
          if (chunk == 0) return;  // whole logits: acts.logits has every row
          const Tensor& sel = acts.captured;
          LlamaActivations whole = llama_activations(m, 2, 6, false, false);
          llama_forward(m, whole, batch, LayerContext{}, false);
          for (int64_t i = 0; i < 3; ++i) {
            const int64_t r = i == 0 ? 0 : i == 1 ? 7 : 11;
            for (int64_t v = 0; v < 13; ++v)
              EXPECT_NEAR(sel.ptr<double>()[i * 13 + v], whole.logits.ptr<double>()[r * 13 + v], 1e-12);
          }
        };
        double l0 = 0, e0 = 0, l1 = 0, e1 = 0;
        std::vector<Tensor> g0, g1;
        run(0, &l0, &e0, &g0);
        run(5, &l1, &e1, &g1);
        {  // forward with grad twice: the head's gradient of the first would stay added
          LlamaActivations acts = llama_activations(m, 2, 6, ck, true, 5);
          llama_forward(m, acts, batch, ctx, true);
          EXPECT_THROW(llama_forward(m, acts, batch, ctx, true), Error);
        }
        EXPECT_NEAR(l1, l0, 1e-12 * std::fabs(l0));
        EXPECT_NEAR(e1, e0, 1e-12 * std::fabs(e0));
        ASSERT_EQ(g0.size(), g1.size());
        for (size_t i = 0; i < g0.size(); ++i) {
          double worst = 0, scale = 0;
          for (int64_t j = 0; j < g0[i].numel(); ++j) {
            worst = std::max(worst, std::fabs(g0[i].ptr<double>()[j] - g1[i].ptr<double>()[j]));
            scale = std::max(scale, std::fabs(g0[i].ptr<double>()[j]));
          }
          EXPECT_LE(worst, 1e-12 * scale) << "gradient " << i;
          EXPECT_GT(scale, 0.0) << "gradient " << i;
        }
      }
  // An adapter on the head (its saved products are the whole batch's): whole logits.
  LlamaModel m = llama_build(tiny_config(false), DType::f64, Device::cpu);
  llama_init_random(m, 13, 0.5);
  m.lm_head.adapter = std::make_unique<LoraAdapter>(m.lm_head, LoraConfig{}, 12, 7);
  EXPECT_EQ(llama_activations(m, 2, 6, false, true, 5).head_chunk, 0);
  // The choice: whole up to 256 MiB of logits, else ~64 MiB a chunk in multiples of 128 rows.
  EXPECT_EQ(llama_head_chunk_rows(4096, 32000, DType::bf16), 0);
  EXPECT_EQ(llama_head_chunk_rows(8192, 32000, DType::bf16), 1024);
  EXPECT_EQ(llama_head_chunk_rows(8192, 128256, DType::bf16), 512);
  EXPECT_EQ(llama_head_chunk_rows(8192, 32000, DType::f32), 512);
  EXPECT_EQ(llama_head_chunk_rows(500, 500000, DType::bf16), 0);  // chunks of at least 512 rows: 500 stay whole
  EXPECT_EQ(llama_head_chunk_rows(600, 500000, DType::bf16), 512);
}

TEST(LlamaGrad, LoraWithZeroBEqualsBase) {
  // B = 0 at init: the adapted model computes exactly the base model's loss.
  LlamaModel m = llama_build(tiny_config(false), DType::f64, Device::cpu);
  llama_init_random(m, 11, 0.5);
  LlamaBatch batch = tiny_batch(2, 6, 44);
  LlamaActivations acts = llama_activations(m, 2, 6, false, true);
  const double base = llama_forward(m, acts, batch, LayerContext{}, false);
  attach_lora(m, LoraConfig{}, 12, 3);
  const double adapted = llama_forward(m, acts, batch, LayerContext{}, false);
  EXPECT_EQ(base, adapted);
}

}  // namespace
}  // namespace st
