#include "cli/own_flags.hpp"

#include "core/error.hpp"

namespace st {

bool FlagArg::is(const char* name) const { return arg_ == name || arg_.rfind(std::string(name) + "=", 0) == 0; }

std::string FlagArg::value() {
  const size_t eq = arg_.find('=');
  if (eq != std::string::npos) return arg_.substr(eq + 1);
  if (i_ + 1 >= argc_) ST_THROW_INPUT("command line: ", arg_, " needs a value");
  return argv_[++i_];
}

std::vector<char*> take_own_flags(int argc, char** argv, const std::function<bool(FlagArg&)>& take) {
  std::vector<char*> rest;
  if (argc > 0) rest.push_back(argv[0]);
  for (int i = 1; i < argc; ++i) {
    const int at = i;
    FlagArg a(argc, argv, i);
    if (!take(a)) rest.push_back(argv[at]);
  }
  return rest;
}

}  // namespace st
