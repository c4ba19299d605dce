// The enumerated choices of a run, parsed from their option strings once (deck key `method`,
// `parallel`; the planner's --methods / --strategies). Everything after config parsing works with
// these values, never with the strings.
#pragma once

#include <string>
#include <vector>

#include "core/dtype.hpp"
#include "model/checkpointing.hpp"

namespace st {

struct RunConfig;

// Fine-tuning method: every weight trains (full), LoRA adapters on a frozen base (lora), or
// LoRA on a frozen base stored in NF4 (qlora).
enum class Method { full, lora, qlora };
// Parallel strategy (deck key `parallel`); `automatic` is `auto`, resolved by the planner before
// a run starts.
enum class Strategy { none, ddp, tp, zero3, tp_zero3, automatic };

const char* method_name(Method m);      // "full", "lora", "qlora"
const char* master_weights_name(MasterWeights m);  // "f32", "none" (core/dtype.hpp)
const char* strategy_name(Strategy s);  // "none", "ddp", "tp", "zero3", "tp+zero3", "auto"
// InputError naming `where` and listing the choices for anything else.
Method parse_method(const std::string& s, const std::string& where);
Strategy parse_strategy(const std::string& s, const std::string& where);
MasterWeights parse_master_weights(const std::string& s, const std::string& where);
// Every method / every strategy a run can use (auto excluded), in the order plans list them.
const std::vector<Method>& all_methods();
const std::vector<Strategy>& all_strategies();

// The run's method and strategy (the deck's `method` and `parallel`, already validated).
Method run_method(const RunConfig& c);
Strategy run_strategy(const RunConfig& c);
// The deck's `master_weights`: InputError naming the key's origin for anything but f32 | none.
MasterWeights run_master_weights(const RunConfig& c);
// activation_checkpointing (auto | true | false | N): true = every block, false = none, N = the
// first N blocks (model/checkpointing.hpp; N >= the model's blocks = every block). `auto` is
// resolved by the planner before a run starts (train/plan.hpp choose_checkpointing); here it is
// an error. InputError naming the key's origin for anything else.
Checkpointed run_checkpointing(const RunConfig& c);
bool checkpointing_is_auto(const RunConfig& c);
// The deck spelling of n checkpointed blocks out of `blocks`: "false", "true" or "n".
std::string checkpointing_value(int64_t n, int64_t blocks);

// Adapters train (lora, qlora) rather than the base (full).
inline bool trains_adapters(Method m) { return m != Method::full; }

}  // namespace st
