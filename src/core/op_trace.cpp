#include "core/op_trace.hpp"

#include <sstream>
#include <unordered_set>

#include "core/dryrun.hpp"
#include "core/error.hpp"

namespace st {

namespace {
OpTraceRecorder* g_recorder = nullptr;
int64_t g_next_request = 0;

constexpr std::array<const char*, kNumOpFamilies> kFamilyNames = {
    "gemm", "attention", "attention_backward", "norm", "activation", "rope", "embedding", "loss", "elementwise", "nf4_dequant", "fp8_quant",
    "optimizer", "copy"};
constexpr std::array<const char*, kNumCollectiveKinds> kCollectiveNames = {"all_reduce", "all_gather", "reduce_scatter",
                                                                           "broadcast"};
}  // namespace

const char* op_family_name(OpFamily f) { return kFamilyNames[static_cast<size_t>(f)]; }

OpFamily parse_op_family(const std::string& name, const std::string& what) {
  for (int i = 0; i < kNumOpFamilies; ++i)
    if (name == kFamilyNames[static_cast<size_t>(i)]) return static_cast<OpFamily>(i);
  std::string all;
  for (const char* n : kFamilyNames) all += std::string(all.empty() ? "" : ", ") + n;
  ST_THROW_INPUT(what, ": unknown op family '", name, "' (one of ", all, ")");
}

bool op_family_by_flops(OpFamily f) {
  return f == OpFamily::gemm || f == OpFamily::attention || f == OpFamily::attention_backward;
}

const char* collective_kind_name(CollectiveKind k) { return kCollectiveNames[static_cast<size_t>(k)]; }

std::string OpTraceCounts::str() const {
  std::ostringstream os;
  for (int i = 0; i < kNumOpFamilies; ++i)
    if (ops[static_cast<size_t>(i)]) os << kFamilyNames[static_cast<size_t>(i)] << "=" << ops[static_cast<size_t>(i)] << " ";
  for (int i = 0; i < kNumCollectiveKinds; ++i)
    if (collectives[static_cast<size_t>(i)])
      os << kCollectiveNames[static_cast<size_t>(i)] << "=" << collectives[static_cast<size_t>(i)] << " ";
  os << "async=" << async_collectives << " waits=" << waits;
  return os.str();
}

OpTraceRecorder::OpTraceRecorder() {
  if (g_recorder) ST_THROW("an op trace is already being recorded");
  g_recorder = this;
}

OpTraceRecorder::~OpTraceRecorder() { g_recorder = nullptr; }

OpTraceCounts OpTraceRecorder::counts() const {
  return count_events(events_);
}

OpTraceCounts count_events(const std::vector<TraceEvent>& events) {
  OpTraceCounts c;
  std::unordered_set<int64_t> alone;  // requests of collectives over one rank
  for (const TraceEvent& e : events) {
    if (e.kind == TraceEvent::Kind::op) {
      ++c.ops[static_cast<size_t>(e.family)];
    } else if (e.kind == TraceEvent::Kind::collective) {
      if (e.group_size <= 1) {
        alone.insert(e.request);
        continue;
      }
      ++c.collectives[static_cast<size_t>(e.collective)];
      if (e.async) ++c.async_collectives;
    } else if (!alone.count(e.request)) {
      ++c.waits;
    }
  }
  return c;
}

double tensor_bytes(std::initializer_list<const Tensor*> ts) {
  double b = 0;
  for (const Tensor* t : ts)
    if (t && t->defined()) b += static_cast<double>(t->nbytes());
  return b;
}

void TracedOp::record(const TraceEvent& e) {
  if (!g_recorder) return;
  if (g_recorder->depth_++ == 0) {
    index_ = static_cast<int64_t>(g_recorder->events_.size());
    g_recorder->events_.push_back(e);
  }
  recorded_ = true;
}

void TracedOp::host_waits() {
  if (g_recorder && index_ >= 0 && index_ < static_cast<int64_t>(g_recorder->events_.size()))
    g_recorder->events_[static_cast<size_t>(index_)].host_waits = true;
}

TracedOp::TracedOp(OpFamily f, std::initializer_list<const Tensor*> tensors, double flops)
    : TracedOp(f, tensor_bytes(tensors), flops) {}

TracedOp::TracedOp(OpFamily f, double bytes, double flops) {
  if (!g_recorder) return;
  TraceEvent e;
  e.family = f;
  e.bytes = bytes;
  e.flops = flops;
  record(e);
}

TracedOp TracedOp::gemm(int64_t m, int64_t n, int64_t k, bool trans_a, bool trans_b, const Tensor& A, const Tensor& B,
                        const Tensor& C) {
  TracedOp op;
  if (!g_recorder) return op;
  TraceEvent e;
  e.family = OpFamily::gemm;
  e.m = m;
  e.n = n;
  e.k = k;
  e.trans_a = trans_a;
  e.trans_b = trans_b;
  e.dtype_bytes = static_cast<int>(dtype_size(A.dtype()));
  e.flops = 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
  e.bytes = tensor_bytes({&A, &B, &C});
  op.record(e);
  return op;
}

TracedOp TracedOp::attention(OpFamily f, std::initializer_list<const Tensor*> tensors, double flops,
                             const TraceEvent::AttentionKey& key) {
  TracedOp op;
  if (!g_recorder) return op;
  TraceEvent e;
  e.family = f;
  e.bytes = tensor_bytes(tensors);
  e.flops = flops;
  e.attention = key;
  op.record(e);
  return op;
}

TracedOp::~TracedOp() {
  if (recorded_ && g_recorder) --g_recorder->depth_;
}

bool TracedOp::dry() const { return dry_run_active(); }

int64_t op_trace_next_request() { return g_next_request++; }

void op_trace_collective(CollectiveKind kind, double bytes, const std::string& group, int group_size, bool async,
                         bool scalar, int64_t request) {
  if (!g_recorder) return;
  TraceEvent e;
  e.kind = TraceEvent::Kind::collective;
  e.collective = kind;
  e.bytes = bytes;
  e.group = group;
  e.group_size = group_size;
  e.async = async;
  e.scalar = scalar;
  e.request = request;
  g_recorder->events_.push_back(e);
}

void op_trace_wait(int64_t request) {
  if (!g_recorder || request < 0) return;
  TraceEvent e;
  e.kind = TraceEvent::Kind::wait;
  e.request = request;
  g_recorder->events_.push_back(e);
}

}  // namespace st
