// Logging: rank 0 prints informational lines; every rank prints warnings with its rank.
#pragma once

#include <string>

#include "core/error.hpp"

namespace st {

enum class LogLevel { quiet = 0, info = 1, debug = 2 };
void set_log_level(LogLevel level);
LogLevel log_level();

void log_info_line(const std::string& line);   // rank 0 only, stdout
void log_debug_line(const std::string& line);  // rank 0 only, stdout, when level >= debug
void log_warn_line(const std::string& line);   // every rank, stderr, prefixed with the rank

}  // namespace st

#define ST_LOG(...) ::st::log_info_line(::st::str(__VA_ARGS__))
#define ST_DEBUG(...) ::st::log_debug_line(::st::str(__VA_ARGS__))
#define ST_WARN(...) ::st::log_warn_line(::st::str(__VA_ARGS__))
