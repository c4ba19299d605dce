// The GPU benchmarks' timing loop (CUDA builds only): each call timed alone between two
// cudaEvents on the default stream, 3 untimed calls first, the median of `runs`.
#pragma once

#ifdef SHARDTUNE_CUDA
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <vector>

namespace st::test {

// Runs from the environment variable `env` (at least 1), else `fallback`.
inline int bench_runs(const char* env, int fallback) {
  const char* v = std::getenv(env);
  return v ? std::max(1, std::atoi(v)) : fallback;
}

// Median milliseconds of call() over `runs` timed calls after 3 untimed; before() runs ahead of
// each call, outside the timed span (an L2 flush, say). call() returns false to give up: -1.
template <typename Before, typename Call>
double median_event_ms(int runs, Before&& before, Call&& call) {
  cudaEvent_t e0, e1;
  EXPECT_EQ(cudaEventCreate(&e0), cudaSuccess);
  EXPECT_EQ(cudaEventCreate(&e1), cudaSuccess);
  std::vector<float> ms;
  bool ok = true;
  for (int i = 0; i < runs + 3 && ok; ++i) {
    before(i);
    EXPECT_EQ(cudaEventRecord(e0, 0), cudaSuccess);
    ok = call();
    EXPECT_EQ(cudaEventRecord(e1, 0), cudaSuccess);
    EXPECT_EQ(cudaEventSynchronize(e1), cudaSuccess);
    float t = 0;
    EXPECT_EQ(cudaEventElapsedTime(&t, e0, e1), cudaSuccess);
    if (i >= 3) ms.push_back(t);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  if (!ok) return -1.0;
  std::sort(ms.begin(), ms.end());
  return static_cast<double>(ms[ms.size() / 2]);
}

}  // namespace st::test
#endif
