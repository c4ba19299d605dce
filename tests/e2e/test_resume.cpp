// Exact resume (issue 8): a run stopped part-way (killed, or SIGTERM/SIGUSR1 -> checkpoint and
// outcome "preempted") and resumed with resume = auto must give bit-identical losses, learning
// rates, gradient norms, validation losses and final weights to the same run uninterrupted, on
// one rank (full, LoRA with dropout, QLoRA) and on two (ZeRO-3, DDP, TP); checkpoints without
// COMPLETE are ignored; another layout or other training options are refused.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "io/h5util.hpp"
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

// 32 training rows, micro-batch 4: 8 steps per epoch; 2 epochs cut at max_steps 12, so a run
// crosses an epoch boundary (an epoch record and an evaluation) and ends mid-epoch.
class Resume : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir = new std::string(test::make_temp_dir("resume"));
    const std::string d = *dir, tok = d + "/synth/tokenizer.model";
    std::string out;
    for (const std::string& cmd :
         {bin() + " prepare --synthetic " + d + "/synth --sentiment-rows 600 --instruct-rows 400",
          bin() + " prepare --input " + d + "/synth/instruct_train.jsonl --tokenizer " + tok + " --output " + d +
              "/data --split train --loss-on all --template plain --max-seq-len 64",
          bin() + " prepare --input " + d + "/synth/instruct_val.jsonl --tokenizer " + tok + " --output " + d +
              "/data --split validation --loss-on all --template plain --max-seq-len 64",
          bin() + " prepare --input " + d + "/synth/sentiment_train.tsv --tokenizer " + tok + " --output " + d +
              "/t5data --split train --arch seq2seq --max-seq-len 48 --max-target-len 4",
          bin() + " prepare --input " + d + "/synth/sentiment_dev.tsv --tokenizer " + tok + " --output " + d +
              "/t5data --split validation --arch seq2seq --max-seq-len 48 --max-target-len 4"}) {
      const int rc = test::run_command(cmd, &out);
      if (rc != 0) {
        setup_error = new std::string("`" + cmd + "` exited " + std::to_string(rc) + ":\n" + out);
        return;
      }
    }
    test::write_file(d + "/resume.cfg", "include = " + test::repo_root() + "/inputs/base/tiny_llama.cfg\ndata = " + d +
                                            "/data\noutput_dir = " + d + "/runs\nhidden_size = 64\nintermediate_size = 160\n"
                                            "num_layers = 2\nmicro_batch_size = 4\nmax_train_rows = 32\nepochs = 2\n"
                                            "max_steps = 12\nlr = 3e-3\nwarmup_steps = 3\neval_every = 3\nmax_val_rows = 16\n"
                                            "threads = 1\nlog_every = 1\nsave_model = true\nlora_r = 4\nlora_alpha = 8\n"
                                            "qlora_quantize = all\n");
    test::write_file(d + "/t5.cfg", "include = " + test::repo_root() + "/inputs/base/tiny_t5.cfg\ndata = " + d +
                                        "/t5data\noutput_dir = " + d + "/runs\nhidden_size = 64\nhead_dim = 16\n"
                                        "intermediate_size = 128\nmicro_batch_size = 4\nmax_train_rows = 32\nepochs = 2\n"
                                        "max_steps = 12\nlr = 3e-3\nwarmup_steps = 3\neval_every = 3\nmax_val_rows = 16\n"
                                        "threads = 1\nlog_every = 1\nsave_model = true\nlora_r = 4\nlora_alpha = 8\n"
                                        "weight_decay = 0.01\n");
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
std::string* Resume::dir = nullptr;
std::string* Resume::setup_error = nullptr;

std::vector<double> column(const std::string& metrics, const std::string& table, const std::string& name) {
  h5::Handle f = h5::open_file_read(metrics);
  h5::Handle g = h5::open_group(f, table);
  std::vector<double> v(h5::dataset_dims(g, name, metrics).at(0));
  if (!v.empty()) h5::read_dataset(g, name, H5T_NATIVE_DOUBLE, v.data(), metrics);
  return v;
}

std::string outcome(const std::string& metrics) {
  h5::Handle f = h5::open_file_read(metrics);
  return h5::read_attr_string(h5::open_group(f, "summary"), "outcome", metrics);
}

// Every tensor of two safetensors files byte for byte.
void expect_same_tensors(const std::string& a, const std::string& b) {
  SafetensorsFile fa = SafetensorsFile::open(a), fb = SafetensorsFile::open(b);
  ASSERT_EQ(fa.entries().size(), fb.entries().size()) << a << " vs " << b;
  for (const auto& e : fa.entries()) {
    ASSERT_NE(fb.find(e.name), nullptr) << e.name;
    EXPECT_TRUE(fa.read_raw(e.name) == fb.read_raw(e.name)) << e.name << " differs: " << a << " vs " << b;
  }
}

// The uninterrupted run `ref` and the interrupted-then-resumed run `id` wrote the same figures.
void expect_identical_runs(const std::string& d, const std::string& ref, const std::string& id) {
  const std::string mr = d + "/runs/" + ref + "/metrics.h5", mi = d + "/runs/" + id + "/metrics.h5";
  EXPECT_EQ(outcome(mi), "ok");
  std::vector<double> steps = column(mi, "steps", "step");
  ASSERT_EQ(steps.size(), 12u) << "one row per step, none twice";
  for (size_t i = 0; i < steps.size(); ++i) EXPECT_EQ(steps[i], static_cast<double>(i + 1));
  for (const char* c : {"loss", "lr", "grad_norm", "tokens"}) {
    const std::vector<double> a = column(mr, "steps", c), b = column(mi, "steps", c);
    ASSERT_EQ(a.size(), 12u);
    for (size_t i = 0; i < a.size(); ++i) EXPECT_EQ(a[i], b[i]) << c << " at step " << i + 1 << " (must be bit-identical)";
  }
  for (const char* c : {"step", "val_loss"}) {
    const std::vector<double> a = column(mr, "evals", c), b = column(mi, "evals", c);
    EXPECT_EQ(a, b) << "evals/" << c;
  }
  EXPECT_EQ(column(mr, "epochs", "train_loss"), column(mi, "epochs", "train_loss"));
  EXPECT_EQ(column(mi, "epochs", "epoch").size(), 1u);
  expect_same_tensors(d + "/runs/" + ref + "/model/model.safetensors", d + "/runs/" + id + "/model/model.safetensors");
}

int run(const std::string& cmd, std::string* out) { return test::run_command(cmd, out); }

TEST_F(Resume, OneRankStoppedAndResumedIsBitIdentical) {
  const std::string d = *dir;
  struct Case {
    const char* deck;
    const char* method;
    std::string extra;  // options of both runs
    int every;          // checkpoint_every of the interrupted run
    std::string fault;  // SHARDTUNE_FAULT of its first part
    int status;         // its exit status
    int64_t resumed_from;
  };
  const std::vector<Case> cases = {
      // killed at step 7 (an error: no checkpoint of its own): resumes from step 5, drops row 6
      {"resume", "full", "", 5, "0:7", 1, 5},
      // SIGTERM during step 8, the last of epoch 1: checkpoint after the epoch's evaluation
      {"resume", "lora", " --lora_dropout 0.1", 4, "0:8:sigterm", 4, 8},
      // SIGUSR1 during step 3
      {"resume", "qlora", "", 5, "0:3:sigusr1", 4, 3},
      // T5 (encoder-decoder), LoRA with weight decay, SIGTERM in epoch 2
      {"t5", "lora", "", 5, "0:9:sigterm", 4, 9},
  };
  // Each case's uninterrupted run and its interrupted one (one thread each) side by side, then
  // the resumed runs side by side, then every case's checks in turn.
  auto base = [&](const Case& c) {
    return bin() + " train --deck " + d + "/" + c.deck + ".cfg --method " + c.method + c.extra;
  };
  auto ref = [](const Case& c) { return std::string("ref_") + c.deck + "_" + c.method; };
  auto id = [](const Case& c) { return std::string("stop_") + c.deck + "_" + c.method; };
  auto every = [](const Case& c) { return " --checkpoint_every " + std::to_string(c.every); };
  std::vector<test::Job> first;
  for (const Case& c : cases) {
    first.push_back({base(c) + " --run_id " + ref(c), 1});
    first.push_back({"SHARDTUNE_FAULT=" + c.fault + " " + base(c) + " --run_id " + id(c) + every(c), 1});
  }
  const std::vector<test::JobResult> stopped = test::run_jobs(first);
  for (size_t k = 0; k < cases.size(); ++k) {
    const Case& c = cases[k];
    SCOPED_TRACE(std::string(c.deck) + " " + c.method);
    ASSERT_EQ(stopped[2 * k].status, 0) << stopped[2 * k].output;
    const std::string& out = stopped[2 * k + 1].output;
    ASSERT_EQ(stopped[2 * k + 1].status, c.status) << out;
    const std::string m = d + "/runs/" + id(c) + "/metrics.h5", ck = d + "/runs/" + id(c) + "/checkpoints";
    char name[32];
    std::snprintf(name, sizeof(name), "step-%08lld", static_cast<long long>(c.resumed_from));
    ASSERT_TRUE(fs::exists(ck + "/" + name + "/COMPLETE")) << out;
    EXPECT_TRUE(fs::exists(ck + "/" + name + "/rank-0.safetensors"));
    EXPECT_TRUE(fs::exists(ck + "/" + name + "/rank-0.json"));
    if (c.status == 4) {
      EXPECT_EQ(outcome(m), "preempted");
      EXPECT_NE(out.find("preempted"), std::string::npos) << out;
      EXPECT_EQ(column(m, "steps", "step").size(), static_cast<size_t>(c.resumed_from));
    }
  }
  std::vector<test::Job> resumes;
  for (const Case& c : cases) resumes.push_back({base(c) + " --run_id " + id(c) + every(c) + " --resume auto", 1});
  const std::vector<test::JobResult> resumed = test::run_jobs(resumes);
  for (size_t k = 0; k < cases.size(); ++k) {
    const Case& c = cases[k];
    SCOPED_TRACE(std::string(c.deck) + " " + c.method);
    const std::string& out = resumed[k].output;
    ASSERT_EQ(resumed[k].status, 0) << out;
    const std::string ck = d + "/runs/" + id(c) + "/checkpoints";
    char name[32];
    std::snprintf(name, sizeof(name), "step-%08lld", static_cast<long long>(c.resumed_from));
    EXPECT_NE(out.find(std::string("resume: from ") + ck + "/" + name), std::string::npos) << out;
    expect_identical_runs(d, ref(c), id(c));
    // keep_checkpoints = 2: the last two complete ones (the final one at step 12 included)
    EXPECT_TRUE(fs::exists(ck + "/step-00000012/COMPLETE"));
    int n = 0;
    for (const auto& e : fs::directory_iterator(ck)) n += e.path().filename().string().rfind("step-", 0) == 0;
    EXPECT_EQ(n, 2);
  }
}

// Two ranks: ZeRO-3 (sharded optimizer state), DDP and TP; the signal reaches rank 1 only, and
// every rank must agree to stop. Data parallel: 64 rows, so still 8 steps per epoch.
TEST_F(Resume, TwoRanksStoppedAndResumedIsBitIdentical) {
  const std::string d = *dir;
  std::string out;
  struct Case {
    const char *deck, *parallel, *method;
  };
  for (const Case& c : std::vector<Case>{{"resume", "zero3", "full"}, {"resume", "zero3", "lora"}, {"resume", "ddp", "full"},
                                         {"resume", "ddp", "lora"}, {"resume", "tp", "full"}, {"t5", "zero3", "lora"}}) {
    {
      const std::string par = c.parallel, method = c.method, deck = c.deck;
      SCOPED_TRACE(deck + " " + par + " " + method);
      const std::string base = mpirun() + " -np 2 -x SHARDTUNE_FAULT " + bin() + " train --deck " + d + "/" + deck +
                               ".cfg --parallel " + par + (par == "tp" ? " --tp_size 2" : " --max_train_rows 64") +
                               " --method " + method;
      const std::string ref = "ref2_" + deck + par + "_" + method, id = "stop2_" + deck + par + "_" + method;
      ASSERT_EQ(run("SHARDTUNE_FAULT=none " + base + " --run_id " + ref, &out), 0) << out;
      const int rc = run("SHARDTUNE_FAULT=1:6:sigterm " + base + " --run_id " + id + " --checkpoint_every 5", &out);
      ASSERT_EQ(rc, 4) << out;
      const std::string ck = d + "/runs/" + id + "/checkpoints/step-00000006";
      ASSERT_TRUE(fs::exists(ck + "/COMPLETE")) << out;
      EXPECT_TRUE(fs::exists(ck + "/rank-1.safetensors"));
      EXPECT_EQ(outcome(d + "/runs/" + id + "/metrics.h5"), "preempted");
      ASSERT_EQ(run("SHARDTUNE_FAULT=none " + base + " --run_id " + id + " --checkpoint_every 5 --resume auto", &out), 0)
          << out;
      EXPECT_NE(out.find("resume: from " + ck), std::string::npos) << out;
      expect_identical_runs(d, ref, id);
    }
  }
}

// A real SIGTERM from outside (as Slurm or `kill` sends it) at whatever step the run has
// reached: it checkpoints after that step, ends with outcome preempted (exit 4), and resumes to
// the uninterrupted run's losses.
TEST_F(Resume, ExternalSigtermCheckpointsAndResumes) {
  const std::string d = *dir;
  std::string out;
  const std::string base = bin() + " train --deck " + d + "/resume.cfg --method lora --max_train_rows 0 --epochs 1 "
                           "--max_steps 40 --eval_every 0 --save_model false";
  const std::string log = d + "/ext.log";
  const std::string cmd = "bash -c '" + base + " --run_id ext > " + log + " 2>&1 & p=$!; "
                          "for i in $(seq 1 2000); do grep -q \"step 2/40\" " + log + " && break; sleep 0.01; done; "
                          "kill -TERM $p; wait $p'";
  // The uninterrupted run beside the one stopped (one thread each).
  const std::vector<test::JobResult> r = test::run_jobs({{base + " --run_id ext_ref", 1}, {cmd, 1}});
  ASSERT_EQ(r[0].status, 0) << r[0].output;
  const int rc = r[1].status;
  const std::string log_text = test::read_file(log);
  ASSERT_EQ(rc, 4) << log_text;
  EXPECT_NE(log_text.find("signal SIGTERM: writing a checkpoint"), std::string::npos) << log_text;
  const std::string m = d + "/runs/ext/metrics.h5";
  EXPECT_EQ(outcome(m), "preempted");
  const size_t stopped = column(m, "steps", "step").size();
  EXPECT_GE(stopped, 2u);
  EXPECT_LT(stopped, 40u);
  ASSERT_EQ(run(base + " --run_id ext --resume auto", &out), 0) << out;
  EXPECT_EQ(outcome(m), "ok");
  const std::vector<double> a = column(d + "/runs/ext_ref/metrics.h5", "steps", "loss"), b = column(m, "steps", "loss");
  ASSERT_EQ(b.size(), 40u);
  EXPECT_EQ(a, b) << "stopped after step " << stopped << ": losses must be bit-identical";
}

// Ctrl-C (SIGINT): the run stops after the step with outcome "interrupted" and exit 130, a
// checkpoint only when checkpoint_every is set; the resumed run's total_time and the progress
// line's "done:" add both segments.
TEST_F(Resume, SigintInterruptsAndTotalTimeSpansTheSegments) {
  const std::string d = *dir;
  std::string out;
  const std::string base = bin() + " train --deck " + d + "/resume.cfg --method lora --save_model false";
  // Interrupted without and with checkpoint_every, side by side (one thread each).
  const std::vector<test::JobResult> r =
      test::run_jobs({{"SHARDTUNE_FAULT=0:3:sigint " + base + " --run_id int_nockpt", 1},
                      {"SHARDTUNE_FAULT=0:3:sigint " + base + " --run_id int --checkpoint_every 100", 1}});
  out = r[0].output;
  ASSERT_EQ(r[0].status, 130) << out;
  EXPECT_NE(out.find("interrupted; no checkpoint"), std::string::npos) << out;
  EXPECT_EQ(outcome(d + "/runs/int_nockpt/metrics.h5"), "interrupted");
  EXPECT_FALSE(fs::exists(d + "/runs/int_nockpt/checkpoints"));

  out = r[1].output;
  ASSERT_EQ(r[1].status, 130) << out;
  const std::string m = d + "/runs/int/metrics.h5";
  EXPECT_EQ(outcome(m), "interrupted");
  EXPECT_EQ(column(m, "steps", "step").size(), 3u);
  EXPECT_TRUE(fs::exists(d + "/runs/int/checkpoints/step-00000003/COMPLETE"));
  double first = 0;
  {
    h5::Handle f = h5::open_file_read(m);
    first = h5::read_attr_double(h5::open_group(f, "summary"), "total_time", m);
  }
  ASSERT_EQ(run(base + " --run_id int --checkpoint_every 100 --resume auto", &out), 0) << out;
  EXPECT_NE(out.find("in this segment)"), std::string::npos) << out;
  h5::Handle f = h5::open_file_read(m);
  EXPECT_EQ(h5::read_attr_string(h5::open_group(f, "summary"), "outcome", m), "ok");
  EXPECT_EQ(h5::read_attr_int(f, "segments", m), 2);
  const double total = h5::read_attr_double(h5::open_group(f, "summary"), "total_time", m);
  EXPECT_GT(total, first) << "total_time must add the first segment's " << first << " s";
  EXPECT_EQ(column(m, "steps", "step").size(), 12u);
}

TEST_F(Resume, IncompleteCheckpointsAreIgnoredAndOtherLayoutsRefused) {
  const std::string d = *dir;
  std::string out;
  const std::string base = bin() + " train --deck " + d + "/resume.cfg --method lora --checkpoint_every 4";
  // A complete run: checkpoints at 8 and 12 kept.
  ASSERT_EQ(run(base + " --run_id layout", &out), 0) << out;
  const std::string ck = d + "/runs/layout/checkpoints";
  ASSERT_TRUE(fs::exists(ck + "/step-00000008/COMPLETE"));
  // A later checkpoint cut short (no COMPLETE): resume = auto takes step 12 and removes it.
  fs::copy(ck + "/step-00000012", ck + "/step-00000099");
  fs::remove(ck + "/step-00000099/COMPLETE");
  ASSERT_EQ(run(base + " --run_id layout --resume auto", &out), 0) << out;
  EXPECT_NE(out.find("resume: from " + ck + "/step-00000012"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(ck + "/step-00000099"));
  // Naming an incomplete one is refused.
  fs::copy(ck + "/step-00000008", d + "/incomplete");
  fs::remove(d + "/incomplete/COMPLETE");
  EXPECT_EQ(run(base + " --run_id layout2 --resume " + d + "/incomplete", &out), 2) << out;
  EXPECT_NE(out.find("not a complete checkpoint"), std::string::npos) << out;
  // Another world size / strategy: refused, naming both layouts.
  EXPECT_EQ(run(mpirun() + " -np 2 " + bin() + " train --deck " + d + "/resume.cfg --method lora --parallel ddp --run_id layout3 --resume " +
                    ck + "/step-00000008",
                &out),
            2)
      << out;
  EXPECT_NE(out.find("world_size 1, tp 1, dp 1, parallel none, method lora"), std::string::npos) << out;
  EXPECT_NE(out.find("world_size 2, tp 1, dp 2, parallel ddp, method lora"), std::string::npos) << out;
  // Another method: refused.
  EXPECT_EQ(run(bin() + " train --deck " + d + "/resume.cfg --method full --run_id layout4 --resume " + ck + "/step-00000008",
                &out),
            2)
      << out;
  EXPECT_NE(out.find("method full"), std::string::npos) << out;
  // Other training options: refused, naming the key.
  EXPECT_EQ(run(base + " --run_id layout5 --lr 1e-3 --resume " + ck + "/step-00000008", &out), 2) << out;
  EXPECT_NE(out.find("lr = 0.003 in the checkpoint, 0.001 now"), std::string::npos) << out;
  // The other master_weights (the optimizer's state has other parts and dtypes): refused, naming it.
  EXPECT_EQ(run(base + " --run_id layout6 --master_weights none --resume " + ck + "/step-00000008", &out), 2) << out;
  EXPECT_NE(out.find("master_weights = f32 in the checkpoint, none now"), std::string::npos) << out;
}

}  // namespace
}  // namespace st
