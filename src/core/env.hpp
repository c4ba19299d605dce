// Two-valued SHARDTUNE_* switches of the kernels (read once by their callers, which keep the result
// in a static): unset gives the default, `off` false, `on` true, anything else an InputError naming
// the variable and both values.
#pragma once

#include <cstdlib>
#include <string>

#include "core/error.hpp"

namespace st {

inline bool env_switch(const char* name, const char* off, const char* on, bool unset) {
  const char* e = std::getenv(name);
  if (!e || !*e) return unset;
  const std::string v = e;
  if (v == off) return false;
  if (v == on) return true;
  ST_THROW_INPUT(name, "=", v, ": expected ", off, " or ", on);
}

}  // namespace st
