// PEFT adapters (adapters/peft.hpp): write -> read round trips (equal bits), the names and
// config fields PEFT expects, refusal of what shardtune's LoRA does not compute, and sharded
// Hugging Face checkpoints (write_hf_weights) read back through the index.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <set>
#include <nlohmann/json.hpp>

#include "tests/common/test_util.hpp"
#include "adapters/apply.hpp"
#include "adapters/peft.hpp"
#include "io/hf_checkpoint.hpp"
#include "io/llama_io.hpp"
#include "io/safetensors.hpp"
#include "io/t5_io.hpp"
#include "ops/init.hpp"
#include "tests/common/paths.hpp"

namespace fs = std::filesystem;

namespace st {
namespace {

std::string golden() { return test::repo_root() + "/tests/golden"; }

bool same_bits(const Tensor& a, const Tensor& b) {
  const Tensor x = a.to_cpu(a.dtype()), y = b.to_cpu(b.dtype());
  return x.dtype() == y.dtype() && x.numel() == y.numel() && std::memcmp(x.data(), y.data(), x.nbytes()) == 0;
}

// Non-zero B everywhere (B starts at zero), so a round trip that dropped B would show.
void randomize_b(const std::vector<Linear*>& linears, uint64_t seed) {
  uint64_t k = seed;
  for (Linear* lin : linears)
    if (auto* a = dynamic_cast<LoraAdapter*>(lin->adapter.get())) {
      fill_uniform(a->B, ++k, -0.3, 0.3);
      a->sync_working();
    }
}

void expect_same_adapters(const std::vector<Linear*>& x, const std::vector<Linear*>& y) {
  ASSERT_EQ(x.size(), y.size());
  int n = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    auto* a = dynamic_cast<LoraAdapter*>(x[i]->adapter.get());
    auto* b = dynamic_cast<LoraAdapter*>(y[i]->adapter.get());
    ASSERT_EQ(a == nullptr, b == nullptr) << x[i]->name;
    if (!a) continue;
    EXPECT_TRUE(same_bits(a->A, b->A)) << x[i]->name << " A";
    EXPECT_TRUE(same_bits(a->B, b->B)) << x[i]->name << " B";
    EXPECT_EQ(a->scale, b->scale);
    ++n;
  }
  EXPECT_GT(n, 0);
}

nlohmann::json read_json(const std::string& path) { return read_json_file(path); }

TEST(Peft, LlamaRoundTripIsBitExactWithPeftNamesAndConfig) {
  for (DType dt : {DType::f32, DType::f64}) {
    const std::string dir = test::make_temp_dir("peft_llama");
    LlamaModel m = load_llama(golden() + "/llama_tiny", dt, Device::cpu);
    LoraConfig lc;
    lc.r = 4;
    lc.alpha = 8;
    lc.dropout = 0.05;
    lc.targets = {"q", "v", "down"};
    ASSERT_EQ(attach_lora(m, lc, 8, 7), 2 * 3);
    randomize_b(llama_linears(m), 11);
    EXPECT_EQ(save_peft_adapter(llama_linears(m), test::peft_names("llama"), "some/base", dir), 6);

    const nlohmann::json j = read_json(dir + "/adapter_config.json");
    EXPECT_EQ(j.at("peft_type"), "LORA");
    EXPECT_EQ(j.at("r"), 4);
    EXPECT_TRUE(j.at("lora_alpha").is_number_integer());
    EXPECT_EQ(j.at("lora_alpha"), 8);
    EXPECT_DOUBLE_EQ(j.at("lora_dropout").get<double>(), 0.05);
    EXPECT_EQ(j.at("target_modules"), nlohmann::json({"down_proj", "q_proj", "v_proj"}));
    EXPECT_EQ(j.at("task_type"), "CAUSAL_LM");
    EXPECT_EQ(j.at("bias"), "none");
    EXPECT_EQ(j.at("fan_in_fan_out"), false);
    EXPECT_EQ(j.at("use_rslora"), false);
    EXPECT_EQ(j.at("use_dora"), false);
    EXPECT_EQ(j.at("base_model_name_or_path"), "some/base");

    const SafetensorsFile f = SafetensorsFile::open(dir + "/adapter_model.safetensors");
    EXPECT_EQ(f.entries().size(), 12u);
    const SafetensorsEntry* a = f.find("base_model.model.model.layers.1.mlp.down_proj.lora_A.weight");
    const SafetensorsEntry* b = f.find("base_model.model.model.layers.0.self_attn.v_proj.lora_B.weight");
    ASSERT_TRUE(a && b);
    EXPECT_EQ(a->shape, (std::vector<int64_t>{4, 64}));  // [r, in]
    EXPECT_EQ(b->shape, (std::vector<int64_t>{16, 4}));  // [out, r]
    EXPECT_EQ(a->dtype, dt == DType::f64 ? "F64" : "F32");

    const PeftConfig p = read_peft_config(dir, test::peft_names("llama"));
    const LoraConfig back = lora_config_from_peft(p, test::peft_names("llama"));
    EXPECT_EQ(back.r, 4);
    EXPECT_EQ(back.alpha, 8);
    EXPECT_EQ(back.targets, (std::vector<std::string>{"down", "q", "v"}));
    LlamaModel m2 = load_llama(golden() + "/llama_tiny", dt, Device::cpu);
    attach_lora(m2, back, 8, 99);  // another seed: everything must come from the file
    EXPECT_EQ(load_peft_adapter(llama_linears(m2), dir), 6);
    expect_same_adapters(llama_linears(m), llama_linears(m2));
    fs::remove_all(dir);
  }
}

TEST(Peft, T5RoundTripIsBitExactWithPeftNames) {
  for (const char* variant : {"t5_flan", "t5_t5"}) {  // gated-gelu (wi_0, wi_1) and relu (wi)
    SCOPED_TRACE(variant);
    const std::string dir = test::make_temp_dir("peft_t5");
    T5Model m = load_t5(golden() + "/" + variant, DType::f32, Device::cpu);
    LoraConfig lc;
    lc.r = 2;
    lc.alpha = 6;
    lc.targets = m.cfg.gated ? std::vector<std::string>{"q", "k", "v", "o", "wi_0", "wi_1", "wo"}
                             : std::vector<std::string>{"q", "k", "v", "o", "wi", "wo"};
    const int64_t n = attach_lora(m, lc, 8, 3);
    randomize_b(t5_linears(m), 5);
    EXPECT_EQ(save_peft_adapter(t5_linears(m), test::peft_names("t5"), "", dir), n);
    const nlohmann::json j = read_json(dir + "/adapter_config.json");
    EXPECT_EQ(j.at("task_type"), "SEQ_2_SEQ_LM");
    EXPECT_TRUE(j.at("base_model_name_or_path").is_null());
    const SafetensorsFile f = SafetensorsFile::open(dir + "/adapter_model.safetensors");
    EXPECT_NE(f.find("base_model.model.encoder.block.0.layer.0.SelfAttention.q.lora_A.weight"), nullptr);
    EXPECT_NE(f.find("base_model.model.decoder.block.0.layer.1.EncDecAttention.o.lora_B.weight"), nullptr);
    EXPECT_NE(f.find(str("base_model.model.decoder.block.0.layer.2.DenseReluDense.",
                         m.cfg.gated ? "wi_1" : "wi", ".lora_A.weight")), nullptr);
    T5Model m2 = load_t5(golden() + "/" + variant, DType::f32, Device::cpu);
    attach_lora(m2, lora_config_from_peft(read_peft_config(dir, test::peft_names("t5")), test::peft_names("t5")), 8, 4);
    EXPECT_EQ(load_peft_adapter(t5_linears(m2), dir), n);
    expect_same_adapters(t5_linears(m), t5_linears(m2));
    fs::remove_all(dir);
  }
}

// A valid adapter for llama_tiny (q_proj, v_proj) to break one field or tensor at a time.
struct BadAdapter : ::testing::Test {
  void SetUp() override {
    dir = test::make_temp_dir("peft_bad");
    LlamaModel m = load_llama(golden() + "/llama_tiny", DType::f32, Device::cpu);
    LoraConfig lc;
    lc.r = 4;
    lc.targets = {"q", "v"};
    attach_lora(m, lc, 8, 1);
    save_peft_adapter(llama_linears(m), test::peft_names("llama"), "", dir);
    base = read_json(dir + "/adapter_config.json");
  }
  void TearDown() override { fs::remove_all(dir); }
  // The message of read_peft_config on the config with `key` set to `value`.
  std::string refusal(const std::string& key, const nlohmann::json& value, const std::string& arch = "llama") {
    nlohmann::json j = base;
    j[key] = value;
    test::write_file(dir + "/adapter_config.json", j.dump());
    try {
      read_peft_config(dir, test::peft_names(arch));
    } catch (const InputError& e) {
      return e.what();
    }
    return "(accepted)";
  }
  std::string load_refusal() {
    try {
      LlamaModel m = load_llama(golden() + "/llama_tiny", DType::f32, Device::cpu);
      attach_lora(m, lora_config_from_peft(read_peft_config(dir, test::peft_names("llama")), test::peft_names("llama")), 8, 1);
      load_peft_adapter(llama_linears(m), dir);
    } catch (const InputError& e) {
      return e.what();
    }
    return "(accepted)";
  }
  std::string dir;
  nlohmann::json base;
};

TEST_F(BadAdapter, UnsupportedConfigsAreRefusedNamingTheField) {
  EXPECT_EQ(load_refusal(), "(accepted)");
  const std::pair<const char*, nlohmann::json> cases[] = {
      {"use_rslora", true},
      {"use_dora", true},
      {"bias", "lora_only"},
      {"modules_to_save", nlohmann::json::array({"lm_head"})},
      {"fan_in_fan_out", true},
      {"rank_pattern", {{"q_proj", 8}}},
      {"alpha_pattern", {{"q_proj", 32}}},
      {"layers_to_transform", nlohmann::json::array({0})},
      {"peft_type", "LOKR"},
      {"target_modules", "all-linear"},
      {"target_modules", nlohmann::json::array({"q_proj", "embed_tokens"})},
      {"task_type", "SEQ_2_SEQ_LM"},
      {"r", 0},
      {"lora_alpha", "sixteen"},
  };
  for (const auto& [key, value] : cases) {
    const std::string msg = refusal(key, value);
    EXPECT_NE(msg.find(str("adapter_config.json: field '", key, "'")), std::string::npos) << key << ": " << msg;
  }
  EXPECT_NE(refusal("use_rslora", true).find("rank-stabilized"), std::string::npos);
  EXPECT_NE(refusal("target_modules", nlohmann::json::array({"q"})).find("not a llama projection"), std::string::npos);
  // Explicit defaults of the refused features are fine.
  EXPECT_EQ(refusal("modules_to_save", nullptr), "(accepted)");
  EXPECT_EQ(refusal("rank_pattern", nlohmann::json::object()), "(accepted)");
  EXPECT_EQ(refusal("use_dora", false), "(accepted)");
}

TEST_F(BadAdapter, TensorsThatDoNotFitAreRefusedNamingTheTensor) {
  // The config claims k_proj too, but the file has no k_proj factors.
  test::write_file(dir + "/adapter_config.json",
                   [&] { nlohmann::json j = base; j["target_modules"] = {"q_proj", "k_proj", "v_proj"}; return j.dump(); }());
  std::string msg = load_refusal();
  EXPECT_NE(msg.find("no tensor 'base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight'"), std::string::npos) << msg;
  // The config names only q_proj: the v_proj factors are left over.
  test::write_file(dir + "/adapter_config.json",
                   [&] { nlohmann::json j = base; j["target_modules"] = {"q_proj"}; return j.dump(); }());
  msg = load_refusal();
  EXPECT_NE(msg.find("v_proj.lora_A.weight' is not a LoRA factor"), std::string::npos) << msg;
  // Another rank in the config than in the tensors.
  test::write_file(dir + "/adapter_config.json", [&] { nlohmann::json j = base; j["r"] = 8; return j.dump(); }());
  msg = load_refusal();
  EXPECT_NE(msg.find("has shape [4, 32], expected [8, 32]"), std::string::npos) << msg;
  // No weights at all.
  test::write_file(dir + "/adapter_config.json", base.dump());
  fs::remove(dir + "/adapter_model.safetensors");
  msg = load_refusal();
  EXPECT_NE(msg.find("no adapter_model.safetensors"), std::string::npos) << msg;
}

// write_hf_weights: above the limit the weights go to shards with an index (transformers'
// layout), which load_llama reads back through CheckpointReader; saving again unsharded into the
// same directory removes the index and shards.
TEST(HfSharding, ShardedSaveReloadsEqualAndSwitchesLayoutCleanly) {
  const std::string dir = test::make_temp_dir("hf_shards");
  LlamaModel m = load_llama(golden() + "/llama_tiny", DType::f32, Device::cpu);
  save_llama(m, dir, "", 30000);  // ~100 KB of weights: 4 shards
  EXPECT_FALSE(fs::exists(dir + "/model.safetensors"));
  const nlohmann::json idx = read_json(dir + "/model.safetensors.index.json");
  int64_t total = 0;
  std::set<std::string> files;
  for (const auto& [name, file] : idx.at("weight_map").items()) files.insert(file.get<std::string>());
  for (const std::string& f : files) {
    const SafetensorsFile sf = SafetensorsFile::open(dir + "/" + f);
    for (const auto& e : sf.entries()) total += static_cast<int64_t>(e.nbytes());
    EXPECT_TRUE(f.size() == 32 && f.rfind("model-000", 0) == 0) << f;  // model-00001-of-0000N.safetensors
  }
  EXPECT_GE(files.size(), 3u);
  EXPECT_TRUE(files.count(str("model-00001-of-0000", files.size(), ".safetensors")));
  EXPECT_EQ(idx.at("metadata").at("total_size").get<int64_t>(), total);
  EXPECT_EQ(idx.at("weight_map").size(), llama_weight_slots(m).size());

  LlamaModel back = load_llama(dir, DType::f32, Device::cpu);
  const auto a = llama_weight_slots(m), b = llama_weight_slots(back);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(same_bits(*a[i].tensor, *b[i].tensor)) << a[i].name;

  save_llama(m, dir, "");  // the default 5GB: one file
  EXPECT_TRUE(fs::exists(dir + "/model.safetensors"));
  EXPECT_FALSE(fs::exists(dir + "/model.safetensors.index.json"));
  for (const std::string& f : files) EXPECT_FALSE(fs::exists(dir + "/" + f)) << f;
  LlamaModel again = load_llama(dir, DType::f32, Device::cpu);
  const auto c = llama_weight_slots(again);
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(same_bits(*a[i].tensor, *c[i].tensor)) << a[i].name;

  // T5 through the same writer.
  T5Model t = load_t5(golden() + "/t5_flan", DType::f32, Device::cpu);
  save_t5(t, dir + "/t5", 20000);
  EXPECT_TRUE(fs::exists(dir + "/t5/model.safetensors.index.json"));
  T5Model tb = load_t5(dir + "/t5", DType::f32, Device::cpu);
  const auto ta = t5_weight_slots(t), tbs = t5_weight_slots(tb);
  for (size_t i = 0; i < ta.size(); ++i) EXPECT_TRUE(same_bits(*ta[i].tensor, *tbs[i].tensor)) << ta[i].name;
  fs::remove_all(dir);
}

}  // namespace
}  // namespace st
