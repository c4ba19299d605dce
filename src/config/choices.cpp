#include "config/choices.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>

#include "config/run_config.hpp"
#include "core/error.hpp"

namespace st {

namespace {

template <typename E, size_t N>
E parse_choice(const std::string& s, const std::string& where, const char* what, const std::pair<E, const char*> (&table)[N]) {
  std::string list;
  for (const auto& [e, name] : table) {
    if (s == name) return e;
    list += (list.empty() ? "" : " | ") + std::string(name);
  }
  ST_THROW_INPUT(where, ": ", what, " '", s, "' is not one of: ", list);
}

const std::pair<Method, const char*> kMethods[] = {
    {Method::full, "full"}, {Method::lora, "lora"}, {Method::qlora, "qlora"}};
const std::pair<Strategy, const char*> kStrategies[] = {
    {Strategy::none, "none"},   {Strategy::ddp, "ddp"},           {Strategy::tp, "tp"},
    {Strategy::zero3, "zero3"}, {Strategy::tp_zero3, "tp+zero3"}, {Strategy::automatic, "auto"}};

const std::pair<MasterWeights, const char*> kMasterWeights[] = {{MasterWeights::f32, "f32"},
                                                                {MasterWeights::none, "none"}};

template <typename E, size_t N>
const char* name_of(E e, const std::pair<E, const char*> (&table)[N]) {
  for (const auto& [x, name] : table)
    if (x == e) return name;
  ST_THROW("unknown choice ", static_cast<int>(e));
}

}  // namespace

const char* method_name(Method m) { return name_of(m, kMethods); }
const char* strategy_name(Strategy s) { return name_of(s, kStrategies); }
const char* master_weights_name(MasterWeights m) { return name_of(m, kMasterWeights); }

Method parse_method(const std::string& s, const std::string& where) { return parse_choice(s, where, "method", kMethods); }
Strategy parse_strategy(const std::string& s, const std::string& where) {
  return parse_choice(s, where, "strategy", kStrategies);
}
MasterWeights parse_master_weights(const std::string& s, const std::string& where) {
  return parse_choice(s, where, "master_weights", kMasterWeights);
}

const std::vector<Method>& all_methods() {
  static const std::vector<Method> v{Method::full, Method::lora, Method::qlora};
  return v;
}
const std::vector<Strategy>& all_strategies() {
  static const std::vector<Strategy> v{Strategy::none, Strategy::ddp, Strategy::tp, Strategy::zero3, Strategy::tp_zero3};
  return v;
}

namespace {
std::string origin_of(const RunConfig& c, const char* key) {
  const auto it = c.origin.find(key);
  return it == c.origin.end() ? std::string("options") : it->second;
}
}  // namespace

Method run_method(const RunConfig& c) { return parse_method(c.method, origin_of(c, "method")); }
Strategy run_strategy(const RunConfig& c) { return parse_strategy(c.parallel, origin_of(c, "parallel")); }
MasterWeights run_master_weights(const RunConfig& c) {
  return parse_master_weights(c.master_weights, origin_of(c, "master_weights"));
}

bool checkpointing_is_auto(const RunConfig& c) {
  const std::string& v = c.activation_checkpointing;
  return v.size() == 4 && std::equal(v.begin(), v.end(), "auto", [](char a, char b) {
           return std::tolower(static_cast<unsigned char>(a)) == b;
         });
}

Checkpointed run_checkpointing(const RunConfig& c) {
  std::string v = c.activation_checkpointing;
  for (char& ch : v) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  // The boolean spellings the key took when it was a boolean, in any case (a number is a block
  // count: 1 is one block, not "true").
  for (const char* t : {"true", "yes", "on"})
    if (v == t) return Checkpointed::all();
  for (const char* f : {"false", "no", "off"})
    if (v == f) return Checkpointed::none();
  int64_t n = -1;
  const auto [ptr, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (ec == std::errc() && ptr == v.data() + v.size() && n >= 0) return Checkpointed{n};
  if (v == "auto")
    ST_THROW_INPUT(origin_of(c, "activation_checkpointing"),
                   ": activation_checkpointing = auto must be resolved by the planner before the model is built");
  ST_THROW_INPUT(origin_of(c, "activation_checkpointing"), ": activation_checkpointing = '", c.activation_checkpointing,
                 "' is not one of: auto | true | false | a number of blocks (0 or more)");
}

std::string checkpointing_value(int64_t n, int64_t blocks) {
  if (n <= 0) return "false";
  if (n >= blocks) return "true";
  return std::to_string(n);
}

}  // namespace st
