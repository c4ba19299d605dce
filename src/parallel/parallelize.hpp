// The parallel strategies of a layout applied to a built model, in torchtitan's fixed order:
//   1. tensor parallelism: the model is built with this rank's TP group (tp_group_for), so its
//      storage is this rank's shard as the family's TP plan splits it, and its collectives go
//      through the group (model/tp_plan.hpp);
//   2. (the method: base training or adapters, attached by the caller between 1 and 3);
//   3. ZeRO-3 sharding of every parameter over the data-parallel group, or DDP's gradient
//      all-reduce over it, each installed as the model's hooks.
// Both read the model's parameter table; neither knows the model family.
#pragma once

#include <memory>

#include "model/param_table.hpp"
#include "parallel/comm.hpp"
#include "parallel/ddp.hpp"
#include "parallel/layout.hpp"
#include "parallel/zero3.hpp"

namespace st {

// This rank's TP group under `layout` (size 1 unless tensor-parallel; `tp` is the group's
// communicator, its size must be layout.tp).
TpGroup tp_group_for(const ParallelLayout& layout, Comm* tp);

struct DataParallel {
  std::unique_ptr<Zero3> zero;              // ZeRO-3: parameters sharded over the data-parallel group
  std::unique_ptr<GradAllReduce> grad_sync;  // DDP: gradients summed over the data-parallel group
};
// Step 3 on a model whose method is attached: ZeRO-3 when the layout says so (training or not),
// DDP when training with more than one data-parallel group.
DataParallel apply_data_parallel(const ParamTable& model, const ParallelLayout& layout, Comm* dp, bool training,
                                 bool zero3_prefetch);

}  // namespace st
