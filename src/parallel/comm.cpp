// The backend-independent half of Comm: argument checks, watchdog labels, the synchronous
// fallback of the asynchronous collectives.
#include "parallel/comm.hpp"

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
  all_reduce_impl(t, ReduceOp::sum);
}

void Comm::all_reduce_max(Tensor& t) {
  const std::string l = label("all_reduce_max");
  check_tensor(t, l);
  WatchdogScope wd(l);
  all_reduce_impl(t, ReduceOp::max);
}

double Comm::all_reduce_sum(double v) {
  WatchdogScope wd(label("all_reduce_sum(scalar)"));
  return all_reduce_scalar_impl(v, ReduceOp::sum);
}

double Comm::all_reduce_max(double v) {
  WatchdogScope wd(label("all_reduce_max(scalar)"));
  return all_reduce_scalar_impl(v, ReduceOp::max);
}

void Comm::broadcast(Tensor& t, int root) {
  const std::string l = label("broadcast");
  check_tensor(t, l);
  if (root < 0 || root >= size()) ST_THROW(l, ": root ", root, " is not a rank of a group of ", size());
  WatchdogScope wd(l);
  broadcast_impl(t, root);
}

void Comm::all_gather(const Tensor& in, Tensor& out) {
  const std::string l = label("all_gather");
  check_gather(in, out, size(), l);
  WatchdogScope wd(l);
  all_gather_impl(in, out);
}

void Comm::reduce_scatter_sum(const Tensor& in, Tensor& out) {
  const std::string l = label("reduce_scatter_sum");
  check_scatter(in, out, size(), l);
  WatchdogScope wd(l);
  reduce_scatter_sum_impl(in, out);
}

std::unique_ptr<CommRequest> Comm::all_gather_async(const Tensor& in, Tensor& out) {
  const std::string l = label("all_gather_async");
  check_gather(in, out, size(), l);
  WatchdogScope wd(l);
  return all_gather_async_impl(in, out, l);
}

std::unique_ptr<CommRequest> Comm::reduce_scatter_sum_async(const Tensor& in, Tensor& out) {
  const std::string l = label("reduce_scatter_sum_async");
  check_scatter(in, out, size(), l);
  WatchdogScope wd(l);
  return reduce_scatter_sum_async_impl(in, out, l);
}

std::unique_ptr<CommRequest> Comm::all_reduce_sum_async(Tensor& t) {
  const std::string l = label("all_reduce_sum_async");
  check_tensor(t, l);
  WatchdogScope wd(l);
  return all_reduce_sum_async_impl(t, l);
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
