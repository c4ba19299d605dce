// Data parallelism (DDP): every rank holds the whole model and computes the gradients of its own
// slice of the global batch; the gradients are then summed over the data-parallel group, so each
// rank applies the same update. (The loss weights are 1 / targets of the *global* batch, so the
// sum is the gradient of the global objective: no division by dp.)
//
// Gradients are packed into flat buckets of at most `bucket_bytes`, filled in the order the
// backward finishes them (the head first, then the blocks from the last, then the embedding),
// each bucket one dtype. Overlap with the backward: installed as the model's hooks, it starts a
// bucket's all-reduce (all_reduce_sum_async: a communication stream on NCCL, MPI_Iallreduce on
// MPI) as soon as the backward of the last micro-batch has finished every unit the bucket draws
// from, while the backward of the earlier units goes on; sync() waits for all of them and copies
// the sums back. Without hooks (or for micro-batches before the last) nothing is started early.
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

#include "model/hooks.hpp"
#include "model/linear.hpp"
#include "parallel/comm.hpp"

namespace st {

class GradAllReduce final : public ModelHooks {
 public:
  // params_by_unit[u]: the trainable parameters of unit u (llama_params_by_unit, t5_params_by_unit).
  GradAllReduce(const std::vector<std::vector<ParamRef>>& params_by_unit, Comm& dp,
                size_t bucket_bytes = size_t{25} << 20);
  // The next backward is the step's last: reduce buckets as their units finish.
  void arm() { armed_ = true; }
  // grad <- sum over the group of grad, for every parameter (waits for the early reductions,
  // starts the rest).
  void sync();
  size_t num_buckets() const { return buckets_.size(); }
  // Buckets whose all-reduce was started during the backward at the last sync().
  size_t overlapped_buckets() const { return overlapped_; }

  void before_forward(int) override {}
  void after_forward(int) override {}
  void before_backward(int) override {}
  void after_backward(int unit) override;

 private:
  struct Bucket {
    std::vector<Tensor*> grads;
    int64_t numel = 0;
    int ready_after_unit = 0;  // the backward of this unit completes the bucket's gradients
    Tensor flat;   // on the gradients' device
    Tensor host;   // staging for device gradients when the communicator works on host memory
    std::unique_ptr<CommRequest> request;
  };
  void start(Bucket& b);
  void finish(Bucket& b);
  Comm& dp_;
  std::vector<Bucket> buckets_;
  bool armed_ = false;
  size_t overlapped_ = 0;
};

}  // namespace st
