#include "parallel/runtime.hpp"

#include <unistd.h>

#include <cstdlib>

#include "core/log.hpp"

namespace st {

namespace {
std::unique_ptr<Runtime> g_runtime;
}

Runtime& runtime_init(int* argc, char*** argv) {
  if (g_runtime) return *g_runtime;
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = 0;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
      ST_THROW("MPI_Init_thread failed");
  }
  g_runtime = std::make_unique<Runtime>();
  Runtime& rt = *g_runtime;
  MPI_Comm_rank(MPI_COMM_WORLD, &rt.world_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &rt.world_size);
  char name[MPI_MAX_PROCESSOR_NAME];
  int len = 0;
  MPI_Get_processor_name(name, &len);
  rt.host.assign(name, static_cast<size_t>(len));
  set_process_identity(rt.world_rank, rt.host);
  // From here on, a fatal error on any rank aborts the whole job.
  add_abort_hook([](int status) {
    int init = 0, fin = 0, size = 1;
    MPI_Initialized(&init);
    MPI_Finalized(&fin);
    if (!init || fin) return;
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    // Alone, finalizing and exiting is the same as aborting, without the launcher's banner;
    // with peers, only MPI_Abort ends them (they may be blocked in a collective).
    if (size == 1) MPI_Finalize();
    else MPI_Abort(MPI_COMM_WORLD, status);
  });
  MPI_Comm node;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rt.world_rank, MPI_INFO_NULL, &node);
  MPI_Comm_rank(node, &rt.local_rank);
  MPI_Comm_size(node, &rt.local_size);
  MPI_Comm_free(&node);
  rt.world = make_mpi_comm(MPI_COMM_WORLD, "world");
  if (const char* nt = std::getenv("SLURM_NTASKS")) {
    const int ntasks = std::atoi(nt);
    if (ntasks > 0 && ntasks != rt.world_size)
      ST_THROW_INPUT("MPI world size is ", rt.world_size, " but SLURM_NTASKS is ", ntasks,
                     ": the launcher did not wire the ranks together (with srun use --mpi=pmix, or launch with mpirun)");
  }
  return rt;
}

void runtime_make_grid(Runtime& rt, int tp) {
  if (tp < 1 || rt.world_size % tp != 0)
    ST_THROW_INPUT("tp_size ", tp, " does not divide the world size ", rt.world_size);
  rt.tp = tp;
  rt.dp = rt.world_size / tp;
  rt.tp_rank = rt.world_rank % tp;
  rt.dp_rank = rt.world_rank / tp;
  MPI_Comm tpc, dpc;
  MPI_Comm_split(MPI_COMM_WORLD, rt.dp_rank, rt.tp_rank, &tpc);  // same dp index: one TP group
  MPI_Comm_split(MPI_COMM_WORLD, rt.tp_rank, rt.dp_rank, &dpc);
  rt.tp_comm = make_mpi_comm(tpc, "tp");
  rt.dp_comm = make_mpi_comm(dpc, "dp");
  MPI_Comm_free(&tpc);
  MPI_Comm_free(&dpc);
}

Runtime& runtime() {
  if (!g_runtime) ST_THROW("runtime used before runtime_init");
  return *g_runtime;
}

bool runtime_active() { return g_runtime != nullptr; }

void runtime_finalize() {
  if (!g_runtime) return;
  g_runtime.reset();
  clear_abort_hooks();
  int fin = 0;
  MPI_Finalized(&fin);
  if (!fin) MPI_Finalize();
}

}  // namespace st
