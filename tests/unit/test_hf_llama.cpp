// Hugging Face Llama config.json parsing/writing, weight names, and the real stories260K checkpoint.
#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>

#include "core/error.hpp"
#include "io/hf_checkpoint.hpp"
#include "io/hf_llama.hpp"
#include "tests/common/paths.hpp"
#include "tests/common/test_util.hpp"

namespace fs = std::filesystem;
using st::DType;
using st::Device;
using st::MemCategory;

namespace {

using st::test::expect_input_error;

// The required fields of a small Llama; tests append or override fields after it.
const std::string kBase = R"("model_type": "llama", "vocab_size": 512, "hidden_size": 64, "intermediate_size": 172,
  "num_hidden_layers": 5, "num_attention_heads": 8)";

class HfLlamaTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = st::test::make_temp_dir("hf-llama"); }
  void TearDown() override { fs::remove_all(dir_); }
  std::string config_path() const { return dir_ + "/config.json"; }
  // Writes config.json as `{<fields>}` and reads it back.
  st::LlamaConfig read(const std::string& fields) {
    st::test::write_file(config_path(), "{" + fields + "}");
    return st::read_llama_config(dir_);
  }
  // Expects read() of `fields` to be refused naming config.json and `field`.
  void expect_refused(const std::string& fields, const std::string& field, const std::string& why = "") {
    std::vector<std::string> parts = {config_path(), field};
    if (!why.empty()) parts.push_back(why);
    expect_input_error([&] { read(fields); }, parts);
  }
  std::string dir_;
};

}  // namespace

TEST_F(HfLlamaTest, WriteThenReadRoundTrips) {
  st::LlamaConfig c;
  c.vocab_size = 32000;
  c.hidden_size = 256;
  c.intermediate_size = 688;
  c.num_layers = 3;
  c.num_heads = 8;
  c.num_kv_heads = 2;
  c.head_dim = 48;  // not hidden_size / heads: must be written explicitly
  c.max_position_embeddings = 4096;
  c.rms_norm_eps = 1e-5;
  c.rope_theta = 500000.0;
  c.tie_word_embeddings = true;
  c.bos_token_id = 1;
  c.eos_token_id = -1;
  const std::string out = dir_ + "/export";  // created by the writer
  st::write_llama_config(out, c);
  EXPECT_FALSE(fs::exists(out + "/config.json.tmp"));
  const st::LlamaConfig r = st::read_llama_config(out);
  EXPECT_EQ(r.vocab_size, c.vocab_size);
  EXPECT_EQ(r.hidden_size, c.hidden_size);
  EXPECT_EQ(r.intermediate_size, c.intermediate_size);
  EXPECT_EQ(r.num_layers, c.num_layers);
  EXPECT_EQ(r.num_heads, c.num_heads);
  EXPECT_EQ(r.num_kv_heads, c.num_kv_heads);
  EXPECT_EQ(r.head_dim, c.head_dim);
  EXPECT_EQ(r.max_position_embeddings, c.max_position_embeddings);
  EXPECT_EQ(r.rms_norm_eps, c.rms_norm_eps);
  EXPECT_EQ(r.rope_theta, c.rope_theta);
  EXPECT_EQ(r.tie_word_embeddings, c.tie_word_embeddings);
  EXPECT_EQ(r.bos_token_id, 1);
  EXPECT_EQ(r.eos_token_id, -1);

  // What transformers needs to pick the class and build it as we do.
  const nlohmann::json j = st::read_json_file(out + "/config.json");
  EXPECT_EQ(j["architectures"], nlohmann::json::array({"LlamaForCausalLM"}));
  EXPECT_EQ(j["model_type"], "llama");
  EXPECT_EQ(j["hidden_act"], "silu");
  EXPECT_EQ(j["attention_bias"], false);
  EXPECT_EQ(j["mlp_bias"], false);
  EXPECT_EQ(j["torch_dtype"], "float32");
  EXPECT_TRUE(j["eos_token_id"].is_null());
}

TEST_F(HfLlamaTest, WriteRefusesInvalidConfig) {
  st::LlamaConfig c;  // all sizes zero
  expect_input_error([&] { st::write_llama_config(dir_, c); }, {"config.json", "vocab_size"});
  EXPECT_FALSE(fs::exists(config_path()));
}

TEST_F(HfLlamaTest, DefaultsFollowTransformers) {
  const st::LlamaConfig c = read(kBase);
  EXPECT_EQ(c.num_kv_heads, 8);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.max_position_embeddings, 2048);
  EXPECT_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_EQ(c.rope_theta, 10000.0);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_id, 2);
  // Explicit nulls mean "absent" for head_dim and kv heads, and "no token" for token ids.
  const st::LlamaConfig n =
      read(kBase + R"(, "head_dim": null, "num_key_value_heads": null, "bos_token_id": null, "eos_token_id": null)");
  EXPECT_EQ(n.head_dim, 8);
  EXPECT_EQ(n.num_kv_heads, 8);
  EXPECT_EQ(n.bos_token_id, -1);
  EXPECT_EQ(n.eos_token_id, -1);
}

TEST_F(HfLlamaTest, EosTokenListKeepsFirst) {
  EXPECT_EQ(read(kBase + R"(, "eos_token_id": [128001, 128009])").eos_token_id, 128001);
  expect_refused(kBase + R"(, "eos_token_id": [2, "x"])", "'eos_token_id'");
}

TEST_F(HfLlamaTest, RopeThetaBothSpellings) {
  EXPECT_EQ(read(kBase + R"(, "rope_theta": 500000.0)").rope_theta, 500000.0);
  EXPECT_EQ(read(kBase + R"(, "rope_parameters": {"rope_type": "default", "rope_theta": 250000.0})").rope_theta,
            250000.0);
  EXPECT_EQ(read(kBase + R"(, "rope_theta": 1e6, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6})")
                .rope_theta,
            1e6);
  EXPECT_EQ(read(kBase + R"(, "rope_theta": 20000, "rope_scaling": null)").rope_theta, 20000.0);
  expect_refused(kBase + R"(, "rope_theta": 1e4, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6})",
                 "'rope_parameters.rope_theta'", "disagrees");
}

TEST_F(HfLlamaTest, RefusesWhatWeDoNotImplement) {
  expect_refused(R"("model_type": "mistral", "vocab_size": 512)", "'model_type'", "mistral");
  expect_refused(R"("vocab_size": 512)", "'model_type'", "missing");
  expect_refused(kBase + R"(, "hidden_act": "gelu")", "'hidden_act'", "gelu");
  expect_refused(kBase + R"(, "attention_bias": true)", "'attention_bias'");
  expect_refused(kBase + R"(, "mlp_bias": true)", "'mlp_bias'");
  expect_refused(kBase + R"(, "rope_scaling": {"rope_type": "llama3", "factor": 8.0})", "'rope_scaling.rope_type'",
                 "llama3");
  expect_refused(kBase + R"(, "rope_scaling": {"type": "linear", "factor": 2.0})", "'rope_scaling.type'", "linear");
  expect_refused(kBase + R"(, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4})",
                 "'rope_parameters.rope_type'", "yarn");
}

TEST_F(HfLlamaTest, RefusesMissingOrMistypedFields) {
  expect_refused(R"("model_type": "llama", "vocab_size": 512, "intermediate_size": 172, "num_hidden_layers": 5,
                    "num_attention_heads": 8)",
                 "'hidden_size'", "missing");
  expect_refused(kBase + R"(, "num_key_value_heads": "4")", "'num_key_value_heads'", "integer");
  expect_refused(kBase + R"(, "num_key_value_heads": 4.5)", "'num_key_value_heads'", "integer");
  expect_refused(kBase + R"(, "rms_norm_eps": "1e-5")", "'rms_norm_eps'", "number");
  expect_refused(kBase + R"(, "tie_word_embeddings": 1)", "'tie_word_embeddings'");
  expect_refused(kBase + R"(, "hidden_act": 3)", "'hidden_act'", "string");
  // Consistency checks of LlamaConfig::validate name the file too.
  expect_refused(kBase + R"(, "num_key_value_heads": 3)", "num_key_value_heads");
  fs::remove(config_path());
  expect_input_error([&] { st::read_llama_config(dir_); }, {config_path(), "cannot open"});
  st::test::write_file(config_path(), "{\"model_type\": ");
  expect_input_error([&] { st::read_llama_config(dir_); }, {config_path(), "not valid JSON"});
}

TEST(HfLlamaNames, LayerNamesAndWeightList) {
  EXPECT_EQ(st::hf_llama_layer_name(3, st::kHfLlamaQ), "model.layers.3.self_attn.q_proj.weight");
  EXPECT_EQ(st::hf_llama_layer_name(0, st::kHfLlamaDown), "model.layers.0.mlp.down_proj.weight");
  st::LlamaConfig c;
  c.vocab_size = 10;
  c.hidden_size = 8;
  c.intermediate_size = 12;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 2;
  const auto untied = st::hf_llama_weights(c);
  ASSERT_EQ(untied.size(), 1u + 2 * 9 + 2);
  EXPECT_EQ(untied.front().name, "model.embed_tokens.weight");
  EXPECT_EQ(untied.back().name, "lm_head.weight");
  EXPECT_EQ(untied.back().shape, (st::Shape{10, 8}));
  int64_t total = 0;
  for (const auto& w : untied) total += w.shape.numel();
  EXPECT_EQ(total, c.num_parameters());
  c.tie_word_embeddings = true;
  EXPECT_EQ(st::hf_llama_weights(c).back().name, "model.norm.weight");
}

TEST(HfLlamaSharedData, Stories260K) {
  const std::string data = st::test::shared_data_dir();
  if (data.empty()) GTEST_SKIP() << "../shared/data is absent: the stories260K checkpoint is not available";
  const std::string dir = data + "/models/stories260K";
  const st::LlamaConfig c = st::read_llama_config(dir);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.intermediate_size, 172);
  EXPECT_EQ(c.num_layers, 5);
  EXPECT_EQ(c.num_heads, 8);
  EXPECT_EQ(c.num_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_TRUE(c.tie_word_embeddings);

  auto ck = st::CheckpointReader::open(dir);
  const st::Tensor q = ck.read("model.layers.0.self_attn.q_proj.weight", {64, 64}, DType::f32, Device::cpu,
                               MemCategory::weights);
  const st::Tensor k = ck.read("model.layers.0.self_attn.k_proj.weight", {32, 64}, DType::f32, Device::cpu,
                               MemCategory::weights);
  // Reference values read independently (Python struct.unpack of the raw file).
  EXPECT_EQ(q.ptr<float>()[0], 0.04439278692007065f);
  EXPECT_EQ(q.ptr<float>()[1], 0.07974770665168762f);
  EXPECT_EQ(q.ptr<float>()[4095], 0.034809552133083344f);
  EXPECT_EQ(k.ptr<float>()[0], 0.2161301076412201f);
  EXPECT_EQ(k.ptr<float>()[2047], -0.18465891480445862f);

  // The name list matches the real checkpoint exactly: every weight reads with its shape, none is left.
  for (const auto& w : st::hf_llama_weights(c)) ck.read(w.name, w.shape, DType::bf16, Device::cpu, MemCategory::weights);
  EXPECT_TRUE(ck.unused_names().empty());
}
