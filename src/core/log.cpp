#include "core/log.hpp"
#include "core/log_redirect.hpp"

#include <cstdio>

namespace st {

namespace {
LogLevel g_level = LogLevel::info;
bool g_info_to_stderr = false;
FILE* info_stream() { return g_info_to_stderr ? stderr : stdout; }
}

void set_log_level(LogLevel level) { g_level = level; }
void set_info_log_to_stderr(bool on) { g_info_to_stderr = on; }
LogLevel log_level() { return g_level; }

void log_info_line(const std::string& line) {
  if (process_rank() != 0 || g_level < LogLevel::info) return;
  std::fprintf(info_stream(), "%s\n", line.c_str());
  std::fflush(info_stream());
}

void log_debug_line(const std::string& line) {
  if (process_rank() != 0 || g_level < LogLevel::debug) return;
  std::fprintf(info_stream(), "%s\n", line.c_str());
  std::fflush(info_stream());
}

void log_warn_line(const std::string& line) {
  std::fprintf(stderr, "shardtune: warning (rank %d): %s\n", process_rank(), line.c_str());
  std::fflush(stderr);
}

}  // namespace st
