// SHARDTUNE_* switches of the kernels (read once by their callers, which keep the result in a
// static). env_choice: unset or empty gives `unset`, a listed value its index, anything else an
// InputError naming the variable and the values. env_switch: the two-valued case (off, on).
#pragma once

#include <cstdlib>
#include <initializer_list>
#include <string>

#include "core/error.hpp"

namespace st {

inline int env_choice(const char* name, std::initializer_list<const char*> values, int unset) {
  const char* e = std::getenv(name);
  if (!e || !*e) return unset;
  const std::string v = e;
  int i = 0;
  std::string listed;
  for (const char* value : values) {
    if (v == value) return i;
    listed += str(i == 0 ? "" : i + 1 == static_cast<int>(values.size()) ? " or " : ", ", value);
    ++i;
  }
  ST_THROW_INPUT(name, "=", v, ": expected ", listed);
}

inline bool env_switch(const char* name, const char* off, const char* on, bool unset) {
  return env_choice(name, {off, on}, unset ? 1 : 0) == 1;
}

}  // namespace st
