#include "train/setup.hpp"

#include "adapters/peft.hpp"
#include "core/allocator.hpp"
#include "core/dryrun.hpp"
#include "core/log.hpp"
#include "model/fp8_base.hpp"
#include "parallel/parallelize.hpp"
#include "train/preflight.hpp"

namespace st {

Device run_device(const RunConfig& c) { return c.device == "cuda" ? Device::cuda : Device::cpu; }

DType run_dtype(const RunConfig& c, Device d) {
  if (c.dtype == "auto") return d == Device::cuda ? DType::bf16 : DType::f32;
  if (c.dtype == "f32" || c.dtype == "f64") {
    if (d == Device::cuda)
      ST_THROW_INPUT(c.origin.at("dtype"), ": dtype ", c.dtype,
                     " needs device = cpu (the CUDA path computes in bf16 with f32 master weights and optimizer "
                     "state; use dtype = bf16 or auto)");
    return c.dtype == "f32" ? DType::f32 : DType::f64;
  }
  if (d == Device::cpu) ST_THROW_INPUT(c.origin.at("dtype"), ": dtype bf16 needs device = cuda (the CPU path computes in f32)");
  return DType::bf16;
}

namespace {

std::string fp8_where(const RunConfig& c) {
  return c.origin.count("base_precision") ? c.origin.at("base_precision") : std::string("options");
}

// base_precision = fp8: the adapted layers' frozen base in FP8 E4M3 (model/fp8_base.hpp). Under
// LoRA the build already holds it (RunnerSpec::fp8_base): this adds the GEMMs' shared buffers.
void hold_base_in_fp8(const RunConfig& c, TrainingState& s, const DataShape& shape, Device device) {
  // The probe runs after the load, as it always has (it opens cuBLASLt and its workspace, which
  // the planner's load phase does not hold).
  if (device == Device::cuda && !dry_run_active()) {  // the planner plans for any GPU; the run checks its own
    const Fp8Support sup = fp8_support(Device::cuda);
    if (!sup.gemm)
      ST_THROW_INPUT(fp8_where(c), ": base_precision = fp8 needs FP8 tensor cores (compute capability 8.9 or newer: Ada, "
                     "Hopper, Blackwell): ", sup.reason, " (use base_precision = bf16)");
  }
  const int64_t rows = c.micro_batch_size * std::max(shape.row_len(), shape.target_len);
  const bool keep_transpose = c.fp8_transpose == "stored";
  int64_t at_load = 0;
  for (const Linear* l : s.model->linears()) at_load += l->fp8_stored() ? 1 : 0;
  const int64_t n = fp8_convert_base(s.model->linears(), rows, fp8_where(c), keep_transpose);
  if (!dry_run_active())
    ST_LOG("fp8: the frozen base of ", n, " adapted linear layers in FP8 E4M3 (", at_load == n ? "quantized as loaded; " : "",
           "per-tensor scales; activations quantized with current scaling; W8^T ",
           keep_transpose ? "stored" : "transposed before each input-gradient GEMM", ")");
}

}  // namespace

TrainingState build_training_state(const RunConfig& c, const ParallelLayout& layout, Method method,
                                   const ShardInfo& info, const DataShape& shape, DType dtype, Device device,
                                   const RankComms& comms, bool training) {
  TrainingState s;
  check_buffer_sizes(c, info, shape);  // before any allocation (train/preflight.hpp)
  s.family = &resolve_family(c, info);
  const ModelFamily& fam = *s.family;
  if (training && c.packing && fam.seq2seq)
    ST_THROW_INPUT(c.origin.at("packing"), ": packing = true is for decoder-only models: a ", fam.name,
                   " row is an encoder input and a decoder target, whose packing would need matching document "
                   "boundaries on both sides and in the cross-attention (use group_by_length = true to cut padding "
                   "instead)");
  const bool adapter_in = !c.adapter.empty();
  if (training && adapter_in && method == Method::full)
    ST_THROW_INPUT(c.origin.at("adapter"), ": adapter = ", c.adapter, " needs method = lora or qlora (method is full)");
  // base_precision = fp8 applies where adapters are attached (below); ZeRO-3 is refused before
  // anything is loaded.
  const bool fp8 = c.base_precision == "fp8" && (training ? method != Method::full : adapter_in);
  if (fp8 && layout.zero3())  // parallel = auto may have chosen it
    ST_THROW_INPUT(c.origin.at("parallel"), ": parallel = ", layout.name(), " with base_precision = fp8: ZeRO-3 shards "
                   "the frozen base, which FP8 does not support yet (use none, ddp or tp)");
  const MasterWeights mw = run_master_weights(c);
  // 1. The model, as this rank's shard of the family's TP plan. Under LoRA with base_precision =
  // fp8 the adapted layers are quantized to FP8 as they are loaded (or drawn), as QLoRA's NF4
  // layers are: the load peak is the FP8 model and one dense tensor, not the dense model.
  RunnerSpec spec{c, info, shape, dtype, device, comms.tp, method, training, fam};
  spec.fp8_base = fp8 && method == Method::lora;
  spec.fp8_where = fp8_where(c);
  s.model = fam.make_runner(spec);
  MemoryPhase phase("setup");
  // 2. The method. master_weights = none changes full fine-tuning in bf16 only (bf16 gradients;
  // AdamW then keeps no master and bf16 moments); adapters and f32 values keep f32 masters.
  if (training && method == Method::full) {
    s.model->enable_base_training(mw);
  } else if (training || adapter_in) {
    LoraConfig lc;
    lc.r = c.lora_r;
    lc.alpha = c.lora_alpha;
    lc.dropout = c.lora_dropout;
    lc.targets = lora_targets_for(c, fam);
    if (adapter_in) {
      // The adapter's own r, alpha and modules; the deck's dropout when it sets one.
      const PeftConfig p = read_peft_config(c.adapter, fam.peft);
      lc = lora_config_from_peft(p, fam.peft);
      const auto it = c.origin.find("lora_dropout");
      if (it != c.origin.end() && it->second != "default") lc.dropout = c.lora_dropout;
    }
    s.lora_adapters = s.model->attach_lora(lc, c.seed);
    if (adapter_in) {
      load_peft_adapter(s.model->linears(), c.adapter);
      ST_LOG("adapter: loaded ", c.adapter, " (PEFT LoRA, r=", lc.r, " alpha=", lc.alpha, ", ", s.lora_adapters,
             " modules)");
    }
  }
  if (fp8) {
    if (s.lora_adapters == 0) ST_THROW("base_precision = fp8: no adapters were attached");
    hold_base_in_fp8(c, s, shape, device);
  }
  s.num_parameters = s.model->num_parameters();
  s.num_trainable = training ? s.model->num_trainable() : 0;
  s.weight_bytes = s.model->weight_bytes();
  // 3. ZeRO-3 or DDP over the data-parallel group.
  const ParamTable table = s.model->param_table();
  DataParallel data_parallel = apply_data_parallel(table, layout, comms.dp, training, c.zero3_prefetch);
  s.zero = std::move(data_parallel.zero);
  s.grad_sync = std::move(data_parallel.grad_sync);
  if (training)
    s.opt = std::make_unique<AdamW>(s.zero ? s.zero->params() : trainable_params(table), c.adam_beta1, c.adam_beta2,
                                    c.adam_eps, c.weight_decay, c.seed);
  s.model->allocate(c.micro_batch_size, training ? run_checkpointing(c) : Checkpointed::none(), training);
  return s;
}

StepOutcome training_step(TrainingState& s, const RunConfig& c, const RankComms& comms, int64_t accum,
                          double token_weight, double lr,
                          const std::function<void(int64_t, Batch&, LayerContext&)>& read,
                          const std::function<void()>& before_sync) {
  StepOutcome out;
  s.opt->zero_grad();
  Batch host;
  for (int64_t a = 0; a < accum; ++a) {
    LayerContext ctx;
    ctx.training = true;
    read(a, host, ctx);
    {
      MemoryPhase phase("forward");
      out.loss += s.model->forward(host, token_weight, ctx, true);
      out.computed_tokens += s.model->computed_tokens();
    }
    MemoryPhase phase("backward");
    if (s.grad_sync && a + 1 == accum) s.grad_sync->arm();
    s.model->backward(ctx);
  }
  if (before_sync) before_sync();
  if (s.grad_sync) {
    MemoryPhase phase("gradient all-reduce");
    s.grad_sync->sync();
  }
  // Each data-parallel group's objective (the same on every rank of a TP group) and computed
  // positions, summed.
  if (comms.dp_size() > 1) {
    Tensor sums = Tensor::empty({2}, DType::f64, Device::cpu, MemCategory::other);
    sums.ptr<double>()[0] = out.loss;
    sums.ptr<double>()[1] = static_cast<double>(out.computed_tokens);
    comms.dp_host->all_reduce_sum(sums);
    out.loss = sums.ptr<double>()[0];
    out.computed_tokens = static_cast<int64_t>(sums.ptr<double>()[1]);
  }
  MemoryPhase phase("optimizer");
  // Under TP the sharded gradients' squared norms are summed over the group; replicated ones
  // (norms, one LoRA factor) are counted once, on TP rank 0. Under ZeRO-3 every rank holds its
  // own shard: summed over the whole world.
  const bool tp_rank0 = comms.tp.rank == 0;
  out.grad_norm = s.zero                   ? s.opt->clip_grad_norm(c.grad_clip, comms.world, tp_rank0)
                  : s.model->tp_size() > 1 ? s.opt->clip_grad_norm(c.grad_clip, comms.tp_host, tp_rank0)
                                           : s.opt->clip_grad_norm(c.grad_clip);
  s.opt->step(lr);
  return out;
}

}  // namespace st
