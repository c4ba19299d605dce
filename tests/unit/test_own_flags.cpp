// The argv split of `shardtune plan` and `shardtune calibrate` (cli/own_flags.hpp): their own
// flags taken in both spellings, the run options left in order for parse_run_config.
#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "cli/own_flags.hpp"
#include "../common/test_util.hpp"

namespace st {
namespace {

// take_own_flags over `args` (the subcommand's name first); what it leaves.
std::vector<std::string> rest_of(std::vector<std::string> args, const std::function<bool(FlagArg&)>& take) {
  std::vector<char*> argv;
  for (std::string& s : args) argv.push_back(s.data());
  const std::vector<char*> rest = take_own_flags(static_cast<int>(argv.size()), argv.data(), take);
  return std::vector<std::string>(rest.begin(), rest.end());
}

TEST(OwnFlags, TakesBothSpellingsAndKeepsTheRestInOrder) {
  std::vector<std::string> outs;
  bool small = false;
  const std::vector<std::string> rest =
      rest_of({"plan", "--deck", "d.toml", "--out=x.json", "--lr", "1e-4", "--out", "y.json", "--small", "--outside", "1"},
              [&](FlagArg& f) {
                if (f.is("--out")) outs.push_back(f.value());
                else if (f.arg() == "--small") small = true;
                else return false;
                return true;
              });
  EXPECT_EQ(outs, (std::vector<std::string>{"x.json", "y.json"}));
  EXPECT_TRUE(small);
  // --outside is not --out: it stays with the run options, as the subcommand's name does.
  EXPECT_EQ(rest, (std::vector<std::string>{"plan", "--deck", "d.toml", "--lr", "1e-4", "--outside", "1"}));
}

TEST(OwnFlags, ValueAfterTheFirstEqualsSign) {
  std::vector<std::string> values;
  rest_of({"calibrate", "--out=a=b", "--seconds="}, [&](FlagArg& f) {
    values.push_back(f.value());
    return true;
  });
  EXPECT_EQ(values, (std::vector<std::string>{"a=b", ""}));
}

TEST(OwnFlags, MissingValueNamesTheFlag) {
  test::expect_input_error(
      [&] {
        rest_of({"plan", "--deck", "d.toml", "--json"}, [&](FlagArg& f) {
          if (!f.is("--json")) return false;
          f.value();
          return true;
        });
      },
      {"command line: --json needs a value"});
}

}  // namespace
}  // namespace st
