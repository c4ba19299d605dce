#include "train/device_profile.hpp"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <set>
#include <sstream>
#include <tuple>

#include <nlohmann/json.hpp>

#include "core/atomic_file.hpp"
#include "core/error.hpp"

namespace st {

double FamilyProfile::seconds(double work) const {
  if (work <= 0) return latency_s;
  double rate_here = rate;
  if (!points.empty()) {
    auto rate_at = [&](size_t i) { return points[i].first / points[i].second; };
    if (work <= points.front().first) {
      rate_here = rate_at(0);
    } else if (work >= points.back().first) {
      rate_here = rate_at(points.size() - 1);
    } else {
      size_t i = 1;
      while (points[i].first < work) ++i;
      const double x0 = std::log(points[i - 1].first), x1 = std::log(points[i].first);
      const double f = x1 > x0 ? (std::log(work) - x0) / (x1 - x0) : 0.0;
      rate_here = rate_at(i - 1) + f * (rate_at(i) - rate_at(i - 1));
    }
  }
  return std::max(latency_s, work / std::max(rate_here, 1e-30));
}

double DeviceProfile::op_seconds(const TraceEvent& e) const {
  const FamilyProfile& fp = family(e.family);
  if (e.family == OpFamily::gemm) {
    for (const GemmShapeTime& g : gemm_shapes)
      if (g.m == e.m && g.n == e.n && g.k == e.k && g.dtype_bytes == e.dtype_bytes && g.trans_a == e.trans_a &&
          g.trans_b == e.trans_b)
        return sustained_compute_factor * g.seconds;
    // Skinny GEMMs (LoRA's rank-r products) are bound by their operands' traffic, not FLOPs. FP8
    // GEMMs do the FLOPs of a bf16 GEMM fp8_gemm_speedup times faster.
    const double flops = e.dtype_bytes == 1 ? e.flops / fp8_gemm_speedup : e.flops;
    return sustained_compute_factor * std::max(fp.seconds(flops), e.bytes / memory_bytes_per_s + fp.latency_s);
  }
  if ((e.family == OpFamily::attention || e.family == OpFamily::attention_backward) && e.attention.B > 0) {
    const bool backward = e.family == OpFamily::attention_backward;
    for (const AttentionShapeTime& a : attention_shapes)
      if (a.backward == backward && a.key == e.attention) return sustained_compute_factor * a.seconds;
  }
  const bool by_flops = op_family_by_flops(e.family);
  return (by_flops ? sustained_compute_factor : 1.0) * fp.seconds(by_flops ? e.flops : e.bytes);
}

// ---- built-in profiles

namespace {

// Datasheet peaks. Dense BF16 tensor-core FLOP/s are half the datasheets' "with sparsity" figures.
//  H100 SXM5: NVIDIA H100 Tensor Core GPU datasheet (BF16 1,979 TFLOPS with sparsity, HBM3
//    3.35 TB/s, 80 GB).
//  H200 SXM: NVIDIA H200 Tensor Core GPU datasheet (BF16 1,979 TFLOPS with sparsity, HBM3e
//    4.8 TB/s, 141 GB).
//  A100 SXM4: NVIDIA A100 Tensor Core GPU datasheet (BF16 312 TFLOPS dense, 624 with sparsity;
//    HBM2 1,555 GB/s for 40 GB, HBM2e 2,039 GB/s for 80 GB).
const GpuDatasheet kSheets[] = {
    {"h100", 989.4e12, 3.35e12, size_t{80} << 30, "NVIDIA H100 SXM5 datasheet: BF16 1,979 TFLOPS sparse (989.4 dense), HBM3 3.35 TB/s"},
    {"h200", 989.4e12, 4.8e12, size_t{141} << 30, "NVIDIA H200 SXM datasheet: BF16 1,979 TFLOPS sparse (989.4 dense), HBM3e 4.8 TB/s"},
    {"a100-40gb", 312e12, 1.555e12, size_t{40} << 30, "NVIDIA A100 SXM4 datasheet: BF16 312 TFLOPS dense, HBM2 1,555 GB/s"},
    {"a100-80gb", 312e12, 2.039e12, size_t{80} << 30, "NVIDIA A100 SXM4 datasheet: BF16 312 TFLOPS dense, HBM2e 2,039 GB/s"},
};

// Achievable fractions (what our kernels reach of the peaks; docs/NOTES.md "CUDA backend"):
//  GEMM 0.77: cuBLASLt ran the 7B shapes at ~760 TFLOP/s of 989.4 on H100 (torch.matmul 8192^3
//    reached 778).
//  attention 0.101 forward, 0.075 backward: our kernels reach ~100 TFLOP/s forward and ~74
//    backward on H100 (the backward counted at 2.5x the forward's FLOPs).
//  memory-bound ops 0.70 of HBM bandwidth: an assumption (element-wise kernels with row
//    reductions, not a STREAM copy), which `shardtune calibrate` replaces by measurement.
//  5 us per kernel: launch plus tail, an assumption for the smallest ops.
// The same fractions are applied to every GPU kind (A100 included): an assumption.
constexpr double kGemmFraction = 0.77, kAttentionFraction = 0.101, kAttentionBackwardFraction = 0.075,
                 kMemoryFraction = 0.70, kLatency = 5e-6;
// FP8 GEMM speed over bf16 on Hopper (h100, h200): cuBLASLt with per-tensor scales and bf16 output
// ran 8192 x 4096 x 4096 in 0.183 ms (1501 TFLOP/s) against bf16's 0.347 ms (791) on the H100
// (docs/NOTES.md "FP8 GEMM throughput"; the datasheet's dense FP8 is 2x its BF16). A100: none.
constexpr double kHopperFp8GemmSpeedup = 1.9;

DeviceProfile profile_from_rates(const std::string& device, const std::string& source, double gemm, double attention,
                                 double attention_backward, double memory, double latency) {
  DeviceProfile p;
  p.device = device;
  p.source = source;
  p.gemm_peak_flops = gemm;
  p.memory_bytes_per_s = memory;
  for (int i = 0; i < kNumOpFamilies; ++i) {
    const OpFamily f = static_cast<OpFamily>(i);
    FamilyProfile& fp = p.family(f);
    fp.rate = f == OpFamily::gemm                 ? gemm
              : f == OpFamily::attention          ? attention
              : f == OpFamily::attention_backward ? attention_backward
                                                  : memory;
    fp.latency_s = latency;
  }
  return p;
}

}  // namespace

GpuKind parse_gpu_kind(const std::string& name, const std::string& what) {
  for (GpuKind g : all_gpu_kinds())
    if (name == gpu_kind_name(g)) return g;
  ST_THROW_INPUT(what, ": unknown GPU kind '", name, "' (h100, h200, a100-40gb, a100-80gb)");
}

const char* gpu_kind_name(GpuKind g) { return kSheets[static_cast<size_t>(g)].name; }
std::vector<GpuKind> all_gpu_kinds() { return {GpuKind::h100, GpuKind::h200, GpuKind::a100_40gb, GpuKind::a100_80gb}; }
const GpuDatasheet& gpu_datasheet(GpuKind g) { return kSheets[static_cast<size_t>(g)]; }
size_t gpu_kind_memory(GpuKind g) { return gpu_datasheet(g).memory_bytes; }

DeviceProfile builtin_device_profile(GpuKind g) {
  const GpuDatasheet& d = gpu_datasheet(g);
  DeviceProfile p = profile_from_rates(str(d.name, " (built in)"),
                            str("builtin: ", d.source, "; achievable fractions GEMM ", kGemmFraction, ", attention ",
                                kAttentionFraction, " / ", kAttentionBackwardFraction, " (forward / backward), memory-bound ",
                                kMemoryFraction, " (docs/NOTES.md, src/train/device_profile.cpp)"),
                            d.dense_bf16_flops * kGemmFraction, d.dense_bf16_flops * kAttentionFraction,
                            d.dense_bf16_flops * kAttentionBackwardFraction, d.hbm_bytes_per_s * kMemoryFraction, kLatency);
  if (g == GpuKind::h100 || g == GpuKind::h200) p.fp8_gemm_speedup = kHopperFp8GemmSpeedup;
  return p;
}

DeviceProfile builtin_cpu_profile() {
  // A few cores in f32: rough, for ranking CPU layouts only; `calibrate --device cpu` measures.
  return profile_from_rates("cpu (built in)", "builtin: 30 GFLOP/s GEMM, 3 GFLOP/s attention, 5 GB/s memory-bound",
                            30e9, 3e9, 3e9, 5e9, 1e-6);
}

// ---- JSON

namespace {

using json = nlohmann::json;

[[noreturn]] void bad(const std::string& what, const std::string& field, const std::string& why) {
  ST_THROW_INPUT(what, ": field '", field, "' ", why);
}

const json& need(const json& obj, const std::string& key, const std::string& what, const std::string& path) {
  auto it = obj.find(key);
  if (it == obj.end()) bad(what, path + key, "is missing");
  return *it;
}

double need_number(const json& obj, const std::string& key, const std::string& what, const std::string& path,
                   bool positive) {
  const json& v = need(obj, key, what, path);
  if (!v.is_number()) bad(what, path + key, "must be a number");
  const double x = v.get<double>();
  if (!std::isfinite(x) || x < 0 || (positive && x == 0))
    bad(what, path + key, str("must be ", positive ? "positive" : "non-negative", " (got ", x, ")"));
  return x;
}

std::string need_string(const json& obj, const std::string& key, const std::string& what, const std::string& path) {
  const json& v = need(obj, key, what, path);
  if (!v.is_string()) bad(what, path + key, "must be a string");
  return v.get<std::string>();
}

void only_keys(const json& obj, const std::set<std::string>& keys, const std::string& what, const std::string& path) {
  for (auto it = obj.begin(); it != obj.end(); ++it)
    if (!keys.count(it.key())) bad(what, path + it.key(), "is not a field of a device profile");
}

}  // namespace

DeviceProfile parse_device_profile(const std::string& text, const std::string& what) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    ST_THROW_INPUT(what, ": not JSON (", e.what(), ")");
  }
  if (!j.is_object()) ST_THROW_INPUT(what, ": a device profile is a JSON object");
  only_keys(j, {"format", "version", "device", "source", "gemm_peak_flops", "memory_bytes_per_s", "families", "gemm_shapes",
               "sustained_compute_factor", "fp8_gemm_speedup", "attention_shapes"},
            what, "");
  if (need_string(j, "format", what, "") != "shardtune-device-profile")
    bad(what, "format", "must be \"shardtune-device-profile\"");
  const json& ver = need(j, "version", what, "");
  if (!ver.is_number_integer() || ver.get<int>() != 1) bad(what, "version", "must be 1");
  DeviceProfile p;
  p.device = need_string(j, "device", what, "");
  p.source = need_string(j, "source", what, "");
  p.gemm_peak_flops = need_number(j, "gemm_peak_flops", what, "", true);
  p.memory_bytes_per_s = need_number(j, "memory_bytes_per_s", what, "", true);
  const json& fams = need(j, "families", what, "");
  if (!fams.is_object()) bad(what, "families", "must be an object");
  for (auto it = fams.begin(); it != fams.end(); ++it) parse_op_family(it.key(), str(what, ": families"));
  for (int i = 0; i < kNumOpFamilies; ++i) {
    const OpFamily f = static_cast<OpFamily>(i);
    const std::string name = op_family_name(f), path = "families." + name + ".";
    const json& fj = need(fams, name, what, "families.");
    if (!fj.is_object()) bad(what, "families." + name, "must be an object");
    only_keys(fj, {"metric", "latency_s", "rate", "points", "host_s"}, what, path);
    const std::string metric = need_string(fj, "metric", what, path);
    const char* want = op_family_by_flops(f) ? "flops" : "bytes";
    if (metric != want) bad(what, path + "metric", str("must be \"", want, "\" (got \"", metric, "\")"));
    FamilyProfile& fp = p.family(f);
    fp.latency_s = need_number(fj, "latency_s", what, path, false);
    fp.rate = need_number(fj, "rate", what, path, false);
    if (fj.contains("host_s")) fp.host_s = need_number(fj, "host_s", what, path, false);
    const json& pts = need(fj, "points", what, path);
    if (!pts.is_array()) bad(what, path + "points", "must be an array of [work, seconds]");
    for (size_t k = 0; k < pts.size(); ++k) {
      const std::string pp = str(path, "points[", k, "]");
      const json& pt = pts[k];
      if (!pt.is_array() || pt.size() != 2 || !pt[0].is_number() || !pt[1].is_number())
        bad(what, pp, "must be [work, seconds]");
      const double w = pt[0].get<double>(), t = pt[1].get<double>();
      if (!(w > 0) || !(t > 0) || !std::isfinite(w) || !std::isfinite(t)) bad(what, pp, "must have positive work and seconds");
      if (!fp.points.empty() && w <= fp.points.back().first) bad(what, pp, "must have more work than the point before it");
      fp.points.emplace_back(w, t);
    }
    if (fp.points.empty() && fp.rate == 0) bad(what, path + "rate", "must be positive when there are no points");
  }
  if (j.contains("sustained_compute_factor")) {
    p.sustained_compute_factor = need_number(j, "sustained_compute_factor", what, "", true);
    if (!(p.sustained_compute_factor >= 0.5 && p.sustained_compute_factor <= 2.0))
      bad(what, "sustained_compute_factor", str("must be in [0.5, 2] (got ", p.sustained_compute_factor, ")"));
  }
  if (j.contains("fp8_gemm_speedup")) {
    p.fp8_gemm_speedup = need_number(j, "fp8_gemm_speedup", what, "", true);
    if (!(p.fp8_gemm_speedup >= 1.0 && p.fp8_gemm_speedup <= 4.0))
      bad(what, "fp8_gemm_speedup", str("must be in [1, 4] (got ", p.fp8_gemm_speedup, ")"));
  }
  if (j.contains("attention_shapes")) {
    const json& as = j["attention_shapes"];
    if (!as.is_array()) bad(what, "attention_shapes", "must be an array");
    for (size_t k = 0; k < as.size(); ++k) {
      const std::string path = str("attention_shapes[", k, "].");
      const json& a = as[k];
      if (!a.is_object()) bad(what, str("attention_shapes[", k, "]"), "must be an object");
      only_keys(a, {"backward", "B", "T", "Tk", "Hq", "Hkv", "D", "causal", "bias", "dbias", "seconds"}, what, path);
      AttentionShapeTime t;
      TraceEvent::AttentionKey& key = t.key;
      for (auto [name, dst] : {std::pair<const char*, int64_t*>{"B", &key.B}, {"T", &key.T}, {"Tk", &key.Tk},
                               {"Hq", &key.Hq}, {"Hkv", &key.Hkv}, {"D", &key.D}}) {
        const json& v = need(a, name, what, path);
        if (!v.is_number_integer() || v.get<int64_t>() < 1) bad(what, path + name, "must be a positive integer");
        *dst = v.get<int64_t>();
      }
      for (auto [name, dst] : {std::pair<const char*, bool*>{"backward", &t.backward}, {"causal", &key.causal},
                               {"bias", &key.bias}, {"dbias", &key.dbias}}) {
        const json& v = need(a, name, what, path);
        if (!v.is_boolean()) bad(what, path + name, "must be true or false");
        *dst = v.get<bool>();
      }
      t.seconds = need_number(a, "seconds", what, path, true);
      p.attention_shapes.push_back(t);
    }
  }
  if (j.contains("gemm_shapes")) {
    const json& gs = j["gemm_shapes"];
    if (!gs.is_array()) bad(what, "gemm_shapes", "must be an array");
    for (size_t k = 0; k < gs.size(); ++k) {
      const std::string path = str("gemm_shapes[", k, "].");
      const json& g = gs[k];
      if (!g.is_object()) bad(what, str("gemm_shapes[", k, "]"), "must be an object");
      only_keys(g, {"m", "n", "k", "dtype_bytes", "trans_a", "trans_b", "seconds"}, what, path);
      GemmShapeTime s;
      for (auto [key, dst] : {std::pair<const char*, int64_t*>{"m", &s.m}, {"n", &s.n}, {"k", &s.k}}) {
        const json& v = need(g, key, what, path);
        if (!v.is_number_integer() || v.get<int64_t>() < 1) bad(what, path + key, "must be a positive integer");
        *dst = v.get<int64_t>();
      }
      const json& db = need(g, "dtype_bytes", what, path);
      if (!db.is_number_integer() || !(db.get<int>() == 1 || db.get<int>() == 2 || db.get<int>() == 4 || db.get<int>() == 8))
        bad(what, path + "dtype_bytes", "must be 1, 2, 4 or 8");
      s.dtype_bytes = db.get<int>();
      s.seconds = need_number(g, "seconds", what, path, true);
      s.trans_b = true;  // without the fields: the layout calibrate timed before it recorded one
      for (auto [key, dst] : {std::pair<const char*, bool*>{"trans_a", &s.trans_a}, {"trans_b", &s.trans_b}}) {
        if (!g.contains(key)) continue;
        if (!g[key].is_boolean()) bad(what, path + key, "must be true or false");
        *dst = g[key].get<bool>();
      }
      p.gemm_shapes.push_back(s);
    }
  }
  return p;
}

DeviceProfile read_device_profile(const std::string& path) {
  std::ifstream in(path);
  if (!in) ST_THROW_INPUT("device profile ", path, ": cannot be read");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_device_profile(ss.str(), "device profile " + path);
}

std::string device_profile_to_json(const DeviceProfile& p) {
  json j;
  j["format"] = "shardtune-device-profile";
  j["version"] = 1;
  j["device"] = p.device;
  j["source"] = p.source;
  j["gemm_peak_flops"] = p.gemm_peak_flops;
  j["memory_bytes_per_s"] = p.memory_bytes_per_s;
  json fams = json::object();
  for (int i = 0; i < kNumOpFamilies; ++i) {
    const OpFamily f = static_cast<OpFamily>(i);
    const FamilyProfile& fp = p.family(f);
    json pts = json::array();
    for (const auto& [w, t] : fp.points) pts.push_back({w, t});
    fams[op_family_name(f)] = {{"metric", op_family_by_flops(f) ? "flops" : "bytes"},
                               {"latency_s", fp.latency_s},
                               {"rate", fp.rate},
                               {"points", pts},
                               {"host_s", fp.host_s}};
  }
  j["families"] = fams;
  json gs = json::array();
  for (const GemmShapeTime& g : p.gemm_shapes)
    gs.push_back({{"m", g.m}, {"n", g.n}, {"k", g.k}, {"dtype_bytes", g.dtype_bytes}, {"trans_a", g.trans_a},
                  {"trans_b", g.trans_b}, {"seconds", g.seconds}});
  j["gemm_shapes"] = gs;
  json as = json::array();
  for (const AttentionShapeTime& a : p.attention_shapes)
    as.push_back({{"backward", a.backward}, {"B", a.key.B}, {"T", a.key.T}, {"Tk", a.key.Tk}, {"Hq", a.key.Hq},
                  {"Hkv", a.key.Hkv}, {"D", a.key.D}, {"causal", a.key.causal}, {"bias", a.key.bias},
                  {"dbias", a.key.dbias}, {"seconds", a.seconds}});
  j["attention_shapes"] = as;
  j["sustained_compute_factor"] = p.sustained_compute_factor;
  j["fp8_gemm_speedup"] = p.fp8_gemm_speedup;
  return j.dump(1) + "\n";
}

void write_device_profile(const std::string& path, const DeviceProfile& p) {
  atomic_write_file(path, device_profile_to_json(p));
}

}  // namespace st
