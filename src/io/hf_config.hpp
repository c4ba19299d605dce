// Typed reading of Hugging Face config.json files, shared by the model families.
#pragma once

#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.hpp"

namespace st {

using json = nlohmann::json;

// Typed access to config.json fields; a null value counts as absent. Errors name file and field.
class ConfigFields {
 public:
  ConfigFields(const json& j, const std::string& path) : j_(j), path_(path) {}

  const json* get(const char* key) const {
    const auto it = j_.find(key);
    return (it == j_.end() || it->is_null()) ? nullptr : &*it;
  }
  int64_t required_int(const char* key) const {
    const json* v = get(key);
    if (!v) ST_THROW_INPUT(path_, ": field '", key, "' is missing");
    return as_int(*v, key);
  }
  int64_t optional_int(const char* key, int64_t fallback) const {
    const json* v = get(key);
    return v ? as_int(*v, key) : fallback;
  }
  double optional_number(const char* key, double fallback) const {
    const json* v = get(key);
    if (!v) return fallback;
    if (!v->is_number()) ST_THROW_INPUT(path_, ": field '", key, "' must be a number, got ", v->type_name());
    return v->get<double>();
  }
  bool optional_bool(const char* key, bool fallback) const {
    const json* v = get(key);
    if (!v) return fallback;
    if (!v->is_boolean()) ST_THROW_INPUT(path_, ": field '", key, "' must be true or false, got ", v->dump());
    return v->get<bool>();
  }
  std::string optional_string(const char* key, const std::string& fallback) const {
    const json* v = get(key);
    if (!v) return fallback;
    if (!v->is_string()) ST_THROW_INPUT(path_, ": field '", key, "' must be a string, got ", v->type_name());
    return v->get<std::string>();
  }
  int64_t as_int(const json& v, const std::string& key) const {
    const bool fits = v.is_number_integer() &&
                      !(v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max()));
    if (!fits) ST_THROW_INPUT(path_, ": field '", key, "' must be an integer, got ", v.dump());
    return v.get<int64_t>();
  }
  const std::string& path() const { return path_; }

 private:
  const json& j_;
  const std::string& path_;
};

// Token ids: an integer, null (-1: none), or a list whose first element is used.
inline int64_t read_token_id(const json& j, const ConfigFields& f, const char* key, int64_t fallback) {
  const auto it = j.find(key);
  if (it == j.end()) return fallback;
  if (it->is_null()) return -1;
  if (!it->is_array()) return f.as_int(*it, key);
  for (const json& v : *it) f.as_int(v, key);  // every element must be an integer
  return it->empty() ? -1 : f.as_int((*it)[0], key);
}

}  // namespace st
