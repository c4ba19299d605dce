// Errors and the one fatal path.
//
// Library code throws; the subcommand entry points catch and call fatal(), which prints one
// line (rank, host, file:line, message), runs the registered abort hooks (communicators,
// MPI_Abort) and exits non-zero. Three kinds of error map to three exit statuses:
//   Error        internal or runtime failure      exit 1
//   InputError   bad input (deck, file, shape)    exit 2
//   OutOfMemory  an allocation over the cap        exit 3 (recorded as outcome "oom")
// A training run stopped by SIGTERM / SIGUSR1 after writing a checkpoint exits 4 (outcome
// "preempted"; train/checkpoint.hpp).
#pragma once

#include <cstddef>
#include <functional>
#include <sstream>
#include <stdexcept>
#include <string>

namespace st {

enum ExitStatus : int { kExitOk = 0, kExitError = 1, kExitInput = 2, kExitOom = 3, kExitPreempted = 4, kExitInterrupted = 130 };

// str(a, b, c): concatenate anything streamable (libstdc++ 12 has no <format>).
template <typename... Args>
std::string str(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

class Error : public std::runtime_error {
 public:
  Error(const std::string& msg, const char* file, int line)
      : std::runtime_error(msg), file_(file), line_(line) {}
  const char* file() const { return file_; }
  int line() const { return line_; }
  virtual int exit_status() const { return kExitError; }

 private:
  const char* file_;
  int line_;
};

class InputError : public Error {
 public:
  using Error::Error;
  int exit_status() const override { return kExitInput; }
};

class OutOfMemory : public Error {
 public:
  OutOfMemory(const std::string& msg, const char* file, int line, size_t requested,
              std::string category, std::string phase)
      : Error(msg, file, line), requested_(requested), category_(std::move(category)),
        phase_(std::move(phase)) {}
  int exit_status() const override { return kExitOom; }
  size_t requested() const { return requested_; }
  const std::string& category() const { return category_; }
  const std::string& phase() const { return phase_; }

 private:
  size_t requested_;
  std::string category_;
  std::string phase_;
};

// Identity printed in every fatal message; set once MPI is up.
void set_process_identity(int rank, const std::string& host);
int process_rank();
const std::string& process_host();

// Hooks run by fatal() before exiting (e.g. ncclCommAbort, MPI_Abort). The last hook
// registered runs first. A hook that exits the process (MPI_Abort) ends the chain.
void add_abort_hook(std::function<void(int exit_status)> hook);
void clear_abort_hooks();

// Print "shardtune: fatal on rank R (host) at file:line: msg" and abort the job.
[[noreturn]] void fatal(const char* file, int line, const std::string& msg,
                        int exit_status = kExitError);
// Same for a caught exception (keeps the thrower's file:line and exit status).
[[noreturn]] void fatal(const Error& e);
// The abort path without the fatal line's format: print `line` as it is, run the hooks, exit
// (the watchdog reports its own line). Safe to call from any thread: only one caller proceeds.
[[noreturn]] void abort_job(const std::string& line, int exit_status);
// One-line description used by fatal() and by tests that check messages.
std::string describe(const Error& e);

}  // namespace st

#define ST_FATAL(...) ::st::fatal(__FILE__, __LINE__, ::st::str(__VA_ARGS__))
#define ST_THROW(...) throw ::st::Error(::st::str(__VA_ARGS__), __FILE__, __LINE__)
#define ST_THROW_INPUT(...) throw ::st::InputError(::st::str(__VA_ARGS__), __FILE__, __LINE__)
#define ST_CHECK(cond, ...)                                                      \
  do {                                                                           \
    if (!(cond)) ST_THROW("check failed: " #cond ": ", __VA_ARGS__);             \
  } while (0)
#define ST_CHECK_INPUT(cond, ...)                                                \
  do {                                                                           \
    if (!(cond)) ST_THROW_INPUT(__VA_ARGS__);                                    \
  } while (0)
