// The backend-independent half of Comm: argument checks, watchdog labels, the synchronous
// fallback of the asynchronous collectives.
#include "parallel/comm.hpp"

#include <algorithm>
#include <cstdlib>

#include "core/dryrun.hpp"
#include "core/op_trace.hpp"
#include "parallel/watchdog.hpp"

namespace st {

namespace {

void check_tensor(const Tensor& t, const std::string& what) {
  if (!t.defined()) ST_THROW(what, ": undefined tensor");
}

void check_pair(const Tensor& in, const Tensor& out, const std::string& what) {
  check_tensor(in, what);
  check_tensor(out, what);
  if (in.dtype() != out.dtype()) ST_THROW(what, ": in ", in.str(), " and out ", out.str(), " differ in dtype");
  if (in.device() != out.device()) ST_THROW(what, ": in ", in.str(), " and out ", out.str(), " are on different devices");
}

void check_gather(const Tensor& in, const Tensor& out, int size, const std::string& what) {
  check_pair(in, out, what);
  if (out.numel() != in.numel() * size) ST_THROW(what, ": out ", out.str(), " must hold ", size, " x ", in.str());
}

void check_scatter(const Tensor& in, const Tensor& out, int size, const std::string& what) {
  check_pair(in, out, what);
  if (in.numel() != out.numel() * size) ST_THROW(what, ": in ", in.str(), " must hold ", size, " x ", out.str());
}

// A request that completed before it was returned (the synchronous fallback).
class CompletedRequest final : public CommRequest {
 public:
  explicit CompletedRequest(std::string label) : CommRequest(std::move(label)) {}

 protected:
  void wait_impl() override {}
};

}  // namespace

void CommRequest::wait() {
  if (done_) return;
  op_trace_wait(trace_id);
  WatchdogScope wd("wait for " + label_);
  wait_impl();
  done_ = true;
}

void CommRequest::finish_in_destructor() noexcept {
  if (done_) return;
  try {
    wait();
  } catch (const Error& e) {
    fatal(e);  // an unfinished collective cannot be abandoned: the peers would wait forever
  } catch (const std::exception& e) {
    fatal(__FILE__, __LINE__, e.what());
  }
}

std::string Comm::label(const char* op) const { return str(op, " on ", name(), " (", backend(), ")"); }

void Comm::all_reduce_sum(Tensor& t) {
  const std::string l = label("all_reduce_sum");
  check_tensor(t, l);
  WatchdogScope wd(l);
  op_trace_collective(CollectiveKind::all_reduce, static_cast<double>(t.nbytes()), name(), size(), false, false, -1);
  all_reduce_impl(t, ReduceOp::sum);
}

void Comm::all_reduce_max(Tensor& t) {
  const std::string l = label("all_reduce_max");
  check_tensor(t, l);
  WatchdogScope wd(l);
  op_trace_collective(CollectiveKind::all_reduce, static_cast<double>(t.nbytes()), name(), size(), false, false, -1);
  all_reduce_impl(t, ReduceOp::max);
}

double Comm::all_reduce_sum(double v) {
  WatchdogScope wd(label("all_reduce_sum(scalar)"));
  op_trace_collective(CollectiveKind::all_reduce, 8.0, name(), size(), false, true, -1);
  return all_reduce_scalar_impl(v, ReduceOp::sum);
}

double Comm::all_reduce_max(double v) {
  WatchdogScope wd(label("all_reduce_max(scalar)"));
  op_trace_collective(CollectiveKind::all_reduce, 8.0, name(), size(), false, true, -1);
  return all_reduce_scalar_impl(v, ReduceOp::max);
}

void Comm::broadcast(Tensor& t, int root) {
  const std::string l = label("broadcast");
  check_tensor(t, l);
  if (root < 0 || root >= size()) ST_THROW(l, ": root ", root, " is not a rank of a group of ", size());
  WatchdogScope wd(l);
  op_trace_collective(CollectiveKind::broadcast, static_cast<double>(t.nbytes()), name(), size(), false, false, -1);
  broadcast_impl(t, root);
}

void Comm::all_gather(const Tensor& in, Tensor& out) {
  const std::string l = label("all_gather");
  check_gather(in, out, size(), l);
  WatchdogScope wd(l);
  op_trace_collective(CollectiveKind::all_gather, static_cast<double>(out.nbytes()), name(), size(), false, false, -1);
  all_gather_impl(in, out);
}

void Comm::reduce_scatter_sum(const Tensor& in, Tensor& out) {
  const std::string l = label("reduce_scatter_sum");
  check_scatter(in, out, size(), l);
  WatchdogScope wd(l);
  op_trace_collective(CollectiveKind::reduce_scatter, static_cast<double>(in.nbytes()), name(), size(), false, false, -1);
  reduce_scatter_sum_impl(in, out);
}

std::unique_ptr<CommRequest> Comm::all_gather_async(const Tensor& in, Tensor& out) {
  const std::string l = label("all_gather_async");
  check_gather(in, out, size(), l);
  WatchdogScope wd(l);
  const int64_t id = op_trace_next_request();
  op_trace_collective(CollectiveKind::all_gather, static_cast<double>(out.nbytes()), name(), size(), true, false, id);
  std::unique_ptr<CommRequest> r = all_gather_async_impl(in, out, l);
  r->trace_id = id;
  return r;
}

std::unique_ptr<CommRequest> Comm::reduce_scatter_sum_async(const Tensor& in, Tensor& out) {
  const std::string l = label("reduce_scatter_sum_async");
  check_scatter(in, out, size(), l);
  WatchdogScope wd(l);
  const int64_t id = op_trace_next_request();
  op_trace_collective(CollectiveKind::reduce_scatter, static_cast<double>(in.nbytes()), name(), size(), true, false, id);
  std::unique_ptr<CommRequest> r = reduce_scatter_sum_async_impl(in, out, l);
  r->trace_id = id;
  return r;
}

std::unique_ptr<CommRequest> Comm::all_reduce_sum_async(Tensor& t) {
  const std::string l = label("all_reduce_sum_async");
  check_tensor(t, l);
  WatchdogScope wd(l);
  const int64_t id = op_trace_next_request();
  op_trace_collective(CollectiveKind::all_reduce, static_cast<double>(t.nbytes()), name(), size(), true, false, id);
  std::unique_ptr<CommRequest> r = all_reduce_sum_async_impl(t, l);
  r->trace_id = id;
  return r;
}

void Comm::barrier() {
  WatchdogScope wd(label("barrier"));
  barrier_impl();
}

std::unique_ptr<CommRequest> Comm::all_gather_async_impl(const Tensor& in, Tensor& out, const std::string& label) {
  all_gather_impl(in, out);
  return std::make_unique<CompletedRequest>(label);
}

std::unique_ptr<CommRequest> Comm::all_reduce_sum_async_impl(Tensor& t, const std::string& label) {
  all_reduce_impl(t, ReduceOp::sum);
  return std::make_unique<CompletedRequest>(label);
}

std::unique_ptr<CommRequest> Comm::reduce_scatter_sum_async_impl(const Tensor& in, Tensor& out,
                                                                 const std::string& label) {
  reduce_scatter_sum_impl(in, out);
  return std::make_unique<CompletedRequest>(label);
}

}  // namespace st

namespace st {

namespace {

// The planner's communicator: one rank's view of a group of `size`, whose collectives check
// their arguments and move no data (a dry run computes nothing).
class DryComm final : public Comm {
 public:
  DryComm(int size, int rank, Device native, std::string name)
      : size_(size), rank_(rank), native_(native), name_(std::move(name)) {}
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }
  const char* backend() const override { return "dry"; }
  Device native_device() const override { return native_; }
  [[noreturn]] void abort(int exit_status) override { std::exit(exit_status); }

 protected:
  // Bus bytes per rank of ring algorithms (as nccl-tests reports them).
  void all_reduce_impl(Tensor& t, ReduceOp) override { count(2.0 * static_cast<double>(t.nbytes())); }
  double all_reduce_scalar_impl(double v, ReduceOp) override { return v; }
  void broadcast_impl(Tensor& t, int) override { count(static_cast<double>(t.nbytes()) * size_ / std::max(1, size_ - 1)); }
  void all_gather_impl(const Tensor&, Tensor& out) override { count(static_cast<double>(out.nbytes())); }
  void reduce_scatter_sum_impl(const Tensor& in, Tensor&) override { count(static_cast<double>(in.nbytes())); }
  void barrier_impl() override {}
  void count(double bytes) const {
    if (size_ > 1) dry_run_add_comm_bytes(bytes * (size_ - 1) / size_);
  }

 private:
  int size_, rank_;
  Device native_;
  std::string name_;
};

}  // namespace

std::unique_ptr<Comm> make_dry_comm(int size, int rank, Device native_device, const std::string& name) {
  if (size < 1 || rank < 0 || rank >= size) ST_THROW("dry communicator: rank ", rank, " of ", size);
  return std::make_unique<DryComm>(size, rank, native_device, name);
}

}  // namespace st
