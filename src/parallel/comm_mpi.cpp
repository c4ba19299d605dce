// The MPI backend. MPI works on host memory: CUDA tensors are copied to a host buffer and back
// (the copies synchronise with the compute stream), and 16-bit floats are widened to f32 for
// reductions (sum and max in f32, one rounding back to bf16/f16 at the end; broadcast and
// all-gather move them as 16-bit words, exactly).
#include <cstdlib>

#include "core/timer.hpp"
#include "parallel/comm.hpp"

namespace st {

namespace {

void check_mpi(int rc, const char* what) {
  if (rc != MPI_SUCCESS) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, msg, &len);
    ST_THROW("MPI ", what, " failed: ", std::string(msg, static_cast<size_t>(len)));
  }
}

bool is_half(DType t) { return t == DType::bf16 || t == DType::f16; }

// The MPI type of a host buffer. 16-bit floats only travel as words (reductions widen them first).
MPI_Datatype mpi_type(const Tensor& t, bool reduction) {
  switch (t.dtype()) {
    case DType::f32: return MPI_FLOAT;
    case DType::f64: return MPI_DOUBLE;
    case DType::i32: return MPI_INT32_T;
    case DType::i64: return MPI_INT64_T;
    case DType::u8: return MPI_UINT8_T;
    case DType::bf16:
    case DType::f16:
      if (reduction) ST_THROW("MPI reduction on ", t.str(), " (16-bit floats are reduced in f32)");
      return MPI_UINT16_T;
  }
  ST_THROW("MPI collectives: unsupported dtype ", dtype_name(t.dtype()));
}

int count_of(int64_t n) {
  if (n > INT32_MAX) ST_THROW("collective of ", n, " elements exceeds MPI's int count");
  return static_cast<int>(n);
}

// The host buffer MPI works on for tensor t: t itself when it is on the CPU and needs no
// widening; otherwise a host copy (copy_in) or an uninitialised host buffer (for outputs), in
// f32 when `widen` and t holds 16-bit floats.
struct Staged {
  Tensor host;
  bool is_self = true;
};

Staged stage(const Tensor& t, bool widen, bool copy_in) {
  const bool convert = widen && is_half(t.dtype());
  if (t.device() == Device::cpu && !convert) return {t, true};
  if (copy_in) {
    if (convert) return {t.to_cpu(DType::f32), false};  // device copy and conversion
    Tensor h = Tensor::empty(t.shape(), t.dtype(), Device::cpu, MemCategory::communication);
    h.copy_from(t);
    return {h, false};
  }
  return {Tensor::empty(t.shape(), convert ? DType::f32 : t.dtype(), Device::cpu, MemCategory::communication), false};
}

// Copy a staged result back into t (rounding to t's 16-bit type when it was widened).
void unstage(Tensor& t, const Staged& s) {
  if (s.is_self) return;
  if (s.host.dtype() != t.dtype()) t.copy_from(s.host.to_cpu(t.dtype()));
  else t.copy_from(s.host);
}

// A non-blocking MPI collective: the request, the staging buffers and the output to fill.
class MpiRequest final : public CommRequest {
 public:
  MpiRequest(std::string label, MPI_Request req, Staged in, Staged out, const Tensor& in_t, Tensor& out_t,
             double* time_sink)
      : CommRequest(std::move(label)), req_(req), in_(std::move(in)), out_(std::move(out)), in_t_(in_t),
        out_t_(out_t), time_sink_(time_sink) {}
  ~MpiRequest() override { finish_in_destructor(); }

 protected:
  void wait_impl() override {
    const double t0 = now_seconds();
    check_mpi(MPI_Wait(&req_, MPI_STATUS_IGNORE), "Wait");
    unstage(out_t_, out_);
    *time_sink_ += now_seconds() - t0;
  }

 private:
  MPI_Request req_;
  Staged in_, out_;
  Tensor in_t_, out_t_;  // handles: keep the caller's buffers alive until the wait
  double* time_sink_;
};

class MpiComm final : public Comm {
 public:
  MpiComm(MPI_Comm comm, std::string name) : name_(std::move(name)) {
    check_mpi(MPI_Comm_dup(comm, &comm_), "Comm_dup");
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  ~MpiComm() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free(&comm_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  const std::string& name() const override { return name_; }
  const char* backend() const override { return "mpi"; }
  Device native_device() const override { return Device::cpu; }

  [[noreturn]] void abort(int exit_status) override {
    MPI_Abort(comm_, exit_status);
    std::_Exit(exit_status);
  }

 protected:
  void all_reduce_impl(Tensor& t, ReduceOp op) override {
    Timed timed(this);
    Staged s = stage(t, true, true);
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, s.host.data(), count_of(t.numel()), mpi_type(s.host, true), mpi_op(op), comm_),
              "Allreduce");
    unstage(t, s);
  }

  double all_reduce_scalar_impl(double v, ReduceOp op) override {
    Timed timed(this);
    double out = 0;
    check_mpi(MPI_Allreduce(&v, &out, 1, MPI_DOUBLE, mpi_op(op), comm_), "Allreduce");
    return out;
  }

  void broadcast_impl(Tensor& t, int root) override {
    Timed timed(this);
    Staged s = stage(t, false, rank_ == root);
    check_mpi(MPI_Bcast(s.host.data(), count_of(t.numel()), mpi_type(s.host, false), root, comm_), "Bcast");
    unstage(t, s);
  }

  void all_gather_impl(const Tensor& in, Tensor& out) override {
    Timed timed(this);
    const Staged hin = stage(in, false, true);
    Staged hout = stage(out, false, false);
    check_mpi(MPI_Allgather(hin.host.data(), count_of(in.numel()), mpi_type(hin.host, false), hout.host.data(),
                            count_of(in.numel()), mpi_type(hout.host, false), comm_),
              "Allgather");
    unstage(out, hout);
  }

  void reduce_scatter_sum_impl(const Tensor& in, Tensor& out) override {
    Timed timed(this);
    const Staged hin = stage(in, true, true);
    Staged hout = stage(out, true, false);
    check_mpi(MPI_Reduce_scatter_block(hin.host.data(), hout.host.data(), count_of(out.numel()),
                                       mpi_type(hin.host, true), MPI_SUM, comm_),
              "Reduce_scatter_block");
    unstage(out, hout);
  }

  std::unique_ptr<CommRequest> all_gather_async_impl(const Tensor& in, Tensor& out, const std::string& label) override {
    Timed timed(this);
    Staged hin = stage(in, false, true);
    Staged hout = stage(out, false, false);
    MPI_Request req;
    check_mpi(MPI_Iallgather(hin.host.data(), count_of(in.numel()), mpi_type(hin.host, false), hout.host.data(),
                             count_of(in.numel()), mpi_type(hout.host, false), comm_, &req),
              "Iallgather");
    return std::make_unique<MpiRequest>(label, req, std::move(hin), std::move(hout), in, out, &comm_time_);
  }

  std::unique_ptr<CommRequest> reduce_scatter_sum_async_impl(const Tensor& in, Tensor& out,
                                                             const std::string& label) override {
    Timed timed(this);
    Staged hin = stage(in, true, true);
    Staged hout = stage(out, true, false);
    MPI_Request req;
    check_mpi(MPI_Ireduce_scatter_block(hin.host.data(), hout.host.data(), count_of(out.numel()),
                                        mpi_type(hin.host, true), MPI_SUM, comm_, &req),
              "Ireduce_scatter_block");
    return std::make_unique<MpiRequest>(label, req, std::move(hin), std::move(hout), in, out, &comm_time_);
  }

  std::unique_ptr<CommRequest> all_reduce_sum_async_impl(Tensor& t, const std::string& label) override {
    Timed timed(this);
    Staged s = stage(t, true, true);
    MPI_Request req;
    check_mpi(MPI_Iallreduce(MPI_IN_PLACE, s.host.data(), count_of(t.numel()), mpi_type(s.host, true), MPI_SUM, comm_,
                             &req),
              "Iallreduce");
    Staged none{Tensor(), true};
    return std::make_unique<MpiRequest>(label, req, std::move(none), std::move(s), t, t, &comm_time_);
  }

  void barrier_impl() override {
    Timed timed(this);
    check_mpi(MPI_Barrier(comm_), "Barrier");
  }

 private:
  struct Timed {
    explicit Timed(MpiComm* c) : comm(c), start(now_seconds()) {}
    ~Timed() { comm->comm_time_ += now_seconds() - start; }
    MpiComm* comm;
    double start;
  };

  static MPI_Op mpi_op(ReduceOp op) { return op == ReduceOp::sum ? MPI_SUM : MPI_MAX; }

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  std::string name_;
};

}  // namespace

std::unique_ptr<Comm> make_mpi_comm(MPI_Comm comm, const std::string& name) {
  return std::make_unique<MpiComm>(comm, name);
}

}  // namespace st
