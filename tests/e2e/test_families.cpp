// `shardtune train` and `shardtune export` from Hugging Face directories of the decoder families
// added in issue 18, through the real binary: tiny hand-made checkpoints (written here with the
// families' own config writers, the Qwen2 one sharded) of Llama 3.x (rotary scaling llama3, tied),
// Qwen2 (q, k, v biases, tied) and Mistral (a sliding window), each trained with LoRA for a few
// steps (adapter and merged model saved); Qwen2 also fully fine-tuned under tensor parallelism and
// with QLoRA under ZeRO-3, on two ranks; and a Mistral window shorter than the rows refused with a
// message naming it.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <tuple>

#include <nlohmann/json.hpp>

#include "io/h5util.hpp"
#include "io/hf_checkpoint.hpp"
#include "io/hf_llama.hpp"
#include "io/hf_mistral.hpp"
#include "io/hf_qwen2.hpp"
#include "io/llama_io.hpp"
#include "model/llama.hpp"
#include "tests/common/paths.hpp"

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

// A tiny random checkpoint of `family` in `dir` (vocabulary 96, GQA, the family's features on).
void write_checkpoint(const std::string& family, const std::string& dir, int64_t window = 0) {
  LlamaConfig c;
  c.vocab_size = 96;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 8;
  c.max_position_embeddings = 64;
  c.bos_token_id = 1;
  c.eos_token_id = 2;
  void (*write)(const std::string&, const LlamaConfig&) = write_llama_config;
  if (family == "llama3") {
    c.tie_word_embeddings = true;
    c.rope_theta = 500000.0;
    c.rope_scaling.type = RopeScaling::Type::llama3;
    c.rope_scaling.factor = 8.0;
    c.rope_scaling.original_max_position_embeddings = 16;
  } else if (family == "qwen2") {
    c.qkv_bias = true;
    c.tie_word_embeddings = true;
    c.rope_theta = 1e6;
    write = write_qwen2_config;
  } else {
    c.sliding_window = window;
    write = write_mistral_config;
  }
  LlamaModel m = llama_build(c, DType::f32, Device::cpu);
  llama_init_random(m, 17, 0.1);
  save_decoder(m, dir, "", family == "qwen2" ? 20000 : 0, write);  // Qwen2 in shards of 20 kB
}

class Families : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir = new std::string(test::make_temp_dir("families"));
    const std::string d = *dir;
    std::string out;
    if (test::run_command(bin() + " prepare --random " + d + "/data --rows 32 --seq-len 16 --vocab 96 --val-rows 8", &out) != 0)
      setup_error = new std::string(out);
    write_checkpoint("llama3", d + "/llama3");
    write_checkpoint("qwen2", d + "/qwen2");
    write_checkpoint("mistral", d + "/mistral", 32);
    write_checkpoint("mistral", d + "/mistral_short", 8);
  }
  static void TearDownTestSuite() {
    if (dir && !std::getenv("SHARDTUNE_KEEP_TMP")) fs::remove_all(*dir);
  }
  void SetUp() override {
    if (setup_error) FAIL() << *setup_error;
  }
  // `shardtune train` on the random shards; returns the exit status, output in *out.
  static int train(const std::string& model, const std::string& run_id, const std::string& extra, std::string* out,
                   const std::string& launcher = "") {
    const std::string d = *dir;
    return test::run_command(launcher + bin() + " train --model " + d + "/" + model + " --data " + d +
                                 "/data --output_dir " + d + "/runs --run_id " + run_id +
                                 " --micro_batch_size 4 --max_steps 3 --lr 1e-2 --warmup_steps 0 --log_every 1 " + extra,
                             out);
  }
  static std::string* dir;
  static std::string* setup_error;
};
std::string* Families::dir = nullptr;
std::string* Families::setup_error = nullptr;

std::string summary_string(const std::string& path, const std::string& key) {
  h5::Handle f = h5::open_file_read(path);
  h5::Handle s = h5::open_group(f, "summary");
  return h5::read_attr_string(s, key, path);
}

TEST_F(Families, EachDecoderFamilyTrainsLoraFromItsHfDirectoryAndSavesAdapterAndModel) {
  const std::string d = *dir;
  for (const auto& [model, arch, model_type] : {std::tuple<std::string, std::string, std::string>{"llama3", "llama", "llama"},
                                                {"qwen2", "qwen2", "qwen2"},
                                                {"mistral", "mistral", "mistral"}}) {
    SCOPED_TRACE(model);
    std::string out;
    const int rc = train(model, model + "-lora", "--method lora --save_adapter true --save_model true", &out);
    ASSERT_EQ(rc, 0) << out;
    const std::string run = d + "/runs/" + model + "-lora";
    EXPECT_EQ(summary_string(run + "/metrics.h5", "outcome"), "ok");
    EXPECT_EQ(summary_string(run + "/metrics.h5", "arch"), arch);
    const nlohmann::json acfg = read_json_file(run + "/adapter/adapter_config.json");
    EXPECT_EQ(acfg.at("task_type"), "CAUSAL_LM");
    EXPECT_EQ(acfg.at("target_modules").size(), 7u);
    // The merged model is written in the family's own config.json and weight names.
    EXPECT_EQ(read_json_file(run + "/model/config.json").at("model_type"), model_type);
    CheckpointReader ck = CheckpointReader::open(run + "/model");
    EXPECT_EQ(ck.has("model.layers.0.self_attn.q_proj.bias"), model == "qwen2");
    EXPECT_EQ(ck.has("lm_head.weight"), model == "mistral");  // llama3 and qwen2 are tied
  }
}

TEST_F(Families, Qwen2FullFineTuningUnderTensorParallelismAndItsAdapterExported) {
  const std::string d = *dir;
  std::string out;
  int rc = train("qwen2", "qwen2-tp", "--method full --parallel tp --tp_size 2", &out, mpirun() + " -np 2 ");
  ASSERT_EQ(rc, 0) << out;
  const std::string m = d + "/runs/qwen2-tp/metrics.h5";
  EXPECT_EQ(summary_string(m, "outcome"), "ok");
  EXPECT_EQ(summary_string(m, "strategy"), "tp");
  // The LoRA run's adapter through `export`: PEFT copy and merged weights (biases kept).
  if (!fs::exists(d + "/runs/qwen2-lora/adapter")) GTEST_SKIP() << "the LoRA test did not run first";
  rc = test::run_command(bin() + " export --model " + d + "/qwen2 --adapter " + d + "/runs/qwen2-lora/adapter --peft " +
                             d + "/qwen2-peft --merged " + d + "/qwen2-merged",
                         &out);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_EQ(read_json_file(d + "/qwen2-merged/config.json").at("model_type"), "qwen2");
  EXPECT_TRUE(CheckpointReader::open(d + "/qwen2-merged").has("model.layers.1.self_attn.v_proj.bias"));
  EXPECT_TRUE(fs::exists(d + "/qwen2-peft/adapter_model.safetensors"));
}

TEST_F(Families, Qwen2QloraUnderZero3OnTwoRanks) {
  // NF4 bases with dense frozen biases, both packed in ZeRO-3's frozen buffers.
  std::string out;
  const int rc = train("qwen2", "qwen2-qlora-z3", "--method qlora --qlora_quantize all --parallel zero3", &out,
                       mpirun() + " -np 2 ");
  ASSERT_EQ(rc, 0) << out;
  const std::string m = *dir + "/runs/qwen2-qlora-z3/metrics.h5";
  EXPECT_EQ(summary_string(m, "outcome"), "ok");
  EXPECT_EQ(summary_string(m, "method"), "qlora");
  EXPECT_NE(out.find("qlora: 14 linear layers in NF4"), std::string::npos) << out;
}

TEST_F(Families, MistralWindowShorterThanTheRowsIsRefusedByName) {
  std::string out;
  const int rc = train("mistral_short", "mistral-short", "--method lora", &out);
  EXPECT_EQ(rc, 2) << out;  // InputError
  EXPECT_NE(out.find("sliding_window = 8"), std::string::npos) << out;
  EXPECT_NE(out.find("mistral_short/config.json"), std::string::npos) << out;
  EXPECT_NE(out.find("sequence length 16"), std::string::npos) << out;
}

}  // namespace
}  // namespace st
