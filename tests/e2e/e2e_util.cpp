#include "tests/e2e/e2e_util.hpp"

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "tests/common/paths.hpp"

namespace st::test {

int job_cores() { return std::max(2, static_cast<int>(std::thread::hardware_concurrency())); }

std::vector<JobResult> run_jobs(const std::vector<Job>& jobs) {
  const int total = job_cores();
  std::vector<JobResult> results(jobs.size());
  std::vector<bool> started(jobs.size(), false);
  std::vector<std::thread> threads;
  std::mutex m;
  std::condition_variable done;
  int busy = 0;
  size_t left = jobs.size();
  std::unique_lock<std::mutex> lock(m);
  while (left > 0) {
    // Start, in list order, every job that fits beside the running ones.
    for (size_t i = 0; i < jobs.size(); ++i) {
      const int need = std::clamp(jobs[i].cores, 1, total);
      if (started[i] || busy + need > total) continue;
      started[i] = true;
      busy += need;
      --left;
      threads.emplace_back([&, i, need] {
        JobResult r;
        r.status = run_command("(" + jobs[i].cmd + ") < /dev/null", &r.output);
        std::lock_guard<std::mutex> g(m);
        results[i] = std::move(r);
        busy -= need;
        done.notify_all();
      });
    }
    if (left > 0) done.wait(lock);
  }
  lock.unlock();
  for (std::thread& t : threads) t.join();
  return results;
}

}  // namespace st::test
