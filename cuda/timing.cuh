// GPU-side timing of a host callable that enqueues work (calibrate, train/calibrate.cpp).
#pragma once

#include <functional>

namespace st::cuda {

// Time of `op` (which enqueues GPU work on the stream) in two parts: its GPU time, with the
// host-side launch cost hidden (the calls are enqueued behind a spinning kernel, then run back to
// back), and its host time per call (what the host spends enqueueing it). A training step
// overlaps the two while the GPU has queued work; a tiny op timed back to back unblocked would
// measure whichever is longer, and the host's share depends on the CPU of the machine.
struct BlockedTiming {
  double gpu_seconds = 0;   // per call
  double host_seconds = 0;  // per call
  bool hidden = false;      // the host finished enqueueing before the spin ended (else gpu_seconds is an upper bound)
};
BlockedTiming time_blocked(const std::function<void()>& op, int reps);

}  // namespace st::cuda
