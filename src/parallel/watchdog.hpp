// Watchdog: a background thread that ends the whole job when this rank makes no progress for
// `timeout_s` seconds (a rank stuck in a collective whose peer died or hangs, a hung kernel, a
// deadlocked step) instead of leaving every rank waiting until the batch system's time limit.
//
// Progress is a beat: watchdog_beat(what), or entering or leaving a WatchdogScope. Every Comm
// collective opens a scope labelled "<op> on <group> (<backend>)"; the trainer beats once per
// step and evaluation once per batch. With no beat for timeout_s seconds the watchdog prints
//   shardtune: watchdog on rank R (host): no progress for N s in <what>; aborting the job
// and takes the fatal path's abort hooks (ncclCommAbort on every NCCL communicator, MPI_Abort).
//
// The timeout must exceed the longest stretch without a beat on any rank: a step, one
// collective including the wait for the slowest peer (e.g. while rank 0 saves the model), model
// loading. NCCL collectives return once enqueued, so a hang inside one shows up at the next
// host synchronisation and is reported under the label of the step.
//
// The state is per process; beats are meant for the main thread (the one that calls the
// collectives).
#pragma once

#include <string>
#include <string_view>

namespace st {

// Start (or restart with a new timeout) the watchdog thread; timeout_s <= 0 stops it.
void watchdog_start(double timeout_s);
// Stop and join the thread (no-op when not running).
void watchdog_stop();
bool watchdog_running();

// Mark progress now; `what` names what this rank is doing from now on.
void watchdog_beat(std::string_view what);
// The current label (for tests and messages).
std::string watchdog_label();

// Beats with `what` on entry; on exit beats again and restores the enclosing label.
class WatchdogScope {
 public:
  explicit WatchdogScope(std::string_view what);
  ~WatchdogScope();
  WatchdogScope(const WatchdogScope&) = delete;
  WatchdogScope& operator=(const WatchdogScope&) = delete;

 private:
  std::string previous_;
};

}  // namespace st
