// The memory planner: dry runs (counting allocators, no compute, dry collectives) and its
// per-category figures on hand-computed cases.
#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/dryrun.hpp"
#include "core/op_trace.hpp"
#include "ops/attention.hpp"
#include "ops/matmul.hpp"
#include "parallel/comm.hpp"
#include "tests/common/paths.hpp"
#include "tests/common/test_util.hpp"
#include "train/plan.hpp"
#ifdef SHARDTUNE_CUDA
#include "cuda/matmul.cuh"
#endif

namespace st {
namespace {

constexpr size_t kMiB = size_t{1} << 20;

TEST(DryRun, CountsWithoutMemoryAndLeavesTheRealAllocatorAlone) {
  const MemoryStats real_before = allocator_for(Device::cpu).stats();
  {
    DryRun dry;
    Allocator& a = allocator_for(Device::cpu);
    EXPECT_EQ(&a, &dry.allocator(Device::cpu));
    Tensor small = Tensor::empty({1000}, DType::f32, Device::cpu, MemCategory::activations);
    // 64 GiB on a "GPU", in a build with or without CUDA: reserved address space only.
    Tensor huge = Tensor::empty({int64_t{16} << 30}, DType::f32, Device::cuda, MemCategory::weights);
    EXPECT_EQ(a.stats().total_current, 4000u);
    EXPECT_EQ(allocator_for(Device::cuda).stats().current[static_cast<size_t>(MemCategory::weights)], size_t{64} << 30);
    huge.zero_();  // no kernel runs: nothing touches the (unbacked) pages
    small = Tensor();
    EXPECT_EQ(a.stats().total_current, 0u);
    EXPECT_EQ(a.stats().total_peak, 4000u);
  }
  EXPECT_EQ(allocator_for(Device::cpu).stats().total_current, real_before.total_current);
  EXPECT_EQ(allocator_for(Device::cpu).stats().num_allocs, real_before.num_allocs);
}

TEST(DryRun, BackendScratchGrowsLikeTheBackend) {
  DryRun dry;
  Allocator& a = allocator_for(Device::cuda);
  dry.scratch("s", 100, Device::cuda, MemCategory::workspace);
  dry.scratch("s", 50, Device::cuda, MemCategory::workspace);  // never shrinks
  EXPECT_EQ(a.stats().total_current, 100u);
  dry.scratch("s", 300, Device::cuda, MemCategory::workspace);  // the larger one exists before the old is freed
  EXPECT_EQ(a.stats().total_current, 300u);
  EXPECT_EQ(a.stats().total_peak, 400u);
}

TEST(DryRun, MatmulCountsFlopsAndTheCublasWorkspaceOnce) {
  DryRun dry;
  const int64_t M = 6, K = 5, N = 7;
  Tensor A = Tensor::empty({M, K}, DType::bf16, Device::cuda, MemCategory::activations);
  Tensor B = Tensor::empty({N, K}, DType::bf16, Device::cuda, MemCategory::weights);
  Tensor C = Tensor::empty({M, N}, DType::bf16, Device::cuda, MemCategory::activations);
  const size_t before = allocator_for(Device::cuda).stats().total_current;
  matmul(C, A, false, B, true);
  matmul(C, A, false, B, true);
  EXPECT_DOUBLE_EQ(dry_run_counters().flops, 2.0 * 2 * M * N * K);
  EXPECT_EQ(allocator_for(Device::cuda).stats().total_current - before, kCublasLtWorkspaceBytes);
  // Shapes are still checked.
  Tensor bad = Tensor::empty({M, N + 1}, DType::bf16, Device::cuda, MemCategory::activations);
  EXPECT_THROW(matmul(bad, A, false, B, true), Error);
}

// LoRA's dB / dxa pair on CUDA with the pair kind (on by default): the dry run counts the two GEMMs'
// FLOPs and reserves the kernel's f32 partial sums as the real call allocates them
// (skinny_pair_tiling, a function of the shape); without the kind, the two matmuls. The split
// gives about 256 blocks in 64-token multiples.
TEST(DryRun, LoraPairReservesItsPartialSums) {
#ifdef SHARDTUNE_CUDA
  const int64_t M = 8192, out = 4096, r = 16;
  const cuda::SkinnyPairTiling t = cuda::skinny_pair_tiling(M, out, r);
  EXPECT_EQ(t.cols_per_split, 512);
  EXPECT_EQ(t.tokens_per_split % 64, 0);
  EXPECT_EQ(t.splits_n * t.splits_t, 256);
  EXPECT_EQ(t.scratch_bytes, 4 * r * (t.splits_t * out + t.splits_n * M));
  const cuda::SkinnyPairTiling wide = cuda::skinny_pair_tiling(M, 11008, r), narrow = cuda::skinny_pair_tiling(M, 1024, 32);
  EXPECT_GE(wide.splits_n * wide.splits_t, 256);
  EXPECT_LT(wide.splits_n * wide.splits_t, 300);
  EXPECT_EQ(narrow.cols_per_split, 256);
  EXPECT_EQ(narrow.splits_n * narrow.splits_t, 256);
  for (unsigned kinds : {static_cast<unsigned>(cuda::kSkinnyPair), 0u}) {
    SCOPED_TRACE(kinds ? "pair" : "two matmuls");
    cuda::set_skinny_kinds(kinds);
    DryRun dry;
    Tensor dy = Tensor::empty({M, out}, DType::bf16, Device::cuda, MemCategory::activations);
    Tensor xaT = Tensor::empty({r, M}, DType::bf16, Device::cuda, MemCategory::activations);
    Tensor dxaT = Tensor::empty({r, M}, DType::bf16, Device::cuda, MemCategory::activations);
    Tensor B = Tensor::empty({out, r}, DType::bf16, Device::cuda, MemCategory::weights);
    Tensor dB = Tensor::empty({out, r}, DType::f32, Device::cuda, MemCategory::gradients);
    const size_t before = allocator_for(Device::cuda).stats().total_current;
    matmul_dy_pair(dB, 1.0, dxaT, true, dy, xaT, true, B, 2.0);
    EXPECT_DOUBLE_EQ(dry_run_counters().flops, 4.0 * M * out * r);
    EXPECT_EQ(allocator_for(Device::cuda).stats().total_current - before,
              kinds ? static_cast<size_t>(t.scratch_bytes) : kCublasLtWorkspaceBytes);
    cuda::clear_skinny_kinds();
  }
#else
  GTEST_SKIP() << "a build without CUDA";
#endif
}

// The attention backward's GQA head split: where the shape allows it (self-attention, no bias, an
// even group) and what the dry run reserves for it on CUDA: delta, then the dQ sums and, with the
// split on (the default; SHARDTUNE_ATTN_HEAD_SPLIT=0 turns it off), the dK and dV sums after them.
TEST(DryRun, AttentionBackwardReservesTheHeadSplitSums) {
  AttentionShape s;
  s.B = 2;
  s.T = 128;
  s.Hq = 8;
  s.Hkv = 2;
  s.D = 64;
  s.scale = 0.125;
  EXPECT_EQ(attention_head_split_shape(s, false), 2);
  EXPECT_EQ(attention_head_split_shape(s, true), 1);  // a bias (T5): never
  AttentionShape mha = s, odd = s, cross = s;
  mha.Hkv = 8;
  odd.Hq = 6;
  odd.Hkv = 2;
  cross.Tk = 64;
  cross.causal = false;
  EXPECT_EQ(attention_head_split_shape(mha, false), 1);
  EXPECT_EQ(attention_head_split_shape(odd, false), 1);
  EXPECT_EQ(attention_head_split_shape(cross, false), 1);
  const size_t rows = 2 * 128 * 8, kv = 2 * 2 * 128 * 2 * 64;
  const bool on = attention_head_split_on();
  EXPECT_EQ(attention_head_split(s, false), on ? 2 : 1);
  EXPECT_EQ(attention_scratch_bytes(s, false), rows * 4);
  EXPECT_EQ(attention_scratch_bytes(s, true), (rows * 64 + (on ? kv : 0)) * 4);
  EXPECT_EQ(attention_scratch_bytes(mha, true), rows * 64 * 4);
#ifdef SHARDTUNE_CUDA
  DryRun dry;
  auto t = [](Shape sh) { return Tensor::empty(sh, DType::bf16, Device::cuda, MemCategory::activations); };
  Tensor q = t({2 * 128, 8 * 64}), k = t({2 * 128, 2 * 64}), v = t({2 * 128, 2 * 64}), out = t({2 * 128, 8 * 64});
  Tensor dq = t({2 * 128, 8 * 64}), dk = t({2 * 128, 2 * 64}), dv = t({2 * 128, 2 * 64}), dout = t({2 * 128, 8 * 64});
  Tensor lse = Tensor::empty({2 * 8 * 128}, DType::f32, Device::cuda, MemCategory::activations);
  const size_t before = allocator_for(Device::cuda).stats().total_current;
  attention_backward(s, q, k, v, out, lse, dout, Tensor(), dq, dk, dv, false);
  EXPECT_EQ(allocator_for(Device::cuda).stats().total_current - before,
            attention_scratch_bytes(s, false) + attention_scratch_bytes(s, true));
#endif
}

TEST(DryRun, CollectivesCountRingBusBytes) {
  DryRun dry;
  const std::unique_ptr<Comm> c4 = make_dry_comm(4, 1, Device::cpu, "dp");
  Tensor t = Tensor::empty({1024}, DType::f32, Device::cpu, MemCategory::communication);   // 4 KiB
  Tensor all = Tensor::empty({4096}, DType::f32, Device::cpu, MemCategory::communication); // 16 KiB
  c4->all_reduce_sum(t);                       // 2 (n-1)/n x 4 KiB = 6 KiB
  c4->all_gather(t, all);                      // (n-1)/n x 16 KiB = 12 KiB
  c4->reduce_scatter_sum(all, t);              // (n-1)/n x 16 KiB = 12 KiB
  EXPECT_DOUBLE_EQ(dry_run_counters().comm_bus_bytes, (6 + 12 + 12) * 1024.0);
  EXPECT_EQ(c4->all_reduce_sum(2.5), 2.5);
  const std::unique_ptr<Comm> c1 = make_dry_comm(1, 0, Device::cpu, "tp");
  c1->all_reduce_sum(t);
  EXPECT_DOUBLE_EQ(dry_run_counters().comm_bus_bytes, (6 + 12 + 12) * 1024.0);
  EXPECT_THROW(c4->all_gather(t, t), Error);  // arguments checked as on every backend
}

// A small Llama on CPU in f32: every byte of weights, gradients and AdamW state is countable.
struct Tiny {
  int64_t V = 128, H = 64, I = 160, L = 2, heads = 4, kv = 2, r = 8;
  int64_t hd() const { return H / heads; }
  int64_t kvd() const { return kv * hd(); }
  int64_t norms() const { return L * 2 * H + H; }
  int64_t matrices() const { return 2 * V * H + L * (2 * H * H + 2 * H * kvd() + 3 * H * I); }
  int64_t params() const { return norms() + matrices(); }
  // LoRA on q, k, v, o, gate, up, down: r (in + out) each.
  int64_t lora() const {
    return L * r * ((H + H) + 2 * (H + kvd()) + (H + H) + 2 * (H + I) + (I + H));
  }
  // NF4 (block 64, double quantization): 4-bit codes, u8 absmax per block, f32 per 256 blocks.
  static int64_t nf4(int64_t n) { return (n + 1) / 2 + n / 64 + 4 * ((n / 64 + 255) / 256); }
  int64_t adapted_dense() const { return L * (2 * H * H + 2 * H * kvd() + 3 * H * I); }
  int64_t adapted_nf4() const {
    return L * (2 * nf4(H * H) + 2 * nf4(H * kvd()) + 3 * nf4(H * I));
  }
  RunConfig config() const {
    RunConfig c;
    c.vocab_size = V;
    c.hidden_size = H;
    c.intermediate_size = I;
    c.num_layers = L;
    c.num_heads = heads;
    c.num_kv_heads = kv;
    c.lora_r = r;
    c.micro_batch_size = 2;
    c.val_split = "";
    c.origin["dtype"] = "test";
    return c;
  }
};

size_t at(const RankPlan& p, MemCategory c) { return p.at_peak[static_cast<size_t>(c)]; }

RankPlan plan(const Tiny& m, const std::string& parallel, const std::string& method, int world, int tp) {
  const RunConfig c = m.config();
  PlanLayout l;
  l.parallel = ParallelLayout::make(parse_strategy(parallel, "test"), tp, world);
  l.method = parse_method(method, "test");
  return predict_memory(c, plan_data_synthetic(c, 16, 0), l);
}

TEST(Planner, FullFineTuningOnOneRankByHand) {
  const Tiny m;
  const RankPlan p = plan(m, "none", "full", 1, 1);
  const size_t P = static_cast<size_t>(m.params());
  EXPECT_EQ(at(p, MemCategory::weights), 4 * P);
  EXPECT_EQ(at(p, MemCategory::gradients), 4 * P);
  EXPECT_EQ(at(p, MemCategory::optimizer), 8 * P);  // AdamW m and v in f32 (f32 weights are their own masters)
  EXPECT_EQ(at(p, MemCategory::communication), 0u);
  EXPECT_GT(at(p, MemCategory::activations), 0u);
  EXPECT_GE(p.peak, p.persistent);
}

// master_weights = none on the GPU (bf16): no f32 master, bf16 gradients and moments: 2 + 2 + 4
// bytes a parameter where f32 masters take 2 + 4 + 12. LoRA keeps its f32 masters (no effect),
// as does full fine-tuning in f32 on the CPU; ZeRO-3's shards take the same bytes a parameter.
TEST(Planner, PureBf16FullFineTuningHalvesGradientsAndThirdsTheOptimizer) {
  const Tiny m;
  const size_t P = static_cast<size_t>(m.params()), T = static_cast<size_t>(m.lora());
  auto gpu_plan = [&](const std::string& mw, const std::string& method, const std::string& parallel = "none") {
    RunConfig c = m.config();
    c.device = "cuda";
    c.dtype = "bf16";
    c.master_weights = mw;
    c.origin["master_weights"] = "test deck";
    PlanLayout l;
    l.parallel = ParallelLayout::make(parse_strategy(parallel, "test"), 1, 1);
    l.method = parse_method(method, "test");
    return predict_memory(c, plan_data_synthetic(c, 16, 0), l);
  };
  const RankPlan f32 = gpu_plan("f32", "full"), none = gpu_plan("none", "full");
  EXPECT_EQ(at(f32, MemCategory::weights), 2 * P);
  EXPECT_EQ(at(f32, MemCategory::gradients), 4 * P);
  EXPECT_EQ(at(f32, MemCategory::optimizer), 12 * P);  // f32 master, m, v
  EXPECT_EQ(at(none, MemCategory::weights), 2 * P);
  EXPECT_EQ(at(none, MemCategory::gradients), 2 * P);
  EXPECT_EQ(at(none, MemCategory::optimizer), 4 * P);  // bf16 m, v
  EXPECT_LT(none.peak, f32.peak);
  const RankPlan lora_f32 = gpu_plan("f32", "lora"), lora_none = gpu_plan("none", "lora");
  EXPECT_EQ(at(lora_none, MemCategory::gradients), 4 * T);
  EXPECT_EQ(at(lora_none, MemCategory::optimizer), at(lora_f32, MemCategory::optimizer));
  EXPECT_EQ(lora_none.peak, lora_f32.peak);
  RunConfig cpu = m.config();
  cpu.master_weights = "none";
  PlanLayout l;
  l.parallel = ParallelLayout::make(Strategy::none, 1, 1);
  const RankPlan cpu_none = predict_memory(cpu, plan_data_synthetic(cpu, 16, 0), l);
  EXPECT_EQ(at(cpu_none, MemCategory::gradients), 4 * P);
  EXPECT_EQ(at(cpu_none, MemCategory::optimizer), 8 * P);
  // ZeRO-3 (one rank: the whole model in its shards, padded to 64 elements a tensor): bf16
  // gradient shards and moments, no master shard.
  const RankPlan z_f32 = gpu_plan("f32", "full", "zero3"), z_none = gpu_plan("none", "full", "zero3");
  const size_t zp = at(z_none, MemCategory::weights) / 2;  // elements, padding included
  EXPECT_GE(zp, P);
  EXPECT_LT(zp, P + P / 10);
  EXPECT_EQ(at(z_f32, MemCategory::gradients), 4 * zp);
  EXPECT_EQ(at(z_none, MemCategory::gradients), 2 * zp);
  EXPECT_EQ(at(z_f32, MemCategory::optimizer), 12 * zp);
  EXPECT_EQ(at(z_none, MemCategory::optimizer), 4 * zp);
  EXPECT_LT(z_none.peak, z_f32.peak);
}

// The automatic choices plan against memory_limit as the allocator's own cap (what the run
// enforces and a peer's peak allocation compares with), without the reserve for memory outside
// the allocator that the GPU's whole memory needs.
TEST(Planner, MemoryLimitCapsTheAllocatorWithoutAReserve) {
  RunConfig c;
  c.device = "cuda";
  EXPECT_EQ(run_cap_reserve(c, false), size_t{1} << 30);
  EXPECT_EQ(run_cap_reserve(c, true), size_t{3} << 30);
  c.memory_limit = "18GiB";
  EXPECT_EQ(run_cap_reserve(c, false), 0u);
  EXPECT_EQ(run_cap_reserve(c, true), 0u);
  c.device = "cpu";
  c.memory_limit = "0";
  EXPECT_EQ(run_cap_reserve(c, true), 0u);
}

TEST(Planner, PackingSizesTheBuffersForPackedRows) {
  // Packed rows of 32 tokens from shards of 16: the buffers of unpacked rows of 32.
  const Tiny m;
  RunConfig packed = m.config();
  packed.packing = true;
  packed.pack_length = 32;
  PlanLayout l;
  l.parallel = ParallelLayout::make(Strategy::none, 1, 1);
  l.method = Method::lora;
  const PlanData pd = plan_data_synthetic(packed, 16, 0);
  EXPECT_EQ(pd.shape.pack_length, 32);
  const RankPlan p = predict_memory(packed, pd, l);
  const RankPlan long_rows = predict_memory(m.config(), plan_data_synthetic(m.config(), 32, 0), l);
  const RankPlan short_rows = predict_memory(m.config(), plan_data_synthetic(m.config(), 16, 0), l);
  EXPECT_EQ(at(p, MemCategory::activations), at(long_rows, MemCategory::activations));
  EXPECT_EQ(p.peak, long_rows.peak);
  EXPECT_GT(at(p, MemCategory::activations), at(short_rows, MemCategory::activations));
}

TEST(Planner, LoraAndQloraByHand) {
  const Tiny m;
  const RankPlan lora = plan(m, "none", "lora", 1, 1);
  const RankPlan qlora = plan(m, "none", "qlora", 1, 1);
  const size_t P = static_cast<size_t>(m.params()), T = static_cast<size_t>(m.lora());
  EXPECT_EQ(at(lora, MemCategory::weights), 4 * (P + T));
  EXPECT_EQ(at(lora, MemCategory::gradients), 4 * T);
  EXPECT_EQ(at(lora, MemCategory::optimizer), 8 * T);
  // QLoRA: the adapted bases in NF4 instead of f32, everything else the same.
  EXPECT_EQ(at(lora, MemCategory::weights) - at(qlora, MemCategory::weights),
            static_cast<size_t>(4 * m.adapted_dense() - m.adapted_nf4()));
  EXPECT_EQ(at(qlora, MemCategory::gradients), 4 * T);
}

// base_precision = fp8 with LoRA: the adapted bases as W8 (and W8^T with fp8_transpose = stored)
// with 8 bytes of scale and amax each, instead of f32; and held so from the load (each layer
// quantized as it is drawn): the set-up's peak is what the run keeps after it, where converting
// a dense model would have held the f32 base beside the codes. The same for a T5 (its runner
// chooses the FP8 layers too).
TEST(Planner, Fp8LoraHoldsTheBaseInFp8FromTheLoad) {
  // A wide FFN, one row per micro-batch and checkpointed blocks: the dense base outweighs what
  // the set-up adds after the load (adapters, optimizer state, activations), so a dense load
  // would show as a set-up peak above what is kept.
  Tiny m;
  m.I = 512;
  const auto config = [&] {
    RunConfig c = m.config();
    c.micro_batch_size = 1;
    c.activation_checkpointing = "true";
    return c;
  };
  PlanLayout l;
  l.parallel = ParallelLayout::make(Strategy::none, 1, 1);
  l.method = Method::lora;
  l.checkpointing = Checkpointed::all();
  const RankPlan bf16 = predict_memory(config(), plan_data_synthetic(config(), 16, 0), l);
  const size_t A = static_cast<size_t>(m.adapted_dense()), layers = static_cast<size_t>(7 * m.L);
  for (const char* transpose : {"stored", "per_step"}) {
    SCOPED_TRACE(transpose);
    RunConfig c = config();
    c.base_precision = "fp8";
    c.fp8_transpose = transpose;
    const size_t k = std::string(transpose) == "stored" ? 2 : 1;  // W8^T beside W8, or W8 alone
    const RankPlan p = predict_memory(c, plan_data_synthetic(c, 16, 0), l);
    EXPECT_EQ(at(bf16, MemCategory::weights) - at(p, MemCategory::weights), 4 * A - k * (A + 8 * layers));
    EXPECT_EQ(p.setup_peak, p.persistent);
    EXPECT_LT(p.setup_peak, p.peak);
  }
  RunConfig t5 = config();
  t5.arch = "t5";
  t5.head_dim = 16;
  t5.base_precision = "fp8";
  t5.fp8_transpose = "per_step";
  const RankPlan p = predict_memory(t5, plan_data_synthetic(t5, 16, 8), l);
  EXPECT_EQ(p.setup_peak, p.persistent);
}

// The planner's step (what the step-time model replays and `calibrate --deck` times) runs the
// LoRA adapters of q, k, v and of gate, up as groups: one x A^T GEMM per group, [R, M] = A_cat
// x^T with R the group's summed rank, one dx and one dA GEMM; o and down keep their own.
TEST(Planner, LoraStepTracesTheGroupedAdapterGemms) {
  const Tiny m;
  const RunConfig c = m.config();
  PlanLayout l;
  l.parallel = ParallelLayout::make(Strategy::none, 1, 1);
  l.method = Method::lora;
  const int64_t M = c.micro_batch_size * 16, r = m.r;
  int xa_qkv = 0, xa_gate_up = 0, xa_single = 0, dx_qkv = 0, da_qkv = 0;
  for (const TraceEvent& e : plan_step_trace(c, plan_data_synthetic(c, 16, 0), l)) {
    if (e.kind != TraceEvent::Kind::op || e.family != OpFamily::gemm) continue;
    const bool nt = !e.trans_a && e.trans_b;
    xa_qkv += nt && e.m == 3 * r && e.n == M && e.k == m.H;
    xa_gate_up += nt && e.m == 2 * r && e.n == M && e.k == m.H;
    xa_single += nt && e.m == M && e.n == r;  // x A^T of a module on its own: o and down
    dx_qkv += e.trans_a && !e.trans_b && e.m == M && e.n == m.H && e.k == 3 * r;
    da_qkv += !e.trans_a && !e.trans_b && e.m == 3 * r && e.n == m.H && e.k == M;
  }
  const int steps = static_cast<int>(c.grad_accum);  // micro-batches in the traced step
  EXPECT_EQ(xa_qkv, m.L * steps);
  EXPECT_EQ(xa_gate_up, m.L * steps);
  EXPECT_EQ(xa_single, 2 * m.L * steps);
  EXPECT_EQ(dx_qkv, m.L * steps);
  EXPECT_EQ(da_qkv, m.L * steps);
}

TEST(Planner, StrategiesSplitWhatTheyShouldByHand) {
  const Tiny m;
  const size_t P = static_cast<size_t>(m.params());
  // DDP: everything replicated, plus the gradient buckets (a flat copy of every gradient).
  const RankPlan ddp = plan(m, "ddp", "full", 2, 1);
  EXPECT_EQ(at(ddp, MemCategory::weights), 4 * P);
  EXPECT_EQ(at(ddp, MemCategory::communication), 4 * P);
  // TP 2: every matrix (vocabulary-parallel embedding and head included) halved, norms replicated.
  const RankPlan tp = plan(m, "tp", "full", 2, 2);
  EXPECT_EQ(at(tp, MemCategory::weights), static_cast<size_t>(4 * (m.matrices() / 2 + m.norms())));
  EXPECT_EQ(at(tp, MemCategory::optimizer), static_cast<size_t>(8 * (m.matrices() / 2 + m.norms())));
  // ZeRO-3 over 2: each rank keeps half of every unit's flat buffer (padded to 64 elements per
  // tensor and per shard), with masters, gradients and AdamW state of its half.
  const RankPlan z = plan(m, "zero3", "full", 2, 1);
  const double half = 4.0 * static_cast<double>(P) / 2;
  EXPECT_GE(static_cast<double>(at(z, MemCategory::weights)), half);
  EXPECT_LT(static_cast<double>(at(z, MemCategory::weights)), half * 1.02);
  EXPECT_EQ(at(z, MemCategory::optimizer), 2 * at(z, MemCategory::gradients));
  const RankPlan one = plan(m, "none", "full", 1, 1);
  auto state = [](const RankPlan& p) {
    return at(p, MemCategory::weights) + at(p, MemCategory::gradients) + at(p, MemCategory::optimizer);
  };
  EXPECT_LT(static_cast<double>(state(z)), 0.51 * static_cast<double>(state(one)));
}

TEST(Planner, CheckpointingShrinksActivationsAndLayoutsThatDoNotApplyAreExplained) {
  const Tiny m;
  RunConfig c = m.config();
  PlanRequest req;
  req.ranks = 8;
  req.methods = {Method::lora};
  req.strategies = {Strategy::tp};
  req.speed = default_speed_model("cpu");
  const std::vector<LayoutEstimate> all = plan_layouts(c, plan_data_synthetic(c, 16, 0), req);
  ASSERT_EQ(all.size(), 3u);  // tp 2, 4, 8
  for (const LayoutEstimate& e : all) {
    if (e.layout.parallel.tp != 2) {  // 2 KV heads: not divisible by 4 or 8
      EXPECT_FALSE(e.applies);
      EXPECT_NE(e.reason.find("divisible"), std::string::npos) << e.reason;
    } else {
      EXPECT_TRUE(e.applies) << e.reason;
      EXPECT_LT(e.activations_ckpt, e.activations_full);
      EXPECT_TRUE(e.fits);
    }
  }
  // A cap below every layout: none fits, nothing recommended.
  req.device_memory = 64 * 1024;
  EXPECT_EQ(recommend(plan_layouts(c, plan_data_synthetic(c, 16, 0), req), Method::lora), nullptr);
  req.device_memory = 512 * kMiB;
  EXPECT_NE(recommend(plan_layouts(c, plan_data_synthetic(c, 16, 0), req), Method::lora), nullptr);
}

// activation_checkpointing = N and auto: the first N blocks share one set of internals, so the
// activations fall by one set per block beyond the first; auto picks the fewest that fit.
TEST(Planner, PartialCheckpointingAndAutoPicksTheFewestBlocksThatFit) {
  Tiny m;
  m.L = 5;
  RunConfig c = m.config();
  c.method = "lora";
  const PlanData data = plan_data_synthetic(c, 16, 0);
  const ParallelLayout one = ParallelLayout::make(Strategy::none, 1, 1);
  std::vector<RankPlan> by_n;
  for (int64_t n = 0; n <= m.L; ++n) by_n.push_back(predict_memory(c, data, PlanLayout{one, Method::lora, Checkpointed{n}}));
  EXPECT_EQ(by_n[0].blocks, m.L);
  EXPECT_EQ(by_n[1].peak, by_n[0].peak);  // one checkpointed block shares its set with nobody
  const size_t act0 = at(by_n[0], MemCategory::activations);
  const size_t set = act0 - at(by_n[2], MemCategory::activations);  // one block's internals
  EXPECT_GT(set, 0u);
  for (int64_t n = 2; n <= m.L; ++n) {
    EXPECT_EQ(at(by_n[static_cast<size_t>(n)], MemCategory::activations), act0 - static_cast<size_t>(n - 1) * set) << n;
    EXPECT_EQ(by_n[static_cast<size_t>(n)].at_peak[static_cast<size_t>(MemCategory::weights)],
              by_n[0].at_peak[static_cast<size_t>(MemCategory::weights)]);
  }
  EXPECT_EQ(predict_memory(c, data, PlanLayout{one, Method::lora, Checkpointed::all()}).peak, by_n.back().peak);
  // auto: for a limit between the peaks of n - 1 and n blocks, n (never a larger n).
  for (int64_t want = 2; want <= m.L; ++want) {
    SCOPED_TRACE(want);
    const size_t limit = by_n[static_cast<size_t>(want)].max_peak() + set / 2;
    ASSERT_GT(by_n[static_cast<size_t>(want - 1)].max_peak(), limit);
    const CheckpointChoice ch = choose_checkpointing(c, data, one, Method::lora, limit, 0, "test");
    EXPECT_EQ(ch.blocks, want);
    EXPECT_EQ(ch.total, m.L);
    EXPECT_EQ(ch.memory.peak, by_n[static_cast<size_t>(want)].peak);
    EXPECT_LE(ch.dry_runs, 2 + 3);  // n = 0, n = L, then a binary search over 1..5
  }
  // The reserve counts against the limit.
  EXPECT_EQ(choose_checkpointing(c, data, one, Method::lora, by_n[3].max_peak() + 100, 100, "test").blocks, 3);
  EXPECT_EQ(choose_checkpointing(c, data, one, Method::lora, by_n[3].max_peak() + 100, 101, "test").blocks, 4);
  // No limit, or one everything fits: nothing checkpointed, one dry run.
  EXPECT_EQ(choose_checkpointing(c, data, one, Method::lora, 0, 0, "test").blocks, 0);
  const CheckpointChoice roomy = choose_checkpointing(c, data, one, Method::lora, by_n[0].max_peak(), 0, "test");
  EXPECT_EQ(roomy.blocks, 0);
  EXPECT_EQ(roomy.dry_runs, 1);
  // Nothing fits: refused, naming the origin and the figures.
  try {
    (void)choose_checkpointing(c, data, one, Method::lora, by_n.back().max_peak() - 1, 0, "deck.cfg");
    ADD_FAILURE() << "no refusal";
  } catch (const InputError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("deck.cfg: activation_checkpointing = auto: nothing fits: with all 5 blocks"), std::string::npos) << msg;
  }
  // The deck's values.
  for (const auto& [v, n] : std::vector<std::pair<std::string, int64_t>>{{"true", Checkpointed::kAll}, {"false", 0}, {"3", 3}, {"0", 0}, {"1", 1}, {"on", Checkpointed::kAll},
                                                                               {"no", 0}, {"True", Checkpointed::kAll}}) {
    c.activation_checkpointing = v;
    EXPECT_EQ(run_checkpointing(c).blocks, n) << v;
  }
  for (const char* bad : {"-1", "yes please", "2.5", "", "auto", "+2"}) {
    c.activation_checkpointing = bad;
    EXPECT_THROW(run_checkpointing(c), InputError) << bad;
  }
  EXPECT_EQ(checkpointing_value(0, 5), "false");
  EXPECT_EQ(checkpointing_value(3, 5), "3");
  EXPECT_EQ(checkpointing_value(5, 5), "true");
}

RunConfig deck(const std::string& path, std::vector<std::string> extra) {
  std::vector<std::string> args = {"train", "--deck", test::repo_root() + "/" + path};
  args.insert(args.end(), extra.begin(), extra.end());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  RunConfig c;
  EXPECT_TRUE(parse_run_config(static_cast<int>(argv.size()), argv.data(), "train", c));
  return c;
}

// The reference experiments' GPU-size decks, planned on this machine (no GPU needed): the
// figures the multi-GPU runs of issue 9 will be compared with.
TEST(Planner, ReferenceExperimentDecksOnFortyGigabyteGpus) {
  // exp2: FlanT5-XL on 2 GPUs capped at 40 GiB: unsharded full fine-tuning does not fit (16
  // bytes per parameter of f32 weights, gradients and AdamW state: 45 GB, plus the DDP buckets),
  // ZeRO-3 full and ZeRO-3 + LoRA do.
  const RunConfig t5 = deck("inputs/exp2/flant5_xl_full.cfg", {"--vocab_size", "32128"});
  PlanRequest req;
  req.ranks = 2;
  req.device_memory = parse_bytes(t5.memory_limit, "memory_limit");
  ASSERT_EQ(req.device_memory, size_t{40} << 30);
  req.methods = {Method::full, Method::lora};
  req.strategies = {Strategy::ddp, Strategy::zero3};
  req.speed = default_speed_model("cuda");
  std::map<std::string, const LayoutEstimate*> by;
  const std::vector<LayoutEstimate> t5_plan = plan_layouts(t5, plan_data_synthetic(t5, 128, 4), req);
  for (const LayoutEstimate& e : t5_plan) by[str(e.layout.parallel.name(), "/", method_name(e.layout.method))] = &e;
  ASSERT_EQ(by.size(), 4u);
  EXPECT_FALSE(by["ddp/full"]->fits);
  EXPECT_GT(by["ddp/full"]->memory.peak, size_t{45} << 30);
  EXPECT_TRUE(by["zero3/full"]->fits);
  EXPECT_TRUE(by["zero3/lora"]->fits);
  EXPECT_LT(by["zero3/lora"]->memory.max_peak(), by["zero3/full"]->memory.max_peak() / 3);
  // exp3: Llama-7B, ZeRO-3 over 2 GPUs: QLoRA needs well under LoRA's memory (the reference
  // saw about 40% less); full fine-tuning does not fit 40 GiB.
  const RunConfig ll = deck("inputs/exp3/llama7b_lora.cfg", {"--vocab_size", "32000"});
  req.methods = {Method::full, Method::lora, Method::qlora};
  req.strategies = {Strategy::zero3};
  const std::vector<LayoutEstimate> ll_plan = plan_layouts(ll, plan_data_synthetic(ll, 128, 0), req);
  ASSERT_EQ(ll_plan.size(), 3u);
  EXPECT_FALSE(ll_plan[0].fits);
  EXPECT_TRUE(ll_plan[1].fits && ll_plan[2].fits);
  EXPECT_LT(static_cast<double>(ll_plan[2].memory.peak), 0.6 * static_cast<double>(ll_plan[1].memory.peak));
}

}  // namespace
}  // namespace st
