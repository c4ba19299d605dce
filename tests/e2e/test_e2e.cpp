// End to end through the real binary: synthetic data -> shards -> full training (saved in HF
// layout) -> LoRA training on the saved model -> eval -> metrics.h5 contents -> report.py; and
// the failure paths: bad decks, bad files, out of memory as a result, mpirun launches.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <sstream>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/h5util.hpp"
#include "io/hf_checkpoint.hpp"
#include "io/metrics.hpp"
#include "io/safetensors.hpp"
#include "tests/common/paths.hpp"
#include "tests/e2e/e2e_util.hpp"

namespace fs = std::filesystem;

namespace st {
namespace {

std::string bin() {
  if (const char* b = std::getenv("SHARDTUNE_BIN")) return b;
  return test::repo_root() + "/build/shardtune";
}
std::string mpirun() {
  if (const char* m = std::getenv("SHARDTUNE_MPIRUN")) return m;
  return "mpirun --oversubscribe";
}
std::string python() {
  if (const char* p = std::getenv("PYTHON")) return p;
  return "/usr/bin/python3";
}

// One prepared workspace shared by the tests of this file (built once: ~10 s).
class E2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir = new std::string(test::make_temp_dir("e2e"));
    const std::string d = *dir;
    std::string out;
    auto run = [&](const std::string& cmd) {
      const int rc = test::run_command(cmd, &out);
      if (rc != 0) {
        setup_error = new std::string("`" + cmd + "` exited " + std::to_string(rc) + ":\n" + out);
        return false;
      }
      return true;
    };
    const std::string tok = d + "/synth/tokenizer.model";
    run(bin() + " prepare --synthetic " + d + "/synth --sentiment-rows 600 --instruct-rows 400") &&
        run(bin() + " prepare --input " + d + "/synth/instruct_train.jsonl --tokenizer " + tok + " --output " + d +
            "/instruct --split train --loss-on all --template plain --max-seq-len 96") &&
        run(bin() + " prepare --input " + d + "/synth/instruct_val.jsonl --tokenizer " + tok + " --output " + d +
            "/instruct --split validation --loss-on all --template plain --max-seq-len 96") &&
        run(bin() + " prepare --input " + d + "/synth/sentiment_train.tsv --tokenizer " + tok + " --output " + d +
            "/sentiment --split train --loss-on answer --max-seq-len 48") &&
        run(bin() + " prepare --input " + d + "/synth/sentiment_dev.tsv --tokenizer " + tok + " --output " + d +
            "/sentiment --split validation --loss-on answer --max-seq-len 48") &&
        run(bin() + " prepare --input " + d + "/synth/sentiment_train.tsv --tokenizer " + tok + " --output " + d +
            "/sentiment_t5 --split train --arch seq2seq --max-seq-len 48 --max-target-len 4") &&
        run(bin() + " prepare --input " + d + "/synth/sentiment_dev.tsv --tokenizer " + tok + " --output " + d +
            "/sentiment_t5 --split validation --arch seq2seq --max-seq-len 48 --max-target-len 4");
    // A small deck on the shipped base deck.
    test::write_file(d + "/full.cfg", "# e2e: full training\ninclude = " + test::repo_root() +
                                          "/inputs/base/tiny_llama.cfg\ndata = " + d + "/instruct\ntokenizer = " +
                                          tok + "\noutput_dir = " + d + "/runs\nhidden_size = 64\nintermediate_size = 160\n"
                                          "num_layers = 2\nmicro_batch_size = 8\nlr = 3e-3\nwarmup_steps = 5\n"
                                          "max_steps = 40\nlog_every = 10\nsave_model = true\neval_every = 20\n");
    test::write_file(d + "/t5.cfg", "# e2e: a tiny T5 on text-to-text sentiment\ninclude = " + test::repo_root() +
                                        "/inputs/base/tiny_t5.cfg\ndata = " + d + "/sentiment_t5\ntokenizer = " + tok +
                                        "\noutput_dir = " + d + "/runs\nmicro_batch_size = 8\nlr = 3e-3\nwarmup_steps = 5\n"
                                        "max_steps = 40\nlog_every = 10\nsave_model = true\neval_every = 20\n");
  }
  static void TearDownTestSuite() {
    if (dir && !std::getenv("SHARDTUNE_KEEP_TMP")) fs::remove_all(*dir);
  }
  void SetUp() override {
    if (setup_error) FAIL() << *setup_error;
  }
  static std::string* dir;
  static std::string* setup_error;
};
std::string* E2E::dir = nullptr;
std::string* E2E::setup_error = nullptr;

double summary_real(hid_t f, const std::string& key, const std::string& where) {
  h5::Handle s = h5::open_group(f, "summary");
  return h5::read_attr_double(s, key, where);
}
std::string summary_string(hid_t f, const std::string& key, const std::string& where) {
  h5::Handle s = h5::open_group(f, "summary");
  return h5::read_attr_string(s, key, where);
}
int64_t table_length(hid_t f, const std::string& table, const std::string& column, const std::string& where) {
  h5::Handle g = h5::open_group(f, table);
  return static_cast<int64_t>(h5::dataset_dims(g, column, where).at(0));
}

TEST_F(E2E, FullThenLoraThenEvalThenReport) {
  const std::string d = *dir;
  std::string out;
  // 1. full training from random init under mpirun -np 1, model saved in HF layout
  int rc = test::run_command(mpirun() + " -np 1 " + bin() + " train --deck " + d + "/full.cfg --run_id full", &out);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("resolved options"), std::string::npos);
  EXPECT_NE(out.find("step 40/40"), std::string::npos) << out;
  const std::string m1 = d + "/runs/full/metrics.h5";
  {
    h5::Handle f = h5::open_file_read(m1);
    EXPECT_EQ(summary_string(f, "outcome", m1), "ok");
    EXPECT_EQ(table_length(f, "steps", "loss", m1), 40);
    EXPECT_EQ(table_length(f, "evals", "val_loss", m1), 3);  // at start, step 20, end of the (partial) epoch
    const double v0 = summary_real(f, "initial_val_loss", m1), v1 = summary_real(f, "final_val_loss", m1);
    EXPECT_LT(v1, v0 - 1.0) << "validation loss should fall well below its start (" << v0 << " -> " << v1 << ")";
    EXPECT_GT(summary_real(f, "total_time", m1), 0);
    h5::Handle cfg = h5::open_group(f, "config");
    EXPECT_EQ(h5::read_attr_string(cfg, "method", m1), "full");
    EXPECT_EQ(h5::read_attr_double(cfg, "lr", m1), 0.003);  // numbers stored as numbers
    EXPECT_EQ(h5::read_attr_int(cfg, "max_steps", m1), 40);
    EXPECT_EQ(h5::read_attr_int(f, "format_version", m1), kMetricsFormatVersion);
    EXPECT_FALSE(h5::read_attr_string(f, "shardtune_commit", m1).empty());
    EXPECT_NE(h5::read_attr_string(f, "command_line", m1).find("shardtune train --deck"), std::string::npos);
    h5::Handle s = h5::open_group(f, "summary");
    EXPECT_GT(h5::read_attr_int(s, "peak_memory", m1), 0);
    EXPECT_EQ(h5::read_attr_int(s, "world_size", m1), 1);
    h5::Handle ranks = h5::open_group(f, "ranks");
    EXPECT_EQ(h5::dataset_dims(ranks, "peak_memory", m1).at(0), 1u);
  }
  ASSERT_TRUE(fs::exists(d + "/runs/full/model/model.safetensors"));
  ASSERT_TRUE(fs::exists(d + "/runs/full/model/config.json"));
  ASSERT_TRUE(fs::exists(d + "/runs/full/model/tokenizer.model"));

  // 2. LoRA on the saved model, sentiment task with accuracy
  rc = test::run_command(bin() + " train --deck " + d + "/full.cfg --run_id lora --method lora --model " + d +
                             "/runs/full/model --data " + d + "/sentiment --max_steps 30 --save_model false --eval_every 0",
                         &out);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("adapters"), std::string::npos);
  const std::string m2 = d + "/runs/lora/metrics.h5";
  {
    h5::Handle f = h5::open_file_read(m2);
    EXPECT_EQ(summary_string(f, "outcome", m2), "ok");
    const double a0 = summary_real(f, "initial_val_accuracy", m2);
    EXPECT_TRUE(std::isfinite(a0)) << "SST-2 style shards must give an accuracy";
    EXPECT_LT(summary_real(f, "final_val_loss", m2), summary_real(f, "initial_val_loss", m2));
    h5::Handle s = h5::open_group(f, "summary");
    EXPECT_LT(h5::read_attr_int(s, "trainable_parameters", m2), h5::read_attr_int(s, "num_parameters", m2) / 5);
  }

  // 2b. QLoRA on the same saved model: every projection in NF4, loss falls, the merged model is
  // written (dequantized base + adapters) and evaluates.
  rc = test::run_command(bin() + " train --deck " + d + "/full.cfg --run_id qlora --method qlora --qlora_quantize all --model " +
                             d + "/runs/full/model --data " + d + "/sentiment --max_steps 30 --save_model true --eval_every 0",
                         &out);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("linear layers in NF4"), std::string::npos) << out;
  const std::string m3 = d + "/runs/qlora/metrics.h5";
  {
    h5::Handle f = h5::open_file_read(m3);
    EXPECT_EQ(summary_string(f, "outcome", m3), "ok");
    EXPECT_LT(summary_real(f, "final_val_loss", m3), summary_real(f, "initial_val_loss", m3));
    h5::Handle s = h5::open_group(f, "summary");
    EXPECT_EQ(h5::read_attr_int(s, "nf4_layers", m3), 2 * 7);
    EXPECT_LT(h5::read_attr_int(s, "base_weight_bytes", m3), h5::read_attr_int(s, "base_weight_bytes_dense", m3));
  }
  rc = test::run_command(bin() + " eval --deck " + d + "/full.cfg --run_id qlora_eval --model " + d + "/runs/qlora/model --data " +
                             d + "/sentiment",
                         &out);
  ASSERT_EQ(rc, 0) << out;
  // The adapter the QLoRA run saved by default, evaluated as it was trained (on the NF4 base, from
  // its shardtune_adapter.json; method left unset): the run's own last figures, bit for bit.
  const std::string adapter = d + "/runs/qlora/adapter";
  ASSERT_TRUE(fs::exists(adapter + "/shardtune_adapter.json"));
  auto last_eval = [](const std::string& m) {
    h5::Handle f = h5::open_file_read(m);
    h5::Handle g = h5::open_group(f, "evals");
    const size_t n = h5::dataset_dims(g, "val_loss", m).at(0);
    std::vector<double> loss(n), acc(n);
    h5::read_dataset(g, "val_loss", H5T_NATIVE_DOUBLE, loss.data(), m);
    h5::read_dataset(g, "val_accuracy", H5T_NATIVE_DOUBLE, acc.data(), m);
    return std::make_pair(loss.back(), acc.back());
  };
  const std::string eval_base = bin() + " eval --deck " + d + "/full.cfg --model " + d + "/runs/full/model --data " + d +
                                "/sentiment --adapter " + adapter;
  ASSERT_EQ(test::run_command(eval_base + " --run_id qlora_adapter_eval", &out), 0) << out;
  EXPECT_NE(out.find("linear layers in NF4"), std::string::npos) << out;
  EXPECT_EQ(last_eval(d + "/runs/qlora_adapter_eval/eval-1/metrics.h5"), last_eval(m3));
  ASSERT_EQ(test::run_command(eval_base + " --run_id qlora_adapter_dense --method lora", &out), 0) << out;
  EXPECT_NE(out.find("was trained on an NF4 base"), std::string::npos) << out;
  EXPECT_NE(last_eval(d + "/runs/qlora_adapter_dense/eval-1/metrics.h5").first, last_eval(m3).first);
  // export without --model: the adapter's own base (base_model_name_or_path, stored absolute),
  // merged with the tokenizer files a transformers user loads.
  ASSERT_EQ(test::run_command(bin() + " export --adapter " + adapter + " --merged " + d + "/qlora_merged", &out), 0) << out;
  EXPECT_NE(out.find("(base_model_name_or_path)"), std::string::npos) << out;
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json",
                        "special_tokens_map.json"})
    EXPECT_TRUE(fs::exists(d + "/qlora_merged/" + f)) << f;
  const nlohmann::json tc = nlohmann::json::parse(test::read_file(d + "/qlora_merged/tokenizer_config.json"));
  EXPECT_EQ(tc.at("tokenizer_class"), "LlamaTokenizer");
  EXPECT_EQ(tc.at("bos_token"), "<s>");

  // generate with the QLoRA adapter (its base from base_model_name_or_path, in NF4 as trained):
  // JSON lines with the prompt's ids and up to 6 new ones; the same seed samples the same text.
  test::write_file(d + "/prompts.txt", "the film is\n\na movie\n");
  const std::string gen = bin() + " generate --adapter " + adapter + " --prompt-file " + d + "/prompts.txt --max-new-tokens 6";
  ASSERT_EQ(test::run_command(gen + " --output " + d + "/greedy.jsonl", &out), 0) << out;
  EXPECT_NE(out.find("linear layers in NF4"), std::string::npos) << out;
  EXPECT_NE(out.find("tokens/s"), std::string::npos) << out;
  {
    std::istringstream lines(test::read_file(d + "/greedy.jsonl"));
    std::string line;
    int n = 0;
    for (; std::getline(lines, line); ++n) {
      const nlohmann::json j = nlohmann::json::parse(line);
      EXPECT_EQ(j.at("prompt"), n == 0 ? "the film is" : "a movie");
      EXPECT_EQ(j.at("prompt_ids").at(0), 1);  // BOS
      const size_t k = j.at("new_ids").size();
      EXPECT_TRUE(k == 6 || (k >= 1 && j.at("finish") == "eos")) << line;
      EXPECT_GT(j.at("tokens_per_second").get<double>(), 0) << line;
    }
    EXPECT_EQ(n, 2);
  }
  const std::string sample = "(" + gen + " --temperature 0.9 --top-k 50 --top-p 0.95 --seed 7 --output - 2>/dev/null)";
  auto sampled_ids = [&]() {
    std::string o;
    EXPECT_EQ(test::run_command(sample, &o), 0) << o;
    std::istringstream lines(o);
    std::vector<std::vector<int>> ids;
    for (std::string line; std::getline(lines, line);) ids.push_back(nlohmann::json::parse(line).at("new_ids"));
    return ids;
  };
  const std::vector<std::vector<int>> s1 = sampled_ids();
  EXPECT_EQ(s1.size(), 2u);
  EXPECT_EQ(sampled_ids(), s1) << "sampling with one seed must repeat";
  ASSERT_EQ(test::run_command(bin() + " generate --adapter " + adapter + " --prompt x --top-p 0.5", &out), 2) << out;
  EXPECT_NE(out.find("--top-p applies to sampling"), std::string::npos) << out;

  // 3. eval of the saved model
  rc = test::run_command(bin() + " eval --deck " + d + "/full.cfg --run_id evalrun --model " + d + "/runs/full/model", &out);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("val loss"), std::string::npos) << out;

  // 4. the report over all three runs
  rc = test::run_command(python() + " " + test::repo_root() + "/analysis/report.py " + d + "/runs/full " + d +
                             "/runs/lora --plots " + d + "/plots",
                         &out);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("| config | ranks |"), std::string::npos) << out;
  EXPECT_NE(out.find("full"), std::string::npos) << out;
  EXPECT_NE(out.find("lora"), std::string::npos) << out;
  EXPECT_TRUE(fs::exists(d + "/plots/loss.png"));
}

TEST_F(E2E, SameSeedGivesIdenticalLosses) {
  const std::string d = *dir;
  std::string out;
  std::vector<std::vector<double>> losses;
  for (const char* id : {"det_a", "det_b"}) {
    ASSERT_EQ(test::run_command(bin() + " train --deck " + d + "/full.cfg --run_id " + id +
                                    " --method lora --lora_dropout 0.1 --max_steps 12 --val_split '' --save_model false",
                                &out), 0) << out;
    const std::string m = d + "/runs/" + id + "/metrics.h5";
    h5::Handle f = h5::open_file_read(m);
    h5::Handle steps = h5::open_group(f, "steps");
    std::vector<double> v(static_cast<size_t>(h5::dataset_dims(steps, "loss", m).at(0)));
    h5::read_dataset(steps, "loss", H5T_NATIVE_DOUBLE, v.data(), m);
    losses.push_back(v);
  }
  ASSERT_EQ(losses[0].size(), 12u);
  EXPECT_EQ(losses[0], losses[1]) << "two runs with the same seed, deck and thread count must match bit for bit";
}

TEST_F(E2E, OutOfMemoryIsAResult) {
  const std::string d = *dir;
  std::string out;
  const int rc = test::run_command(bin() + " train --deck " + d + "/full.cfg --run_id oom --memory_limit 2MiB", &out);
  EXPECT_EQ(rc, 3) << out;
  EXPECT_NE(out.find("out of memory"), std::string::npos) << out;
  const std::string m = d + "/runs/oom/metrics.h5";
  h5::Handle f = h5::open_file_read(m);
  EXPECT_EQ(summary_string(f, "outcome", m), "oom");
  h5::Handle s = h5::open_group(f, "summary");
  EXPECT_GT(h5::read_attr_int(s, "oom_bytes", m), 0);
  EXPECT_FALSE(h5::read_attr_string(s, "oom_phase", m).empty());
  EXPECT_EQ(h5::read_attr_int(s, "memory_limit", m), 2 * 1024 * 1024);
}

std::vector<int64_t> read_i64_column(hid_t g, const std::string& name, const std::string& where) {
  std::vector<int64_t> v(static_cast<size_t>(h5::dataset_dims(g, name, where).at(0)));
  h5::read_dataset(g, name, H5T_NATIVE_INT64, v.data(), where);
  return v;
}

// The planner's predicted peak (a dry run of the same code) beside the measured one, per rank.
void expect_prediction_matches(const std::string& m, double rel_tol) {
  h5::Handle f = h5::open_file_read(m);
  h5::Handle r = h5::open_group(f, "ranks");
  const std::vector<int64_t> meas = read_i64_column(r, "peak_memory", m);
  const std::vector<int64_t> pred = read_i64_column(r, "predicted_peak", m);
  ASSERT_EQ(meas.size(), pred.size());
  for (size_t i = 0; i < meas.size(); ++i) {
    ASSERT_GT(pred[i], 0) << m << " rank " << i;
    EXPECT_NEAR(static_cast<double>(pred[i]) / static_cast<double>(meas[i]), 1.0, rel_tol)
        << m << " rank " << i << ": predicted " << pred[i] << " measured " << meas[i];
  }
  h5::Handle s = h5::open_group(f, "summary");
  EXPECT_EQ(h5::read_attr_int(s, "predicted_peak", m), *std::max_element(pred.begin(), pred.end()));
}

TEST_F(E2E, PlannerPredictsEveryRanksPeak) {
  // On CPU the prediction counts the same allocations as the run: equal to within a few hundred
  // bytes (host-side buffers that depend on the rank), checked at 0.1%.
  const std::string d = *dir;
  struct Case { const char* id; int np; const char* args; const char* deck; };
  for (const Case& c : {Case{"plan_one", 1, "--method lora --num_layers 4 --activation_checkpointing 3", "full.cfg"},
                        Case{"plan_zero3", 2, "--parallel zero3 --method qlora --activation_checkpointing true", "full.cfg"},
                        Case{"plan_tp", 2, "--parallel tp --tp_size 2", "full.cfg"},
                        Case{"plan_fp8", 1, "--method lora --base_precision fp8", "full.cfg"},
                        Case{"plan_fp8_per_step", 1, "--method lora --base_precision fp8 --fp8_transpose per_step", "full.cfg"},
                        Case{"plan_fp8_qlora", 2, "--parallel ddp --method qlora --base_precision fp8", "full.cfg"},
                        Case{"plan_t5_ddp", 2, "--parallel ddp --method lora --activation_checkpointing 3", "t5.cfg"}}) {
    std::string out;
    const int rc = test::run_command(mpirun() + " -np " + std::to_string(c.np) + " " + bin() + " train --deck " + d + "/" +
                                         c.deck + " --run_id " + c.id + " --max_steps 3 --threads 1 --save_model false " + c.args,
                                     &out);
    ASSERT_EQ(rc, 0) << out;
    expect_prediction_matches(d + "/runs/" + c.id + "/metrics.h5", 1e-3);
    // LoRA's FP8 base is quantized as the model is built (QLoRA's stays NF4 until each GEMM).
    if (std::string(c.args).find("--method lora --base_precision fp8") != std::string::npos) {
      EXPECT_NE(out.find("adapted linear layers in FP8 E4M3 (quantized as loaded;"), std::string::npos) << out;
    }
  }
  // activation_checkpointing = auto under plan_one's own peak (3 of 4 blocks checkpointed): the
  // planner picks those 3 (2 would need one more set of block internals), and the run fits. (No
  // adapter saved: writing it allocates beyond the training peak, which the planner does not count.)
  const std::string m1 = d + "/runs/plan_one/metrics.h5";
  const int64_t peak = h5::read_attr_int(h5::open_group(h5::open_file_read(m1), "summary"), "predicted_peak", m1);
  std::string out;
  ASSERT_EQ(test::run_command(bin() + " train --deck " + d + "/full.cfg --run_id plan_auto --max_steps 3 --threads 1 "
                                  "--save_model false --save_adapter false --method lora --num_layers 4 --activation_checkpointing auto "
                                  "--memory_limit " + std::to_string(peak),
                              &out),
            0)
      << out;
  EXPECT_NE(out.find("plan: activation_checkpointing = auto chose 3 of 4 blocks checkpointed"), std::string::npos) << out;
  const std::string m2 = d + "/runs/plan_auto/metrics.h5";
  EXPECT_EQ(h5::read_attr_string(h5::open_group(h5::open_file_read(m2), "config"), "activation_checkpointing", m2), "3");
  expect_prediction_matches(m2, 1e-3);
}

TEST_F(E2E, PlanCommandTablesEveryLayoutAndAutoPicksOne) {
  const std::string d = *dir;
  std::string out;
  ASSERT_EQ(test::run_command(bin() + " plan --deck " + d + "/full.cfg --ranks 2 --json " + d + "/plan.json", &out), 0) << out;
  for (const char* s : {"| ddp | 1 | 2 | full |", "| zero3 | 1 | 2 | lora |", "| tp | 2 | 1 | qlora |",
                        "recommended for full: parallel = ", "activations (ckpt / none)"})
    EXPECT_NE(out.find(s), std::string::npos) << s << "\n" << out;
  const nlohmann::json j = nlohmann::json::parse(test::read_file(d + "/plan.json"));
  ASSERT_EQ(j.at("layouts").size(), 9u);  // {ddp, zero3, tp 2} x {full, lora, qlora}
  for (const auto& l : j.at("layouts")) {
    ASSERT_TRUE(l.at("applies").get<bool>()) << l.dump();
    EXPECT_GT(l.at("peak").get<int64_t>(), 0);
    EXPECT_GE(l.at("activations_no_checkpointing").get<int64_t>(), l.at("activations_checkpointing").get<int64_t>());
    EXPECT_TRUE(l.at("fits").get<bool>());  // no memory limit given
    // Layouts with more data-parallel ranks take more rows per step: the batch is shown per layout.
    EXPECT_EQ(l.at("global_batch").get<int64_t>(), l.at("dp").get<int64_t>() * j.at("layouts")[0].at("global_batch").get<int64_t>() /
                                                       j.at("layouts")[0].at("dp").get<int64_t>());
  }
  // The recommendation quotes its own row's figures (training and load peak, in the table's unit).
  for (const auto& [method, rec] : j.at("recommended").items()) {
    for (const auto& l : j.at("layouts")) {
      if (l.at("method") != method || l.at("strategy") != rec.at("strategy") || l.at("tp") != rec.at("tp")) continue;
      char peaks[128];
      std::snprintf(peaks, sizeof(peaks), "at global batch %lld; per rank: training peak %.1f MiB, load peak %.1f MiB)",
                    static_cast<long long>(l.at("global_batch").get<int64_t>()), l.at("peak").get<double>() / (1 << 20),
                    l.at("load_peak").get<double>() / (1 << 20));
      EXPECT_NE(out.find(st::str("recommended for ", method, ": parallel = ", rec.at("strategy").get<std::string>())),
                std::string::npos) << out;
      EXPECT_NE(out.find(peaks), std::string::npos) << peaks << "\n" << out;
    }
  }
  // A cap below every layout: nothing fits, and parallel = auto refuses to start.
  ASSERT_EQ(test::run_command(bin() + " plan --deck " + d + "/full.cfg --ranks 2 --gpu-memory 64KiB", &out), 0) << out;
  EXPECT_NE(out.find("recommended for full: none fits"), std::string::npos) << out;
  EXPECT_EQ(test::run_command(mpirun() + " -np 2 " + bin() + " train --deck " + d +
                                  "/full.cfg --run_id auto_none --parallel auto --memory_limit 64KiB --max_steps 2",
                              &out),
            2)
      << out;
  EXPECT_NE(out.find("parallel = auto: no strategy fits"), std::string::npos) << out;
  // parallel = auto runs with the strategy the planner names, recorded in metrics.h5.
  ASSERT_EQ(test::run_command(mpirun() + " -np 2 " + bin() + " train --deck " + d +
                                  "/full.cfg --run_id auto_pick --parallel auto --activation_checkpointing auto --max_steps 2 --threads 1 "
                                  "--save_model false",
                              &out),
            0)
      << out;
  EXPECT_NE(out.find("plan: parallel = auto chose "), std::string::npos) << out;
  const std::string m = d + "/runs/auto_pick/metrics.h5";
  h5::Handle f = h5::open_file_read(m);
  const std::string chosen = summary_string(f, "strategy", m);
  EXPECT_NE(out.find("chose " + chosen), std::string::npos) << chosen << "\n" << out;
  // activation_checkpointing = auto without a memory limit on CPU: none, recorded as resolved.
  EXPECT_NE(out.find("plan: activation_checkpointing = auto chose 0 of 2 blocks checkpointed"), std::string::npos) << out;
  EXPECT_EQ(h5::read_attr_string(h5::open_group(f, "config"), "activation_checkpointing", m), "false");
  // Without shards the plan takes the lengths from the command line (a T5 needs both).
  ASSERT_NE(test::run_command(bin() + " plan --deck " + d + "/t5.cfg --data " + d + "/none --ranks 1", &out), 0);
  EXPECT_NE(out.find("--seq-len"), std::string::npos) << out;
  ASSERT_EQ(test::run_command(bin() + " plan --deck " + d + "/t5.cfg --data " + d +
                                  "/none --ranks 1 --seq-len 48 --target-len 4 --vocab_size 300",
                              &out),
            0)
      << out;
  EXPECT_NE(out.find("| none | 1 | 1 | full |"), std::string::npos) << out;
}

TEST_F(E2E, OutOfMemoryOnAnotherRankIsRecorded) {
  // Rank 1 runs out of memory; the job ends (exit 3) before rank 0 can record it, so rank 1
  // leaves outcome-rank1.json, which analysis/st_read.py merges into the run's outcome.
  const std::string d = *dir;
  std::string out;
  const int rc = test::run_command("SHARDTUNE_FAULT=1:2:oom timeout 120 " + mpirun() + " -x SHARDTUNE_FAULT -np 2 " + bin() +
                                       " train --deck " + d + "/full.cfg --run_id oom_rank1 --parallel ddp --threads 1 --max_steps 4",
                                   &out);
  EXPECT_EQ(rc, 3) << out;
  const std::string run = d + "/runs/oom_rank1";
  ASSERT_TRUE(fs::exists(run + "/outcome-rank1.json")) << out;
  const nlohmann::json j = nlohmann::json::parse(test::read_file(run + "/outcome-rank1.json"));
  EXPECT_EQ(j.at("outcome"), "oom");
  EXPECT_EQ(j.at("rank"), 1);
  ASSERT_EQ(test::run_command(python() + " -c \"import sys; sys.path.insert(0, '" + test::repo_root() +
                                  "/analysis'); import st_read; r = st_read.read_run('" + run +
                                  "'); print('OUTCOME', r['summary']['outcome'])\"",
                              &out),
            0)
      << out;
  EXPECT_NE(out.find("OUTCOME oom"), std::string::npos) << out;
}

TEST_F(E2E, BadInputsAreRefusedWithClearMessages) {
  const std::string d = *dir;
  std::string out;
  struct Case {
    std::string args, expect;
    int status;
  };
  test::write_file(d + "/typo.cfg", "include = full.cfg\nlearnig_rate = 1\n");
  fs::create_directories(d + "/badmodel");
  test::write_file(d + "/badmodel/config.json", "{\"model_type\": \"llama\", \"vocab_size\": 512}");
  // A checkpoint cut short: a valid config, a safetensors file truncated mid-data.
  fs::create_directories(d + "/truncated");
  fs::copy_file(test::repo_root() + "/tests/golden/llama_tiny/config.json", d + "/truncated/config.json",
                fs::copy_options::overwrite_existing);
  {
    const std::string st = test::read_file(test::repo_root() + "/tests/golden/llama_tiny/model.safetensors");
    test::write_file(d + "/truncated/model.safetensors", st.substr(0, st.size() / 2));
  }
  const std::vector<Case> cases = {
      {"train --deck " + d + "/typo.cfg", "unknown key 'learnig_rate'", 2},
      {"train --deck " + d + "/full.cfg --epochs zero", "epochs", 2},
      {"train --deck " + d + "/full.cfg --data " + d + "/nothing-here", "nothing-here", 2},
      {"train --deck " + d + "/full.cfg --model " + d + "/badmodel", "hidden_size", 2},
      {"train --deck " + d + "/full.cfg --model " + d + "/truncated", "truncated", 2},
      {"train --deck " + d + "/full.cfg --tokenizer " + d + "/typo.cfg", "sha256", 2},
      {"train --deck " + d + "/full.cfg --device cuda", "CUDA", 2},
      {"prepare --input " + d + "/missing.tsv --tokenizer " + d + "/synth/tokenizer.model --output " + d + "/x --split train",
       "missing.tsv", 2},
      {"frobnicate", "unknown subcommand", 2},
      {"train --deck " + d + "/full.cfg --packing true --group_by_length true", "group_by_length", 2},
      {"train --deck " + d + "/full.cfg --packing true --pack_length 20", "pack_length = 20 is shorter", 2},
      {"train --deck " + d + "/t5.cfg --packing true", "packing = true is for decoder-only", 2},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    // A run id of its own (the deck's, "full", is a finished run that is never replaced).
    const std::string id = c.args.rfind("train", 0) == 0 ? " --run_id bad" + std::to_string(i) : "";
    const int rc = test::run_command(bin() + " " + c.args + id, &out);
    EXPECT_EQ(rc, c.status) << c.args << "\n" << out;
    EXPECT_NE(out.find(c.expect), std::string::npos) << c.args << "\n" << out;
    if (c.args.rfind("frobnicate", 0) != 0) {
      EXPECT_NE(out.find("fatal on rank 0"), std::string::npos) << out;
    }
  }
}

// DDP: the same 10 steps (global batch 16 = micro 4 x accumulation x ranks) on 1, 2 and 4 ranks
// see the same rows in the same order and must give the same losses and final weights, for full
// fine-tuning, LoRA and QLoRA (f32; only the order of the gradient sums differs, so 1e-5).
std::vector<double> step_losses(const std::string& metrics) {
  h5::Handle f = h5::open_file_read(metrics);
  h5::Handle g = h5::open_group(f, "steps");
  const auto dims = h5::dataset_dims(g, "loss", metrics);
  std::vector<double> v(dims.at(0));
  h5::read_dataset(g, "loss", H5T_NATIVE_DOUBLE, v.data(), metrics);
  return v;
}

double max_weight_rel_diff(const std::string& a, const std::string& b, std::string* worst) {
  SafetensorsFile fa = SafetensorsFile::open(a), fb = SafetensorsFile::open(b);
  double w = 0;
  for (const auto& e : fa.entries()) {
    Tensor x = fa.read_float(e.name, DType::f64, Device::cpu, MemCategory::other);
    Tensor y = fb.read_float(e.name, DType::f64, Device::cpu, MemCategory::other);
    double num = 0, den = 0;
    for (int64_t i = 0; i < x.numel(); ++i) {
      const double d = x.ptr<double>()[i] - y.ptr<double>()[i];
      num += d * d;
      den += x.ptr<double>()[i] * x.ptr<double>()[i];
    }
    const double r = std::sqrt(num / std::max(den, 1e-300));
    if (r >= w) {
      w = r;
      *worst = e.name;
    }
  }
  return w;
}

TEST_F(E2E, DdpOnTwoAndFourRanksEqualsOneRank) {
  const std::string d = *dir;
  // Every run side by side where cores allow (the one-rank ones pair up), then the checks in turn.
  std::vector<test::Job> jobs;
  for (const char* method : {"full", "lora", "qlora"})
    for (int np : {1, 2, 4})
      jobs.push_back({mpirun() + " -np " + std::to_string(np) + " " + bin() + " train --deck " + d + "/full.cfg --run_id " +
                          "ddp_" + method + "_" + std::to_string(np) + " --method " + method +
                          " --qlora_quantize all --lora_r 4 --lora_alpha 8 --threads 1 --micro_batch_size 4"
                          " --grad_accum " + std::to_string(4 / np) + (np > 1 ? " --parallel ddp" : "") +
                          " --max_steps 10 --eval_every 0 --eval_at_start false --save_model true --log_every 5",
                      np});
  const std::vector<test::JobResult> results = test::run_jobs(jobs);
  size_t job = 0;
  for (const char* method : {"full", "lora", "qlora"}) {
    SCOPED_TRACE(method);
    std::vector<double> ref_losses;
    double ref_val = 0;
    for (int np : {1, 2, 4}) {
      const std::string id = std::string("ddp_") + method + "_" + std::to_string(np);
      ASSERT_EQ(results[job].status, 0) << jobs[job].cmd << "\n" << results[job].output;
      ++job;
      const std::string m = d + "/runs/" + id + "/metrics.h5";
      const std::vector<double> losses = step_losses(m);
      ASSERT_EQ(losses.size(), 10u);
      h5::Handle f = h5::open_file_read(m);
      const double val = summary_real(f, "final_val_loss", m);
      EXPECT_EQ(h5::read_attr_int(h5::open_group(f, "summary"), "world_size", m), np);
      if (np == 1) {
        ref_losses = losses;
        ref_val = val;
        continue;
      }
      EXPECT_EQ(summary_string(f, "strategy", m), "ddp");
      for (size_t i = 0; i < losses.size(); ++i)
        EXPECT_NEAR(losses[i], ref_losses[i], 1e-5 * std::fabs(ref_losses[i])) << "np " << np << " step " << i + 1;
      EXPECT_NEAR(val, ref_val, 1e-5 * std::fabs(ref_val)) << "np " << np << " (validation split across ranks)";
      std::string worst;
      const double w = max_weight_rel_diff(d + "/runs/ddp_" + method + "_1/model/model.safetensors",
                                           d + "/runs/" + id + "/model/model.safetensors", &worst);
      EXPECT_LT(w, 1e-5) << "np " << np << ": final weights differ, worst " << worst;
      std::printf("[ddp] %s np=%d: last loss %.7f vs %.7f, val %.7f vs %.7f, max weight rel diff %.1e (%s)\n", method,
                  np, losses.back(), ref_losses.back(), val, ref_val, w, worst.c_str());
    }
  }
}

// Tensor parallelism (and, composed with it, data parallelism): 10 steps under every layout
// must give the one-rank losses and final weights (f32: only summation orders differ, 1e-5).
// The model is sized so that every shard splits evenly (4 heads and 4 KV heads of 64, FFN 512,
// vocabulary 512) and every row-parallel shard holds whole NF4 blocks (in / tp a multiple of
// the block of 64): each rank quantizes its own shard, which then holds exactly the blocks of
// the full tensor. Double quantization is off because its offset is the mean of the shard's
// absmax values, a per-shard statistic.
struct Layout {
  const char* parallel;
  int np, tp;
};

// Peak bytes of rank 0 in the categories ZeRO-3 shards (metrics.h5 /ranks).
double rank0_persistent_bytes(const std::string& metrics) {
  h5::Handle f = h5::open_file_read(metrics);
  h5::Handle g = h5::open_group(f, "ranks");
  double sum = 0;
  for (const char* c : {"peak_weights", "peak_gradients", "peak_optimizer"}) {
    std::vector<int64_t> v(h5::dataset_dims(g, c, metrics).at(0));
    h5::read_dataset(g, c, H5T_NATIVE_INT64, v.data(), metrics);
    sum += static_cast<double>(v.at(0));
  }
  return sum;
}

constexpr const char* kLayoutMethods[] = {"full", "lora", "qlora"};

// The options of every run of a layout test; `model` holds the deck and the model-shape options.
std::string layout_common(const std::string& model, const std::string& method) {
  return " train " + model + " --method " + method +
         " --qlora_quantize all --qlora_double_quant false --qlora_block_size 64"
         " --lora_r 4 --lora_alpha 8 --threads 1 --micro_batch_size 4 --max_steps 10"
         " --eval_every 0 --eval_at_start false --save_model true --log_every 5";
}
std::string reference_command(const std::string& model, const std::string& method) {
  return mpirun() + " -np 1 " + bin() + layout_common(model, method) + " --grad_accum 4";
}

// The one-rank reference runs of the layout tests: the run id of each finished one by its command
// (without the run id). A reference is run once per test program: the tests on one model share
// them (Llama TP and ZeRO-3 run the same ones).
std::map<std::string, std::string>& reference_runs() {
  static std::map<std::string, std::string> runs;
  return runs;
}

// Runs, side by side (one core each), the references of every (model, tag) pair not yet run.
void run_references(const std::vector<std::pair<std::string, std::string>>& models) {
  std::vector<test::Job> jobs;
  std::vector<std::string> keys, ids;
  for (const auto& [model, tag] : models)
    for (const char* method : kLayoutMethods) {
      const std::string key = reference_command(model, method);
      if (reference_runs().count(key) || std::find(keys.begin(), keys.end(), key) != keys.end()) continue;
      keys.push_back(key);
      ids.push_back(tag + "_" + method + "_ref");
      jobs.push_back({key + " --run_id " + ids.back(), 1});
    }
  const std::vector<test::JobResult> results = test::run_jobs(jobs);
  for (size_t i = 0; i < jobs.size(); ++i) {
    ASSERT_EQ(results[i].status, 0) << jobs[i].cmd << "\n" << results[i].output;
    reference_runs()[keys[i]] = ids[i];
  }
}

// Every layout against the one-rank reference, for full fine-tuning, LoRA and QLoRA. The
// references of `also` (other tests' (model, tag) pairs) are run beside this test's own.
void expect_layouts_equal_one_rank(const std::string& d, const std::string& model, const std::vector<Layout>& layouts,
                                   const char* tag, const std::vector<std::pair<std::string, std::string>>& also = {}) {
  std::vector<std::pair<std::string, std::string>> models = {{model, tag}};
  models.insert(models.end(), also.begin(), also.end());
  run_references(models);
  if (::testing::Test::HasFatalFailure()) return;
  // Every layout run (each of 2 or 4 ranks, one thread each) of every method, in turn.
  std::vector<test::Job> jobs;
  std::vector<std::string> ids;
  for (const char* method : kLayoutMethods)
    for (const Layout& L : layouts) {
      const int dp = L.np / L.tp;
      ids.push_back(std::string(tag) + "_" + method + "_np" + std::to_string(L.np) + "_tp" + std::to_string(L.tp));
      jobs.push_back({mpirun() + " -np " + std::to_string(L.np) + " " + bin() + layout_common(model, method) + " --run_id " +
                          ids.back() + " --grad_accum " + std::to_string(4 / dp) + " --parallel " + L.parallel +
                          " --tp_size " + std::to_string(L.tp),
                      L.np});
    }
  const std::vector<test::JobResult> results = test::run_jobs(jobs);
  size_t job = 0;
  for (const char* method : kLayoutMethods) {
    SCOPED_TRACE(method);
    const std::string ref_id = reference_runs().at(reference_command(model, method));
    const std::string ref_m = d + "/runs/" + ref_id + "/metrics.h5";
    const std::vector<double> ref_losses = step_losses(ref_m);
    ASSERT_EQ(ref_losses.size(), 10u);
    const double ref_val = summary_real(h5::open_file_read(ref_m), "final_val_loss", ref_m);
    for (const Layout& L : layouts) {
      const int dp = L.np / L.tp;
      const std::string& id = ids[job];
      const test::JobResult& r = results[job++];
      ASSERT_EQ(r.status, 0) << jobs[job - 1].cmd << "\n" << r.output;
      const std::string m = d + "/runs/" + id + "/metrics.h5";
      const std::vector<double> losses = step_losses(m);
      ASSERT_EQ(losses.size(), 10u);
      h5::Handle f = h5::open_file_read(m);
      h5::Handle sg = h5::open_group(f, "summary");
      EXPECT_EQ(h5::read_attr_int(sg, "world_size", m), L.np);
      EXPECT_EQ(h5::read_attr_int(sg, "tp", m), L.tp);
      EXPECT_EQ(h5::read_attr_int(sg, "dp", m), dp);
      EXPECT_EQ(summary_string(f, "strategy", m), L.parallel);
      for (size_t i = 0; i < losses.size(); ++i)
        EXPECT_NEAR(losses[i], ref_losses[i], 1e-5 * std::fabs(ref_losses[i])) << id << " step " << i + 1;
      const double val = summary_real(f, "final_val_loss", m);
      EXPECT_NEAR(val, ref_val, 1e-5 * std::fabs(ref_val)) << id;
      std::string worst;
      const double w = max_weight_rel_diff(d + "/runs/" + ref_id + "/model/model.safetensors",
                                           d + "/runs/" + id + "/model/model.safetensors", &worst);
      EXPECT_LT(w, 1e-5) << id << ": final weights differ, worst " << worst;
      // ZeRO-3: the persistent parts (weights, gradients, optimizer state) of each rank fall as
      // 1 / (tp x dp) of the one-rank run's (up to padding and the replicated norms).
      if (std::string(L.parallel).find("zero3") != std::string::npos) {
        const double ref_sharded = rank0_persistent_bytes(ref_m);
        const double z = rank0_persistent_bytes(m);
        EXPECT_LT(z, ref_sharded / L.np * 1.1 + 256 * 1024) << id << ": " << z << " vs " << ref_sharded << " bytes";
        EXPECT_GT(z, ref_sharded / L.np * 0.9) << id;
        std::printf("[%s] %s %s np=%d: weights + gradients + optimizer state per rank %.0f KiB (one rank: %.0f KiB, ratio %.3f)\n",
                    tag, method, L.parallel, L.np, z / 1024, ref_sharded / 1024, z / ref_sharded);
      }
      std::printf("[%s] %s %s np=%d tp=%d dp=%d: last loss %.7f vs %.7f, val %.7f vs %.7f, max weight rel diff %.1e (%s)\n",
                  tag, method, L.parallel, L.np, L.tp, dp, losses.back(), ref_losses.back(), val, ref_val, w, worst.c_str());
    }
  }
}

// 4 heads and 4 KV heads of 64, FFN 512, vocabulary 512 (see above).
std::string llama_splittable(const std::string& d) {
  return "--deck " + d + "/full.cfg --hidden_size 256 --intermediate_size 512 --num_heads 4 --num_kv_heads 4";
}

TEST_F(E2E, TensorParallelOnTwoAndFourRanksEqualsOneRank) {
  expect_layouts_equal_one_rank(*dir, llama_splittable(*dir), {{"tp", 2, 2}, {"tp", 4, 4}, {"tp", 4, 2}}, "tp");
}

TEST_F(E2E, ZeroThreeAndTpTimesZeroThreeEqualOneRank) {
  expect_layouts_equal_one_rank(*dir, llama_splittable(*dir), {{"zero3", 2, 1}, {"zero3", 4, 1}, {"tp+zero3", 4, 2}},
                                "zero3");
}

// T5 (encoder-decoder) on the text-to-text sentiment shards: 4 heads of 64 (d_model 256), FFN
// 512, vocabulary 512, 2 + 2 blocks, gated-GELU, untied head. Every strategy against one rank,
// for full fine-tuning, LoRA on every projection (self-, cross-attention, FFN) and QLoRA. In
// f64: full fine-tuning of this T5 at lr 3e-3 is chaotic enough (gradient norms of 70 at the
// start, the loss bouncing) that f32's summation-order differences grow to 1% in 10 steps, for
// DDP as for TP; in f64 they stay at rounding level and the bound below means equality.
std::string t5_splittable(const std::string& d) {
  return "--deck " + d + "/t5.cfg --hidden_size 256 --head_dim 64 --intermediate_size 512 --num_heads 4"
         " --vocab_size 512 --dtype f64";
}

// With activation checkpointing: each block is recomputed inside its backward unit, while
// ZeRO-3 holds that unit's gathered parameters.
std::string t5_checkpointed(const std::string& d) { return t5_splittable(d) + " --activation_checkpointing true"; }

TEST_F(E2E, T5TensorParallelAndDdpEqualOneRank) {
  // The next test's references run beside this test's own (six one-core runs: three rounds).
  expect_layouts_equal_one_rank(*dir, t5_splittable(*dir), {{"tp", 2, 2}, {"tp", 4, 4}, {"ddp", 2, 1}}, "t5tp",
                                {{t5_checkpointed(*dir), "t5zero3"}});
}

TEST_F(E2E, T5ZeroThreeAndTpTimesZeroThreeEqualOneRank) {
  expect_layouts_equal_one_rank(*dir, t5_checkpointed(*dir), {{"zero3", 2, 1}, {"tp+zero3", 4, 2}}, "t5zero3");
}

TEST_F(E2E, TensorParallelRefusesIndivisibleShapes) {
  // 4 heads but 2 KV heads (the shipped tiny base deck) cannot be split 4 ways: every rank stops
  // up front with a message naming the dimension.
  std::string out;
  const int rc = test::run_command("timeout 120 " + mpirun() + " -np 4 " + bin() + " train --deck " + *dir +
                                       "/full.cfg --run_id tp_bad --parallel tp --tp_size 4 --max_steps 2",
                                   &out);
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(rc, 124) << "timed out\n" << out;
  EXPECT_NE(out.find("num_key_value_heads = 2) is not divisible by tp_size = 4"), std::string::npos) << out;
}

TEST_F(E2E, OneFailingRankEndsTheWholeDdpJob) {
  // Rank 1 fails at step 3 while rank 0 waits in the gradient all-reduce: the fatal path's
  // MPI_Abort must end both within seconds, with a non-zero status and the failing rank named.
  const std::string d = *dir;
  std::string out;
  const auto t0 = std::chrono::steady_clock::now();
  const int rc = test::run_command("SHARDTUNE_FAULT=1:3 timeout 120 " + mpirun() + " -x SHARDTUNE_FAULT -np 2 " + bin() +
                                       " train --deck " + d + "/full.cfg --run_id fault --parallel ddp --threads 1 --max_steps 6",
                                   &out);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(rc, 124) << "timed out: the surviving rank hung\n" << out;
  EXPECT_NE(out.find("fatal on rank 1"), std::string::npos) << out;
  EXPECT_NE(out.find("injected fault"), std::string::npos) << out;
  EXPECT_LT(secs, 60.0) << out;
}

TEST_F(E2E, HungRankIsEndedByTheWatchdog) {
  // Rank 1 hangs (sleeps) at step 3 before the gradient all-reduce while rank 0 waits in it. No
  // error is raised anywhere: only the watchdog (5 s without progress) can end the job, through
  // the abort path, with a non-zero status and its own line naming what made no progress.
  const std::string d = *dir;
  std::string out;
  const auto t0 = std::chrono::steady_clock::now();
  const int rc = test::run_command("SHARDTUNE_FAULT=1:3:hang timeout 120 " + mpirun() + " -x SHARDTUNE_FAULT -np 2 " +
                                       bin() + " train --deck " + d + "/full.cfg --run_id hang --parallel ddp --threads 1"
                                       " --max_steps 6 --log_every 1 --watchdog_timeout 5",
                                   &out);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(rc, 124) << "timed out: the watchdog did not end the hung job\n" << out;
  EXPECT_NE(out.find("shardtune: watchdog on rank "), std::string::npos) << out;
  EXPECT_NE(out.find("no progress for "), std::string::npos) << out;
  // Rank 1 hangs inside step 3; rank 0 waits in the gradient all-reduce of the DP group.
  EXPECT_TRUE(out.find("s in train step 3; aborting the job") != std::string::npos ||
              out.find("s in all_reduce_sum on dp (mpi); aborting the job") != std::string::npos)
      << out;
  // Steps 1 and 2 complete; step 3 cannot (rank 1 never joins its all-reduce).
  EXPECT_NE(out.find("step 2/6 "), std::string::npos) << out;
  EXPECT_EQ(out.find("step 3/6 "), std::string::npos) << "step 3 completed despite the hung rank\n" << out;
  EXPECT_LT(secs, 30.0) << out;
}

TEST_F(E2E, KilledRunLeavesMetricsReadableUpToTheLastFlush) {
  // Issue 8 item 4: SIGKILL mid-run (no handler, no destructor, no final flush). Every step the
  // trainer logged was appended and flushed before its log line, so metrics.h5 must open (C++
  // reader and h5py through analysis/st_read.py) with at least those steps, in order, and
  // outcome "running". Killed at three points: early, mid-epoch, and past an epoch boundary
  // (where /evals and /epochs rows were appended too); the kill lands wherever the polling
  // lag puts it, inside a step, an append or a flush.
  const std::string d = *dir;
  for (const int kill_after : {1, 9, 70}) {
    SCOPED_TRACE("killed after step " + std::to_string(kill_after));
    const std::string run_id = "killed" + std::to_string(kill_after);
    const std::string log = d + "/" + run_id + ".log";
    const std::string cmd =
        "OMP_NUM_THREADS=1 " + bin() + " train --deck " + d + "/full.cfg --run_id " + run_id +
        " --threads 1 --epochs 1000 --max_steps 100000 --log_every 1 --eval_every 0 --save_model false > " + log +
        " 2>&1 & pid=$!; for i in $(seq 1 1200); do grep -q '^step " + std::to_string(kill_after) +
        "/' " + log + " && break; kill -0 $pid 2>/dev/null || break; sleep 0.05; done; kill -9 $pid; wait $pid 2>/dev/null; echo \"exit=$?\"";
    std::string out;
    test::run_command(cmd, &out);
    const std::string text = test::read_file(log);
    ASSERT_NE(out.find("exit=137"), std::string::npos) << "the run was not killed by SIGKILL: " << out << "\n" << text;
    int64_t last_logged = 0;  // the highest "step N/" line printed before the kill
    std::istringstream lines(text);
    for (std::string line; std::getline(lines, line);)
      if (line.rfind("step ", 0) == 0) last_logged = std::max<int64_t>(last_logged, std::atoll(line.c_str() + 5));
    ASSERT_GE(last_logged, kill_after) << text;

    const std::string m = d + "/runs/" + run_id + "/metrics.h5";
    h5::Handle f = h5::open_file_read(m);
    EXPECT_EQ(summary_string(f, "outcome", m), "running");
    h5::Handle steps = h5::open_group(f, "steps");
    for (const char* column : {"step", "epoch", "loss", "lr", "grad_norm", "tokens", "step_time", "tokens_per_s", "mfu",
                               "mem_current", "mem_peak"})
      EXPECT_GE(static_cast<int64_t>(h5::dataset_dims(steps, column, m).at(0)), last_logged) << column;
    const auto rows = static_cast<size_t>(h5::dataset_dims(steps, "step", m).at(0));
    std::vector<int64_t> step(rows);
    std::vector<double> loss(static_cast<size_t>(h5::dataset_dims(steps, "loss", m).at(0)));
    h5::read_dataset(steps, "step", H5T_NATIVE_INT64, step.data(), m);
    h5::read_dataset(steps, "loss", H5T_NATIVE_DOUBLE, loss.data(), m);
    for (int64_t i = 0; i < last_logged && i < static_cast<int64_t>(std::min(rows, loss.size())); ++i) {
      EXPECT_EQ(step[static_cast<size_t>(i)], i + 1) << "row " << i;
      EXPECT_TRUE(std::isfinite(loss[static_cast<size_t>(i)])) << "row " << i;
    }
    if (kill_after > 60) {  // past the first epoch's end: its /epochs row was flushed before step 61
      h5::Handle epochs = h5::open_group(f, "epochs");
      EXPECT_GE(h5::dataset_dims(epochs, "train_loss", m).at(0), 1u);
    }

    // The Python reader (report.py's) sees the same rows.
    const int rc = test::run_command(python() + " -c \"import sys; sys.path.insert(0, '" + test::repo_root() +
                                         "/analysis'); import st_read; r = st_read.read_run('" + m +
                                         "'); print('rows', len(r['steps']['step']), r['summary']['outcome'])\"",
                                     &out);
    ASSERT_EQ(rc, 0) << out;
    const size_t at = out.find("rows ");
    ASSERT_NE(at, std::string::npos) << out;
    EXPECT_GE(std::atoll(out.c_str() + at + 5), last_logged) << out;
    EXPECT_NE(out.find("running"), std::string::npos) << out;
  }
}

TEST_F(E2E, SeveralRanksAreRefusedWithoutHanging) {
  const std::string d = *dir;
  std::string out;
  const int rc = test::run_command("timeout 120 " + mpirun() + " -np 2 " + bin() + " train --deck " + d + "/full.cfg --run_id two", &out);
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(rc, 124) << "timed out: a refused multi-rank launch must not hang\n" << out;
  EXPECT_NE(out.find("one rank"), std::string::npos) << out;
}

// Real data when ../shared/data is present: LoRA on the pretrained stories260K model with SST-2,
// a short run whose validation loss must fall below the untrained model's.
TEST_F(E2E, Stories260KLoraOnSst2LossFalls) {
  const std::string shared = test::shared_data_dir();
  if (shared.empty()) GTEST_SKIP() << "../shared/data is absent: the SST-2 / stories260K run is not checked";
  const std::string d = *dir, tok = shared + "/models/stories260K/tokenizer.model";
  std::string out;
  ASSERT_EQ(test::run_command(bin() + " prepare --input " + shared + "/sst2/train.tsv --limit 2048 --tokenizer " + tok +
                                  " --output " + d + "/sst2 --split train --max-seq-len 96", &out), 0) << out;
  ASSERT_EQ(test::run_command(bin() + " prepare --input " + shared + "/sst2/dev.tsv --limit 256 --tokenizer " + tok +
                                  " --output " + d + "/sst2 --split validation --max-seq-len 96", &out), 0) << out;
  const int rc = test::run_command(bin() + " train --deck " + test::repo_root() + "/inputs/sst2/stories260k_lora.cfg --model " +
                                       shared + "/models/stories260K --tokenizer " + tok + " --data " + d +
                                       "/sst2 --output_dir " + d + "/runs --run_id sst2 --max_steps 40 --eval_every 0 "
                                       "--micro_batch_size 16 --max_train_rows 0",
                                   &out);
  ASSERT_EQ(rc, 0) << out;
  const std::string m = d + "/runs/sst2/metrics.h5";
  h5::Handle f = h5::open_file_read(m);
  const double v0 = summary_real(f, "initial_val_loss", m), v1 = summary_real(f, "final_val_loss", m);
  EXPECT_LT(v1, 0.5 * v0) << "LoRA on SST-2 should cut the validation loss (" << v0 << " -> " << v1 << ")";
  std::printf("[sst2] stories260K LoRA, 40 steps: val loss %.3f -> %.3f, accuracy %.1f%% -> %.1f%%\n", v0, v1,
              100 * summary_real(f, "initial_val_accuracy", m), 100 * summary_real(f, "final_val_accuracy", m));
}

// Sequence packing (issue 19) on the sentiment shards (short rows): a packed LoRA run gives the
// same losses under ZeRO-3 and TP on 2 ranks as on one (every rank computes the same packing
// plan and reads its own packed rows), computes far less padding than the unpacked run, and its
// evaluation (unpacked) is the unpacked run's to the bit.
TEST_F(E2E, PackedRunsEqualOneRankUnderZeroThreeAndTp) {
  const std::string d = *dir;
  std::string out;
  const std::string common = " train --deck " + d + "/full.cfg --data " + d + "/sentiment --method lora --lora_r 4"
                             " --threads 1 --micro_batch_size 4 --max_steps 4 --eval_every 0 --log_every 4"
                             " --save_model false --max_val_rows 64";
  struct Run {
    std::string id, args;
    int np;
  };
  const std::string no_eval = " --val_split \"\" --eval_at_start false";
  const std::vector<Run> runs = {{"pack_ref", " --packing true --grad_accum 2", 1},
                                 {"pack_zero3", " --packing true --grad_accum 1 --parallel zero3" + no_eval, 2},
                                 {"pack_tp", " --packing true --grad_accum 2 --parallel tp --tp_size 2" + no_eval, 2},
                                 {"pack_none", " --grad_accum 2", 1}};
  std::vector<double> ref;
  for (const Run& r : runs) {
    const std::string cmd = mpirun() + " -np " + std::to_string(r.np) + " " + bin() + common + r.args + " --run_id " + r.id;
    ASSERT_EQ(test::run_command(cmd, &out), 0) << cmd << "\n" << out;
    const std::vector<double> losses = step_losses(d + "/runs/" + r.id + "/metrics.h5");
    ASSERT_EQ(losses.size(), 4u) << r.id;
    if (r.id == "pack_none") continue;
    EXPECT_NE(out.find("packing: "), std::string::npos) << out;
    if (r.id == "pack_ref") {
      ref = losses;
      continue;
    }
    for (size_t i = 0; i < losses.size(); ++i)
      EXPECT_NEAR(losses[i], ref[i], 1e-5 * std::fabs(ref[i])) << r.id << " step " << i + 1;
  }
  const std::string mp = d + "/runs/pack_ref/metrics.h5", mu = d + "/runs/pack_none/metrics.h5";
  h5::Handle fp = h5::open_file_read(mp), fu = h5::open_file_read(mu);
  const double pad_packed = summary_real(fp, "padding_fraction", mp), pad_plain = summary_real(fu, "padding_fraction", mu);
  EXPECT_GT(pad_plain, 0.1);
  EXPECT_LT(pad_packed, 0.5 * pad_plain);
  // /steps: real tokens never exceed the computed ones.
  for (const auto& [f, m] : {std::pair<const h5::Handle*, std::string>{&fp, mp}, {&fu, mu}}) {
    h5::Handle g = h5::open_group(*f, "steps");
    const std::vector<int64_t> tok = read_i64_column(g, "tokens", m), comp = read_i64_column(g, "computed_tokens", m);
    for (size_t i = 0; i < tok.size(); ++i) EXPECT_LE(tok[i], comp[i]) << m;
  }
  EXPECT_EQ(summary_real(fp, "initial_val_loss", mp), summary_real(fu, "initial_val_loss", mu));
  EXPECT_EQ(summary_real(fp, "initial_val_accuracy", mp), summary_real(fu, "initial_val_accuracy", mu));
  std::printf("[packing] sentiment LoRA: padding %.1f%% packed vs %.1f%% unpacked; zero3 and tp on 2 ranks equal one rank\n",
              100 * pad_packed, 100 * pad_plain);
}

// T5 end to end: full training from random init on text-to-text sentiment (the validation loss
// falls and the first-token accuracy of "positive" vs "negative" is measured), the model saved
// in transformers' layout, then LoRA on that checkpoint (loaded by `model`, arch from its
// config.json) and eval of it; a T5 deck on causal shards is refused with a clear message.
TEST_F(E2E, T5FullThenLoraOnTheSavedCheckpointThenEval) {
  const std::string d = *dir;
  std::string out;
  const std::string full = bin() + " train --deck " + d + "/t5.cfg --run_id t5_full --max_steps 60 --eval_every 0";
  ASSERT_EQ(test::run_command(full, &out), 0) << full << "\n" << out;
  const std::string m = d + "/runs/t5_full/metrics.h5";
  h5::Handle f = h5::open_file_read(m);
  const double v0 = summary_real(f, "initial_val_loss", m), v1 = summary_real(f, "final_val_loss", m);
  const double a1 = summary_real(f, "final_val_accuracy", m);
  EXPECT_EQ(summary_string(f, "arch", m), "t5");
  EXPECT_LT(v1, 0.5 * v0) << "full T5 training should cut the validation loss (" << v0 << " -> " << v1 << ")";
  EXPECT_TRUE(std::isfinite(a1) && a1 >= 0 && a1 <= 1) << a1;
  ASSERT_TRUE(fs::exists(d + "/runs/t5_full/model/model.safetensors"));
  ASSERT_TRUE(fs::exists(d + "/runs/t5_full/model/config.json"));
  std::printf("[t5] full, 60 steps: val loss %.3f -> %.3f, accuracy %.1f%% -> %.1f%%\n", v0, v1,
              100 * summary_real(f, "initial_val_accuracy", m), 100 * a1);

  // LoRA on the saved model: arch comes from the checkpoint; its starting loss is the full run's end.
  const std::string lora = bin() + " train --deck " + d + "/t5.cfg --run_id t5_lora --model " + d +
                           "/runs/t5_full/model --method lora --lora_r 4 --max_steps 20 --eval_every 0 --save_model false";
  ASSERT_EQ(test::run_command(lora, &out), 0) << lora << "\n" << out;
  const std::string ml = d + "/runs/t5_lora/metrics.h5";
  h5::Handle fl = h5::open_file_read(ml);
  EXPECT_NEAR(summary_real(fl, "initial_val_loss", ml), v1, 1e-4 * v1) << "the loaded checkpoint is the saved one";
  const int64_t n_lora = h5::read_attr_int(h5::open_group(fl, "summary"), "trainable_parameters", ml);
  const int64_t n_all = h5::read_attr_int(h5::open_group(fl, "summary"), "num_parameters", ml);
  EXPECT_GT(n_lora, 0);
  EXPECT_LT(n_lora, n_all / 10) << "LoRA trains a small fraction of the model";

  const std::string ev = bin() + " eval --deck " + d + "/t5.cfg --run_id t5_eval --model " + d + "/runs/t5_full/model";
  ASSERT_EQ(test::run_command(ev, &out), 0) << ev << "\n" << out;
  const std::string me = d + "/runs/t5_eval/eval-1/metrics.h5";  // eval writes a directory of its own
  EXPECT_NEAR(summary_real(h5::open_file_read(me), "final_val_loss", me), v1, 1e-4 * v1);

  // A T5 on causal shards, and a Llama on seq2seq shards: refused, naming the fix.
  EXPECT_NE(test::run_command(bin() + " train --deck " + d + "/t5.cfg --run_id t5_bad --data " + d + "/sentiment", &out), 0);
  EXPECT_NE(out.find("needs seq2seq shards"), std::string::npos) << out;
  EXPECT_NE(test::run_command(bin() + " train --deck " + d + "/full.cfg --run_id llama_bad --data " + d + "/sentiment_t5",
                              &out), 0);
  EXPECT_NE(out.find("these are seq2seq shards"), std::string::npos) << out;
}

// PEFT adapters end to end (issue 8): LoRA on a saved base with save_adapter under one rank,
// TP 2 and ZeRO-3 2 writes the same adapter (1e-5, as the layouts' weights above); `export
// --merged` of that adapter equals the run's own merged save_model output; a sharded export reads
// back equal through the index; `eval` with `adapter` equals eval of the merged model, and
// training continues from a loaded adapter where the saved run ended. Then the same for T5 (one
// rank against TP 2, f64), and the refusals.
double val_loss_of(const std::string& metrics, const char* key) {
  return summary_real(h5::open_file_read(metrics), key, metrics);
}

void expect_same_checkpoint(const std::string& single_file, const std::string& dir) {
  SafetensorsFile a = SafetensorsFile::open(single_file);
  CheckpointReader b = CheckpointReader::open(dir);
  EXPECT_EQ(a.entries().size(), b.names().size());
  for (const auto& e : a.entries()) {
    Tensor x = a.read_float(e.name, DType::f32, Device::cpu, MemCategory::other);
    Tensor y = b.read(e.name, x.shape(), DType::f32, Device::cpu, MemCategory::other);
    EXPECT_EQ(std::memcmp(x.data(), y.data(), x.nbytes()), 0) << e.name;
  }
}

TEST_F(E2E, PeftAdapterSavedUnderEveryLayoutExportedMergedAndLoaded) {
  const std::string d = *dir;
  std::string out;
  auto run = [&](const std::string& cmd) {
    const int rc = test::run_command(cmd, &out);
    EXPECT_EQ(rc, 0) << cmd << "\n" << out;
    return rc == 0;
  };
  // A base checkpoint: 2 steps of full fine-tuning from random init.
  ASSERT_TRUE(run(bin() + " train --deck " + d + "/full.cfg --run_id peft_base --method full --max_steps 2 --eval_at_start false"
                  " --val_split '' --save_model true"));
  const std::string base = d + "/runs/peft_base/model";
  const std::string common = " train --deck " + d + "/full.cfg --model " + base +
                             " --method lora --lora_r 4 --lora_alpha 8 --threads 1 --micro_batch_size 4 --eval_every 0 --log_every 3";
  const std::string saved = " --max_steps 6 --eval_at_start false --save_model true --save_adapter true";
  ASSERT_TRUE(run(mpirun() + " -np 1 " + bin() + common + saved + " --run_id peft_ref --grad_accum 4"));
  const std::string ref = d + "/runs/peft_ref";
  ASSERT_TRUE(fs::exists(ref + "/adapter/adapter_config.json")) << out;
  EXPECT_NE(out.find("saved adapter (PEFT format)"), std::string::npos) << out;
  for (const auto& [id, flags] : {std::pair<std::string, std::string>{"peft_tp2", " --grad_accum 4 --parallel tp --tp_size 2"},
                                  {"peft_zero3", " --grad_accum 2 --parallel zero3"}}) {
    ASSERT_TRUE(run(mpirun() + " -np 2 " + bin() + common + saved + " --run_id " + id + flags));
    std::string worst;
    const double w = max_weight_rel_diff(ref + "/adapter/adapter_model.safetensors",
                                         d + "/runs/" + id + "/adapter/adapter_model.safetensors", &worst);
    EXPECT_LT(w, 1e-5) << id << ": adapters differ, worst " << worst;
    EXPECT_EQ(SafetensorsFile::open(d + "/runs/" + id + "/adapter/adapter_model.safetensors").entries().size(),
              SafetensorsFile::open(ref + "/adapter/adapter_model.safetensors").entries().size());
    std::printf("[peft] %s: adapter max rel diff to one rank %.1e (%s)\n", id.c_str(), w, worst.c_str());
  }

  // export --merged of the one-rank adapter = the run's own merged model (same f64 merge of the
  // same f32 values); --peft of the TP run's adapter = the adapter itself.
  const std::string exp = bin() + " export --deck " + d + "/full.cfg --model " + base + " --adapter " + ref + "/adapter";
  ASSERT_TRUE(run(exp + " --merged " + d + "/exp_merged --peft " + d + "/exp_peft"));
  std::string worst;
  double w = max_weight_rel_diff(ref + "/model/model.safetensors", d + "/exp_merged/model.safetensors", &worst);
  EXPECT_EQ(w, 0.0) << "export --merged differs from save_model, worst " << worst;
  EXPECT_TRUE(fs::exists(d + "/exp_merged/config.json"));
  EXPECT_TRUE(fs::exists(d + "/exp_merged/tokenizer.model"));
  w = max_weight_rel_diff(ref + "/adapter/adapter_model.safetensors", d + "/exp_peft/adapter_model.safetensors", &worst);
  EXPECT_EQ(w, 0.0) << worst;
  ASSERT_TRUE(run(exp + " --merged " + d + "/exp_sharded --max-shard-size 100KB"));
  EXPECT_TRUE(fs::exists(d + "/exp_sharded/model.safetensors.index.json"));
  int shards = 0;
  for (const auto& e : fs::directory_iterator(d + "/exp_sharded"))
    shards += e.path().filename().string().rfind("model-0000", 0) == 0;
  EXPECT_GE(shards, 2) << "~470 KB of weights in shards of at most 100 KB";
  EXPECT_FALSE(fs::exists(d + "/exp_sharded/model.safetensors"));
  expect_same_checkpoint(d + "/exp_merged/model.safetensors", d + "/exp_sharded");

  // eval with the adapter applied = eval of the merged model; training from the adapter starts there.
  ASSERT_TRUE(run(bin() + " eval --deck " + d + "/full.cfg --run_id peft_eval_adapter --model " + base + " --adapter " +
                  ref + "/adapter"));
  EXPECT_NE(out.find("adapter: loaded"), std::string::npos) << out;
  ASSERT_TRUE(run(bin() + " eval --deck " + d + "/full.cfg --run_id peft_eval_merged --model " + d + "/exp_sharded"));
  const double va = val_loss_of(d + "/runs/peft_eval_adapter/eval-1/metrics.h5", "final_val_loss");
  const double vm = val_loss_of(d + "/runs/peft_eval_merged/eval-1/metrics.h5", "final_val_loss");
  const double vb = val_loss_of(ref + "/metrics.h5", "final_val_loss");
  EXPECT_NEAR(va, vm, 1e-5 * vm);
  EXPECT_NEAR(va, vb, 1e-5 * vb) << "the adapter evaluates as at the end of its run";
  ASSERT_TRUE(run(mpirun() + " -np 2 " + bin() + common + " --run_id peft_continue --grad_accum 4 --parallel tp --tp_size 2"
                  " --adapter " + ref + "/adapter --max_steps 2 --eval_at_start true --save_model false"));
  EXPECT_NEAR(val_loss_of(d + "/runs/peft_continue/metrics.h5", "initial_val_loss"), vb, 1e-5 * vb)
      << "training continues from the loaded adapter (sliced for TP 2)";
  std::printf("[peft] val loss: run %.7f, eval with adapter %.7f, merged export (sharded) %.7f\n", vb, va, vm);
  // QLoRA from the adapter: qlora_quantize = adapted quantizes the adapter's modules (every
  // projection here, while the deck's lora_targets names only q and v).
  ASSERT_TRUE(run(bin() + " train --deck " + d + "/full.cfg --model " + base + " --run_id peft_qlora --method qlora"
                  " --lora_targets q,v --adapter " + ref + "/adapter --micro_batch_size 4 --max_steps 1 --eval_every 0"
                  " --eval_at_start false --save_model false --save_adapter true"));
  EXPECT_NE(out.find("14 linear layers in NF4"), std::string::npos) << out;
  EXPECT_TRUE(fs::exists(d + "/runs/peft_qlora/adapter/adapter_model.safetensors"));

  // T5: one rank against TP 2 (f64), export --merged against save_model.
  const std::string t5 = " train " + t5_splittable(d) + " --method lora --lora_r 4 --lora_alpha 8 --threads 1"
                         " --micro_batch_size 4 --grad_accum 4 --max_steps 4 --eval_every 0 --eval_at_start false"
                         " --save_model true --save_adapter true --val_split ''";
  ASSERT_TRUE(run(mpirun() + " -np 1 " + bin() + t5 + " --run_id peft_t5_ref"));
  ASSERT_TRUE(run(mpirun() + " -np 2 " + bin() + t5 + " --run_id peft_t5_tp2 --parallel tp --tp_size 2"));
  w = max_weight_rel_diff(d + "/runs/peft_t5_ref/adapter/adapter_model.safetensors",
                          d + "/runs/peft_t5_tp2/adapter/adapter_model.safetensors", &worst);
  EXPECT_LT(w, 1e-6) << "T5 adapters differ (f64), worst " << worst;
  std::printf("[peft] t5 tp2: adapter max rel diff to one rank %.1e (%s)\n", w, worst.c_str());
  ASSERT_TRUE(run(bin() + " export " + t5_splittable(d) + " --model " + d + "/runs/peft_t5_ref/model --adapter " + d +
                  "/runs/peft_t5_tp2/adapter --peft " + d + "/exp_t5_peft"));
  w = max_weight_rel_diff(d + "/runs/peft_t5_tp2/adapter/adapter_model.safetensors",
                          d + "/exp_t5_peft/adapter_model.safetensors", &worst);
  EXPECT_EQ(w, 0.0) << "T5 adapter through export --peft (f64), worst " << worst;
  const std::string cfg_text = test::read_file(d + "/runs/peft_t5_ref/adapter/adapter_config.json");
  EXPECT_NE(cfg_text.find("\"SEQ_2_SEQ_LM\""), std::string::npos) << cfg_text;
  EXPECT_NE(cfg_text.find("\"wi_0\""), std::string::npos) << cfg_text;

  // The logits hook of the interop script (tests/gpu/peft_interop.py): the PEFT fixture on its
  // base, over the golden inputs, gives transformers + PEFT's logits.
  const std::string g = test::repo_root() + "/tests/golden";
  ASSERT_TRUE(run(bin() + " export --model " + g + "/llama_tiny --adapter " + g + "/llama_tiny_lora_adapter --logits-input " +
                  g + "/llama_tiny_golden.h5 --logits-output " + d + "/golden_logits.h5"));
  {
    h5::Handle got = h5::open_file_read(d + "/golden_logits.h5"), gold = h5::open_file_read(g + "/llama_tiny_golden.h5");
    const auto dims = h5::dataset_dims(got, "logits", "logits");
    ASSERT_EQ(dims.size(), 3u);
    std::vector<float> x(dims[0] * dims[1] * dims[2]);
    std::vector<double> y(x.size());
    h5::read_dataset(got, "logits", H5T_NATIVE_FLOAT, x.data(), "logits");
    h5::Handle lora = h5::open_group(gold, "lora");
    h5::read_dataset(lora, "logits", H5T_NATIVE_DOUBLE, y.data(), "golden");
    double num = 0, den = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      num = std::max(num, std::fabs(x[i] - y[i]));
      den = std::max(den, std::fabs(y[i]));
    }
    EXPECT_LT(num / den, 1e-5) << "export --logits-output of the PEFT fixture";
    std::printf("[peft] fixture logits through export --logits-output: max rel diff %.1e\n", num / den);
  }

  // Refusals.
  EXPECT_NE(test::run_command(bin() + " train --deck " + d + "/full.cfg --run_id peft_bad --method full --adapter " + ref +
                                  "/adapter --max_steps 1", &out), 0);
  EXPECT_NE(out.find("needs method = lora or qlora"), std::string::npos) << out;
  EXPECT_NE(test::run_command(bin() + " train --deck " + d + "/full.cfg --run_id peft_bad --save_adapter true", &out), 0);
  EXPECT_NE(out.find("save_adapter = true needs method = lora or qlora"), std::string::npos) << out;
  EXPECT_NE(test::run_command(bin() + " export --deck " + d + "/full.cfg --model " + base + " --merged " + d + "/x", &out), 0);
  EXPECT_NE(out.find("export needs --adapter"), std::string::npos) << out;
  // Without --model the adapter's own base (base_model_name_or_path) is used; an adapter that
  // names none (a random-init base) is refused with the fix named.
  EXPECT_EQ(test::run_command(bin() + " export --deck " + d + "/full.cfg --adapter " + ref + "/adapter --merged " + d + "/x",
                              &out), 0) << out;
  EXPECT_NE(out.find("(base_model_name_or_path)"), std::string::npos) << out;
  fs::create_directories(d + "/nobase");
  fs::copy(ref + "/adapter", d + "/nobase", fs::copy_options::overwrite_existing | fs::copy_options::recursive);
  nlohmann::json ac = nlohmann::json::parse(test::read_file(d + "/nobase/adapter_config.json"));
  ac["base_model_name_or_path"] = nullptr;
  test::write_file(d + "/nobase/adapter_config.json", ac.dump());
  EXPECT_NE(test::run_command(bin() + " export --deck " + d + "/full.cfg --adapter " + d + "/nobase --merged " + d + "/x",
                              &out), 0);
  EXPECT_NE(out.find("base_model_name_or_path is not set: name the base model with --model"), std::string::npos) << out;
}

TEST_F(E2E, HelpDocumentsEveryOption) {
  std::string out;
  ASSERT_EQ(test::run_command(bin() + " train --help", &out), 0) << out;
  for (const char* key : {"--lr", "--method", "--lora_r", "--activation_checkpointing", "--memory_limit", "--deck"})
    EXPECT_NE(out.find(key), std::string::npos) << key;
  // Defaults as a deck spells them: 0.0003, not 0.00029999999999999997; booleans true / false.
  EXPECT_NE(out.find("--lr arg (=0.0003)"), std::string::npos) << out;
  EXPECT_NE(out.find("--shuffle arg (=true)"), std::string::npos) << out;
  EXPECT_NE(out.find("--save_model arg (=false)"), std::string::npos) << out;
  EXPECT_EQ(out.find("0.00029999"), std::string::npos) << out;
  ASSERT_EQ(test::run_command(bin() + " prepare --help", &out), 0) << out;
  EXPECT_NE(out.find("--max-seq-len"), std::string::npos) << out;
  // eval and export list their own options and say where the output goes.
  ASSERT_EQ(test::run_command(bin() + " eval --help", &out), 0) << out;
  for (const char* s : {"Usage: shardtune eval", "metrics.h5", "--adapter", "--val_split", "--max_val_rows", "--method"})
    EXPECT_NE(out.find(s), std::string::npos) << s << "\n" << out;
  for (const char* s : {"--lr ", "--checkpoint_every", "--warmup_steps"}) EXPECT_EQ(out.find(s), std::string::npos) << s;
  ASSERT_EQ(test::run_command(bin() + " export --help", &out), 0) << out;
  for (const char* s : {"--merged OUT", "--peft OUT", "tokenizer_config.json", "base_model_name_or_path", "--adapter"})
    EXPECT_NE(out.find(s), std::string::npos) << s << "\n" << out;
  EXPECT_EQ(out.find("--lr "), std::string::npos) << out;
  ASSERT_EQ(test::run_command(bin() + " --version", &out), 0) << out;
  EXPECT_EQ(out.rfind("shardtune ", 0), 0u) << out;
  EXPECT_NE(out.find("commit "), std::string::npos) << out;
}

}  // namespace
}  // namespace st
