// The planner's speed side: device profiles (built in, calibrated, JSON), the communication
// model's arithmetic, the step schedule's overlap rules and the epoch's shape.
#include <gtest/gtest.h>

#include <omp.h>

#include <cmath>
#include <string>

#include <nlohmann/json.hpp>

#include "ops/optim.hpp"
#include "tests/common/test_util.hpp"
#include "train/calibrate.hpp"
#include "train/comm_model.hpp"
#include "train/device_profile.hpp"
#include "train/plan.hpp"
#include "train/step_time.hpp"

namespace st {
namespace {

// Doubles through JSON text: nlohmann writes the shortest round-tripping form.
void expect_same_profile(const DeviceProfile& a, const DeviceProfile& b) {
  EXPECT_EQ(a.device, b.device);
  EXPECT_EQ(a.source, b.source);
  EXPECT_EQ(a.gemm_peak_flops, b.gemm_peak_flops);
  EXPECT_EQ(a.memory_bytes_per_s, b.memory_bytes_per_s);
  EXPECT_EQ(a.sustained_compute_factor, b.sustained_compute_factor);
  EXPECT_EQ(a.fp8_gemm_speedup, b.fp8_gemm_speedup);
  ASSERT_EQ(a.attention_shapes.size(), b.attention_shapes.size());
  for (size_t k = 0; k < a.attention_shapes.size(); ++k) {
    EXPECT_EQ(a.attention_shapes[k].backward, b.attention_shapes[k].backward);
    EXPECT_TRUE(a.attention_shapes[k].key == b.attention_shapes[k].key);
    EXPECT_EQ(a.attention_shapes[k].seconds, b.attention_shapes[k].seconds);
  }
  for (int i = 0; i < kNumOpFamilies; ++i) {
    const FamilyProfile &x = a.families[static_cast<size_t>(i)], &y = b.families[static_cast<size_t>(i)];
    EXPECT_EQ(x.points, y.points) << op_family_name(static_cast<OpFamily>(i));
    EXPECT_EQ(x.rate, y.rate);
    EXPECT_EQ(x.host_s, y.host_s);
    EXPECT_EQ(x.latency_s, y.latency_s);
  }
  ASSERT_EQ(a.gemm_shapes.size(), b.gemm_shapes.size());
  for (size_t k = 0; k < a.gemm_shapes.size(); ++k) {
    EXPECT_EQ(a.gemm_shapes[k].m, b.gemm_shapes[k].m);
    EXPECT_EQ(a.gemm_shapes[k].trans_a, b.gemm_shapes[k].trans_a);
    EXPECT_EQ(a.gemm_shapes[k].trans_b, b.gemm_shapes[k].trans_b);
    EXPECT_EQ(a.gemm_shapes[k].seconds, b.gemm_shapes[k].seconds);
  }
}

TEST(DeviceProfile, BuiltInProfilesFollowTheDatasheetsAndRoundTripThroughJson) {
  const DeviceProfile h100 = builtin_device_profile(GpuKind::h100);
  // 989.4 TFLOP/s dense bf16 x 0.77; 3.35 TB/s x 0.70.
  EXPECT_DOUBLE_EQ(h100.gemm_peak_flops, 989.4e12 * 0.77);
  EXPECT_DOUBLE_EQ(h100.memory_bytes_per_s, 3.35e12 * 0.70);
  EXPECT_DOUBLE_EQ(builtin_device_profile(GpuKind::a100_40gb).gemm_peak_flops, 312e12 * 0.77);
  EXPECT_EQ(gpu_kind_memory(GpuKind::a100_40gb), size_t{40} << 30);
  // A GEMM of 2 x 4096^3 FLOPs at the GEMM rate; a norm over 64 MiB at the memory rate; a tiny op
  // takes the launch latency.
  TraceEvent g;
  g.family = OpFamily::gemm;
  g.m = g.n = g.k = 4096;
  g.flops = 2.0 * 4096 * 4096 * 4096;
  g.bytes = 3.0 * 4096 * 4096 * 2;
  EXPECT_NEAR(h100.op_seconds(g), g.flops / (989.4e12 * 0.77), 1e-15);
  // The same GEMM with FP8 operands (base_precision = fp8): 1.9x the rate on Hopper, none on A100.
  TraceEvent g8 = g;
  g8.dtype_bytes = 1;
  g8.bytes = 2.0 * 4096 * 4096 + 4096.0 * 4096 * 2;
  EXPECT_NEAR(h100.op_seconds(g8), g.flops / (989.4e12 * 0.77 * 1.9), 1e-15);
  EXPECT_EQ(builtin_device_profile(GpuKind::h200).fp8_gemm_speedup, 1.9);
  const DeviceProfile a100 = builtin_device_profile(GpuKind::a100_80gb);
  EXPECT_EQ(a100.fp8_gemm_speedup, 1.0);
  EXPECT_DOUBLE_EQ(a100.op_seconds(g8), a100.op_seconds(g));
  TraceEvent n;
  n.family = OpFamily::norm;
  n.bytes = 64.0 * (1 << 20);
  EXPECT_NEAR(h100.op_seconds(n), n.bytes / (3.35e12 * 0.70), 1e-15);
  n.bytes = 16;
  EXPECT_DOUBLE_EQ(h100.op_seconds(n), 5e-6);
  for (GpuKind k : all_gpu_kinds()) {
    const DeviceProfile p = builtin_device_profile(k);
    expect_same_profile(p, parse_device_profile(device_profile_to_json(p), "test"));
  }
  test::expect_input_error([] { parse_gpu_kind("v100", "command line: --gpu"); }, {"--gpu", "v100", "h100"});
}

TEST(DeviceProfile, MeasuredPointsInterpolateTheRateInLogWork) {
  FamilyProfile f;
  f.points = {{1e3, 1e-3}, {1e6, 1e-3}};  // rates 1e6 and 1e9 per second
  f.latency_s = 1e-5;
  EXPECT_DOUBLE_EQ(f.seconds(1e6), 1e-3);
  EXPECT_DOUBLE_EQ(f.seconds(1e9), 1.0);  // beyond: the last rate
  // Halfway in log(work): the mean rate (1e6 + 1e9) / 2.
  const double mid = std::sqrt(1e3 * 1e6);
  EXPECT_NEAR(f.seconds(mid), mid / ((1e6 + 1e9) / 2), 1e-15);
  EXPECT_DOUBLE_EQ(f.seconds(1), 1e-5);  // below: never under the latency
  // Exact GEMM shapes are looked up first.
  DeviceProfile p = builtin_device_profile(GpuKind::h100);
  p.gemm_shapes.push_back(GemmShapeTime{8, 16, 32, 2, 0.25});
  TraceEvent e;
  e.family = OpFamily::gemm;
  e.m = 8;
  e.n = 16;
  e.k = 32;
  e.dtype_bytes = 2;
  e.flops = 2.0 * 8 * 16 * 32;
  EXPECT_EQ(p.op_seconds(e), 0.25);
  e.trans_a = true;  // the same shape in another layout: not that measurement
  EXPECT_LT(p.op_seconds(e), 1e-4);
  e.trans_a = false;
  e.dtype_bytes = 4;
  EXPECT_LT(p.op_seconds(e), 1e-4);
  // The sustained-load factor scales the FLOP-bound ops (exact shapes included), not the
  // memory-bound ones.
  e.dtype_bytes = 2;
  TraceEvent n;
  n.family = OpFamily::norm;
  n.bytes = 1e8;
  const double norm_before = p.op_seconds(n);
  p.sustained_compute_factor = 1.25;
  EXPECT_DOUBLE_EQ(p.op_seconds(e), 0.3125);
  EXPECT_EQ(p.op_seconds(n), norm_before);
}

TEST(DeviceProfile, CalibratedOnTheCpuAndRefusedWhenMalformed) {
  // One thread: tiny ops under OpenMP on a loaded machine time mostly the threads' wake-ups.
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  CalibrateOptions o;
  o.device = Device::cpu;
  o.seconds = 0.3;
  o.small = true;
  TraceEvent g;  // one "deck" GEMM shape, and the same shape in another layout (A^T B^T)
  g.family = OpFamily::gemm;
  g.m = 24;
  g.n = 40;
  g.k = 8;
  g.dtype_bytes = 4;
  TraceEvent gt = g;
  gt.trans_a = gt.trans_b = true;
  o.gemm_shapes = {g, g, gt};
  // Two "deck" attention ops: T5-like cross-attention with a bias, forward and backward (dbias).
  TraceEvent af;
  af.family = OpFamily::attention;
  af.attention.B = 2;
  af.attention.T = 8;
  af.attention.Tk = 12;
  af.attention.Hq = 2;
  af.attention.Hkv = 2;
  af.attention.D = 8;
  af.attention.bias = true;
  TraceEvent ab = af;
  ab.family = OpFamily::attention_backward;
  ab.attention.dbias = true;
  o.attention_shapes = {af, ab, af};
  o.sustain_seconds = 0.2;  // the sustained phase runs on the CPU too (its factor is whatever it measures)
  DeviceProfile p = calibrate_device(o);
  omp_set_num_threads(threads);
  EXPECT_GT(p.gemm_peak_flops, 0);
  EXPECT_GT(p.memory_bytes_per_s, 0);
  ASSERT_EQ(p.gemm_shapes.size(), 2u);  // the repeated one is timed once
  EXPECT_EQ(p.gemm_shapes[0].m, 24);
  EXPECT_FALSE(p.gemm_shapes[0].trans_a || p.gemm_shapes[0].trans_b);
  EXPECT_TRUE(p.gemm_shapes[1].trans_a && p.gemm_shapes[1].trans_b);
  EXPECT_DOUBLE_EQ(p.op_seconds(gt), p.sustained_compute_factor * p.gemm_shapes[1].seconds);
  ASSERT_EQ(p.attention_shapes.size(), 2u);  // the repeated forward is timed once
  EXPECT_FALSE(p.attention_shapes[0].backward);
  EXPECT_TRUE(p.attention_shapes[1].backward);
  EXPECT_TRUE(p.attention_shapes[1].key == ab.attention);
  EXPECT_GT(p.attention_shapes[1].seconds, 0);
  // The planner looks the exact shape up (times the sustained factor); another shape takes the curve.
  EXPECT_DOUBLE_EQ(p.op_seconds(ab), p.sustained_compute_factor * p.attention_shapes[1].seconds);
  TraceEvent other = af;
  other.attention.T = 16;
  other.flops = 1e3;
  EXPECT_EQ(p.op_seconds(other), p.sustained_compute_factor * p.family(OpFamily::attention).seconds(1e3));
  for (int i = 0; i < kNumOpFamilies; ++i) {
    const FamilyProfile& f = p.families[static_cast<size_t>(i)];
    EXPECT_FALSE(f.points.empty()) << op_family_name(static_cast<OpFamily>(i));
    for (size_t k = 1; k < f.points.size(); ++k) EXPECT_GT(f.points[k].first, f.points[k - 1].first);
  }
  const std::string text = device_profile_to_json(p);
  expect_same_profile(p, parse_device_profile(text, "test"));

  // Refusals name the field.
  auto broken = [&](const std::function<void(nlohmann::json&)>& edit) {
    nlohmann::json j = nlohmann::json::parse(text);
    edit(j);
    return j.dump();
  };
  auto refused = [&](const std::function<void(nlohmann::json&)>& edit, std::vector<std::string> parts) {
    const std::string t = broken(edit);
    parts.insert(parts.begin(), "profile.json");
    test::expect_input_error([&] { parse_device_profile(t, "device profile profile.json"); }, parts);
  };
  refused([](nlohmann::json& j) { j["families"]["norm"].erase("rate"); }, {"families.norm.rate", "missing"});
  refused([](nlohmann::json& j) { j["families"]["gemm"]["metric"] = "bytes"; }, {"families.gemm.metric", "flops"});
  refused([](nlohmann::json& j) { j["families"]["copy"]["latency_s"] = -1; }, {"families.copy.latency_s", "non-negative"});
  refused([](nlohmann::json& j) { j["families"]["rope"]["points"] = {{2.0, 1.0}, {1.0, 1.0}}; },
          {"families.rope.points[1]", "more work"});
  refused([](nlohmann::json& j) { j["families"].erase("optimizer"); }, {"families.optimizer", "missing"});
  refused([](nlohmann::json& j) { j["families"]["convolution"] = j["families"]["copy"]; }, {"families", "convolution"});
  refused([](nlohmann::json& j) { j["version"] = 2; }, {"version", "1"});
  refused([](nlohmann::json& j) { j["gemm_peak"] = 1; }, {"gemm_peak", "not a field"});
  refused([](nlohmann::json& j) { j["gemm_shapes"][0]["k"] = 0; }, {"gemm_shapes[0].k", "positive integer"});
  refused([](nlohmann::json& j) { j["gemm_shapes"][0]["trans_a"] = 1; }, {"gemm_shapes[0].trans_a", "true or false"});
  {  // a profile written before the layout was recorded: its shapes were timed as A B^T
    const DeviceProfile old = parse_device_profile(broken([](nlohmann::json& j) {
      for (auto& g : j["gemm_shapes"]) {
        g.erase("trans_a");
        g.erase("trans_b");
      }
    }), "test");
    EXPECT_FALSE(old.gemm_shapes[0].trans_a);
    EXPECT_TRUE(old.gemm_shapes[0].trans_b);
  }
  refused([](nlohmann::json& j) { j["sustained_compute_factor"] = 3.0; }, {"sustained_compute_factor", "[0.5, 2]"});
  refused([](nlohmann::json& j) { j["fp8_gemm_speedup"] = 0.5; }, {"fp8_gemm_speedup", "[1, 4]"});
  refused([](nlohmann::json& j) { j["attention_shapes"][0]["Tk"] = 0; }, {"attention_shapes[0].Tk", "positive integer"});
  refused([](nlohmann::json& j) { j["attention_shapes"][1]["bias"] = 1; }, {"attention_shapes[1].bias", "true or false"});
  refused([](nlohmann::json& j) { j["attention_shapes"][0].erase("seconds"); }, {"attention_shapes[0].seconds", "missing"});
  EXPECT_EQ(parse_device_profile(broken([](nlohmann::json& j) { j.erase("sustained_compute_factor"); }), "test")
                .sustained_compute_factor,
            1.0);
  // The host's launch time per family: optional (a profile of an earlier version has none), never negative.
  for (const FamilyProfile& f : p.families) EXPECT_EQ(f.host_s, 0.0);  // the CPU: ops are the host's own work
  refused([](nlohmann::json& j) { j["families"]["gemm"]["host_s"] = -1e-6; }, {"families.gemm.host_s", "non-negative"});
  EXPECT_EQ(parse_device_profile(broken([](nlohmann::json& j) { j["families"]["gemm"]["host_s"] = 5e-6; }), "test")
                .family(OpFamily::gemm)
                .host_s,
            5e-6);
  EXPECT_EQ(parse_device_profile(broken([](nlohmann::json& j) { j["families"]["gemm"].erase("host_s"); }), "test")
                .family(OpFamily::gemm)
                .host_s,
            0.0);
  test::expect_input_error([] { parse_device_profile("{", "device profile x.json"); }, {"x.json", "not JSON"});
  test::expect_input_error([] { read_device_profile("/nonexistent/p.json"); }, {"/nonexistent/p.json"});
}

TEST(CommModel, RingCollectivesFollowNcclTestsBusBandwidthAndNcclLatency) {
  EXPECT_DOUBLE_EQ(bus_factor(CollectiveKind::all_reduce, 8), 2.0 * 7 / 8);
  EXPECT_DOUBLE_EQ(bus_factor(CollectiveKind::all_gather, 4), 3.0 / 4);
  EXPECT_DOUBLE_EQ(bus_factor(CollectiveKind::reduce_scatter, 2), 0.5);
  EXPECT_DOUBLE_EQ(bus_factor(CollectiveKind::broadcast, 8), 1.0);
  CommModel m;
  m.link = LinkKind::nvlink3;
  m.gpus_per_node = 8;
  const double S = 256.0 * (1 << 20);
  // 8 A100s on NVLink3: 235 GB/s bus bandwidth; latency 8.4 us + 2 x 7 steps x 3.4 us.
  EXPECT_NEAR(m.collective_seconds(CollectiveKind::all_reduce, S, 8, 1), 8.4e-6 + 14 * 3.4e-6 + S * 1.75 / 235e9, 1e-12);
  EXPECT_NEAR(m.collective_seconds(CollectiveKind::all_gather, S, 4, 1), 8.4e-6 + 3 * 3.4e-6 + S * 0.75 / 235e9, 1e-12);
  EXPECT_EQ(m.collective_seconds(CollectiveKind::all_reduce, S, 1, 1), 0.0);
  // 16 ranks over 2 nodes on HDR: the NICs (8 x 25 GB/s x 235/300) are slower than NVLink3;
  // 2 of the 30 steps cross the network (9.6 us each).
  m.net = NetKind::ib_hdr;
  const double bus = 8 * 25e9 * 235.0 / 300.0;
  EXPECT_NEAR(m.collective_seconds(CollectiveKind::all_reduce, S, 16, 2),
              8.4e-6 + 28 * 3.4e-6 + 2 * 9.6e-6 + S * 2.0 * 15 / 16 / bus, 1e-12);
  // One GPU of each node in the group (a dp group across tp-8 nodes): one NIC.
  EXPECT_NEAR(m.collective_seconds(CollectiveKind::reduce_scatter, S, 2, 2),
              8.4e-6 + 9.6e-6 + S * 0.5 / (25e9 * 235.0 / 300.0), 1e-12);
  // Measured entries win where they match.
  m.measured.push_back(MeasuredCollective{CollectiveKind::all_reduce, 8, 1, 2e-5, 1e11});
  EXPECT_NEAR(m.collective_seconds(CollectiveKind::all_reduce, S, 8, 1), 2e-5 + S * 1.75 / 1e11, 1e-12);
  // The fit recovers latency and bus bandwidth from exact samples.
  std::vector<std::pair<double, double>> samples;
  for (double s : {1e6, 4e6, 16e6, 64e6}) samples.emplace_back(s, 3e-5 + s * 0.75 / 2e11);
  const MeasuredCollective f = fit_collective(CollectiveKind::all_gather, 4, 1, samples);
  EXPECT_NEAR(f.latency_s, 3e-5, 1e-12);
  EXPECT_NEAR(f.bus_bytes_per_s / 2e11, 1.0, 1e-9);
  std::string source;
  const std::vector<MeasuredCollective> back = parse_comm_profile(comm_profile_to_json({f}, "test"), "c.json", &source);
  ASSERT_EQ(back.size(), 1u);
  EXPECT_EQ(source, "test");
  EXPECT_EQ(back[0].bus_bytes_per_s, f.bus_bytes_per_s);
  test::expect_input_error(
      [] { parse_comm_profile(R"({"format":"shardtune-comm-profile","version":1,"source":"x","collectives":[{"collective":"all_to_all","ranks":2,"nodes":1,"latency_s":0,"bus_bytes_per_s":1}]})", "comm c.json", nullptr); },
      {"c.json", "collectives[0].collective", "all_to_all"});
  test::expect_input_error(
      [] { parse_comm_profile(R"({"format":"shardtune-comm-profile","version":1,"source":"x","collectives":[{"collective":"all_reduce","ranks":2,"nodes":1,"latency_s":0,"bus_bytes_per_s":0}]})", "comm c.json", nullptr); },
      {"c.json", "collectives[0].bus_bytes_per_s", "positive"});
  test::expect_input_error([] { parse_link_kind("nvlink5", "command line: --link"); }, {"--link", "nvlink5"});
}

TraceEvent op(double bytes) {
  TraceEvent e;
  e.family = OpFamily::copy;
  e.bytes = bytes;
  return e;
}
TraceEvent collective(double bytes, bool async, int64_t request, const std::string& group = "dp") {
  TraceEvent e;
  e.kind = TraceEvent::Kind::collective;
  e.collective = CollectiveKind::all_gather;
  e.bytes = bytes;
  e.group = group;
  e.group_size = 2;
  e.async = async;
  e.request = request;
  return e;
}
TraceEvent wait(int64_t request) {
  TraceEvent e;
  e.kind = TraceEvent::Kind::wait;
  e.request = request;
  return e;
}

TEST(StepSchedule, AsyncCollectivesOverlapComputeAndSerialisePerCommunicator) {
  // Ops of 1 ms (1 GB at 1 TB/s, no latency); all-gathers of 2 ranks of 1 ms (size x 1/2 / bus
  // bandwidth, measured: no latency).
  DeviceProfile d = builtin_device_profile(GpuKind::h100);
  for (FamilyProfile& f : d.families) {
    f.rate = 1e12;
    f.latency_s = 0;
  }
  CommModel cm;
  cm.measured.push_back(MeasuredCollective{CollectiveKind::all_gather, 2, 1, 0.0, 1e12});
  const ParallelLayout P = ParallelLayout::make(Strategy::zero3, 1, 2, "test");
  const double ms = 1e-3, one = 1e9, gather = 2e9;  // bytes for 1 ms each
  // Hidden: the gather runs under an op of the same length.
  StepTime t = schedule_step({collective(gather, true, 1), op(one), wait(1), op(one)}, d, cm, P);
  EXPECT_NEAR(t.total, 2 * ms, 1e-12);
  EXPECT_NEAR(t.compute, 2 * ms, 1e-12);
  EXPECT_NEAR(t.exposed_comm, 0, 1e-12);
  EXPECT_NEAR(t.comm, ms, 1e-12);
  // Synchronous: on the compute stream, fully exposed.
  t = schedule_step({op(one), collective(gather, false, -1), op(one)}, d, cm, P);
  EXPECT_NEAR(t.total, 3 * ms, 1e-12);
  EXPECT_NEAR(t.exposed_comm, ms, 1e-12);
  // Two gathers on one communicator run one after the other: the second ends at 2 ms, so the
  // wait after a 1 ms op exposes 1 ms.
  t = schedule_step({collective(gather, true, 1), collective(gather, true, 2), op(one), wait(1), wait(2), op(one)}, d, cm, P);
  EXPECT_NEAR(t.total, 3 * ms, 1e-12);
  // On two communicators they run side by side.
  t = schedule_step({collective(gather, true, 1), collective(gather, true, 2, "tp"), op(one), wait(1), wait(2), op(one)}, d,
                    cm, P);
  EXPECT_NEAR(t.total, 2 * ms, 1e-12);
  // A synchronous collective waits for the communicator's queued asynchronous one.
  t = schedule_step({collective(gather, true, 1), collective(gather, false, -1), op(one), wait(1)}, d, cm, P);
  EXPECT_NEAR(t.total, 3 * ms, 1e-12);
  // Never waited for: the step still ends when it does.
  t = schedule_step({op(one), collective(2 * gather, true, 1)}, d, cm, P);
  EXPECT_NEAR(t.total, 3 * ms, 1e-12);
}

TEST(StepSchedule, TheHostIssuesOpsAndWaitsWhereItReadsAResult) {
  // Ops of 1 us on the GPU; launches of 5 us on the host.
  DeviceProfile d = builtin_device_profile(GpuKind::h100);
  for (FamilyProfile& f : d.families) {
    f.points.clear();
    f.rate = 1e12;
    f.latency_s = 0;
    f.host_s = 5e-6;
  }
  const CommModel cm;
  const ParallelLayout P = ParallelLayout::make(Strategy::none, 1, 1, "test");
  const double us = 1e-6, small = 1e6, big = 1e8;  // bytes for 1 us and 100 us
  // Host-bound: ten tiny ops take ten launches, each op running right after its launch.
  std::vector<TraceEvent> tiny(10, op(small));
  StepTime t = schedule_step(tiny, d, cm, P);
  EXPECT_NEAR(t.total, 10 * 5 * us + us, 1e-12);
  EXPECT_NEAR(t.compute, 10 * us, 1e-12);
  EXPECT_NEAR(t.host_idle, 10 * 5 * us - 9 * us, 1e-12);
  EXPECT_NEAR(t.exposed_comm, 0, 1e-12);
  // GPU-bound: after a long op the host is ahead, and the tiny ops run back to back.
  std::vector<TraceEvent> ahead = {op(big)};
  ahead.insert(ahead.end(), tiny.begin(), tiny.end());
  t = schedule_step(ahead, d, cm, P);
  EXPECT_NEAR(t.total, 5 * us + 100 * us + 10 * us, 1e-12);
  // The host reads a result after the long op: it waits for the GPU, and the tiny ops after it
  // are host-bound again.
  std::vector<TraceEvent> synced = {op(big)};
  synced.back().host_waits = true;
  synced.insert(synced.end(), tiny.begin(), tiny.end());
  t = schedule_step(synced, d, cm, P);
  EXPECT_NEAR(t.total, 5 * us + 100 * us + 10 * 5 * us + us, 1e-12);
  // Without host times (built-in profiles, the CPU) the schedule is the ops' sum.
  for (FamilyProfile& f : d.families) f.host_s = 0;
  t = schedule_step(synced, d, cm, P);
  EXPECT_NEAR(t.total, 110 * us, 1e-12);
  EXPECT_EQ(t.host_idle, 0.0);
}

TEST(StepSchedule, OpsWhoseResultTheHostReadsAreMarkedInTheTrace) {
  Tensor a = Tensor::zeros({4, 3}, DType::f32, Device::cpu), b = Tensor::zeros({4, 3}, DType::f32, Device::cpu);
  OpTraceRecorder rec;
  b.copy_from(a);  // host to host: no wait
  (void)sum_squares_total({&a, &b});  // read on the host
  ASSERT_EQ(rec.events().size(), 2u);
  EXPECT_FALSE(rec.events()[0].host_waits);
  EXPECT_TRUE(rec.events()[1].host_waits);
  EXPECT_EQ(rec.events()[1].family, OpFamily::optimizer);
}

TEST(StepSchedule, GroupsSpanNodesAsTheRankGridPlacesThem) {
  const ParallelLayout tp8 = ParallelLayout::make(Strategy::tp, 8, 16, "test");
  EXPECT_EQ(group_nodes(tp8, "tp", 8, 8), 1);
  EXPECT_EQ(group_nodes(tp8, "dp", 2, 8), 2);
  const ParallelLayout tp2 = ParallelLayout::make(Strategy::tp_zero3, 2, 16, "test");
  EXPECT_EQ(group_nodes(tp2, "dp", 8, 8), 2);  // 4 dp ranks per node
  EXPECT_EQ(group_nodes(tp2, "world", 16, 8), 2);
  const ParallelLayout z = ParallelLayout::make(Strategy::zero3, 1, 8, "test");
  EXPECT_EQ(group_nodes(z, "dp", 8, 8), 1);
  EXPECT_EQ(group_nodes(z, "dp", 8, 4), 2);
}

TEST(StepSchedule, EpochShapeFollowsTheLoadersBatches) {
  RunConfig c;
  c.micro_batch_size = 2;
  c.grad_accum = 1;
  c.shuffle = false;
  PlanData d;
  d.shape.seq_len = 16;
  d.train_lengths = {3, 5, 7, 2, 16, 4, 9, 1, 8};
  // Unshuffled, one rank: micro-batches {3,5} {7,2} {16,4} {9,1} (the 9th row is dropped):
  // longest 5, 7, 16, 9 -> mean 9.25 -> 9.
  EpochShape e = epoch_shape(c, d, 1);
  EXPECT_EQ(e.steps, 4);
  EXPECT_EQ(e.typical_len, 9);
  // Two ranks: steps of 4 rows, the slowest rank's longest: 7, 16.
  e = epoch_shape(c, d, 2);
  EXPECT_EQ(e.steps, 2);
  EXPECT_EQ(e.typical_len, 12);  // (7 + 16) / 2 = 11.5 -> 12
  // Without lengths: the full length, steps unknown.
  d.train_lengths.clear();
  e = epoch_shape(c, d, 1);
  EXPECT_EQ(e.steps, 0);
  EXPECT_EQ(e.typical_len, 16);
}

}  // namespace
}  // namespace st
