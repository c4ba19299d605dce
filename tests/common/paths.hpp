// Paths for tests: the repository root (from the SHARDTUNE_REPO environment variable, or found by
// walking up from the working directory to the folder holding Makefile and src/), the shared data
// folder (../shared/data next to the repo; empty when absent) and a fresh temporary directory.
#pragma once

#include <string>

namespace st::test {

std::string repo_root();
// The binary under test ($SHARDTUNE_BIN, else <repo>/build/shardtune) and the launcher with its
// flags ($SHARDTUNE_MPIRUN, else "mpirun --oversubscribe"), as the Makefile's test-e2e sets them.
std::string shardtune_bin();
std::string shardtune_mpirun();
// "<repo>/../shared/data" if it exists, else "" (tests then GTEST_SKIP with a message).
std::string shared_data_dir();
// A new empty directory under $TMPDIR (or /tmp), removed by the caller if wanted.
std::string make_temp_dir(const std::string& tag);
// Run a shell command, capturing stdout+stderr; returns the exit status (or -1).
int run_command(const std::string& cmd, std::string* output);
// Read a whole file (throws if missing).
std::string read_file(const std::string& path);
void write_file(const std::string& path, const std::string& content);

}  // namespace st::test
