// shardtune: subcommand dispatch only.
#include <cstdio>
#include <cstring>
#include <string>

#include "cli/commands.hpp"
#include "core/version.hpp"

namespace {

struct Subcommand {
  const char* name;
  int (*run)(int, char**);
  const char* help;
};

const Subcommand kSubcommands[] = {
    {"prepare", st::cmd_prepare, "turn SST-2 TSV or Alpaca JSON/JSONL into tokenized HDF5 shards; or make the synthetic set"},
    {"train", st::cmd_train, "fine-tune a model (full or LoRA) from an input deck; launch with mpirun"},
    {"eval", st::cmd_eval, "validation loss and accuracy of a model on a split"},
    {"export", st::cmd_export, "a PEFT LoRA adapter on its base: normalized PEFT copy and/or the merged model in HF layout"},
    {"generate", st::cmd_generate, "sample text from a model (optionally with a LoRA adapter): greedy, temperature, top-k, top-p; KV cache"},
    {"plan", st::cmd_plan, "per-rank memory of each strategy and method for N GPUs: what fits, how fast (predicted)"},
    {"calibrate", st::cmd_calibrate, "measure this GPU's (or CPU's) op times, or the collectives' (--comm), for plan"},
};

void usage(FILE* out) {
  std::fprintf(out, "Usage: shardtune <subcommand> [options]   (shardtune <subcommand> --help for its options)\n"
                   "       shardtune --version\n\n");
  for (const Subcommand& s : kSubcommands) std::fprintf(out, "  %-8s %s\n", s.name, s.help);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  if (!std::strcmp(argv[1], "--version") || !std::strcmp(argv[1], "-V")) {
    std::printf("%s\n", st::version_line().c_str());
    return 0;
  }
  for (const Subcommand& s : kSubcommands)
    if (std::string(argv[1]) == s.name) return s.run(argc - 1, argv + 1);
  std::fprintf(stderr, "shardtune: unknown subcommand '%s'\n\n", argv[1]);
  usage(stderr);
  return 2;
}
