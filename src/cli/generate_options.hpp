// The options of `shardtune generate` (cli/cmd_generate.cpp): its own flags, and the run options
// (deck keys: model, adapter, tokenizer, device, dtype, seed, ...) it passes to parse_run_config.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "config/run_config.hpp"

namespace st {

struct GenerateFlags {
  std::vector<std::string> prompts;
  std::string prompt_file, output;
  int64_t max_new_tokens = 64;
  double temperature = 0.0;
  int64_t top_k = 0;
  double top_p = 1.0;
  bool stop_at_eos = true, add_bos = true, kv_cache = true;
};

// Parses argv (argv[0] is the subcommand's name); prints the help and returns false for --help.
// InputError naming the option for a bad value, a value out of range, top-k / top-p without
// sampling, or no prompt.
bool parse_generate_options(int argc, char** argv, GenerateFlags& f, RunConfig& cfg);

}  // namespace st
