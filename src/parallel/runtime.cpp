#include "parallel/runtime.hpp"

#include <unistd.h>

#include <cstdlib>
#include <thread>

#include "core/log.hpp"

#ifdef SHARDTUNE_CUDA
#include <cuda_runtime.h>
#endif

namespace st {

namespace {
std::unique_ptr<Runtime> g_runtime;
std::thread::id g_main_thread;  // the thread that initialised MPI (MPI_THREAD_FUNNELED)
bool g_nccl_hook = false;       // the ncclCommAbort hook is registered

// Split MPI_COMM_WORLD into rt's TP and DP groups (TP innermost); the caller frees both.
void split_grid(const Runtime& rt, MPI_Comm* tpc, MPI_Comm* dpc) {
  MPI_Comm_split(MPI_COMM_WORLD, rt.dp_rank, rt.tp_rank, tpc);  // same dp index: one TP group
  MPI_Comm_split(MPI_COMM_WORLD, rt.tp_rank, rt.dp_rank, dpc);
}
}  // namespace

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
  g_main_thread = std::this_thread::get_id();
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
    // with peers, only MPI_Abort ends them (they may be blocked in a collective). Another
    // thread (the watchdog) must not finalize while the main thread may be inside MPI.
    if (size == 1 && std::this_thread::get_id() == g_main_thread) MPI_Finalize();
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
  if (tp < 1) ST_THROW_INPUT("tp_size = ", tp, " must be >= 1");
  if (rt.world_size % tp != 0)
    ST_THROW_INPUT("tp_size = ", tp, " does not divide the world of ", rt.world_size, " ranks: the rank grid needs "
                   "world = tp x dp (launch a multiple of ", tp, " ranks, or change tp_size)");
  rt.tp = tp;
  rt.dp = rt.world_size / tp;
  rt.tp_rank = rt.world_rank % tp;
  rt.dp_rank = rt.world_rank / tp;
  MPI_Comm tpc, dpc;
  split_grid(rt, &tpc, &dpc);
  rt.tp_comm = make_mpi_comm(tpc, "tp");
  rt.dp_comm = make_mpi_comm(dpc, "dp");
  MPI_Comm_free(&tpc);
  MPI_Comm_free(&dpc);
  // Device communicators of an earlier grid no longer match it.
  rt.world_device.reset();
  rt.tp_device.reset();
  rt.dp_device.reset();
}

bool runtime_enable_device_comms(Runtime& rt) {
  if (rt.world_device) return true;
  if (!rt.tp_comm || !rt.dp_comm) ST_THROW("runtime_enable_device_comms before runtime_make_grid");
#ifdef SHARDTUNE_CUDA
  // NCCL needs a GPU of its own for every rank; decided together, or ranks would disagree on
  // which communicator to call.
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess) {
    (void)cudaGetLastError();
    devices = 0;
  }
  int own_gpu = rt.local_size <= devices ? 1 : 0, all_own_gpu = 0;
  MPI_Allreduce(&own_gpu, &all_own_gpu, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
  if (!all_own_gpu) {
    ST_LOG("nccl: not used (some node runs more ranks than it has GPUs); device tensors go through MPI via host memory");
    return false;
  }
  MPI_Comm tpc, dpc;
  split_grid(rt, &tpc, &dpc);
  try {
    rt.world_device = make_nccl_comm(MPI_COMM_WORLD, "world");
    rt.tp_device = make_nccl_comm(tpc, "tp");
    rt.dp_device = make_nccl_comm(dpc, "dp");
  } catch (...) {
    MPI_Comm_free(&tpc);
    MPI_Comm_free(&dpc);
    throw;
  }
  MPI_Comm_free(&tpc);
  MPI_Comm_free(&dpc);
  // Runs before the MPI hook (last registered runs first): no kernel of this rank stays blocked
  // in a collective. Looks the runtime up when it runs, so a finalized runtime is never touched.
  if (!g_nccl_hook) {
    g_nccl_hook = true;
    add_abort_hook([](int) {
      if (!g_runtime) return;
      for (Comm* c : {g_runtime->dp_device.get(), g_runtime->tp_device.get(), g_runtime->world_device.get()})
        if (c) nccl_abort_communicator(*c);
    });
  }
  ST_LOG("nccl: communicators world (", rt.world_size, " ranks), tp (", rt.tp, "), dp (", rt.dp, ")");
  return true;
#else
  ST_THROW("device communicators need a CUDA build (this one was built with CUDA=0)");
#endif
}

Comm& runtime_comm(const Runtime& rt, CommGroup g, Device d) {
  const bool device = d == Device::cuda && rt.world_device;
  const std::unique_ptr<Comm>& c = g == CommGroup::world ? (device ? rt.world_device : rt.world)
                                   : g == CommGroup::tp  ? (device ? rt.tp_device : rt.tp_comm)
                                                         : (device ? rt.dp_device : rt.dp_comm);
  if (!c) ST_THROW("runtime_comm: the ", g == CommGroup::world ? "world" : g == CommGroup::tp ? "tp" : "dp",
                   " communicator does not exist (runtime_make_grid not called)");
  return *c;
}

double runtime_comm_time(const Runtime& rt) {
  double t = 0;
  for (const Comm* c : {rt.world.get(), rt.tp_comm.get(), rt.dp_comm.get(), rt.world_device.get(), rt.tp_device.get(),
                        rt.dp_device.get()})
    if (c) t += c->comm_time();
  return t;
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
  g_nccl_hook = false;
  int fin = 0;
  MPI_Finalized(&fin);
  if (!fin) MPI_Finalize();
}

}  // namespace st
