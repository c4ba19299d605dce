#include "core/log.hpp"

#include <cstdio>

namespace st {

namespace {
LogLevel g_level = LogLevel::info;
}

void set_log_level(LogLevel level) { g_level = level; }
LogLevel log_level() { return g_level; }

void log_info_line(const std::string& line) {
  if (process_rank() != 0 || g_level < LogLevel::info) return;
  std::fprintf(stdout, "%s\n", line.c_str());
  std::fflush(stdout);
}

void log_debug_line(const std::string& line) {
  if (process_rank() != 0 || g_level < LogLevel::debug) return;
  std::fprintf(stdout, "%s\n", line.c_str());
  std::fflush(stdout);
}

void log_warn_line(const std::string& line) {
  std::fprintf(stderr, "shardtune: warning (rank %d): %s\n", process_rank(), line.c_str());
  std::fflush(stderr);
}

}  // namespace st
