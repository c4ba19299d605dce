// A Boost.Program_options value parsed strictly (the run options of config/run_config.cpp and
// the flags of subcommands with their own options, like `generate`).
#pragma once

#include <boost/program_options.hpp>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "core/error.hpp"

namespace st {

inline std::string trim_blanks(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

// A number option parsed strictly: the whole value must be a number of the field's type, a
// negative value for an unsigned field is refused (not wrapped around), an integer outside the
// type is refused (not clamped), and a real must be finite (nan and inf are refused here, before
// any range check could let them through).
template <typename T>
class strict_value : public boost::program_options::typed_value<T> {
 public:
  strict_value(T* field, std::string key) : boost::program_options::typed_value<T>(field), key_(std::move(key)) {}
  void xparse(boost::any& store, const std::vector<std::string>& tokens) const override {
    if (!store.empty()) throw boost::program_options::multiple_occurrences();
    if (tokens.size() != 1) throw boost::program_options::error(str(key_, " needs one value"));
    store = boost::any(parse_number(tokens[0]));
  }

 private:
  T parse_number(const std::string& raw) const {
    const std::string v = trim_blanks(raw);
    auto bad = [&](const std::string& why) { return boost::program_options::error(str(key_, " = '", raw, "': ", why)); };
    if (v.empty()) throw bad("needs a value");
    if constexpr (std::is_floating_point_v<T>) {
      char* end = nullptr;
      errno = 0;
      const double x = std::strtod(v.c_str(), &end);
      if (end != v.c_str() + v.size()) throw bad("is not a number");
      if (!std::isfinite(x)) throw bad("must be a finite number");
      if (errno == ERANGE && x != 0) throw bad("is out of range");
      return static_cast<T>(x);
    } else {
      const char* b = v.c_str();
      const char* e = b + v.size();
      if (*b == '+') ++b;
      if (std::is_unsigned_v<T> && *b == '-') throw bad("must be a non-negative integer");
      T x{};
      const auto [ptr, ec] = std::from_chars(b, e, x);
      if (ec == std::errc::result_out_of_range)
        throw bad(str("is out of range (", std::numeric_limits<T>::min(), " to ", std::numeric_limits<T>::max(), ")"));
      if (ec != std::errc() || ptr != e) throw bad("is not an integer");
      return x;
    }
  }
  std::string key_;
};

}  // namespace st
