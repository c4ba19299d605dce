// Adversarial inputs and faults through the real binary (issue 16): options refused before any
// start-up, a finished run never replaced, eval beside training, a held run directory, a
// checkpoint_dir that is a file, damaged checkpoints (checksums and fields), training data
// prepared again between stop and resume, a full disk under `prepare`, and token ids outside the
// model's vocabulary (also under TP). Each case asserts the exit status, that the message names
// the file or option and the field, and that nothing valid was lost. One tiny prepared data set
// and one short run are shared by the cases; the in-process cases are tests/unit/test_robustness.cpp.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "config/run_config.hpp"
#include "core/error.hpp"
#include "core/sha256.hpp"
#include "io/h5util.hpp"
#include "io/shards.hpp"
#include "train/checkpoint.hpp"
#include "train/run_dir.hpp"
#include "tests/common/paths.hpp"

namespace fs = std::filesystem;

namespace st {
namespace {

std::string bin() { return test::shardtune_bin(); }
std::string mpirun() { return test::shardtune_mpirun(); }

class RobustE2E : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir = new std::string(test::make_temp_dir("robust-e2e"));
    const std::string d = *dir, tok = d + "/synth/tokenizer.model";
    std::string out;
    for (const std::string& cmd :
         {bin() + " prepare --synthetic " + d + "/synth --sentiment-rows 100 --instruct-rows 150",
          bin() + " prepare --input " + d + "/synth/instruct_train.jsonl --tokenizer " + tok + " --output " + d +
              "/data --split train --loss-on all --template plain --max-seq-len 32",
          bin() + " prepare --input " + d + "/synth/instruct_val.jsonl --tokenizer " + tok + " --output " + d +
              "/data --split validation --loss-on all --template plain --max-seq-len 32"}) {
      if (test::run_command(cmd, &out) != 0) {
        setup_error = new std::string("`" + cmd + "` failed:\n" + out);
        return;
      }
    }
    test::write_file(d + "/tiny.cfg", "include = " + test::repo_root() + "/inputs/base/tiny_llama.cfg\ndata = " + d +
                                          "/data\noutput_dir = " + d + "/runs\nhidden_size = 32\nintermediate_size = 64\n"
                                          "num_layers = 1\nnum_heads = 2\nnum_kv_heads = 2\nmicro_batch_size = 4\n"
                                          "max_steps = 4\nwarmup_steps = 1\nlog_every = 1\nthreads = 1\nmax_val_rows = 8\n"
                                          "eval_at_start = false\n");
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
std::string* RobustE2E::dir = nullptr;
std::string* RobustE2E::setup_error = nullptr;

// Runs `args` through the binary; expects `status` and every part in the output.
void expect_exit(const std::string& cmd, int status, const std::vector<std::string>& parts) {
  SCOPED_TRACE(cmd);
  std::string out;
  const int rc = test::run_command(cmd, &out);
  EXPECT_EQ(rc, status) << out;
  for (const std::string& p : parts) EXPECT_NE(out.find(p), std::string::npos) << "'" << p << "' not in:\n" << out;
}

TEST_F(RobustE2E, BadOptionsOfEverySubcommandAreRefusedBeforeStartUp) {
  const std::string d = *dir, deck = " --deck " + d + "/tiny.cfg";
  struct Case {
    std::string args;
    std::vector<std::string> expect;
  };
  // (Each case is a process start: ~0.5 s for a CUDA build, which loads the CUDA libraries; the
  // option cases proper are in process, tests/unit/test_robustness.cpp.)
  const std::vector<Case> cases = {
      {"train" + deck + " --lr nan", {"command line", "lr", "finite"}},
      {"train" + deck + " --seed=-1", {"command line", "seed", "non-negative"}},
      {"train --deck " + d, {d, "is a directory"}},
      {"eval" + deck + " --adam_eps inf", {"command line", "adam_eps"}},
      {"prepare --random " + d + "/x --rows 10 --seq-len 16 --vocab 64 --seed=-1", {"--seed"}},
      {"prepare --random " + d + "/x --rows 99999999999999 --seq-len 16 --vocab 64", {"--rows"}},
      {"prepare --synthetic " + d + "/y --sentiment-rows 99999999999", {"--sentiment-rows"}},
      {"prepare --input " + d + "/synth/sentiment_train.tsv --tokenizer " + d + "/synth/tokenizer.model --output " + d +
           "/z --split train --max-seq-len 0",
       {"--max-seq-len"}},
      {"plan" + deck + " --ranks 4294967297", {"--ranks", "4294967297"}},
      {"plan" + deck + " --gpu-memory 1e30", {"--gpu-memory"}},
      {"plan" + deck + " --seq-len -3", {"--seq-len"}},
      {"plan" + deck + " --lr inf", {"lr", "finite"}},
      {"export" + deck + " --model " + d + " --adapter " + d + " --peft " + d + "/p --max-shard-size nan", {"--max-shard-size"}},
      {"export" + deck + " --lora_alpha nan --model " + d + " --adapter " + d + " --peft " + d + "/p", {"lora_alpha", "finite"}},
      {"generate --prompt a --max-new-tokens 99999999999999999999 --output " + d + "/p", {"--max-new-tokens", "out of range"}},
  };
  const auto t0 = std::chrono::steady_clock::now();
  for (const Case& c : cases) expect_exit(bin() + " " + c.args, kExitInput, c.expect);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("[robust] %zu refused commands in %.2f s\n", cases.size(), seconds);
  EXPECT_FALSE(fs::exists(d + "/runs")) << "a refused command writes nothing";
  EXPECT_FALSE(fs::exists(d + "/x") || fs::exists(d + "/y") || fs::exists(d + "/z") || fs::exists(d + "/p"));
  // Under mpirun every rank refuses by itself, and nothing hangs.
  expect_exit("timeout 120 " + mpirun() + " -np 2 " + bin() + " train" + deck + " --lora_dropout nan", kExitInput,
              {"lora_dropout", "finite"});
}

// rank-0.json or COMPLETE of a checkpoint copy, edited and (unless told not to) re-signed as
// write_checkpoint signs it.
void edit_json(const std::string& path, const std::function<void(nlohmann::json&)>& edit, bool resign = true) {
  nlohmann::json j = nlohmann::json::parse(test::read_file(path));
  edit(j);
  if (resign) {
    j.erase("sha256");
    j["sha256"] = sha256_hex(j.dump(1));
  }
  test::write_file(path, j.dump(1) + "\n");
}

TEST_F(RobustE2E, RunsCheckpointsAndDataAreNeverSilentlyReplacedOrWrong) {
  const std::string d = *dir, deck = " --deck " + d + "/tiny.cfg";
  const std::string base = bin() + " train" + deck + " --checkpoint_every 2", train = base + " --run_id r1";
  std::string out;
  ASSERT_EQ(test::run_command(train, &out), 0) << out;
  const std::string metrics = d + "/runs/r1/metrics.h5", ck = d + "/runs/r1/checkpoints/step-00000002";
  ASSERT_TRUE(fs::exists(ck + "/COMPLETE")) << out;
  const std::string finished = test::read_file(metrics);

  // 5. The finished run is not replaced, by train or by eval.
  expect_exit(train, kExitInput, {metrics, "outcome ok", "4 steps", "overwrite = true", "resume = auto"});
  expect_exit(bin() + " eval" + deck + " --run_id r1", 0, {d + "/runs/r1/eval-1/metrics.h5"});
  expect_exit(bin() + " eval" + deck + " --run_id r1", 0, {d + "/runs/r1/eval-2/metrics.h5"});
  EXPECT_EQ(test::read_file(metrics), finished) << "the training run's metrics.h5 is untouched";
  // A run directory another process holds (here: this test) is refused naming the holder.
  fs::create_directories(d + "/runs/held");
  lock_directory(d + "/runs/held", "run directory");
  expect_exit(bin() + " train" + deck + " --run_id held", kExitInput,
              {d + "/runs/held", "in use by another run", "pid " + std::to_string(::getpid())});
  EXPECT_FALSE(fs::exists(d + "/runs/held/metrics.h5"));
  // 7. A checkpoint_dir that is a file: refused at the start, not at the first checkpoint.
  test::write_file(d + "/ckfile", "not a directory");
  expect_exit(base + " --run_id r2 --checkpoint_dir " + d + "/ckfile", kExitInput, {"checkpoint_dir", d + "/ckfile", "is a file"});
  EXPECT_FALSE(fs::exists(d + "/runs/r2/metrics.h5"));

  // 4. Damaged checkpoints, checked in process against this run's options (as resume does).
  RunConfig cfg;
  {
    std::vector<std::string> a = {"train", "--deck", d + "/tiny.cfg", "--run_id", "r1", "--checkpoint_every", "2"};
    std::vector<char*> p;
    for (auto& s : a) p.push_back(s.data());
    ASSERT_TRUE(parse_run_config(static_cast<int>(p.size()), p.data(), "train", cfg));
  }
  CheckpointLayout layout;
  layout.parallel = ParallelLayout::make(Strategy::none, 1, 1);
  layout.method = Method::full;
  ASSERT_NO_THROW(check_checkpoint(cfg, layout, ck));
  struct Fault {
    std::string label;
    std::function<void(const std::string& copy)> damage;
    std::vector<std::string> expect;
  };
  auto flip = [](const std::string& file, double where) {
    std::string bytes = test::read_file(file);
    bytes[static_cast<size_t>(where * static_cast<double>(bytes.size()))] ^= 0x10;
    test::write_file(file, bytes);
  };
  const std::vector<Fault> faults = {
      {"a flipped bit in the optimizer state", [&](const std::string& c) { flip(c + "/rank-0.safetensors", 0.7); },
       {"rank-0.safetensors", "SHA-256", "files.rank-0.safetensors.sha256"}},
      {"a flipped bit in the header", [&](const std::string& c) { flip(c + "/rank-0.safetensors", 0.001); },
       {"rank-0.safetensors", "SHA-256"}},
      {"a truncated state file", [](const std::string& c) {
         const std::string s = test::read_file(c + "/rank-0.safetensors");
         test::write_file(c + "/rank-0.safetensors", s.substr(0, s.size() - 100));
       }, {"rank-0.safetensors", "bytes", "files.rank-0.safetensors.bytes"}},
      {"an edited option", [](const std::string& c) { edit_json(c + "/rank-0.json", [](auto& j) { j["options"]["lr"] = "0.5"; }, false); },
       {"rank-0.json", "field 'sha256'", "modified or damaged"}},
      {"a non-numeric field", [](const std::string& c) { edit_json(c + "/rank-0.json", [](auto& j) { j["trainer"]["epoch_loss_sum"] = "abc"; }); },
       {"rank-0.json", "field 'trainer.epoch_loss_sum'", "\"abc\""}},
      {"a missing field", [](const std::string& c) { edit_json(c + "/rank-0.json", [](auto& j) { j["trainer"].erase("last_eval"); }); },
       {"rank-0.json", "field 'trainer.last_eval' is missing"}},
      {"a negative count", [](const std::string& c) { edit_json(c + "/rank-0.json", [](auto& j) { j["optimizer_steps"] = -1; }); },
       {"rank-0.json", "field 'optimizer_steps'", ">= 0"}},
      {"a boolean as a number", [](const std::string& c) { edit_json(c + "/rank-0.json", [](auto& j) { j["trainer"]["finished"] = 3; }); },
       {"rank-0.json", "field 'trainer.finished'"}},
      {"an option as a number", [](const std::string& c) { edit_json(c + "/rank-0.json", [](auto& j) { j["options"]["lr"] = 5; }); },
       {"rank-0.json", "field 'options.lr'"}},
      {"another rank's file", [](const std::string& c) { edit_json(c + "/rank-0.json", [](auto& j) { j["rank"] = 1; }); },
       {"rank-0.json", "'rank'"}},
      {"an unlisted state file", [](const std::string& c) { edit_json(c + "/rank-0.json", [](auto& j) { j["files"] = nlohmann::json::object(); }); },
       {"rank-0.json", "'files'", "rank-0.safetensors"}},
      {"an edited marker", [](const std::string& c) { edit_json(c + "/COMPLETE", [](auto& j) { j["world_size"] = 2; }, false); },
       {"COMPLETE", "field 'sha256'"}},
      {"a marker with a text world size", [](const std::string& c) { edit_json(c + "/COMPLETE", [](auto& j) { j["world_size"] = "two"; }); },
       {"COMPLETE", "field 'world_size'"}},
      {"a marker of format 1", [](const std::string& c) { edit_json(c + "/COMPLETE", [](auto& j) { j.erase("sha256"); }, false); },
       {"COMPLETE", "older format"}},
      {"a state file that is not JSON", [](const std::string& c) { test::write_file(c + "/rank-0.json", "{\"step\": 2,"); },
       {"rank-0.json", "not valid JSON"}},
  };
  for (size_t i = 0; i < faults.size(); ++i) {
    const Fault& f = faults[i];
    SCOPED_TRACE(f.label);
    const std::string copy = d + "/ck_" + std::to_string(i);
    fs::copy(ck, copy, fs::copy_options::recursive);
    f.damage(copy);
    std::string msg = "NOT REFUSED";
    int status = 0;
    try {
      check_checkpoint(cfg, layout, copy);
    } catch (const Error& e) {
      msg = e.what();
      status = e.exit_status();
    }
    EXPECT_EQ(status, kExitInput) << msg;
    for (const std::string& p : f.expect) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
  // The same refusal through the binary, before metrics.h5 is touched.
  expect_exit(train + " --resume " + d + "/ck_0", kExitInput, {"rank-0.safetensors", "SHA-256"});
  EXPECT_EQ(test::read_file(metrics), finished);

  // The training data by content: moved shards resume, shards prepared again are refused.
  fs::copy(d + "/data", d + "/moved", fs::copy_options::recursive);
  expect_exit(train + " --data " + d + "/moved --resume " + ck, 0, {"resume: from " + ck});
  const std::string tok = d + "/synth/tokenizer.model";
  ASSERT_EQ(test::run_command(bin() + " prepare --input " + d + "/synth/instruct_train.jsonl --tokenizer " + tok + " --output " + d +
                                  "/moved --split train --loss-on all --template plain --max-seq-len 32 --limit 120",
                              &out), 0) << out;
  const std::string resumed = test::read_file(metrics);
  expect_exit(train + " --data " + d + "/moved --resume " + ck, kExitInput,
              {"train_data", "other data", "prepared again", d + "/moved"});
  EXPECT_EQ(test::read_file(metrics), resumed) << "a refused resume leaves metrics.h5 as it was";
  // Said so: overwrite = true replaces the run.
  expect_exit(train + " --overwrite true", 0, {"overwrite = true: replacing the earlier run r1"});
}

TEST_F(RobustE2E, AFullDiskUnderPrepareLeavesTheOldShards) {
  const std::string d = *dir, tok = d + "/synth/tokenizer.model";
  const std::string prep = bin() + " prepare --input " + d + "/synth/instruct_train.jsonl --tokenizer " + tok + " --output " + d +
                           "/full --split train --loss-on all --template plain";
  std::string out;
  ASSERT_EQ(test::run_command(prep + " --max-seq-len 32", &out), 0) << out;
  const std::string before = ShardDataset::open(d + "/full", "train").info().split_sha256;
  // The file size limit stands in for a full disk: writes fail with EFBIG ("File too large").
  expect_exit("bash -c \"trap '' XFSZ; ulimit -f 4; exec " + prep + " --max-seq-len 48\"", kExitError,
              {"train-00000.h5.tmp", "File too large"});
  const ShardDataset kept = ShardDataset::open(d + "/full", "train");
  EXPECT_EQ(kept.info().split_sha256, before);
  for (const auto& e : fs::directory_iterator(d + "/full")) EXPECT_EQ(e.path().extension(), ".h5") << e.path();
}

TEST_F(RobustE2E, TokenIdsOutsideTheVocabularyAreRefusedAlsoUnderTp) {
  const std::string d = *dir;
  // Valid shards (checksums and all) whose row 5 holds id 70 while their tokenizer has 64 pieces.
  ShardInfo info;
  info.format_version = kShardFormatVersion;
  info.task = "instruct";
  info.split = "train";
  info.tokenizer_sha256 = "handmade";
  info.tokenizer_vocab_size = 64;
  info.seq_len = 16;
  info.loss_on = "all";
  info.prompt_template = "plain";
  ShardRows r;
  r.seq_len = 16;
  for (int i = 0; i < 32; ++i) {
    for (int t = 0; t < 16; ++t) {
      r.ids.push_back(3 + (i + t) % 50);
      r.loss_mask.push_back(t >= 1);
    }
    r.lengths.push_back(16);
    r.answer_start.push_back(16);
    r.labels.push_back(-1);
  }
  r.ids[5 * 16 + 9] = 70;
  const auto files = write_shards(d + "/badids", info, r, 0);
  info.split = "validation";
  write_shards(d + "/badids", info, r, 0);
  const std::string args = " train --deck " + d + "/tiny.cfg --data " + d + "/badids";
  expect_exit(bin() + args + " --run_id ids1", kExitInput, {files[0], "'ids'", "row 5", "70", "vocabulary of 64"});
  expect_exit("timeout 120 " + mpirun() + " -np 2 " + bin() + args + " --run_id ids2 --parallel tp --tp_size 2", kExitInput,
              {files[0], "'ids'", "row 5"});
}

}  // namespace
}  // namespace st
