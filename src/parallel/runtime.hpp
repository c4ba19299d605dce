// Process start-up: MPI, this rank's identity on the node, the rank grid, the device (NCCL)
// communicators, and the fatal path's abort hooks (ncclCommAbort, MPI_Abort, so one failing rank
// ends the whole job instead of hanging it).
#pragma once

#include <memory>
#include <string>

#include "parallel/comm.hpp"

namespace st {

enum class CommGroup { world, tp, dp };

struct Runtime {
  int world_rank = 0, world_size = 1;
  int local_rank = 0, local_size = 1;  // among the ranks on this node
  std::string host;
  std::unique_ptr<Comm> world;
  // Rank grid: world = tp x dp with TP innermost (ranks r and r+1 share a TP group).
  int tp = 1, dp = 1, tp_rank = 0, dp_rank = 0;
  std::unique_ptr<Comm> tp_comm, dp_comm;
  // NCCL communicators of the same three groups (CUDA builds, after runtime_enable_device_comms).
  std::unique_ptr<Comm> world_device, tp_device, dp_device;
};

// MPI_Init_thread (works with or without mpirun), identity for error messages, abort hook,
// Slurm consistency check (world size must equal SLURM_NTASKS when set).
Runtime& runtime_init(int* argc, char*** argv);
// Build the TP x DP grid (world = tp x dp); throws InputError when world_size is not a multiple
// of tp.
void runtime_make_grid(Runtime& rt, int tp);
// Create NCCL communicators for world, tp and dp (collective over the world; after the grid and
// after the CUDA device is selected; one unique id per group, broadcast over the group's MPI
// communicator) and register an abort hook that calls ncclCommAbort on each of them before
// MPI_Abort runs. Returns false, creating nothing, when some node runs more ranks than it has
// GPUs (NCCL needs one GPU per rank; the check is collective, so every rank agrees). A no-op
// returning true when they exist; throws in a build without CUDA.
bool runtime_enable_device_comms(Runtime& rt);
// The communicator of group g for tensors on device d: NCCL for Device::cuda when the device
// communicators exist, else MPI (which stages device tensors through host memory).
Comm& runtime_comm(const Runtime& rt, CommGroup g, Device d);
// Seconds spent in collectives on every communicator of rt (comm_time() of each).
double runtime_comm_time(const Runtime& rt);
Runtime& runtime();
bool runtime_active();
void runtime_finalize();

}  // namespace st
