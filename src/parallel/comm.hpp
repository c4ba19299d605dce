// Communicator interface: the collectives the parallel strategies need, behind one interface
// with an MPI backend (CPU tensors; bf16 would be reduced as f32) and, in CUDA builds, NCCL.
// Every call is collective: all ranks of the group must make the same calls in the same order.
// Counts are elements (never bytes); tensors must be contiguous.
#pragma once

#include <mpi.h>

#include <memory>
#include <string>

#include "core/tensor.hpp"

namespace st {

class Comm {
 public:
  virtual ~Comm() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual const std::string& name() const = 0;  // "world", "tp", "dp"

  virtual void all_reduce_sum(Tensor& t) = 0;                            // in place
  virtual void all_reduce_max(Tensor& t) = 0;                            // in place
  virtual double all_reduce_sum(double v) = 0;
  virtual double all_reduce_max(double v) = 0;
  virtual void broadcast(Tensor& t, int root) = 0;
  // out [size * n] = concatenation of every rank's in [n], in rank order.
  virtual void all_gather(const Tensor& in, Tensor& out) = 0;
  // out [n] = this rank's n-slice of the element-wise sum of every rank's in [size * n].
  virtual void reduce_scatter_sum(const Tensor& in, Tensor& out) = 0;
  virtual void barrier() = 0;
  // Abort every rank of the job (used by the fatal path; does not return).
  [[noreturn]] virtual void abort(int exit_status) = 0;

  // Seconds spent inside collectives since creation (waiting included).
  double comm_time() const { return comm_time_; }

 protected:
  double comm_time_ = 0;
};

// An MPI communicator (duplicated, so shardtune's traffic never mixes with anyone else's).
std::unique_ptr<Comm> make_mpi_comm(MPI_Comm comm, const std::string& name);

}  // namespace st
