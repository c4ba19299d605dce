#include "train/calibrate.hpp"

#include <algorithm>
#include <vector>
#include <chrono>
#include <cmath>
#include <functional>
#include <map>
#include <tuple>

#include "core/error.hpp"
#include "core/profile.hpp"
#include "ops/activation.hpp"
#include "ops/attention.hpp"
#include "ops/bias.hpp"
#include "ops/embedding.hpp"
#include "ops/fp8.hpp"
#include "ops/init.hpp"
#include "ops/loss.hpp"
#include "ops/matmul.hpp"
#include "ops/norm.hpp"
#include "ops/optim.hpp"
#include "ops/rope.hpp"
#include "quant/nf4.hpp"

#ifdef SHARDTUNE_CUDA
#include "cuda/timing.cuh"
#endif

namespace st {

namespace {

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// One op of a sweep: its work as the op trace records it, its mean time on the device and the
// host's time to issue it (0 on the CPU, where the op is the host's own work).
struct Sample {
  OpFamily family;
  double work = 0, seconds = 0, host = 0;
};

class Sweep {
 public:
  Sweep(Device d, double budget_per_point) : device_(d), budget_(budget_per_point) {}

  // Run `op` once under a trace (its work), once more to warm up, then as many times as fit the
  // budget (at least 3) between two synchronisations. On a GPU the calls are enqueued behind a
  // spinning kernel, so the time is the GPU's alone and the host's launch cost is measured apart
  // (cuda/timing.cuh): a tiny op timed back to back would measure its launch on this host's CPU.
  Sample time(const std::function<void()>& op) {
    Sample s;
    {
      OpTraceRecorder rec;
      op();
      if (rec.events().empty() || rec.events().front().kind != TraceEvent::Kind::op)
        ST_THROW("calibrate: the op recorded no traced op");
      const TraceEvent& e = rec.events().front();
      s.family = e.family;
      s.work = op_family_by_flops(e.family) ? e.flops : e.bytes;
    }
    device_synchronize(device_);
    double t0 = now();
    op();
    device_synchronize(device_);
    const double once = std::max(now() - t0, 1e-7);
    const int reps = static_cast<int>(std::clamp(budget_ / once, 3.0, 1000.0));
#ifdef SHARDTUNE_CUDA
    if (device_ == Device::cuda) {
      // At most 200 calls queued: the launch queue holds ~1000 kernels and an op may launch several.
      // Twice, the faster of each part: the host's time is noise upwards (a CPU waking from the
      // wait, an interrupt), and a training step's host thread issues ops without pause.
      const cuda::BlockedTiming a = cuda::time_blocked(op, std::min(reps, 200));
      const cuda::BlockedTiming b = cuda::time_blocked(op, std::min(reps, 200));
      s.seconds = std::min(a.gpu_seconds, b.gpu_seconds);
      s.host = std::min(a.host_seconds, b.host_seconds);
      return s;
    }
#endif
    t0 = now();
    for (int r = 0; r < reps; ++r) op();
    device_synchronize(device_);
    s.seconds = (now() - t0) / reps;
    return s;
  }

 private:
  Device device_;
  double budget_;
};

// Strictly increasing work, the faster time where two samples have the same work.
std::vector<std::pair<double, double>> as_points(std::vector<Sample> ss) {
  std::sort(ss.begin(), ss.end(), [](const Sample& a, const Sample& b) { return a.work < b.work; });
  std::vector<std::pair<double, double>> pts;
  for (const Sample& s : ss) {
    if (!(s.work > 0) || !(s.seconds > 0)) continue;
    if (!pts.empty() && pts.back().first == s.work) pts.back().second = std::min(pts.back().second, s.seconds);
    else pts.emplace_back(s.work, s.seconds);
  }
  return pts;
}

DType dtype_of_bytes(int bytes, Device d) {
  if (bytes == 2 && d == Device::cuda) return DType::bf16;
  if (bytes == 8) return DType::f64;
  return DType::f32;
}

}  // namespace

DeviceProfile calibrate_device(const CalibrateOptions& o) {
  const Device d = o.device;
  const bool cuda = d == Device::cuda;
  const DType act = cuda ? DType::bf16 : DType::f32;
  // Sweeps: square GEMMs, attention lengths, and element counts of the memory-bound ops.
  std::vector<int64_t> gemm_sizes = cuda ? std::vector<int64_t>{256, 512, 1024, 2048, 4096, 8192}
                                         : std::vector<int64_t>{32, 64, 128, 256};
  std::vector<int64_t> seq_lens = cuda ? std::vector<int64_t>{128, 256, 512, 1024, 2048} : std::vector<int64_t>{16, 32, 64};
  std::vector<int64_t> rows = cuda ? std::vector<int64_t>{16, 64, 256, 1024, 4096, 16384} : std::vector<int64_t>{4, 16, 64, 256};
  const int64_t C = cuda ? 4096 : 256;  // row width of the memory-bound ops
  const int64_t H = cuda ? 32 : 4, D = cuda ? 128 : 16;
  if (o.small) {
    gemm_sizes = {16, 32, 64};
    seq_lens = {8, 16};
    rows = {4, 16, 64};
  }
  const size_t points =
      gemm_sizes.size() + 4 * seq_lens.size() + 11 * rows.size() + o.gemm_shapes.size() + o.attention_shapes.size();
  Sweep sw(d, o.seconds / static_cast<double>(std::max<size_t>(1, points)));
  std::map<OpFamily, std::vector<Sample>> by;
  auto add = [&](const Sample& s) { by[s.family].push_back(s); };

  DeviceProfile p;
  p.device = cuda ? "cuda" : "cpu";
  // GEMMs: C [m, n] = op(A) op(B); the sweep's y = x W^T (W [n, k]), the linear layers' forward.
  auto gemm = [&](int64_t m, int64_t n, int64_t k, DType dt, bool ta = false, bool tb = true) {
    // Random operands: tensor cores multiplying zeros draw less power and run at higher clocks
    // than on real data, which would make every prediction optimistic.
    Tensor A = Tensor::zeros(ta ? Shape{k, m} : Shape{m, k}, dt, d), B = Tensor::zeros(tb ? Shape{n, k} : Shape{k, n}, dt, d);
    Tensor Cc = Tensor::zeros({m, n}, dt, d);
    fill_normal(A, 11, 0.0, 1.0);
    fill_normal(B, 12, 0.0, 0.02);
    return sw.time([&] { matmul(Cc, A, ta, B, tb, 1.0, 0.0); });
  };
  Sample largest;  // the sweep's time of its largest square GEMM (for the sustained factor)
  for (int64_t s : gemm_sizes) {
    largest = gemm(s, s, s, act);
    add(largest);
  }
  // FP8 (base_precision = fp8): the largest square GEMM again with both operands in E4M3
  // (per-tensor scales, bf16 output: the FP8 base's GEMM); its speed over bf16 stands for every
  // FP8 GEMM (DeviceProfile::fp8_gemm_speedup). Not a point of the gemm curve.
  if (cuda && largest.seconds > 0) {
    try {
      const int64_t s = gemm_sizes.back();
      Tensor A = Tensor::zeros({s, s}, act, d), B = Tensor::zeros({s, s}, act, d), Cc = Tensor::zeros({s, s}, act, d);
      fill_normal(A, 15, 0.0, 1.0);
      fill_normal(B, 16, 0.0, 0.02);
      Fp8Tensor A8 = fp8_allocate(s, s, Fp8Scaling::per_tensor, d), B8 = fp8_allocate(s, s, Fp8Scaling::per_tensor, d);
      fp8_quantize(A, A8);
      fp8_quantize(B, B8);
      const Sample f8 = sw.time([&] { matmul_fp8(Cc, A8, B8, 0.0, nullptr); });
      p.fp8_gemm_speedup = std::clamp(largest.seconds / f8.seconds, 1.0, 4.0);
      p.source = str(p.source.empty() ? "" : p.source + "; ", "FP8 ", s, "^3 GEMM ", f8.seconds * 1e3, " ms vs bf16 ",
                     largest.seconds * 1e3, " ms");
    } catch (const Error& e) {
      p.source = str(p.source.empty() ? "" : p.source + "; ", "FP8 GEMM not measured (", e.what(), ")");
    }
  }
  // The deck's own GEMM shapes, each timed once in its operands' layout.
  std::map<std::tuple<int64_t, int64_t, int64_t, int, bool, bool>, double> exact;
  for (const TraceEvent& e : o.gemm_shapes) {
    if (e.family != OpFamily::gemm || e.dtype_bytes == 1) continue;  // FP8 GEMMs: not timed here
    const auto key = std::make_tuple(e.m, e.n, e.k, e.dtype_bytes, e.trans_a, e.trans_b);
    if (exact.count(key)) continue;
    const Sample s = gemm(e.m, e.n, e.k, dtype_of_bytes(e.dtype_bytes, d), e.trans_a, e.trans_b);
    exact[key] = s.seconds;
    add(s);
  }
  for (const auto& [key, secs] : exact) {
    GemmShapeTime g;
    std::tie(g.m, g.n, g.k, g.dtype_bytes, g.trans_a, g.trans_b) = key;
    g.seconds = secs;
    p.gemm_shapes.push_back(g);
  }
  // Attention: causal self-attention, batch 1, H heads of D; forward and backward.
  for (int64_t T : seq_lens) {
    AttentionShape s;
    s.B = 1;
    s.T = T;
    s.Hq = s.Hkv = H;
    s.D = D;
    s.scale = 1.0 / std::sqrt(static_cast<double>(D));
    const DType stat_dt = cuda ? DType::f32 : act;
    Tensor q = Tensor::zeros({T, H * D}, act, d), k = q.clone(MemCategory::other), v = q.clone(MemCategory::other), out = q.clone(MemCategory::other), dout = q.clone(MemCategory::other);
    Tensor dq = q.clone(MemCategory::other), dk = q.clone(MemCategory::other), dv = q.clone(MemCategory::other), lse = Tensor::zeros({H * T}, stat_dt, d);
    add(sw.time([&] { attention_forward(s, q, k, v, Tensor(), out, lse); }));
    add(sw.time([&] { attention_backward(s, q, k, v, out, lse, dout, Tensor(), dq, dk, dv, false); }));
  }
  // Variable-length causal self-attention, the decoder decks' path (the loader hands every batch
  // over as segments): S documents of T tokens filling a training batch's N tokens, for each T of
  // the sweep. A batch-1 op above keeps few blocks busy; the decks' ops run at this occupancy.
  const int64_t Nv = cuda ? 8192 : 4 * seq_lens.back();
  for (int64_t T : seq_lens) {
    const int64_t S = Nv / T;
    Tensor cu = Tensor::empty({S + 1}, DType::i32), keys = Tensor::empty({S}, DType::i32);
    for (int64_t i = 0; i <= S; ++i) cu.ptr<int32_t>()[i] = static_cast<int32_t>(i * T);
    for (int64_t i = 0; i < S; ++i) keys.ptr<int32_t>()[i] = static_cast<int32_t>(T);
    const Tensor tiles_host = cuda ? Tensor::empty({4 * attention_max_tiles(S * T, S)}, DType::i32) : Tensor();
    AttentionSegments seg;
    attention_segments_finish(seg, cu, keys, tiles_host);
    if (cuda) {
      seg.tiles = Tensor::empty({4 * seg.n_tiles}, DType::i32, d);
      seg.tiles.copy_from(tiles_host.slice(0, 4 * seg.n_tiles));
    }
    AttentionShape s;
    s.B = S;
    s.T = T;
    s.Hq = s.Hkv = H;
    s.D = D;
    s.scale = 1.0 / std::sqrt(static_cast<double>(D));
    const DType stat_dt = cuda ? DType::f32 : act;
    Tensor q = Tensor::zeros({S * T, H * D}, act, d), k = q.clone(MemCategory::other), v = q.clone(MemCategory::other);
    Tensor out = q.clone(MemCategory::other), dout = q.clone(MemCategory::other), dq = q.clone(MemCategory::other);
    Tensor dk = q.clone(MemCategory::other), dv = q.clone(MemCategory::other), lse = Tensor::zeros({H, S * T}, stat_dt, d);
    add(sw.time([&] { attention_varlen_forward(s, q, k, v, seg, out, lse); }));
    add(sw.time([&] { attention_varlen_backward(s, q, k, v, out, lse, dout, seg, dq, dk, dv, false); }));
  }
  // The deck's own attention shapes (T5: relative-position bias, cross-attention), each timed once.
  const DType stat_dt = cuda ? DType::f32 : act;
  for (const TraceEvent& e : o.attention_shapes) {
    const TraceEvent::AttentionKey& k = e.attention;
    if (k.B <= 0 || (e.family != OpFamily::attention && e.family != OpFamily::attention_backward)) continue;
    const bool backward = e.family == OpFamily::attention_backward;
    if (std::any_of(p.attention_shapes.begin(), p.attention_shapes.end(),
                    [&](const AttentionShapeTime& a) { return a.backward == backward && a.key == k; }))
      continue;
    AttentionShape s;
    s.B = k.B;
    s.T = k.T;
    s.Tk = k.Tk == k.T ? 0 : k.Tk;
    s.Hq = k.Hq;
    s.Hkv = k.Hkv;
    s.D = k.D;
    s.causal = k.causal;
    s.scale = k.bias ? 1.0 : 1.0 / std::sqrt(static_cast<double>(k.D));  // T5 (bias) uses 1
    Tensor q = Tensor::zeros({k.B * k.T, k.Hq * k.D}, act, d), out = q.clone(MemCategory::other);
    Tensor dout = q.clone(MemCategory::other), dq = q.clone(MemCategory::other);
    Tensor kk = Tensor::zeros({k.B * k.Tk, k.Hkv * k.D}, act, d), v = kk.clone(MemCategory::other);
    Tensor dk = kk.clone(MemCategory::other), dv = kk.clone(MemCategory::other);
    Tensor lse = Tensor::zeros({k.B * k.Hq * k.T}, stat_dt, d);
    Tensor bias = k.bias ? Tensor::zeros({k.Hq, k.T, k.Tk}, stat_dt, d) : Tensor();
    Tensor dbias = k.dbias ? Tensor::zeros({k.Hq, k.T, k.Tk}, stat_dt, d) : Tensor();
    const Sample smp =
        backward ? sw.time([&] {
          attention_backward(s, q, kk, v, out, lse, dout, Tensor(), dq, dk, dv, false, bias, k.dbias ? &dbias : nullptr);
        })
                 : sw.time([&] { attention_forward(s, q, kk, v, Tensor(), out, lse, bias); });
    add(smp);
    AttentionShapeTime t;
    t.backward = backward;
    t.key = k;
    t.seconds = smp.seconds;
    p.attention_shapes.push_back(t);
  }
  // Memory-bound ops over [rows, C].
  const RopeTables rope = rope_tables(cuda ? 16384 : 256, D, 10000.0, d);
  for (int64_t N : rows) {
    Tensor x = Tensor::zeros({N, C}, act, d), y = x.clone(MemCategory::other), z = x.clone(MemCategory::other), w = Tensor::zeros({C}, act, d);
    Tensor rstd = Tensor::zeros({N}, cuda ? DType::f32 : act, d);
    add(sw.time([&] { rmsnorm_forward(x, w, 1e-5, y, rstd); }));
    // The backward too (the same family; its weight-gradient reduction runs at its own rate).
    Tensor dw = Tensor::zeros({C}, cuda ? DType::f32 : act, d);
    add(sw.time([&] { rmsnorm_backward(x, x, w, rstd, z, &dw); }));
    add(sw.time([&] { swiglu_forward(x, y, z); }));
    add(sw.time([&] { rope_forward(y, 1, N, rope, Tensor()); }));
    Tensor ids = Tensor::zeros({N}, DType::i32, d), table = Tensor::zeros({1024, C}, act, d);
    add(sw.time([&] { embedding_forward(ids, table, y); }));
    Tensor logits = Tensor::zeros({N, C}, act, d), targets = Tensor::zeros({N}, DType::i32, d);
    Tensor weight = Tensor::zeros({N}, DType::f32, d), losses = Tensor::zeros({N}, cuda ? DType::f32 : act, d);
    add(sw.time([&] { cross_entropy(logits, targets, weight, losses, true); }));
    add(sw.time([&] { bias_add(y, w); }));
    add(sw.time([&] { y.copy_from(x); }));
    // AdamW as a training step runs it: one op over a list of tensors (here the N * C elements as
    // four tensors), traced with the bytes of all of them.
    Tensor master = Tensor::zeros({N * C}, DType::f32, d), grad = master.clone(MemCategory::other), m = master.clone(MemCategory::other), v = master.clone(MemCategory::other);
    std::vector<Tensor> parts;
    std::vector<AdamWTensors> list;
    for (int64_t i = 0; i < 4; ++i)
      for (Tensor* t : {&master, &grad, &m, &v}) parts.push_back(t->slice(i * N * C / 4, (i + 1) * N * C / 4));
    for (size_t i = 0; i < parts.size(); i += 4) list.push_back(AdamWTensors{&parts[i], &parts[i + 1], &parts[i + 2], &parts[i + 3]});
    AdamWHyper h;
    h.lr = 1e-5;
    add(sw.time([&] { adamw_update_multi(list, h); }));
    Nf4Config nf;
    Nf4Tensor q = nf4_allocate(N, C, nf, d);
    add(sw.time([&] { nf4_dequantize(q, y); }));
    try {  // a GPU without FP8 kernels: the family takes the element-wise curve (below)
      Fp8Tensor f8 = fp8_allocate(N, C, Fp8Scaling::per_tensor, d);
      add(sw.time([&] { fp8_quantize(x, f8); }));
    } catch (const Error& e) {
      p.source = str("fp8_quant not measured (", e.what(), "): the element-wise curve");
    }
  }

  for (int i = 0; i < kNumOpFamilies; ++i) {
    const OpFamily f = static_cast<OpFamily>(i);
    FamilyProfile& fp = p.family(f);
    // Families not timed on their own (element-wise fills, relative bias, ...) take the
    // element-wise bias add's curve; attention_backward has its own sweep.
    const OpFamily src = by.count(f) ? f : OpFamily::elementwise;
    fp.points = as_points(by[src]);
    if (fp.points.empty()) ST_THROW("calibrate: no sample of ", op_family_name(f));
    fp.latency_s = fp.points.front().second;
    for (const auto& [w, t] : fp.points) fp.latency_s = std::min(fp.latency_s, t);
    // The host's time per op: the family's lower quartile (its launch cost hardly depends on the
    // shape; the noise of a short burst of calls only adds).
    std::vector<double> hosts;
    for (const Sample& smp : by[src]) hosts.push_back(smp.host);
    std::nth_element(hosts.begin(), hosts.begin() + static_cast<std::ptrdiff_t>(hosts.size() / 4), hosts.end());
    fp.host_s = hosts[hosts.size() / 4];
  }
  for (const auto& [w, t] : p.family(OpFamily::gemm).points) p.gemm_peak_flops = std::max(p.gemm_peak_flops, w / t);
  if (o.sustain_seconds > 0 && largest.seconds > 0) {
    // The largest square GEMM again, back to back for sustain_seconds in groups of ~20 ms; the
    // median group of the last 40% (the clocks have settled by then) against the sweep's time.
    const int64_t s = gemm_sizes.back();
    Tensor A = Tensor::zeros({s, s}, act, d), B = Tensor::zeros({s, s}, act, d), Cc = Tensor::zeros({s, s}, act, d);
    fill_normal(A, 13, 0.0, 1.0);
    fill_normal(B, 14, 0.0, 0.02);
    const int group = static_cast<int>(std::clamp(0.02 / largest.seconds, 1.0, 1000.0));
    std::vector<std::pair<double, double>> groups;  // (seconds since the start, seconds per GEMM)
    device_synchronize(d);
    const double start = now();
    while (now() - start < o.sustain_seconds) {
      const double t0 = now();
      for (int g = 0; g < group; ++g) matmul(Cc, A, false, B, true, 1.0, 0.0);
      device_synchronize(d);
      const double t1 = now();
      groups.emplace_back(t1 - start, (t1 - t0) / group);
    }
    std::vector<double> late;
    for (const auto& [at, per] : groups)
      if (at >= 0.6 * o.sustain_seconds) late.push_back(per);
    if (!late.empty()) {
      std::nth_element(late.begin(), late.begin() + static_cast<std::ptrdiff_t>(late.size() / 2), late.end());
      const double sustained = late[late.size() / 2];
      p.sustained_compute_factor = std::clamp(sustained / largest.seconds, 0.5, 2.0);
      p.source = str(p.source.empty() ? "" : p.source + "; ", "sustained ", s, "^3 GEMM ", sustained * 1e3, " ms vs ",
                     largest.seconds * 1e3, " ms in the sweep");
    }
  }
  for (const auto& [w, t] : p.family(OpFamily::copy).points) p.memory_bytes_per_s = std::max(p.memory_bytes_per_s, w / t);
  return p;
}

}  // namespace st
