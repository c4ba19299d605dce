#include "parallel/layout.hpp"

#include "core/error.hpp"

namespace st {

ParallelLayout ParallelLayout::make(Strategy strategy, int64_t tp_size, int world_size, const std::string& where) {
  if (strategy == Strategy::automatic)
    ST_THROW("ParallelLayout: parallel = auto must be resolved by the planner first");
  if (world_size < 1) ST_THROW("ParallelLayout: world size ", world_size);
  const bool tp_strategy = strategy == Strategy::tp || strategy == Strategy::tp_zero3;
  if (tp_size < 1) ST_THROW_INPUT(where, ": tp_size = ", tp_size, " must be >= 1");
  if (tp_size != 1 && !tp_strategy)
    ST_THROW_INPUT(where, ": tp_size = ", tp_size, " needs parallel = tp or tp+zero3 (parallel is ", strategy_name(strategy), ")");
  if (world_size % tp_size != 0)
    ST_THROW_INPUT(where, ": tp_size = ", tp_size, " does not divide the world of ", world_size,
                   " ranks: the rank grid needs world = tp x dp (launch a multiple of ", tp_size,
                   " ranks, or change tp_size)");
  if (strategy == Strategy::none && world_size > 1)
    ST_THROW_INPUT("launched with ", world_size, " ranks, but parallel = none trains on one rank: "
                   "run with mpirun -np 1, or set parallel = ddp, tp, zero3 or tp+zero3");
  ParallelLayout l;
  l.strategy = strategy;
  l.world = world_size;
  l.tp = static_cast<int>(tp_size);
  l.dp = world_size / l.tp;
  return l;
}

std::string ParallelLayout::summary_name() const { return strategy == Strategy::none ? "single" : name(); }

std::string ParallelLayout::str() const {
  return st::str("parallel ", name(), ", world ", world, " = tp ", tp, " x dp ", dp);
}

}  // namespace st
