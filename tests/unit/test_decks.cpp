// Every shipped input deck (inputs/**/*.cfg) parses and validates: no unknown key, no bad value,
// no broken include. Parsing only (no data, model or GPU is needed). Base decks, which other
// decks include and which may leave `data` to them, get a placeholder `--data` on the command
// line; everything else is parsed exactly as `shardtune train --deck FILE` would.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "config/run_config.hpp"
#include "core/error.hpp"
#include "tests/common/paths.hpp"

namespace fs = std::filesystem;

namespace {

std::vector<std::string> all_decks() {
  std::vector<std::string> out;
  const fs::path inputs = fs::path(st::test::repo_root()) / "inputs";
  for (const auto& e : fs::recursive_directory_iterator(inputs))
    if (e.is_regular_file() && e.path().extension() == ".cfg") out.push_back(e.path().lexically_normal().string());
  std::sort(out.begin(), out.end());
  return out;
}

// Decks named by some deck's `include = ...` line (resolved against the including deck).
std::set<std::string> included_decks(const std::vector<std::string>& decks) {
  std::set<std::string> out;
  for (const auto& d : decks) {
    std::ifstream in(d);
    std::string line;
    while (std::getline(in, line)) {
      line = line.substr(0, line.find('#'));
      const size_t eq = line.find('=');
      if (eq == std::string::npos) continue;
      auto trim = [](std::string s) {
        s.erase(0, s.find_first_not_of(" \t\r"));
        s.erase(s.find_last_not_of(" \t\r") + 1);
        return s;
      };
      if (trim(line.substr(0, eq)) != "include") continue;
      out.insert((fs::path(d).parent_path() / trim(line.substr(eq + 1))).lexically_normal().string());
    }
  }
  return out;
}

// parse_run_config on `train --deck FILE [extra...]`: the error message, or "" when it parses.
std::string parse_error(const std::string& deck, std::vector<std::string> extra, st::RunConfig& cfg) {
  std::vector<std::string> args = {"train", "--deck", deck};
  args.insert(args.end(), extra.begin(), extra.end());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  try {
    if (!st::parse_run_config(static_cast<int>(argv.size()), argv.data(), "train", cfg)) return "printed help";
  } catch (const st::Error& e) {
    return e.what();
  }
  return "";
}

TEST(Decks, EveryShippedDeckParses) {
  const auto decks = all_decks();
  ASSERT_GE(decks.size(), 9u) << "expected the decks under inputs/ (base, default, sst2, bench)";
  const auto bases = included_decks(decks);
  for (const auto& b : bases) EXPECT_TRUE(fs::exists(b)) << "an include names a missing deck: " << b;
  for (const auto& d : decks) {
    st::RunConfig cfg;
    const bool base = bases.count(d) > 0;
    const std::string err = parse_error(d, base ? std::vector<std::string>{"--data", "placeholder"}
                                                : std::vector<std::string>{}, cfg);
    EXPECT_EQ(err, "") << d << (base ? " (base deck)" : "");
  }
}

// The benchmark decks: the shapes and settings issues #3 and #4 compare against the references
// (a changed shape would silently compare different models).
TEST(Decks, BenchmarkDecksHoldTheIssueShapes) {
  struct Want {
    const char* deck;
    int64_t hidden, layers, intermediate, heads, kv_heads;
    const char* method;
    bool checkpointing;
  };
  const Want wants[] = {
      {"llama1b_full", 2048, 22, 5632, 32, 4, "full", false},
      {"llama1b_lora", 2048, 22, 5632, 32, 4, "lora", false},
      {"llama7b_lora", 4096, 32, 11008, 32, 32, "lora", true},
      {"llama13b_lora", 5120, 40, 13824, 40, 40, "lora", true},
      {"llama7b_qlora", 4096, 32, 11008, 32, 32, "qlora", true},
      {"llama13b_qlora", 5120, 40, 13824, 40, 40, "qlora", true},
  };
  const fs::path dir = fs::path(st::test::repo_root()) / "inputs" / "bench";
  for (const Want& w : wants) {
    SCOPED_TRACE(w.deck);
    st::RunConfig c;
    ASSERT_EQ(parse_error((dir / (std::string(w.deck) + ".cfg")).string(), {}, c), "");
    EXPECT_EQ(c.run_id, w.deck);
    EXPECT_EQ(c.hidden_size, w.hidden);
    EXPECT_EQ(c.num_layers, w.layers);
    EXPECT_EQ(c.intermediate_size, w.intermediate);
    EXPECT_EQ(c.num_heads, w.heads);
    EXPECT_EQ(c.num_kv_heads, w.kv_heads);
    EXPECT_EQ(c.method, w.method);
    EXPECT_EQ(c.activation_checkpointing, w.checkpointing ? "true" : "false");
    EXPECT_EQ(c.vocab_size, 32000);
    EXPECT_EQ(c.max_position_embeddings, 2048);
    EXPECT_FALSE(c.tie_embeddings);
    EXPECT_TRUE(c.model.empty());
    EXPECT_EQ(c.device, "cuda");
    EXPECT_EQ(c.dtype, "bf16");
    EXPECT_EQ(c.data, "data/bench/random-1024");
    EXPECT_EQ(c.val_split, "");
    EXPECT_FALSE(c.eval_at_start);
    EXPECT_EQ(c.micro_batch_size, 8);
    EXPECT_EQ(c.grad_accum, 1);
    EXPECT_EQ(c.max_steps, 12);
    EXPECT_DOUBLE_EQ(c.lr, 1e-4);
    EXPECT_EQ(c.warmup_steps, 0);
    EXPECT_EQ(c.lr_schedule, "constant");
    EXPECT_DOUBLE_EQ(c.weight_decay, 0.0);
    EXPECT_DOUBLE_EQ(c.grad_clip, 1.0);
    EXPECT_EQ(c.log_every, 1);
    EXPECT_EQ(c.output_dir, "runs/bench");
    if (std::string(w.method) == "qlora") {  // issue #4: NF4, block 64, double quant, every projection
      EXPECT_EQ(c.qlora_quantize, "all");
      EXPECT_EQ(c.qlora_block_size, 64);
      EXPECT_TRUE(c.qlora_double_quant);
    }
    if (std::string(w.method) != "full") {
      EXPECT_EQ(c.lora_r, 16);
      EXPECT_DOUBLE_EQ(c.lora_alpha, 32.0);
      EXPECT_DOUBLE_EQ(c.lora_dropout, 0.0);
      EXPECT_EQ(c.lora_target_list(), (std::vector<std::string>{"q", "k", "v", "o", "gate", "up", "down"}));
    }
  }
}

TEST(Decks, ABrokenDeckIsReported) {
  // The check above must be able to fail: a deck with an unknown key does not parse.
  const std::string dir = st::test::make_temp_dir("decks");
  const std::string deck = dir + "/broken.cfg";
  std::ofstream(deck) << "data = x\nmicro_batch = 8\n";
  st::RunConfig c;
  const std::string err = parse_error(deck, {}, c);
  EXPECT_NE(err.find("micro_batch"), std::string::npos) << err;
  EXPECT_NE(err.find(deck), std::string::npos) << err;
  fs::remove_all(dir);
}

}  // namespace
