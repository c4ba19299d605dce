// llama_flops_per_token, the FLOPs behind every MFU figure, against hand-computed values. The
// same values are asserted for the benchmark's Python formula (analysis/peers/
// hf_llama_reference.py flops_per_token, tests/python/test_bench.py), so shardtune's MFU and
// the PyTorch reference's are computed alike.
#include <gtest/gtest.h>

#include "adapters/apply.hpp"
#include "model/llama.hpp"
#include "train/mfu.hpp"

#include <cmath>

namespace {

// hidden 64, 2 layers, MLP 160, 4 query heads (head_dim 16), 2 KV heads, vocab 300, untied.
st::LlamaModel tiny_model() {
  st::LlamaConfig c;
  c.vocab_size = 300;
  c.hidden_size = 64;
  c.intermediate_size = 160;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 16;
  c.max_position_embeddings = 64;
  return st::llama_build(c, st::DType::f32, st::Device::cpu);
}

// Linear weights: per block q 64*64 + k 64*32 + v 64*32 + o 64*64 + gate, up, down 3*64*160 =
// 43,008; two blocks and lm_head 64*300: N = 105,216. Attention at T=32: 6*32*4*16*2 = 24,576.
TEST(Flops, FullFineTuningIs6NPlusAttention) {
  st::LlamaModel m = tiny_model();
  st::llama_enable_base_training(m);
  EXPECT_DOUBLE_EQ(st::llama_flops_per_token(m, 32), 6.0 * 105216 + 24576);  // 655,872
}

// LoRA r=4 on all seven: per block 4*((64+64) + 2*(64+32) + (64+64) + 3*(64+160)) = 4,480,
// N_adapter = 8,960; FLOPs = 4N + 6 N_adapter + attention.
TEST(Flops, LoraIs4NPlus6AdapterPlusAttention) {
  st::LlamaModel m = tiny_model();
  st::LoraConfig lc;
  lc.r = 4;
  st::attach_lora(m, lc, 32, 1);
  EXPECT_DOUBLE_EQ(st::llama_flops_per_token(m, 32), 4.0 * 105216 + 6.0 * 8960 + 24576);  // 499,200
}

}  // namespace

// MFU's denominator: the GPU's dense bf16 peak by the name cudaGetDeviceProperties reports (the
// same table as analysis/bench.py's DENSE_BF16_PEAKS), NaN where none is known (CPUs).
TEST(Flops, MfuUsesTheDeviceDenseBf16PeakTable) {
  EXPECT_DOUBLE_EQ(st::gpu_bf16_peak_flops("NVIDIA H100 80GB HBM3"), 989.4e12);
  EXPECT_DOUBLE_EQ(st::gpu_bf16_peak_flops("NVIDIA H100 PCIe"), 756e12);
  EXPECT_DOUBLE_EQ(st::gpu_bf16_peak_flops("NVIDIA H100 NVL"), 0.0);
  EXPECT_DOUBLE_EQ(st::gpu_bf16_peak_flops("NVIDIA H200"), 989.4e12);
  EXPECT_DOUBLE_EQ(st::gpu_bf16_peak_flops("NVIDIA GH200 480GB"), 989.4e12);
  EXPECT_DOUBLE_EQ(st::gpu_bf16_peak_flops("NVIDIA A100-SXM4-40GB"), 312e12);
  EXPECT_DOUBLE_EQ(st::gpu_bf16_peak_flops(""), 0.0);
  // 2 GPUs at 6e10 FLOPs per token, 1e4 tokens in 1.5 ms: 4e17 FLOP/s of 2 x 989.4e12.
  EXPECT_DOUBLE_EQ(st::model_flops_utilization(6e10, 1e4, 1.5e-3, 2, 989.4e12), 6e10 * 1e4 / 1.5e-3 / (2 * 989.4e12));
  EXPECT_TRUE(std::isnan(st::model_flops_utilization(6e10, 1e4, 1.5e-3, 1, 0.0)));
}
