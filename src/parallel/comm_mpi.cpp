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

MPI_Datatype mpi_type(const Tensor& t) {
  if (t.device() != Device::cpu)
    ST_THROW("MPI collectives take CPU tensors (got ", t.str(), "); GPU tensors go through NCCL");
  switch (t.dtype()) {
    case DType::f32: return MPI_FLOAT;
    case DType::f64: return MPI_DOUBLE;
    case DType::i32: return MPI_INT32_T;
    case DType::i64: return MPI_INT64_T;
    case DType::u8: return MPI_UINT8_T;
    default: ST_THROW("MPI collectives: unsupported dtype ", dtype_name(t.dtype()));
  }
}

int count_of(int64_t n) {
  if (n > INT32_MAX) ST_THROW("collective of ", n, " elements exceeds MPI's int count");
  return static_cast<int>(n);
}

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

  void all_reduce_sum(Tensor& t) override { all_reduce(t, MPI_SUM); }
  void all_reduce_max(Tensor& t) override { all_reduce(t, MPI_MAX); }
  double all_reduce_sum(double v) override { return all_reduce_scalar(v, MPI_SUM); }
  double all_reduce_max(double v) override { return all_reduce_scalar(v, MPI_MAX); }

  void broadcast(Tensor& t, int root) override {
    Timed timed(this);
    check_mpi(MPI_Bcast(t.data(), count_of(t.numel()), mpi_type(t), root, comm_), "Bcast");
  }

  void all_gather(const Tensor& in, Tensor& out) override {
    if (out.numel() != in.numel() * size_ || in.dtype() != out.dtype())
      ST_THROW("all_gather: out ", out.str(), " must hold ", size_, " x ", in.str());
    Timed timed(this);
    check_mpi(MPI_Allgather(in.data(), count_of(in.numel()), mpi_type(in), out.data(),
                            count_of(in.numel()), mpi_type(out), comm_), "Allgather");
  }

  void reduce_scatter_sum(const Tensor& in, Tensor& out) override {
    if (in.numel() != out.numel() * size_ || in.dtype() != out.dtype())
      ST_THROW("reduce_scatter_sum: in ", in.str(), " must hold ", size_, " x ", out.str());
    Timed timed(this);
    check_mpi(MPI_Reduce_scatter_block(in.data(), out.data(), count_of(out.numel()), mpi_type(in), MPI_SUM, comm_),
              "Reduce_scatter_block");
  }

  void barrier() override {
    Timed timed(this);
    check_mpi(MPI_Barrier(comm_), "Barrier");
  }

  [[noreturn]] void abort(int exit_status) override {
    MPI_Abort(comm_, exit_status);
    std::_Exit(exit_status);
  }

 private:
  struct Timed {
    explicit Timed(MpiComm* c) : comm(c), start(now_seconds()) {}
    ~Timed() { comm->comm_time_ += now_seconds() - start; }
    MpiComm* comm;
    double start;
  };

  void all_reduce(Tensor& t, MPI_Op op) {
    Timed timed(this);
    check_mpi(MPI_Allreduce(MPI_IN_PLACE, t.data(), count_of(t.numel()), mpi_type(t), op, comm_), "Allreduce");
  }
  double all_reduce_scalar(double v, MPI_Op op) {
    Timed timed(this);
    double out = 0;
    check_mpi(MPI_Allreduce(&v, &out, 1, MPI_DOUBLE, op, comm_), "Allreduce");
    return out;
  }

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  std::string name_;
};

}  // namespace

std::unique_ptr<Comm> make_mpi_comm(MPI_Comm comm, const std::string& name) {
  return std::make_unique<MpiComm>(comm, name);
}

}  // namespace st
