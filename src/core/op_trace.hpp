// The op trace: every op, copy and collective of a stretch of the program, in issue order, for
// the planner's step-time model (train/step_time.hpp) and for tests that compare a dry run's
// schedule with a real run's.
//
// Recording is on while an OpTraceRecorder is alive (one at a time, one thread). The op layer
// calls TracedOp at the point where it decides between the dry run (core/dryrun.hpp) and the
// kernel, so a dry run and a real run record the same ops; an op that another traced op calls
// (the CPU matmul's residual copy, say) is not recorded again. The communicator records each
// collective at its public entry (comm.cpp) and each wait of an asynchronous one.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "core/tensor.hpp"

namespace st {

// Op families: the units of a device profile (train/device_profile.hpp). GEMM and attention
// (forward, backward) are timed by their FLOPs, the rest by the bytes they read and write.
enum class OpFamily : int {
  gemm, attention, attention_backward, norm, activation, rope, embedding, loss, elementwise, nf4_dequant, fp8_quant,
  optimizer, copy,
};
constexpr int kNumOpFamilies = 13;
const char* op_family_name(OpFamily f);
// InputError naming `what` when `name` is none of them.
OpFamily parse_op_family(const std::string& name, const std::string& what);
// Timed by FLOPs (gemm, attention) rather than bytes.
bool op_family_by_flops(OpFamily f);

enum class CollectiveKind : int { all_reduce, all_gather, reduce_scatter, broadcast };
constexpr int kNumCollectiveKinds = 4;
const char* collective_kind_name(CollectiveKind k);

struct TraceEvent {
  enum class Kind { op, collective, wait } kind = Kind::op;
  // op
  OpFamily family = OpFamily::elementwise;
  double flops = 0, bytes = 0;          // bytes: read + written (ops); the buffer's size (collectives)
  int64_t m = 0, n = 0, k = 0;          // GEMM: op(A) [m, k] x op(B) [k, n]
  bool trans_a = false, trans_b = false;  // GEMM: op(A) = A^T (A stored [k, m]), op(B) = B^T ([n, k])
  int dtype_bytes = 0;                  // GEMM: element size of A and B
  // Batched attention (forward or backward; not the varlen kind): its shape, so that a device
  // profile can hold the time of the exact shapes a deck runs (T5's bias and cross-attention
  // kernels included). B == 0: not an attention op, or a varlen one.
  struct AttentionKey {
    int64_t B = 0, T = 0, Tk = 0, Hq = 0, Hkv = 0, D = 0;
    bool causal = false, bias = false, dbias = false;  // dbias: the backward also sums the bias gradient
    bool operator==(const AttentionKey& o) const {
      return B == o.B && T == o.T && Tk == o.Tk && Hq == o.Hq && Hkv == o.Hkv && D == o.D && causal == o.causal &&
             bias == o.bias && dbias == o.dbias;
    }
  } attention;
  // collective (bytes: all-reduce and broadcast the tensor, all-gather the output, reduce-scatter
  // the input: nccl-tests' "size"), and the request a wait completes
  CollectiveKind collective = CollectiveKind::all_reduce;
  std::string group;                    // the communicator's name: "tp", "dp", "world"
  int group_size = 1;                   // 1: a group of one (NCCL: a local copy, or nothing)
  bool async = false;                   // on the communication stream (completed by a wait)
  bool scalar = false;                  // a host scalar all-reduce (the host waits for the result)
  // op: the host waits for it to finish (a copy between host and device, a reduction read back
  // to the host): the host cannot run ahead of the GPU past it (train/step_time.cpp).
  bool host_waits = false;
  int64_t request = -1;                 // async collectives and waits: the request's id
};

struct OpTraceCounts {
  std::array<int64_t, kNumOpFamilies> ops{};
  std::array<int64_t, kNumCollectiveKinds> collectives{};
  int64_t async_collectives = 0, waits = 0;
  bool operator==(const OpTraceCounts& o) const {
    return ops == o.ops && collectives == o.collectives && async_collectives == o.async_collectives && waits == o.waits;
  }
  std::string str() const;
};

class OpTraceRecorder {
 public:
  OpTraceRecorder();   // throws if another is active
  ~OpTraceRecorder();
  OpTraceRecorder(const OpTraceRecorder&) = delete;
  OpTraceRecorder& operator=(const OpTraceRecorder&) = delete;
  const std::vector<TraceEvent>& events() const { return events_; }
  void clear() { events_.clear(); }
  // Collectives over groups of one rank (and their waits) are recorded but not counted.
  OpTraceCounts counts() const;

 private:
  friend class TracedOp;
  friend void op_trace_collective(CollectiveKind, double, const std::string&, int, bool, bool, int64_t);
  friend void op_trace_wait(int64_t);
  std::vector<TraceEvent> events_;
  int depth_ = 0;
};

OpTraceCounts count_events(const std::vector<TraceEvent>& events);

// One op: recorded when a recorder is active and no enclosing TracedOp is alive. dry(): a dry
// run is active (the op must skip its compute).
class TracedOp {
 public:
  TracedOp(OpFamily f, std::initializer_list<const Tensor*> tensors, double flops = 0);
  TracedOp(OpFamily f, double bytes, double flops);
  // A GEMM op(A) [m, k] x op(B) [k, n] -> C.
  static TracedOp gemm(int64_t m, int64_t n, int64_t k, bool trans_a, bool trans_b, const Tensor& A, const Tensor& B,
                       const Tensor& C);
  // A batched attention op (forward or backward) of the given shape.
  static TracedOp attention(OpFamily f, std::initializer_list<const Tensor*> tensors, double flops,
                            const TraceEvent::AttentionKey& key);
  ~TracedOp();
  TracedOp(TracedOp&& o) noexcept : recorded_(o.recorded_), index_(o.index_) { o.recorded_ = false; o.index_ = -1; }
  TracedOp(const TracedOp&) = delete;
  TracedOp& operator=(const TracedOp&) = delete;
  bool dry() const;
  // The host waits for this op's result (marks the recorded event, if this op was recorded).
  void host_waits();

 private:
  TracedOp() = default;
  void record(const TraceEvent& e);
  bool recorded_ = false;
  int64_t index_ = -1;  // the recorded event's position in the trace
};

// Bytes of the defined tensors among `ts`.
double tensor_bytes(std::initializer_list<const Tensor*> ts);

// Communicator side (parallel/comm.cpp). A request id is unique within the process.
int64_t op_trace_next_request();
void op_trace_collective(CollectiveKind kind, double bytes, const std::string& group, int group_size, bool async,
                         bool scalar, int64_t request);
void op_trace_wait(int64_t request);

}  // namespace st
