// Communicator interface: the collectives the parallel strategies need, behind one interface
// with two backends:
//   MPI   CPU and CUDA tensors; device tensors are staged through host memory (a CUDA build
//         without NCCL communicators still works); bf16/f16 reductions are computed in f32.
//   NCCL  (CUDA builds) CUDA tensors only; every collective is enqueued on the CUDA backend's
//         compute stream, ordered with the kernels, without a host synchronisation (the scalar
//         all-reduce synchronises: it returns a host value).
// Every call is collective: all ranks of the group must make the same calls in the same order.
// Counts are elements (never bytes); tensors must be contiguous (they always are). Dtypes: f32,
// f64, bf16, f16, i32, i64, u8 (max on u8 and the integers too).
//
// The public collectives are non-virtual: each checks its arguments (the same on every
// backend, before any rank communicates), labels the watchdog with "<op> on <group>
// (<backend>)" while it runs, and calls the backend's *_impl.
#pragma once

#include <mpi.h>

#include <memory>
#include <string>

#include "core/tensor.hpp"
#include "model/tp_plan.hpp"

namespace st {

// An operation started by an *_async collective. wait() completes it: afterwards its output may
// be used by whatever follows (MPI: the host holds the result; NCCL: the compute stream waits
// for the communication stream; the host does not block). Until wait() returns, the input must
// not be modified and the output neither read nor written. The request keeps both tensors'
// buffers alive. Destroying a request that was not waited for waits for it.
class CommRequest {
 public:
  virtual ~CommRequest() = default;
  void wait();  // idempotent
  bool done() const { return done_; }
  int64_t trace_id = -1;  // the op trace's id of the collective (core/op_trace.hpp); -1: not traced

 protected:
  explicit CommRequest(std::string label) : label_(std::move(label)) {}
  virtual void wait_impl() = 0;
  // For destructors of derived requests (wait_impl is theirs, so the base cannot call it).
  void finish_in_destructor() noexcept;

 private:
  std::string label_;  // the watchdog's label while waiting
  bool done_ = false;
};

// Every communicator is also the collectives of a tensor-parallel model (model/tp_plan.hpp's
// TpCollectives): the model code reaches its TP group through that interface alone.
class Comm : public TpCollectives {
 public:
  ~Comm() override = default;
  int rank() const override = 0;
  int size() const override = 0;
  virtual const std::string& name() const = 0;  // "world", "tp", "dp"
  virtual const char* backend() const = 0;      // "mpi", "nccl"
  // Where the backend works without staging: MPI the CPU, NCCL the GPU (callers that keep
  // their own staging buffers, like DDP's buckets, stage when their tensors are elsewhere).
  virtual Device native_device() const = 0;

  void all_reduce_sum(Tensor& t);  // in place
  void all_reduce_max(Tensor& t);  // in place
  double all_reduce_sum(double v);
  double all_reduce_max(double v);
  void broadcast(Tensor& t, int root);
  // out [size * n] = concatenation of every rank's in [n], in rank order.
  void all_gather(const Tensor& in, Tensor& out);
  // out [n] = this rank's n-slice of the element-wise sum of every rank's in [size * n].
  void reduce_scatter_sum(const Tensor& in, Tensor& out);
  // The same two, started now and completed by the request's wait() (ZeRO-3 prefetch: gather
  // the next layer's parameters while this one computes). A backend without a non-blocking
  // version completes them before returning.
  std::unique_ptr<CommRequest> all_gather_async(const Tensor& in, Tensor& out);
  std::unique_ptr<CommRequest> reduce_scatter_sum_async(const Tensor& in, Tensor& out);
  // In-place sum, started now (DDP: a gradient bucket reduced while the backward continues).
  std::unique_ptr<CommRequest> all_reduce_sum_async(Tensor& t);
  void barrier();
  // Abort every rank of the job (used by the fatal path; does not return).
  [[noreturn]] virtual void abort(int exit_status) = 0;

  // TpCollectives (parallel/tp_ops.cpp): the all-reduce sum, vocab_parallel_cross_entropy and
  // the gather of a split tensor over this group.
  void sum_partials(Tensor& t) override { all_reduce_sum(t); }
  double vocab_cross_entropy(Tensor& logits_shard, const Tensor& targets, const Tensor& weight, Tensor* losses,
                             bool grad) override;
  Tensor gather_full(const Tensor& local, TpMode split, DType dtype) override;

  // Seconds spent inside collectives since creation (waiting for peers included). MPI: host
  // time around each call. NCCL: device time between CUDA events recorded around each
  // collective on its stream, harvested lazily; this call waits for the outstanding ones.
  virtual double comm_time() const { return comm_time_; }

 protected:
  enum class ReduceOp { sum, max };
  virtual void all_reduce_impl(Tensor& t, ReduceOp op) = 0;
  virtual double all_reduce_scalar_impl(double v, ReduceOp op) = 0;
  virtual void broadcast_impl(Tensor& t, int root) = 0;
  virtual void all_gather_impl(const Tensor& in, Tensor& out) = 0;
  virtual void reduce_scatter_sum_impl(const Tensor& in, Tensor& out) = 0;
  // Default: the synchronous collective and an already completed request.
  virtual std::unique_ptr<CommRequest> all_gather_async_impl(const Tensor& in, Tensor& out, const std::string& label);
  virtual std::unique_ptr<CommRequest> reduce_scatter_sum_async_impl(const Tensor& in, Tensor& out,
                                                                     const std::string& label);
  virtual std::unique_ptr<CommRequest> all_reduce_sum_async_impl(Tensor& t, const std::string& label);
  virtual void barrier_impl() = 0;

  // "<op> on <name> (<backend>)": the watchdog's label and the prefix of argument errors.
  std::string label(const char* op) const;

  double comm_time_ = 0;
};

// An MPI communicator (duplicated, so shardtune's traffic never mixes with anyone else's).
std::unique_ptr<Comm> make_mpi_comm(MPI_Comm comm, const std::string& name);

// The memory planner's stand-in for rank `rank` of a group of `size` (core/dryrun.hpp): checks
// arguments like every backend and moves no data.
std::unique_ptr<Comm> make_dry_comm(int size, int rank, Device native_device, const std::string& name);

#ifdef SHARDTUNE_CUDA
// An NCCL communicator over the ranks of `comm` (collective over it): rank 0 makes the unique
// id and broadcasts it over MPI, then ncclCommInitRank. Needs the CUDA device selected first.
// abort() calls ncclCommAbort, then MPI_Abort on MPI_COMM_WORLD.
std::unique_ptr<Comm> make_nccl_comm(MPI_Comm comm, const std::string& name);
// ncclCommAbort on `comm` if it is an NCCL communicator (no-op otherwise): for the abort hook,
// so that no kernel of this rank stays blocked in a collective while the job ends.
void nccl_abort_communicator(Comm& comm) noexcept;
#endif

}  // namespace st
