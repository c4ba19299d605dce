// NF4 quantization: CPU reference kernels and dispatch to CUDA. Built with -ffp-contract=off
// (see the Makefile): products and sums here must round separately, as on the GPU, so that both
// produce the same bits.
#include "quant/nf4.hpp"

#include "quant/nf4_codec.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/dtype.hpp"
#include "core/error.hpp"
#include "core/dryrun.hpp"
#include "core/op_trace.hpp"
#include "core/profile.hpp"
#ifdef SHARDTUNE_CUDA
#include "cuda/nf4.cuh"
#endif

namespace st {

void Nf4Config::validate(const std::string& what) const {
  if (block != 64 && block != 128 && block != 256)
    ST_THROW_INPUT(what, ": NF4 block size must be 64, 128 or 256 (got ", block, ")");
}

const std::array<float, 16>& nf4_code_values() {
  // The NF4 data type of the QLoRA paper (quantiles of N(0, 1), normalised to [-1, 1], with an
  // exact zero), as bitsandbytes stores it.
  static const std::array<float, 16> v = {
      -1.0f,
      -0.6961928009986877f,
      -0.5250730514526367f,
      -0.39491748809814453f,
      -0.28444138169288635f,
      -0.18477343022823334f,
      -0.09105003625154495f,
      0.0f,
      0.07958029955625534f,
      0.16093020141124725f,
      0.24611230194568634f,
      0.33791524171829224f,
      0.44070982933044434f,
      0.5626170039176941f,
      0.7229568362236023f,
      1.0f};
  return v;
}

namespace {

// Midpoints between neighbouring code values (computed in double from the f32 code values and
// rounded to f32; they equal the constants of bitsandbytes' decision tree).
const std::array<float, 15>& nf4_midpoints() {
  static const std::array<float, 15> m = [] {
    std::array<float, 15> r{};
    const auto& c = nf4_code_values();
    for (int i = 0; i < 15; ++i)
      r[static_cast<size_t>(i)] = static_cast<float>((static_cast<double>(c[static_cast<size_t>(i)]) +
                                                      static_cast<double>(c[static_cast<size_t>(i) + 1])) /
                                                     2.0);
    return r;
  }();
  return m;
}

// torch.linspace(start, end, steps) in f32 as ATen's CPU kernel computes it: the first half
// from the start, the second half back from the end, each value start + step * i with a single
// rounding (the kernel's multiply-add is contracted to an FMA; checked bit for bit against torch
// by the golden fixture, tests/golden/make_nf4_golden.py).
std::vector<float> linspace_f32(float start, float end, int64_t steps) {
  std::vector<float> out(static_cast<size_t>(steps));
  const float step = (end - start) / static_cast<float>(steps - 1);
  const int64_t half = steps / 2;
  for (int64_t i = 0; i < steps; ++i)
    out[static_cast<size_t>(i)] = i < half ? std::fmaf(step, static_cast<float>(i), start)
                                           : std::fmaf(-step, static_cast<float>(steps - i - 1), end);
  return out;
}

}  // namespace

const std::array<float, 256>& dynamic_map_signed() {
  // bitsandbytes' create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): for each
  // exponent i in 0..6, the means of neighbouring points of linspace(0.1, 1, 2^i + 1) scaled by
  // 10^(i-6), with both signs; then 0 and 1; sorted. f32 arithmetic as torch does it.
  static const std::array<float, 256> map = [] {
    std::vector<float> data;
    for (int i = 0; i < 7; ++i) {
      const int64_t items = (int64_t{1} << i) + 1;
      const std::vector<float> b = linspace_f32(0.1f, 1.0f, items);
      const float scale = static_cast<float>(std::pow(10.0, -6 + i));
      std::vector<float> pos;
      for (int64_t j = 0; j + 1 < items; ++j) {
        const float mean = (b[static_cast<size_t>(j)] + b[static_cast<size_t>(j) + 1]) / 2.0f;
        pos.push_back(scale * mean);
      }
      for (float p : pos) data.push_back(p);
      for (float p : pos) data.push_back(-p);
    }
    data.push_back(0.0f);
    data.push_back(1.0f);
    if (data.size() != 256) ST_THROW("dynamic map: ", data.size(), " values instead of 256");
    std::sort(data.begin(), data.end());
    std::array<float, 256> r{};
    std::copy(data.begin(), data.end(), r.begin());
    return r;
  }();
  return map;
}

uint8_t nf4_encode(float x) { return nf4::encode(nf4_midpoints().data(), x); }

uint8_t dynamic_encode(const float* code, float x) { return nf4::dynamic_encode(code, x); }

float nf4_fixed_order_mean(const float* x, int64_t n) {
  // bitsandbytes' offset is torch.mean of the f32 absmax on the GPU: an f32 sum, times the f32
  // reciprocal of n (torch's MeanOps factor). The sum here is f32 too, in a fixed order the CUDA
  // kernel repeats: lane t sums x[t], x[t + L], x[t + 2L], ... in order, then the lanes are added
  // as a binary tree (lane t += lane t + s for s = L/2, L/4, ..., 1). torch orders its sum its own
  // way (per-thread vectorised partials, a block tree), so the two differ by rounding only: for n
  // values >= 0 each sum is within d u of the exact one (u = 2^-24, d = its depth; here
  // ceil(n / L) + log2 L): docs/NOTES.md "Robustness" derives the test tolerance from it.
  std::array<float, kMeanLanes> lane{};
  for (int64_t t = 0; t < kMeanLanes; ++t) {
    float s = 0.0f;
    for (int64_t i = t; i < n; i += kMeanLanes) s += x[i];
    lane[static_cast<size_t>(t)] = s;
  }
  for (int s = kMeanLanes / 2; s > 0; s >>= 1)
    for (int t = 0; t < s; ++t) lane[static_cast<size_t>(t)] += lane[static_cast<size_t>(t + s)];
  const float inv_n = 1.0f / static_cast<float>(n);
  return lane[0] * inv_n;
}

size_t Nf4Tensor::nbytes() const {
  size_t b = codes.nbytes();
  if (cfg.double_quant) b += qabsmax.nbytes() + absmax2.nbytes() + sizeof(float);
  else b += absmax.nbytes();
  return b;
}

Nf4Tensor nf4_allocate(int64_t rows, int64_t cols, const Nf4Config& cfg, Device device) {
  cfg.validate("nf4");
  if (rows <= 0 || cols <= 0) ST_THROW("nf4_allocate: bad shape [", rows, ", ", cols, "]");
  Nf4Tensor q;
  q.rows = rows;
  q.cols = cols;
  q.cfg = cfg;
  const int64_t n = rows * cols, nb = q.nblocks();
  q.codes = Tensor::empty({(n + 1) / 2}, DType::u8, device, MemCategory::weights);
  if (cfg.double_quant) {
    q.qabsmax = Tensor::empty({nb}, DType::u8, device, MemCategory::weights);
    q.absmax2 = Tensor::empty({(nb + Nf4Config::kBlock2 - 1) / Nf4Config::kBlock2}, DType::f32, device,
                              MemCategory::weights);
  } else {
    q.absmax = Tensor::empty({nb}, DType::f32, device, MemCategory::weights);
  }
  return q;
}

namespace {

// Blockwise absmax + 8-bit dynamic codes of `x` (n values, block 256): bitsandbytes'
// quantize_blockwise with the signed dynamic map.
void quantize_dynamic_cpu(const float* x, int64_t n, uint8_t* codes, float* absmax) {
  const float* map = dynamic_map_signed().data();
  const int64_t B2 = Nf4Config::kBlock2;
  for (int64_t b = 0; b * B2 < n; ++b) {
    const int64_t lo = b * B2, hi = std::min(n, lo + B2);
    float amax = 0.0f;
    for (int64_t i = lo; i < hi; ++i) amax = std::fmax(amax, std::fabs(x[i]));
    absmax[b] = amax;
    const float inv = 1.0f / amax;
    for (int64_t i = lo; i < hi; ++i) codes[i] = dynamic_encode(map, x[i] * inv);
  }
}

template <typename T>
float as_f32(T v) {
  if constexpr (std::is_same_v<T, uint16_t>) return bf16_to_f32(v);
  else return static_cast<float>(v);
}

template <typename T>
void quantize_cpu(const T* w, Nf4Tensor& q) {
  const int64_t n = q.numel(), blk = q.cfg.block, nb = q.nblocks();
  uint8_t* codes = q.codes.ptr<uint8_t>();
  std::vector<float> amax(static_cast<size_t>(nb));
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t lo = b * blk, hi = std::min(n, lo + blk);
    float a = 0.0f;
    for (int64_t i = lo; i < hi; ++i) a = std::fmax(a, std::fabs(as_f32(w[i])));
    amax[static_cast<size_t>(b)] = a;
    const float inv = 1.0f / a;
    for (int64_t i = lo; i < hi; i += 2) {  // blk is even: a byte never straddles two blocks
      const uint8_t hi4 = nf4_encode(as_f32(w[i]) * inv);
      const uint8_t lo4 = i + 1 < hi ? nf4_encode(as_f32(w[i + 1]) * inv) : 0;
      codes[i / 2] = static_cast<uint8_t>(hi4 << 4 | lo4);
    }
  }
  if (!q.cfg.double_quant) {
    std::memcpy(q.absmax.data(), amax.data(), amax.size() * sizeof(float));
    return;
  }
  q.offset = nf4_fixed_order_mean(amax.data(), nb);
  nf4_double_quantize(amax.data(), nb, q.offset, q.qabsmax.ptr<uint8_t>(), q.absmax2.ptr<float>());
}

void effective_absmax_cpu(const Nf4Tensor& q, float* out) {
  const int64_t nb = q.nblocks();
  if (!q.cfg.double_quant) {
    std::memcpy(out, q.absmax.data(), static_cast<size_t>(nb) * sizeof(float));
    return;
  }
  const float* map = dynamic_map_signed().data();
  const uint8_t* qa = q.qabsmax.ptr<uint8_t>();
  const float* a2 = q.absmax2.ptr<float>();
  for (int64_t b = 0; b < nb; ++b) {
    const float prod = map[qa[b]] * a2[b / Nf4Config::kBlock2];
    out[b] = prod + q.offset;
  }
}

template <typename T>
void dequantize_cpu(const Nf4Tensor& q, T* out) {
  const int64_t n = q.numel(), blk = q.cfg.block;
  std::vector<float> amax(static_cast<size_t>(q.nblocks()));
  effective_absmax_cpu(q, amax.data());
  const auto& cv = nf4_code_values();
  const uint8_t* codes = q.codes.ptr<uint8_t>();
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const uint8_t byte = codes[i / 2];
    const uint8_t c = (i & 1) ? (byte & 0x0F) : (byte >> 4);
    const float v = cv[c] * amax[static_cast<size_t>(i / blk)];
    if constexpr (std::is_same_v<T, uint16_t>) out[i] = f32_to_bf16(v);
    else out[i] = static_cast<T>(v);
  }
}

void check_pair(const char* op, const Tensor& w, const Nf4Tensor& q) {
  if (!q.codes.defined()) ST_THROW(op, ": NF4 storage not allocated");
  if (w.numel() != q.numel())
    ST_THROW(op, ": ", w.str(), " does not match the NF4 tensor [", q.rows, ", ", q.cols, "]");
  if (w.device() != q.device()) ST_THROW(op, ": ", w.str(), " is not on the NF4 tensor's device");
  if (w.dtype() != DType::f32 && w.dtype() != DType::f64 && w.dtype() != DType::bf16)
    ST_THROW(op, ": takes f32, f64 or bf16, got ", w.str());
}

}  // namespace

void nf4_quantize(const Tensor& w, Nf4Tensor& q) {
  ProfileScope prof("nf4 quantize", w.device());
  check_pair("nf4_quantize", w, q);
  const TracedOp traced(OpFamily::nf4_dequant, {&w, &q.codes, &q.absmax, &q.qabsmax});
  if (dry_run_active()) return;  // the planner: no compute
  if (w.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::nf4_quantize(w, q);
    return;
#else
    ST_THROW("nf4_quantize: built without CUDA");
#endif
  }
  switch (w.dtype()) {
    case DType::f32: quantize_cpu(w.ptr<float>(), q); break;
    case DType::f64: quantize_cpu(w.ptr<double>(), q); break;
    default: quantize_cpu(static_cast<const uint16_t*>(w.data()), q); break;
  }
}

void nf4_dequantize(const Nf4Tensor& q, Tensor& out) {
  ProfileScope prof("nf4 dequantize", out.device());
  check_pair("nf4_dequantize", out, q);
  const TracedOp traced(OpFamily::nf4_dequant, {&out, &q.codes, &q.absmax, &q.qabsmax, &q.absmax2});
  if (dry_run_active()) return;  // the planner: no compute
  if (out.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::nf4_dequantize(q, out);
    return;
#else
    ST_THROW("nf4_dequantize: built without CUDA");
#endif
  }
  switch (out.dtype()) {
    case DType::f32: dequantize_cpu(q, out.ptr<float>()); break;
    case DType::f64: dequantize_cpu(q, out.ptr<double>()); break;
    default: dequantize_cpu(q, static_cast<uint16_t*>(out.data())); break;
  }
}

Tensor nf4_effective_absmax(const Nf4Tensor& q) {
  Tensor out = Tensor::empty({q.nblocks()}, DType::f32, Device::cpu, MemCategory::other);
  if (q.device() == Device::cpu) {
    effective_absmax_cpu(q, out.ptr<float>());
    return out;
  }
  // Copy the small statistics to the host and evaluate them there (same f32 operations).
  Nf4Tensor h;
  h.rows = q.rows;
  h.cols = q.cols;
  h.cfg = q.cfg;
  h.offset = q.offset;
  if (q.cfg.double_quant) {
    h.qabsmax = q.qabsmax.to_cpu(DType::u8);
    h.absmax2 = q.absmax2.to_cpu(DType::f32);
  } else {
    h.absmax = q.absmax.to_cpu(DType::f32);
  }
  effective_absmax_cpu(h, out.ptr<float>());
  return out;
}

void nf4_double_quantize(const float* absmax, int64_t nb, float offset, uint8_t* qabsmax, float* absmax2) {
  std::vector<float> centered(static_cast<size_t>(nb));
  for (int64_t b = 0; b < nb; ++b) centered[static_cast<size_t>(b)] = absmax[b] - offset;
  quantize_dynamic_cpu(centered.data(), nb, qabsmax, absmax2);
}

}  // namespace st
