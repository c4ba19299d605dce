// A subcommand's own flags taken out of its argv, the rest (the deck and --key value run options)
// left for parse_run_config: the argv loop of `shardtune plan` and `shardtune calibrate`.
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace st {

// The argument under the loop, and its value (`--name=value` or `--name value`).
class FlagArg {
 public:
  FlagArg(int argc, char** argv, int& i) : argc_(argc), argv_(argv), i_(i), arg_(argv[i]) {}
  const std::string& arg() const { return arg_; }
  // `name` itself or `name=...`.
  bool is(const char* name) const;
  // The text after the first '=', else the next argument (consumed). InputError
  // "command line: <arg> needs a value" when there is none.
  std::string value();

 private:
  int argc_;
  char** argv_;
  int& i_;
  std::string arg_;
};

// Calls `take` on argv[1..argc) in order; it returns true when it took the argument as one of
// the subcommand's own flags (reading any value through FlagArg::value). Returns argv[0] (the
// subcommand's name) and the arguments not taken, in their order.
std::vector<char*> take_own_flags(int argc, char** argv, const std::function<bool(FlagArg&)>& take);

}  // namespace st
