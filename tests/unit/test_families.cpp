// The model-family registry and the families it adds: Llama 3.x rotary scaling (the inv_freq
// table against the formula computed by hand in double), the Qwen2 and Mistral config readers on
// hand-written config.json files (what each reads, defaults and refuses by name), and each
// decoder family's checkpoint written and read back (sharded, biases included) through its entry.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "io/hf_checkpoint.hpp"
#include "io/hf_llama.hpp"
#include "io/hf_mistral.hpp"
#include "io/hf_qwen2.hpp"
#include "io/llama_io.hpp"
#include "model/llama.hpp"
#include "ops/rope.hpp"
#include "core/rng.hpp"
#include "tests/common/gradcheck.hpp"
#include "tests/common/paths.hpp"
#include "tests/common/test_util.hpp"
#include "train/families.hpp"

namespace fs = std::filesystem;

namespace st {
namespace {

using test::expect_input_error;

// transformers' _compute_llama3_parameters in double, as written there (the reference the f32
// table must round to).
std::vector<double> llama3_by_hand(int64_t D, double theta, const RopeScaling& s) {
  std::vector<double> out;
  const double low_wavelen = s.original_max_position_embeddings / s.low_freq_factor;
  const double high_wavelen = s.original_max_position_embeddings / s.high_freq_factor;
  for (int64_t i = 0; i < D / 2; ++i) {
    const double f = 1.0 / std::pow(theta, static_cast<double>(2 * i) / static_cast<double>(D));
    const double wavelen = 2 * M_PI / f;
    if (wavelen < high_wavelen) {
      out.push_back(f);
    } else if (wavelen > low_wavelen) {
      out.push_back(f / s.factor);
    } else {
      const double smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) /
                            (s.high_freq_factor - s.low_freq_factor);
      out.push_back((1 - smooth) * f / s.factor + smooth * f);
    }
  }
  return out;
}

RopeScaling llama3(double factor, int64_t original) {
  RopeScaling s;
  s.type = RopeScaling::Type::llama3;
  s.factor = factor;
  s.low_freq_factor = 1.0;
  s.high_freq_factor = 4.0;
  s.original_max_position_embeddings = original;
  return s;
}

TEST(Rope, Llama3InvFreqFollowsTransformersFormula) {
  // Tiny (the golden fixture's shape): D = 8, theta 1e4, original 16 positions, so the bands are
  // wavelength < 4 (kept), > 16 (divided by 8) and between (smoothed): 2 pi, 20 pi, 200 pi, 2000 pi.
  const RopeScaling tiny = llama3(8.0, 16);
  const std::vector<float> got = rope_inv_freq(8, 10000.0, tiny);
  // By hand: i = 0 is in the band, smooth = (16 / (2 pi) - 1) / 3 = 0.515494..., so
  // inv = (1 - smooth) / 8 + smooth = 0.576057...; the others are 10^-i / 8.
  const double smooth = (16.0 / (2 * M_PI) - 1.0) / 3.0;
  const double by_hand[] = {(1 - smooth) / 8 + smooth, 0.1 / 8, 0.01 / 8, 0.001 / 8};
  ASSERT_EQ(got.size(), 4u);
  // f32 rounding of a handful of operations: a few ulp (6e-8 each) at most.
  for (int i = 0; i < 4; ++i) EXPECT_NEAR(got[static_cast<size_t>(i)], by_hand[i], 1e-6 * by_hand[i]) << i;
  EXPECT_NEAR(by_hand[0], 0.5760564, 1e-7);
  // Llama 3.1 8B's table: every band present.
  const RopeScaling l31 = llama3(8.0, 8192);
  const std::vector<float> big = rope_inv_freq(128, 500000.0, l31), plain = rope_inv_freq(128, 500000.0);
  const std::vector<double> want = llama3_by_hand(128, 500000.0, l31);
  int kept = 0, divided = 0, smoothed = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_NEAR(big[i], want[i], 1e-6 * want[i]) << i;
    if (big[i] == plain[i]) ++kept;
    else if (big[i] == plain[i] / 8.0f) ++divided;  // the same f32 division torch does
    else ++smoothed;
  }
  EXPECT_GT(kept, 0);
  EXPECT_GT(divided, 0);
  EXPECT_GT(smoothed, 0);
  EXPECT_EQ(kept + divided + smoothed, 64);
  // No scaling: the default table.
  EXPECT_EQ(rope_inv_freq(8, 10000.0), std::vector<float>({1.0f, 0.1f, 0.01f, 0.001f}));
}

TEST(Families, RegistryFindsEachFamilyByNameAndModelType) {
  for (const char* name : {"llama", "mistral", "qwen2", "t5"}) {
    const ModelFamily& f = family_by_name(name, "test");
    EXPECT_EQ(f.name, name);
    EXPECT_EQ(&family_by_model_type(f.model_types.front(), "test"), &f);
    EXPECT_FALSE(f.module_names.empty());
    EXPECT_FALSE(f.peft.task_type.empty());
    EXPECT_TRUE(f.make_runner && f.read_config);
  }
  EXPECT_TRUE(family_by_name("t5", "test").seq2seq);
  EXPECT_EQ(family_by_name("qwen2", "test").peft.task_type, "CAUSAL_LM");
  expect_input_error([] { family_by_model_type("gemma", "x/config.json"); },
                     {"x/config.json", "gemma", "llama, mistral, qwen2, t5"});
  expect_input_error([] { family_by_name("gpt2", "deck.cfg"); }, {"deck.cfg", "arch", "gpt2"});
}

class HfFamilies : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::make_temp_dir("hf-families"); }
  void TearDown() override { fs::remove_all(dir_); }
  void write(const std::string& json) { test::write_file(dir_ + "/config.json", json); }
  std::string path() const { return dir_ + "/config.json"; }
  std::string dir_;
};

// Qwen2.5-0.5B's config.json (as published), abridged to the fields the reader looks at.
const char* kQwen25 = R"({"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 151936,
  "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
  "num_key_value_heads": 2, "max_position_embeddings": 32768, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
  "hidden_act": "silu", "tie_word_embeddings": true, "use_sliding_window": false, "sliding_window": 32768,
  "max_window_layers": 24, "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151643})";

TEST_F(HfFamilies, Qwen2ConfigHasBiasesItsThetaAndATiedHead) {
  write(kQwen25);
  const LlamaConfig c = read_qwen2_config(dir_);
  EXPECT_TRUE(c.qkv_bias);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.num_kv_heads, 2);
  EXPECT_EQ(c.sliding_window, 0);  // use_sliding_window false: no layer slides
  EXPECT_EQ(c.bos_token_id, 151643);
  // Its biases are among the checkpoint's weights, and count as parameters.
  int64_t total = 0, biases = 0;
  for (const HfWeightSpec& w : hf_llama_weights(c)) {
    total += w.shape.numel();
    if (w.name.size() > 5 && w.name.compare(w.name.size() - 5, 5, ".bias") == 0) ++biases;
  }
  EXPECT_EQ(biases, 3 * 24);
  EXPECT_EQ(total, c.num_parameters());
  EXPECT_EQ(total, 494032768);  // Qwen2.5-0.5B's parameter count
  // A window on the upper layers is recorded (runs longer than it are refused by the runner).
  std::string windowed = kQwen25;
  windowed.replace(windowed.find("\"use_sliding_window\": false"), 27, "\"use_sliding_window\": true");
  windowed.replace(windowed.find("\"max_window_layers\": 24"), 23, "\"max_window_layers\": 20");
  write(windowed);
  const LlamaConfig w = read_qwen2_config(dir_);
  EXPECT_EQ(w.sliding_window, 32768);
  EXPECT_EQ(w.max_window_layers, 20);
  // Unsupported layer types and rope types are refused by name; so is another model_type.
  std::string layers = ", \"layer_types\": [\"full_attention\"";
  for (int l = 1; l < 24; ++l) layers += ", \"chunked_attention\"";
  write(std::string(kQwen25).substr(0, std::string(kQwen25).size() - 1) + layers + "]}");
  expect_input_error([&] { read_qwen2_config(dir_); }, {path(), "'layer_types'", "chunked_attention"});
  write(std::string(kQwen25).substr(0, std::string(kQwen25).size() - 1) +
        R"(, "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}})");
  expect_input_error([&] { read_qwen2_config(dir_); }, {path(), "'rope_scaling.rope_type'", "yarn"});
  write(std::string(kQwen25).substr(0, std::string(kQwen25).size() - 1) + R"(, "hidden_act": "gelu"})");
  expect_input_error([&] { read_qwen2_config(dir_); }, {path(), "'hidden_act'", "gelu"});
  write(R"({"model_type": "qwen2_moe", "vocab_size": 8})");
  expect_input_error([&] { read_qwen2_config(dir_); }, {path(), "'model_type'", "qwen2_moe"});
}

// Mistral-7B-v0.1's config.json (as published).
const char* kMistral01 = R"({"architectures": ["MistralForCausalLM"], "model_type": "mistral", "vocab_size": 32000,
  "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
  "num_key_value_heads": 8, "max_position_embeddings": 32768, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
  "sliding_window": 4096, "hidden_act": "silu", "tie_word_embeddings": false, "bos_token_id": 1, "eos_token_id": 2})";

TEST_F(HfFamilies, MistralWindowIsKeptNullIsNoneAbsentIsTransformersDefault) {
  write(kMistral01);
  LlamaConfig c = read_mistral_config(dir_);
  EXPECT_EQ(c.sliding_window, 4096);
  EXPECT_FALSE(c.qkv_bias);
  EXPECT_EQ(c.num_parameters(), 7241732096);  // Mistral 7B
  std::string v3 = kMistral01;
  v3.replace(v3.find("\"sliding_window\": 4096"), 22, "\"sliding_window\": null");
  write(v3);
  EXPECT_EQ(read_mistral_config(dir_).sliding_window, 0);
  std::string absent = kMistral01;
  absent.replace(absent.find("\"sliding_window\": 4096, "), 24, "");
  write(absent);
  EXPECT_EQ(read_mistral_config(dir_).sliding_window, 4096);  // MistralConfig's default
  write(std::string(kMistral01).substr(0, std::string(kMistral01).size() - 1) + R"(, "attention_bias": true})");
  expect_input_error([&] { read_mistral_config(dir_); }, {path(), "'attention_bias'"});
  write(absent.substr(0, absent.size() - 1) + R"(, "sliding_window": 0})");
  expect_input_error([&] { read_mistral_config(dir_); }, {path(), "'sliding_window'", "positive"});
}

// Llama-3.2-1B's config.json (as published).
const char* kLlama32 = R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
  "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
  "num_key_value_heads": 8, "head_dim": 64, "max_position_embeddings": 131072, "rms_norm_eps": 1e-05,
  "rope_theta": 500000.0, "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
  "original_max_position_embeddings": 8192, "rope_type": "llama3"}, "tie_word_embeddings": true,
  "attention_bias": false, "mlp_bias": false, "hidden_act": "silu", "bos_token_id": 128000,
  "eos_token_id": [128001, 128008, 128009], "pretraining_tp": 1})";

TEST_F(HfFamilies, Llama3ConfigReadsItsRopeScalingInBothSpellings) {
  write(kLlama32);
  const LlamaConfig c = read_llama_config(dir_);
  EXPECT_EQ(c.rope_scaling, llama3(32.0, 8192));
  EXPECT_EQ(c.rope_theta, 500000.0);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.eos_token_id, 128001);
  EXPECT_EQ(c.num_parameters(), 1235814400);  // Llama 3.2 1B
  // transformers 5 writes rope_parameters, theta inside, and may leave the original length to
  // max_position_embeddings.
  write(R"({"model_type": "llama", "vocab_size": 96, "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 64,
    "rope_parameters": {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
    "high_freq_factor": 4.0}})");
  const LlamaConfig p = read_llama_config(dir_);
  EXPECT_EQ(p.rope_scaling, llama3(8.0, 64));
  EXPECT_EQ(p.rope_theta, 10000.0);
  // What transformers needs is needed here too; other rope types are refused by name.
  write(R"({"model_type": "llama", "vocab_size": 96, "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
    "high_freq_factor": 4.0}})");
  expect_input_error([&] { read_llama_config(dir_); }, {path(), "'rope_scaling.low_freq_factor'", "missing"});
  write(R"({"model_type": "llama", "vocab_size": 96, "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "rope_scaling": {"rope_type": "dynamic", "factor": 2.0}})");
  expect_input_error([&] { read_llama_config(dir_); }, {path(), "'rope_scaling.rope_type'", "dynamic"});
  write(R"({"model_type": "llama", "vocab_size": 96, "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
    "low_freq_factor": 4.0, "high_freq_factor": 1.0, "original_max_position_embeddings": 16}})");
  expect_input_error([&] { read_llama_config(dir_); }, {path(), "low_freq_factor < high_freq_factor"});
}

// A tiny decoder of `family` with every family feature on, random weights (biases non-zero).
LlamaModel tiny_decoder(const std::string& family, DType dtype) {
  LlamaConfig c;
  c.vocab_size = 24;
  c.hidden_size = 12;
  c.intermediate_size = 20;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 6;
  c.max_position_embeddings = 32;
  c.tie_word_embeddings = family == "qwen2";
  c.qkv_bias = family == "qwen2";
  if (family == "llama") c.rope_scaling = llama3(8.0, 8);
  if (family == "mistral") c.sliding_window = 16;
  LlamaModel m = llama_build(c, dtype, Device::cpu);
  llama_init_random(m, 3, 0.3);
  Rng rng(5);
  for (LlamaBlock& b : m.blocks)
    for (Linear* l : {&b.q, &b.k, &b.v})
      if (l->bias.defined()) l->bias.copy_from(test::random_f64(l->bias.shape(), rng, 0.5).to_cpu(dtype));
  return m;
}

TEST_F(HfFamilies, EachDecoderFamilyWritesAndReadsItsCheckpointShardedThroughItsEntry) {
  for (const char* name : {"llama", "mistral", "qwen2"}) {
    const ModelFamily& fam = family_by_name(name, "test");
    const DecoderConfigIo io = fam.name == "qwen2"     ? DecoderConfigIo{read_qwen2_config, write_qwen2_config, nullptr}
                               : fam.name == "mistral" ? DecoderConfigIo{read_mistral_config, write_mistral_config, nullptr}
                                                       : DecoderConfigIo{read_llama_config, write_llama_config, nullptr};
    LlamaModel m = tiny_decoder(name, DType::f32);
    const std::string dir = dir_ + "/" + name;
    save_decoder(m, dir, "", 2000, io.write);  // 2 kB shards: several files and an index
    EXPECT_TRUE(fs::exists(dir + "/model.safetensors.index.json")) << name;
    EXPECT_EQ(read_json_file(dir + "/config.json").at("model_type"), fam.model_types.front());
    const ModelShape shape = fam.read_config(dir);
    EXPECT_FALSE(shape.summary.empty());
    EXPECT_EQ(shape.vocab, 24);
    EXPECT_EQ(shape.head_dim, 6);
    const LlamaConfig back_cfg = io.read(dir);
    EXPECT_EQ(back_cfg.qkv_bias, m.cfg.qkv_bias) << name;
    EXPECT_EQ(back_cfg.rope_scaling, m.cfg.rope_scaling) << name;
    EXPECT_EQ(back_cfg.sliding_window, m.cfg.sliding_window) << name;
    LlamaModel back = load_decoder(dir, back_cfg, DType::f32, Device::cpu);
    const auto a = llama_named_weights(m), b = llama_named_weights(back);
    ASSERT_EQ(a.size(), b.size()) << name;
    for (size_t i = 0; i < a.size(); ++i) {
      ASSERT_EQ(a[i].first, b[i].first);
      EXPECT_EQ(test::rel_error(*b[i].second, *a[i].second), 0.0) << name << " " << a[i].first;
    }
    // Through the registry: the family's runner loads the directory as `shardtune train` does,
    // and refuses rows longer than a sliding window.
    RunConfig c;
    c.model = dir;
    c.micro_batch_size = 2;
    ShardInfo info;
    info.tokenizer_vocab_size = 24;
    for (const int64_t seq_len : {16, 24}) {
      auto make = [&] {
        return fam.make_runner(RunnerSpec{c, info, DataShape{seq_len, 0, 0, {}}, DType::f32, Device::cpu, TpGroup{},
                                          Method::lora, true, fam});
      };
      if (m.cfg.sliding_window > 0 && seq_len > m.cfg.sliding_window) {
        expect_input_error([&] { make(); }, {dir + "/config.json", "sliding_window = 16", "sequence length 24"});
        continue;
      }
      std::unique_ptr<ModelRunner> r = make();
      EXPECT_EQ(r->num_parameters(), m.cfg.num_parameters());
      // LoRA: the biases stay frozen (only adapters train).
      LoraConfig lc;
      EXPECT_EQ(r->attach_lora(lc, 1), 2 * 7);
      for (const ParamRef& p : trainable_params(r->param_table()))
        EXPECT_NE(p.name.find("lora_"), std::string::npos) << name << " " << p.name;
    }
  }
}

}  // namespace
}  // namespace st
