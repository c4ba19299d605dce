#include "train/step_time.hpp"

#include <algorithm>
#include <map>
#include <unordered_map>

namespace st {

int group_nodes(const ParallelLayout& P, const std::string& group, int group_size, int gpus_per_node) {
  const int G = std::max(1, gpus_per_node);
  if (group == "tp") return (group_size + G - 1) / G;
  if (group == "dp") {
    const int per_node = std::max(1, G / std::max(1, P.tp));  // dp ranks that share a node
    return (group_size + per_node - 1) / per_node;
  }
  return (group_size + G - 1) / G;  // world, or a group of consecutive ranks
}

StepTime schedule_step(const std::vector<TraceEvent>& events, const DeviceProfile& device, const CommModel& comm,
                       const ParallelLayout& layout) {
  StepTime st;
  double compute_t = 0;                      // where the compute stream is
  double host_t = 0;                         // where the host is (it issues ops and collectives)
  std::map<std::string, double> comm_free;   // when each communicator's last operation ends
  std::unordered_map<int64_t, double> ends;  // async request -> its completion
  auto collective_seconds = [&](const TraceEvent& e) {
    // A group of one: NCCL copies the input to the output of an out-of-place collective (the
    // gathers and scatters) and has nothing to do in place; a kernel's latency either way.
    if (e.group_size <= 1) {
      const bool copies = e.collective == CollectiveKind::all_gather || e.collective == CollectiveKind::reduce_scatter;
      return device.family(OpFamily::copy).seconds(copies ? 2 * e.bytes : 0);
    }
    return comm.collective_seconds(e.collective, e.bytes, e.group_size,
                                   group_nodes(layout, e.group, e.group_size, comm.gpus_per_node));
  };
  for (const TraceEvent& e : events) {
    switch (e.kind) {
      case TraceEvent::Kind::op: {
        const double d = device.op_seconds(e);
        host_t += device.op_host_seconds(e);
        if (host_t > compute_t) {
          st.host_idle += host_t - compute_t;
          compute_t = host_t;
        }
        compute_t += d;
        if (e.host_waits) host_t = compute_t;
        st.compute += d;
        st.by_family[static_cast<size_t>(e.family)] += d;
        ++st.ops;
        break;
      }
      case TraceEvent::Kind::collective: {
        const double d = collective_seconds(e);
        st.comm += d;
        ++st.collectives;
        double& free_at = comm_free[e.group];
        const double start = std::max({compute_t, free_at, host_t});
        free_at = start + d;
        if (e.async) ends[e.request] = free_at;
        else compute_t = free_at;
        if (e.scalar) host_t = std::max(host_t, free_at);
        break;
      }
      case TraceEvent::Kind::wait: {
        auto it = ends.find(e.request);
        if (it != ends.end()) compute_t = std::max(compute_t, it->second);
        break;
      }
    }
  }
  st.total = compute_t;
  for (const auto& [g, t] : comm_free) st.total = std::max(st.total, t);
  st.exposed_comm = std::max(0.0, st.total - st.compute - st.host_idle);
  return st;
}

}  // namespace st
