// What the end-to-end tests share: commands run side by side on the machine's cores.
#pragma once

#include <string>
#include <vector>

namespace st::test {

// A command and the cores it keeps busy (ranks x threads; capped at the machine's).
struct Job {
  std::string cmd;
  int cores = 1;
};
struct JobResult {
  int status = -1;
  std::string output;  // stdout and stderr
};

// The cores jobs may share: the machine's, at least 2.
int job_cores();

// Runs every job, each as soon as the cores the running ones leave free cover it (a job that
// needs more than the machine has runs alone), in list order among those that fit; returns
// each job's exit status and output, in list order. Stdin is /dev/null.
std::vector<JobResult> run_jobs(const std::vector<Job>& jobs);

}  // namespace st::test
