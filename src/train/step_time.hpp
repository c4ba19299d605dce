// The step as a schedule: a training step's op trace (core/op_trace.hpp, recorded by the
// planner's dry run) replayed on two kinds of stream, as the CUDA backend runs it:
//  - the compute stream runs every op in issue order, each for its device-profile time; the
//    synchronous collectives (TP all-reduces, ZeRO-3 reduce-scatters, scalar all-reduces) are
//    enqueued on it too (cuda/comm_nccl.cu), so compute waits for them;
//  - each communicator has one communication stream for its asynchronous collectives (ZeRO-3's
//    prefetched all-gathers, DDP's bucket all-reduces): one starts when the compute stream has
//    reached its issue point and the communicator's previous operation has finished (NCCL
//    serialises the operations of one communicator), and the compute stream waits for it at the
//    request's wait().
//  - the host issues every op and collective in order, each costing its family's host time (the
//    launch: a device profile's host_s); an op cannot start before the host has issued it, so a
//    stretch of ops shorter on the GPU than their launches is host-bound. The host waits for the
//    GPU where it reads a result (host_waits: host<->device copies, the gradient norm) and for a
//    scalar all-reduce, and runs ahead of the GPU everywhere else.
// Exposed communication is what the step takes beyond its ops' time and the GPU's waits for the
// host. A collective over a group of one rank (a strategy on one GPU) costs the copy NCCL makes,
// if any.
#pragma once

#include <array>
#include <vector>

#include "core/op_trace.hpp"
#include "parallel/layout.hpp"
#include "train/comm_model.hpp"
#include "train/device_profile.hpp"

namespace st {

struct StepTime {
  double total = 0;         // seconds from the first op to the last completion
  double compute = 0;       // sum of the ops' times
  double comm = 0;          // sum of the collectives' times (overlapped or not)
  double host_idle = 0;     // the compute stream idle, waiting for the host to issue its next op
  double exposed_comm = 0;  // total - compute - host_idle
  int64_t ops = 0, collectives = 0;
  std::array<double, kNumOpFamilies> by_family{};  // compute seconds per op family
};

// Nodes a group of the layout spans (TP innermost: tp ranks are consecutive; the dp group takes
// every tp-th rank), with gpus_per_node GPUs per node.
int group_nodes(const ParallelLayout& P, const std::string& group, int group_size, int gpus_per_node);

StepTime schedule_step(const std::vector<TraceEvent>& events, const DeviceProfile& device, const CommModel& comm,
                       const ParallelLayout& layout);

}  // namespace st
