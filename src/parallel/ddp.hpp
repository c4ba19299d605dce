// Data parallelism (DDP): every rank holds the whole model and computes the gradients of its own
// slice of the global batch; the gradients are then summed over the data-parallel group, so each
// rank applies the same update. (The loss weights are 1 / targets of the *global* batch, so the
// sum is the gradient of the global objective: no division by dp.)
//
// Gradients are packed into flat buckets of at most `bucket_bytes` (parameters in their fixed
// order, each bucket one dtype) and reduced one bucket at a time: few large messages instead of
// one per tensor. On the GPU, with an NCCL communicator the buckets are reduced on the device (on
// the compute stream); with an MPI one they are staged through a persistent host buffer. The
// reduction runs after the last micro-batch's backward; overlapping it with the backward is not
// done yet.
#pragma once

#include <cstddef>
#include <vector>

#include "model/linear.hpp"
#include "parallel/comm.hpp"

namespace st {

class GradAllReduce {
 public:
  GradAllReduce(const std::vector<ParamRef>& params, Comm& dp, size_t bucket_bytes = size_t{25} << 20);
  // grad <- sum over the group of grad, for every parameter.
  void sync();
  size_t num_buckets() const { return buckets_.size(); }

 private:
  struct Bucket {
    std::vector<Tensor*> grads;
    int64_t numel = 0;
    Tensor flat;   // on the gradients' device
    Tensor host;   // staging for device gradients when the communicator works on host memory
  };
  Comm& dp_;
  std::vector<Bucket> buckets_;
};

}  // namespace st
