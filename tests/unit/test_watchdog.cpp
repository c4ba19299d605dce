// The watchdog on its own (one process, no MPI): labels, beats that keep it quiet, and the abort
// with its one-line message when nothing beats; the deck key that sets its timeout. The job-level
// behaviour (a hung rank of an mpirun job) is the e2e test HungRankIsEndedByTheWatchdog.
#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include "config/run_config.hpp"
#include "core/error.hpp"
#include "parallel/watchdog.hpp"

namespace st {
namespace {

using namespace std::chrono_literals;

TEST(Watchdog, ScopesLabelAndRestore) {
  watchdog_beat("outer");
  EXPECT_EQ(watchdog_label(), "outer");
  {
    WatchdogScope a("all_reduce_sum on dp (mpi)");
    EXPECT_EQ(watchdog_label(), "all_reduce_sum on dp (mpi)");
    {
      WatchdogScope b("inner");
      EXPECT_EQ(watchdog_label(), "inner");
    }
    EXPECT_EQ(watchdog_label(), "all_reduce_sum on dp (mpi)");
  }
  EXPECT_EQ(watchdog_label(), "outer");
}

TEST(Watchdog, BeatsKeepItQuietAndStopJoins) {
  // 1.5 s of work in 50 ms pieces under a 0.4 s timeout: it must not fire (this process would end).
  watchdog_start(0.4);
  EXPECT_TRUE(watchdog_running());
  for (int i = 0; i < 30; ++i) {
    std::this_thread::sleep_for(50ms);
    watchdog_beat("piece");
  }
  watchdog_stop();
  EXPECT_FALSE(watchdog_running());
  watchdog_start(0);  // 0 = off
  EXPECT_FALSE(watchdog_running());
  watchdog_stop();  // stopping a stopped watchdog is a no-op
  EXPECT_FALSE(watchdog_running());
}

TEST(WatchdogDeathTest, NoProgressAbortsWithOneLineNamingWhat) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        watchdog_beat("unit test step 7");
        watchdog_start(0.3);
        std::this_thread::sleep_for(30s);  // hung: no beat
        std::exit(0);                      // not reached when the watchdog works
      },
      ::testing::ExitedWithCode(kExitError),
      "shardtune: watchdog on rank 0 \\(.*\\): no progress for [0-9.]+ s in unit test step 7; aborting the job");
  // A scope entered before the hang names what hung.
  EXPECT_EXIT(
      {
        watchdog_start(0.3);
        WatchdogScope scope("barrier on world (mpi)");
        std::this_thread::sleep_for(30s);
        std::exit(0);
      },
      ::testing::ExitedWithCode(kExitError), "no progress for [0-9.]+ s in barrier on world \\(mpi\\); aborting");
}

TEST(Watchdog, DeckKeyWatchdogTimeout) {
  auto parse = [](std::vector<std::string> a, RunConfig& c) {
    a.insert(a.begin(), "train");
    std::vector<char*> argv;
    for (auto& s : a) argv.push_back(s.data());
    return parse_run_config(static_cast<int>(argv.size()), argv.data(), "train", c);
  };
  RunConfig defaults;
  ASSERT_TRUE(parse({"--data", "x", "--run_id", "w"}, defaults));
  EXPECT_DOUBLE_EQ(defaults.watchdog_timeout, 600.0);
  RunConfig c;
  ASSERT_TRUE(parse({"--data", "x", "--run_id", "w", "--watchdog_timeout", "5"}, c));
  EXPECT_DOUBLE_EQ(c.watchdog_timeout, 5.0);
  EXPECT_EQ(c.origin.at("watchdog_timeout"), "command line");
  RunConfig off;
  ASSERT_TRUE(parse({"--data", "x", "--run_id", "w", "--watchdog_timeout", "0"}, off));
  EXPECT_DOUBLE_EQ(off.watchdog_timeout, 0.0);
  RunConfig bad;
  try {
    parse({"--data", "x", "--run_id", "w", "--watchdog_timeout", "-1"}, bad);
    ADD_FAILURE() << "watchdog_timeout = -1 was accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("watchdog_timeout"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace st
