// Process start-up: MPI, this rank's identity on the node, the rank grid, and the fatal path's
// abort hook (MPI_Abort, so one failing rank ends the whole job instead of hanging it).
#pragma once

#include <memory>
#include <string>

#include "parallel/comm.hpp"

namespace st {

struct Runtime {
  int world_rank = 0, world_size = 1;
  int local_rank = 0, local_size = 1;  // among the ranks on this node
  std::string host;
  std::unique_ptr<Comm> world;
  // Rank grid: world = tp x dp with TP innermost (ranks r and r+1 share a TP group).
  int tp = 1, dp = 1, tp_rank = 0, dp_rank = 0;
  std::unique_ptr<Comm> tp_comm, dp_comm;
};

// MPI_Init_thread (works with or without mpirun), identity for error messages, abort hook,
// Slurm consistency check (world size must equal SLURM_NTASKS when set).
Runtime& runtime_init(int* argc, char*** argv);
// Build the TP x DP grid; throws InputError when world_size is not a multiple of tp.
void runtime_make_grid(Runtime& rt, int tp);
Runtime& runtime();
bool runtime_active();
void runtime_finalize();

}  // namespace st
