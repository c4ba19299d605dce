// GoogleTest main for tests run under mpirun: every rank runs every test; only rank 0 prints;
// the exit status is the worst over all ranks, so a failure on any rank fails the job.
#include <gtest/gtest.h>
#include <mpi.h>

#include "parallel/runtime.hpp"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  st::Runtime& rt = st::runtime_init(&argc, &argv);
  if (rt.world_rank != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int local = RUN_ALL_TESTS();
  int worst = 0;
  MPI_Allreduce(&local, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  if (rt.world_rank == 0 && worst != local) std::fprintf(stderr, "mpi_tests: a test failed on another rank\n");
  if (local != 0) std::fprintf(stderr, "mpi_tests: failures on rank %d\n", rt.world_rank);
  st::runtime_finalize();
  return worst;
}
