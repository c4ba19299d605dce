#include "parallel/parallelize.hpp"

namespace st {

TpGroup tp_group_for(const ParallelLayout& layout, Comm* tp) {
  if (!layout.tensor_parallel()) return {};
  if (!tp || tp->size() != layout.tp)
    ST_THROW("tp_group_for: the TP communicator (", tp ? tp->size() : 0, " ranks) does not match tp = ", layout.tp);
  return TpGroup{tp, tp->size(), tp->rank()};
}

DataParallel apply_data_parallel(const ParamTable& model, const ParallelLayout& layout, Comm* dp, bool training,
                                 bool zero3_prefetch) {
  DataParallel out;
  if (layout.zero3()) {
    if (!dp) ST_THROW("parallel = ", layout.name(), " without a data-parallel communicator");
    out.zero = std::make_unique<Zero3>(model, *dp, zero3_prefetch);
  } else if (training && layout.ddp()) {
    if (!dp) ST_THROW("parallel = ", layout.name(), " without a data-parallel communicator");
    out.grad_sync = std::make_unique<GradAllReduce>(params_by_unit(model), *dp);
    // Buckets are reduced as the last micro-batch's backward finishes them.
    if (*model.hooks) ST_THROW("apply_data_parallel: the model already has hooks");
    *model.hooks = out.grad_sync.get();
  }
  return out;
}

}  // namespace st
