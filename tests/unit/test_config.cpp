// Input decks and command-line options: layering (base deck < deck < command line), origins,
// and every kind of bad input refused with the key and the file named.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <vector>

#include "config/run_config.hpp"
#include "core/env.hpp"
#include "core/error.hpp"
#include "train/setup.hpp"
#include "tests/common/paths.hpp"

namespace st {
namespace {

struct Args {
  std::vector<std::string> v;
  std::vector<char*> ptrs;
  explicit Args(std::vector<std::string> a) : v(std::move(a)) {
    v.insert(v.begin(), "train");
    for (auto& s : v) ptrs.push_back(s.data());
  }
  int argc() { return static_cast<int>(ptrs.size()); }
  char** argv() { return ptrs.data(); }
};

RunConfig parse(std::vector<std::string> a) {
  Args args(std::move(a));
  RunConfig c;
  EXPECT_TRUE(parse_run_config(args.argc(), args.argv(), "train", c));
  return c;
}

std::string error_of(std::vector<std::string> a) {
  Args args(std::move(a));
  RunConfig c;
  try {
    parse_run_config(args.argc(), args.argv(), "train", c);
  } catch (const InputError& e) {
    return e.what();
  }
  return "(no error)";
}

class ConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir = test::make_temp_dir("cfg");
    std::filesystem::create_directories(dir + "/base");
    test::write_file(dir + "/base/base.cfg", "# base deck\ndata = data/x\nlr = 0.001\nepochs = 3\nlora_r = 4\n");
    test::write_file(dir + "/run.cfg", "# run deck\ninclude = base/base.cfg\nlr = 0.002 # comment\nmethod = lora\n");
  }
  void TearDown() override { std::filesystem::remove_all(dir); }
  std::string dir;
};

TEST_F(ConfigTest, LayeringAndOrigins) {
  RunConfig c = parse({"--deck", dir + "/run.cfg", "--epochs", "5"});
  EXPECT_EQ(c.data, "data/x");           // from the base deck
  EXPECT_DOUBLE_EQ(c.lr, 0.002);         // the deck overrides its base
  EXPECT_EQ(c.epochs, 5);                // the command line overrides both
  EXPECT_EQ(c.method, "lora");
  EXPECT_EQ(c.lora_r, 4);
  EXPECT_EQ(c.micro_batch_size, 8);      // built-in default
  EXPECT_EQ(c.origin.at("data"), dir + "/base/base.cfg:2");  // the deck and the line
  EXPECT_EQ(c.origin.at("lr"), dir + "/run.cfg:3");
  EXPECT_EQ(c.origin.at("epochs"), "command line");
  EXPECT_EQ(c.origin.at("seed"), "default");
  EXPECT_EQ(c.run_id, "run");            // from the deck's file name
  bool found = false;
  for (const auto& [k, v] : c.resolved())
    if (k == "lr") { EXPECT_EQ(v, "0.002"); found = true; }
  EXPECT_TRUE(found);
}

TEST_F(ConfigTest, UnknownKeyInDeckNamesFileAndSuggests) {
  test::write_file(dir + "/bad.cfg", "data = d\nlearning_rate = 0.1\n");
  const std::string e = error_of({"--deck", dir + "/bad.cfg"});
  EXPECT_NE(e.find(dir + "/bad.cfg"), std::string::npos) << e;
  EXPECT_NE(e.find("learning_rate"), std::string::npos) << e;
  test::write_file(dir + "/typo.cfg", "data = d\nmicro_batch_sise = 2\n");
  const std::string t = error_of({"--deck", dir + "/typo.cfg"});
  EXPECT_NE(t.find("did you mean 'micro_batch_size'"), std::string::npos) << t;
}

TEST_F(ConfigTest, UnknownOptionOnCommandLine) {
  const std::string e = error_of({"--data", "d", "--bogus", "1"});
  EXPECT_NE(e.find("command line"), std::string::npos) << e;
  EXPECT_NE(e.find("bogus"), std::string::npos) << e;
}

TEST_F(ConfigTest, WrongTypeNamesKeyAndFile) {
  test::write_file(dir + "/type.cfg", "data = d\nepochs = three\n");
  const std::string e = error_of({"--deck", dir + "/type.cfg"});
  EXPECT_NE(e.find(dir + "/type.cfg"), std::string::npos) << e;
  EXPECT_NE(e.find("epochs"), std::string::npos) << e;
  const std::string c = error_of({"--data", "d", "--lr", "fast"});
  EXPECT_NE(c.find("lr"), std::string::npos) << c;
}

TEST_F(ConfigTest, OutOfRangeNamesKeyAndOrigin) {
  test::write_file(dir + "/range.cfg", "include = base/base.cfg\nlora_dropout = 1.5\n");
  std::string e = error_of({"--deck", dir + "/range.cfg"});
  EXPECT_NE(e.find("lora_dropout"), std::string::npos) << e;
  EXPECT_NE(e.find(dir + "/range.cfg"), std::string::npos) << e;
  e = error_of({"--deck", dir + "/run.cfg", "--micro_batch_size", "0"});
  EXPECT_NE(e.find("micro_batch_size"), std::string::npos) << e;
  EXPECT_NE(e.find("command line"), std::string::npos) << e;
  e = error_of({"--data", "d", "--method", "sgd"});
  EXPECT_NE(e.find("method"), std::string::npos) << e;
  EXPECT_NE(e.find("full | lora"), std::string::npos) << e;
  e = error_of({"--data", "d", "--lora_targets", "q,ffn"});
  EXPECT_NE(e.find("ffn"), std::string::npos) << e;
  e = error_of({"--data", "d", "--memory_limit", "lots"});
  EXPECT_NE(e.find("memory_limit"), std::string::npos) << e;
  e = error_of({"--lr", "0.1"});
  EXPECT_NE(e.find("data"), std::string::npos) << e;  // required
}

TEST_F(ConfigTest, MissingDeckAndIncludeCycle) {
  std::string e = error_of({"--deck", dir + "/nope.cfg"});
  EXPECT_NE(e.find("nope.cfg"), std::string::npos) << e;
  test::write_file(dir + "/a.cfg", "include = b.cfg\n");
  test::write_file(dir + "/b.cfg", "include = a.cfg\n");
  e = error_of({"--deck", dir + "/a.cfg"});
  EXPECT_NE(e.find("cycle"), std::string::npos) << e;
}

TEST_F(ConfigTest, GpuMemoryLimitIsAnotherNameForMemoryLimit) {
  RunConfig c = parse({"--deck", dir + "/run.cfg", "--gpu_memory_limit", "40GiB"});
  EXPECT_EQ(c.memory_limit, "40GiB");
  EXPECT_EQ(c.origin.at("memory_limit"), "command line");
  test::write_file(dir + "/cap.cfg", "include = run.cfg\nmemory_limit = 20GiB\n");
  EXPECT_EQ(parse({"--deck", dir + "/cap.cfg", "--gpu_memory_limit", "20GiB"}).memory_limit, "20GiB");
  const std::string e = error_of({"--deck", dir + "/cap.cfg", "--gpu_memory_limit", "40GiB"});
  EXPECT_NE(e.find("disagree"), std::string::npos) << e;
  EXPECT_NE(e.find(dir + "/cap.cfg"), std::string::npos) << e;
}

}  // namespace
}  // namespace st

namespace st {
namespace {

TEST(ConfigPacking, KeysParseAndContradictionsAreRefused) {
  const RunConfig c = parse({"--data", "d", "--packing", "true", "--pack_length", "512"});
  EXPECT_TRUE(c.packing);
  EXPECT_EQ(c.pack_length, 512);
  EXPECT_FALSE(c.group_by_length);
  EXPECT_TRUE(parse({"--data", "d", "--group_by_length", "true"}).group_by_length);
  auto has = [](const std::string& e, const std::string& part) { return e.find(part) != std::string::npos; };
  const std::string both = error_of({"--data", "d", "--packing", "true", "--group_by_length", "true"});
  EXPECT_TRUE(has(both, "group_by_length") && has(both, "unpacked")) << both;
  const std::string lonely = error_of({"--data", "d", "--pack_length", "64"});
  EXPECT_TRUE(has(lonely, "pack_length") && has(lonely, "packing = true")) << lonely;
  const std::string negative = error_of({"--data", "d", "--packing", "true", "--pack_length", "-1"});
  EXPECT_TRUE(has(negative, "pack_length")) << negative;
}

// Reals print as a deck would spell them and read back exactly; booleans as true/false.
TEST(ConfigFormat, RealsAsWrittenAndExact) {
  EXPECT_EQ(format_real(3e-4), "0.0003");
  EXPECT_EQ(format_real(2e-3), "0.002");
  EXPECT_EQ(format_real(0.1), "0.1");
  EXPECT_EQ(format_real(10000.0), "10000");
  EXPECT_EQ(format_real(1e-5), "1e-05");
  EXPECT_EQ(format_real(1e-8), "1e-08");
  EXPECT_EQ(format_real(0.0), "0");
  uint64_t x = 88172645463325252ull;
  for (int i = 0; i < 2000; ++i) {  // xorshift doubles over many magnitudes: exact round trips
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    const double v = std::ldexp(static_cast<double>(x >> 11) / 9007199254740992.0, static_cast<int>(x % 80) - 40);
    EXPECT_EQ(std::stod(format_real(v)), v) << format_real(v);
  }
}

TEST(ConfigFormat, ResolvedKindsAndCheckpointShapeKeys) {
  Args args({"--data", "d", "--model", "/some/checkpoint", "--num_heads", "8"});
  RunConfig c;
  ASSERT_TRUE(parse_run_config(args.argc(), args.argv(), "train", c));
  std::map<std::string, ResolvedOption> by_key;
  for (const ResolvedOption& o : c.resolved_typed()) by_key[o.key] = o;
  EXPECT_EQ(by_key.at("lr").kind, ResolvedOption::Kind::real);
  EXPECT_EQ(by_key.at("lr").value, "0.0003");
  EXPECT_EQ(by_key.at("seed").kind, ResolvedOption::Kind::integer);
  EXPECT_EQ(by_key.at("shuffle").kind, ResolvedOption::Kind::boolean);
  EXPECT_EQ(by_key.at("shuffle").value, "true");
  EXPECT_EQ(by_key.at("method").kind, ResolvedOption::Kind::text);
  // With a checkpoint, random-init shape keys left at their defaults mean nothing (not printed);
  // one set explicitly is still shown.
  EXPECT_TRUE(c.set_by_checkpoint("hidden_size"));
  EXPECT_FALSE(c.set_by_checkpoint("num_heads"));
  EXPECT_FALSE(c.set_by_checkpoint("lr"));
  c.model.clear();
  EXPECT_FALSE(c.set_by_checkpoint("hidden_size"));
}

// save_adapter defaults to true for lora/qlora; full fine-tuning ignores the default and refuses
// an explicit true.
TEST(ConfigFormat, SaveAdapterDefaultAndFull) {
  RunConfig c = parse({"--data", "d"});
  EXPECT_TRUE(c.save_adapter);
  EXPECT_EQ(c.method, "full");
  EXPECT_NE(error_of({"--data", "d", "--save_adapter", "true"}).find("save_adapter"), std::string::npos);
}

}  // namespace
}  // namespace st

namespace st {
namespace {

// The CUDA path computes in bf16 and the CPU path in f32/f64: the other pairings are refused
// where the dtype is resolved, naming where the value came from.
TEST(RunDtype, EachDeviceTakesOnlyItsOwnComputeDtypes) {
  RunConfig c;
  c.origin["dtype"] = "run.cfg:3";
  c.dtype = "auto";
  EXPECT_EQ(run_dtype(c, Device::cpu), DType::f32);
  EXPECT_EQ(run_dtype(c, Device::cuda), DType::bf16);
  c.dtype = "f64";
  EXPECT_EQ(run_dtype(c, Device::cpu), DType::f64);
  for (const char* dt : {"f32", "f64"}) {
    c.dtype = dt;
    try {
      run_dtype(c, Device::cuda);
      ADD_FAILURE() << dt << " on cuda accepted";
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find("run.cfg:3"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("device = cpu"), std::string::npos) << e.what();
    }
  }
  c.dtype = "bf16";
  EXPECT_EQ(run_dtype(c, Device::cuda), DType::bf16);
  EXPECT_THROW(run_dtype(c, Device::cpu), InputError);
}

// The kernels' SHARDTUNE_* switches: unset or empty gives the default, each listed value its
// index, anything else an InputError naming the variable and every value.
TEST(EnvSwitches, ChoicesAndRefusals) {
  const char* name = "SHARDTUNE_TEST_ENV_CHOICE";
  unsetenv(name);
  EXPECT_EQ(env_choice(name, {"64", "128", "128x2"}, 0), 0);
  EXPECT_TRUE(env_switch(name, "0", "1", true));
  setenv(name, "", 1);
  EXPECT_EQ(env_choice(name, {"64", "128", "128x2"}, 1), 1);
  setenv(name, "128x2", 1);
  EXPECT_EQ(env_choice(name, {"64", "128", "128x2"}, 0), 2);
  setenv(name, "0", 1);
  EXPECT_FALSE(env_switch(name, "0", "1", true));
  setenv(name, "256", 1);
  try {
    env_choice(name, {"64", "128", "128x2"}, 0);
    ADD_FAILURE() << "256 accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("SHARDTUNE_TEST_ENV_CHOICE=256: expected 64, 128 or 128x2"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(env_switch(name, "0", "1", true), InputError);
  unsetenv(name);
}

}  // namespace
}  // namespace st
