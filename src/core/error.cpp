#include "core/error.hpp"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

namespace st {

namespace {
int g_rank = 0;
std::string g_host;
std::vector<std::function<void(int)>>& hooks() {
  static std::vector<std::function<void(int)>> h;
  return h;
}
std::mutex& hooks_mutex() {  // hooks may be added while another thread (the watchdog) aborts
  static std::mutex m;
  return m;
}
std::mutex& fatal_mutex() {
  static std::mutex m;
  return m;
}

const char* basename_of(const char* path) {
  const char* slash = std::strrchr(path, '/');
  return slash ? slash + 1 : path;
}
}  // namespace

void set_process_identity(int rank, const std::string& host) {
  g_rank = rank;
  g_host = host;
}

int process_rank() { return g_rank; }

const std::string& process_host() {
  if (g_host.empty()) {
    char buf[256] = {0};
    if (gethostname(buf, sizeof(buf) - 1) == 0) g_host = buf;
    else g_host = "unknown-host";
  }
  return g_host;
}

void add_abort_hook(std::function<void(int)> hook) {
  std::lock_guard<std::mutex> lock(hooks_mutex());
  hooks().push_back(std::move(hook));
}
void clear_abort_hooks() {
  std::lock_guard<std::mutex> lock(hooks_mutex());
  hooks().clear();
}

static std::string format_fatal(const char* file, int line, const std::string& msg) {
  return str("shardtune: fatal on rank ", g_rank, " (", process_host(), ") at ", basename_of(file),
             ":", line, ": ", msg);
}

std::string describe(const Error& e) { return format_fatal(e.file(), e.line(), e.what()); }

void fatal(const char* file, int line, const std::string& msg, int exit_status) {
  abort_job(format_fatal(file, line, msg), exit_status);
}

void abort_job(const std::string& line, int exit_status) {
  // Only one thread reports; others block here until the process ends.
  fatal_mutex().lock();
  std::fprintf(stderr, "%s\n", line.c_str());
  std::fflush(stderr);
  std::fflush(stdout);
  std::vector<std::function<void(int)>> h;
  {
    std::lock_guard<std::mutex> lock(hooks_mutex());
    h = hooks();
  }
  for (auto it = h.rbegin(); it != h.rend(); ++it) (*it)(exit_status);
  std::_Exit(exit_status == 0 ? kExitError : exit_status);
}

void fatal(const Error& e) { fatal(e.file(), e.line(), e.what(), e.exit_status()); }

}  // namespace st
