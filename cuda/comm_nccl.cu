// The NCCL backend of the communicator interface (one GPU per rank).
//
// Synchronous collectives are enqueued on the compute stream (cuda::stream()), so they are
// ordered with the kernels before and after them and the host does not wait; only the scalar
// all-reduce and the barrier synchronise (they must deliver a host result / a host-side meeting
// point). The asynchronous ones run on this communicator's own non-blocking communication
// stream: it first waits for an event recorded on the compute stream (the input is complete),
// and the request's wait() makes the compute stream wait for the completion event. NCCL
// serialises the operations of one communicator across streams; operations of *different*
// communicators must not be in flight at the same time in different orders on different ranks
// (NCCL gives no progress guarantee then).
//
// Time: a pair of CUDA events around every collective on the stream it runs on; the elapsed
// times (the kernels' run time, waiting for peers included) are collected lazily when the end
// events have completed, and comm_time() waits for the outstanding ones.
#include <nccl.h>

#include <atomic>
#include <cstdlib>
#include <deque>
#include <vector>

#include "cuda/common.cuh"
#include "parallel/comm.hpp"

namespace st {

namespace {

void check_nccl(ncclResult_t r, const char* what, ncclComm_t comm = nullptr) {
  if (r == ncclSuccess) return;
  const char* detail = comm ? ncclGetLastError(comm) : nullptr;
  ST_THROW("NCCL ", what, " failed: ", ncclGetErrorString(r), detail && *detail ? str(" (", detail, ")") : std::string());
}

ncclDataType_t nccl_type(const Tensor& t) {
  if (t.device() != Device::cuda)
    ST_THROW("NCCL collectives take CUDA tensors (got ", t.str(), "); CPU tensors go through an MPI communicator");
  switch (t.dtype()) {
    case DType::f32: return ncclFloat32;
    case DType::f64: return ncclFloat64;
    case DType::bf16: return ncclBfloat16;
    case DType::f16: return ncclFloat16;
    case DType::i32: return ncclInt32;
    case DType::i64: return ncclInt64;
    case DType::u8: return ncclUint8;
  }
  ST_THROW("NCCL collectives: unsupported dtype ", dtype_name(t.dtype()));
}

size_t count_of(const Tensor& t) { return static_cast<size_t>(t.numel()); }

// Device time of collectives from event pairs, harvested when complete.
class EventTimer {
 public:
  EventTimer() = default;
  EventTimer(const EventTimer&) = delete;
  EventTimer& operator=(const EventTimer&) = delete;
  ~EventTimer() {
    for (const Pair& p : pending_) {
      cudaEventDestroy(p.start);
      cudaEventDestroy(p.end);
    }
    for (cudaEvent_t e : free_) cudaEventDestroy(e);
  }

  struct Pair {
    cudaEvent_t start = nullptr, end = nullptr;
  };
  Pair begin(cudaStream_t s) {
    Pair p{take(), take()};
    ST_CUDA_CHECK(cudaEventRecord(p.start, s));
    return p;
  }
  void end(Pair p, cudaStream_t s) {
    ST_CUDA_CHECK(cudaEventRecord(p.end, s));
    pending_.push_back(p);
    harvest(pending_.size() > kMaxPending ? pending_.size() - kMaxPending : 0);
  }
  // Seconds of every collective recorded so far (waits for the outstanding ones).
  double total() {
    harvest(pending_.size());
    return seconds_;
  }

 private:
  static constexpr size_t kMaxPending = 1024;

  cudaEvent_t take() {
    if (!free_.empty()) {
      cudaEvent_t e = free_.back();
      free_.pop_back();
      return e;
    }
    cudaEvent_t e;
    ST_CUDA_CHECK(cudaEventCreate(&e));
    return e;
  }
  // Collect every completed pair, waiting for at least the first `must` of them.
  void harvest(size_t must) {
    while (!pending_.empty()) {
      const Pair p = pending_.front();
      if (must > 0) {
        ST_CUDA_CHECK(cudaEventSynchronize(p.end));
        --must;
      } else {
        const cudaError_t q = cudaEventQuery(p.end);
        if (q == cudaErrorNotReady) {
          (void)cudaGetLastError();  // not an error: leave it for later
          return;
        }
        ST_CUDA_CHECK(q);
      }
      float ms = 0;
      ST_CUDA_CHECK(cudaEventElapsedTime(&ms, p.start, p.end));
      seconds_ += 1e-3 * static_cast<double>(ms);
      free_.push_back(p.start);
      free_.push_back(p.end);
      pending_.pop_front();
    }
  }

  std::deque<Pair> pending_;
  std::vector<cudaEvent_t> free_;
  double seconds_ = 0;
};

// An asynchronous collective: the compute stream waits for `done` in wait().
class NcclRequest final : public CommRequest {
 public:
  NcclRequest(std::string label, cudaEvent_t done, const Tensor& in, const Tensor& out)
      : CommRequest(std::move(label)), done_(done), in_(in), out_(out) {}
  ~NcclRequest() override {
    finish_in_destructor();
    cudaEventDestroy(done_);  // released by CUDA once the event has completed
  }

 protected:
  void wait_impl() override { ST_CUDA_CHECK(cudaStreamWaitEvent(cuda::stream(), done_, 0)); }

 private:
  cudaEvent_t done_;
  Tensor in_, out_;  // handles: the buffers stay allocated until the compute stream is ordered after the collective
};

class NcclComm final : public Comm {
 public:
  NcclComm(MPI_Comm comm, std::string name) : name_(std::move(name)) {
    MPI_Comm_rank(comm, &rank_);
    MPI_Comm_size(comm, &size_);
    ncclUniqueId id;
    if (rank_ == 0) check_nccl(ncclGetUniqueId(&id), "GetUniqueId");
    if (MPI_Bcast(&id, static_cast<int>(sizeof(id)), MPI_BYTE, 0, comm) != MPI_SUCCESS)
      ST_THROW("MPI_Bcast of the NCCL unique id failed (communicator ", name_, ")");
    check_nccl(ncclCommInitRank(&comm_, size_, id, rank_), "CommInitRank");
    ST_CUDA_CHECK(cudaStreamCreateWithFlags(&comm_stream_, cudaStreamNonBlocking));
  }
  ~NcclComm() override {
    // No throwing here: at the end of a run, or while unwinding.
    if (comm_stream_) {
      cudaStreamSynchronize(comm_stream_);
      cudaStreamDestroy(comm_stream_);
    }
    if (!aborted_.exchange(true)) ncclCommDestroy(comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }
  const char* backend() const override { return "nccl"; }
  Device native_device() const override { return Device::cuda; }

  void abort_communicator() noexcept {
    if (!aborted_.exchange(true)) ncclCommAbort(comm_);
  }

  [[noreturn]] void abort(int exit_status) override {
    abort_communicator();
    MPI_Abort(MPI_COMM_WORLD, exit_status);
    std::_Exit(exit_status);
  }

  double comm_time() const override { return timer_.total(); }

 protected:
  void all_reduce_impl(Tensor& t, ReduceOp op) override {
    const ncclDataType_t type = nccl_type(t);
    timed(cuda::stream(), [&] {
      check_nccl(ncclAllReduce(t.data(), t.data(), count_of(t), type, nccl_op(op), comm_, cuda::stream()), "AllReduce",
                 comm_);
    });
  }

  double all_reduce_scalar_impl(double v, ReduceOp op) override {
    if (!scalar_.defined()) scalar_ = Tensor::empty({1}, DType::f64, Device::cuda, MemCategory::communication);
    ST_CUDA_CHECK(cudaMemcpy(scalar_.data(), &v, sizeof(double), cudaMemcpyHostToDevice));
    timed(cuda::stream(), [&] {
      check_nccl(ncclAllReduce(scalar_.data(), scalar_.data(), 1, ncclFloat64, nccl_op(op), comm_, cuda::stream()),
                 "AllReduce", comm_);
    });
    double out = 0;
    ST_CUDA_CHECK(cudaMemcpy(&out, scalar_.data(), sizeof(double), cudaMemcpyDeviceToHost));  // waits for it
    return out;
  }

  void broadcast_impl(Tensor& t, int root) override {
    const ncclDataType_t type = nccl_type(t);
    timed(cuda::stream(), [&] {
      check_nccl(ncclBroadcast(t.data(), t.data(), count_of(t), type, root, comm_, cuda::stream()), "Broadcast", comm_);
    });
  }

  void all_gather_impl(const Tensor& in, Tensor& out) override {
    const ncclDataType_t type = nccl_type(in);
    (void)nccl_type(out);
    timed(cuda::stream(), [&] {
      check_nccl(ncclAllGather(in.data(), out.data(), count_of(in), type, comm_, cuda::stream()), "AllGather", comm_);
    });
  }

  void reduce_scatter_sum_impl(const Tensor& in, Tensor& out) override {
    const ncclDataType_t type = nccl_type(in);
    (void)nccl_type(out);
    timed(cuda::stream(), [&] {
      check_nccl(ncclReduceScatter(in.data(), out.data(), count_of(out), type, ncclSum, comm_, cuda::stream()),
                 "ReduceScatter", comm_);
    });
  }

  std::unique_ptr<CommRequest> all_gather_async_impl(const Tensor& in, Tensor& out, const std::string& label) override {
    const ncclDataType_t type = nccl_type(in);
    (void)nccl_type(out);
    follow_compute_stream();
    timed(comm_stream_, [&] {
      check_nccl(ncclAllGather(in.data(), out.data(), count_of(in), type, comm_, comm_stream_), "AllGather", comm_);
    });
    return std::make_unique<NcclRequest>(label, record_done(), in, out);
  }

  std::unique_ptr<CommRequest> reduce_scatter_sum_async_impl(const Tensor& in, Tensor& out,
                                                             const std::string& label) override {
    const ncclDataType_t type = nccl_type(in);
    (void)nccl_type(out);
    follow_compute_stream();
    timed(comm_stream_, [&] {
      check_nccl(ncclReduceScatter(in.data(), out.data(), count_of(out), type, ncclSum, comm_, comm_stream_),
                 "ReduceScatter", comm_);
    });
    return std::make_unique<NcclRequest>(label, record_done(), in, out);
  }

  std::unique_ptr<CommRequest> all_reduce_sum_async_impl(Tensor& t, const std::string& label) override {
    const ncclDataType_t type = nccl_type(t);
    follow_compute_stream();
    timed(comm_stream_, [&] {
      check_nccl(ncclAllReduce(t.data(), t.data(), count_of(t), type, ncclSum, comm_, comm_stream_), "AllReduce", comm_);
    });
    return std::make_unique<NcclRequest>(label, record_done(), t, t);
  }

  void barrier_impl() override {
    // NCCL has no barrier: a one-element all-reduce, then wait for it on the host.
    if (!barrier_.defined()) barrier_ = Tensor::zeros({1}, DType::f32, Device::cuda, MemCategory::communication);
    timed(cuda::stream(), [&] {
      check_nccl(ncclAllReduce(barrier_.data(), barrier_.data(), 1, ncclFloat32, ncclSum, comm_, cuda::stream()),
                 "AllReduce (barrier)", comm_);
    });
    ST_CUDA_CHECK(cudaStreamSynchronize(cuda::stream()));
  }

 private:
  // Enqueue one collective on stream s between a pair of timing events.
  template <typename Issue>
  void timed(cudaStream_t s, Issue&& issue) {
    const EventTimer::Pair p = timer_.begin(s);
    issue();
    timer_.end(p, s);
  }

  static ncclRedOp_t nccl_op(ReduceOp op) { return op == ReduceOp::sum ? ncclSum : ncclMax; }

  // The communication stream starts after everything enqueued so far on the compute stream.
  void follow_compute_stream() {
    cudaEvent_t ready;
    ST_CUDA_CHECK(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming));
    ST_CUDA_CHECK(cudaEventRecord(ready, cuda::stream()));
    ST_CUDA_CHECK(cudaStreamWaitEvent(comm_stream_, ready, 0));
    ST_CUDA_CHECK(cudaEventDestroy(ready));
  }
  cudaEvent_t record_done() {
    cudaEvent_t done;
    ST_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
    ST_CUDA_CHECK(cudaEventRecord(done, comm_stream_));
    return done;
  }

  ncclComm_t comm_ = nullptr;
  cudaStream_t comm_stream_ = nullptr;
  std::atomic<bool> aborted_{false};
  int rank_ = 0, size_ = 1;
  std::string name_;
  Tensor scalar_, barrier_;  // device scratch of the scalar all-reduce and the barrier
  mutable EventTimer timer_;
};

}  // namespace

std::unique_ptr<Comm> make_nccl_comm(MPI_Comm comm, const std::string& name) {
  return std::make_unique<NcclComm>(comm, name);
}

void nccl_abort_communicator(Comm& comm) noexcept {
  if (auto* n = dynamic_cast<NcclComm*>(&comm)) n->abort_communicator();
}

}  // namespace st
