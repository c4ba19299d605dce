#include "parallel/watchdog.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <thread>

#include "core/error.hpp"
#include "core/timer.hpp"

namespace st {

namespace {

struct WatchdogState {
  std::mutex mu;  // guards everything below
  std::condition_variable wake;
  std::string label = "start-up";
  double last_beat = now_seconds();
  bool stopping = false;
  std::thread thread;

  ~WatchdogState() {
    // A normal exit without watchdog_stop(): a joinable std::thread would call std::terminate.
    if (thread.joinable()) {
      {
        std::lock_guard<std::mutex> lock(mu);
        stopping = true;
      }
      wake.notify_all();
      thread.join();
    }
  }
};

WatchdogState& state() {
  static WatchdogState s;
  return s;
}

void watch(double timeout) {
  WatchdogState& s = state();
  // Poll often enough to fire within ~10% of the timeout, at most once a second.
  const auto poll = std::chrono::duration<double>(std::clamp(timeout / 10.0, 0.01, 1.0));
  std::unique_lock<std::mutex> lock(s.mu);
  while (!s.stopping) {
    s.wake.wait_for(lock, poll);
    if (s.stopping) break;
    const double idle = now_seconds() - s.last_beat;
    if (idle < timeout) continue;
    char secs[32];  // whole seconds, or tenths below 10 s
    std::snprintf(secs, sizeof(secs), idle < 10 ? "%.1f" : "%.0f", idle);
    const std::string line = str("shardtune: watchdog on rank ", process_rank(), " (", process_host(),
                                 "): no progress for ", secs, " s in ", s.label, "; aborting the job");
    lock.unlock();  // the main thread may still beat while the hooks run; it must not block on us
    abort_job(line, kExitError);
  }
}

}  // namespace

void watchdog_start(double timeout_s) {
  watchdog_stop();
  if (!(timeout_s > 0)) return;
  WatchdogState& s = state();
  {
    std::lock_guard<std::mutex> lock(s.mu);
    s.stopping = false;
    s.last_beat = now_seconds();
  }
  s.thread = std::thread(watch, timeout_s);
}

void watchdog_stop() {
  WatchdogState& s = state();
  if (!s.thread.joinable()) return;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    s.stopping = true;
  }
  s.wake.notify_all();
  s.thread.join();
}

bool watchdog_running() { return state().thread.joinable(); }

void watchdog_beat(std::string_view what) {
  WatchdogState& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  s.label.assign(what);
  s.last_beat = now_seconds();
}

std::string watchdog_label() {
  WatchdogState& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  return s.label;
}

WatchdogScope::WatchdogScope(std::string_view what) {
  WatchdogState& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  previous_ = std::move(s.label);
  s.label.assign(what);
  s.last_beat = now_seconds();
}

WatchdogScope::~WatchdogScope() {
  WatchdogState& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  s.label = std::move(previous_);
  s.last_beat = now_seconds();
}

}  // namespace st
