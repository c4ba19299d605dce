#include "tests/common/test_util.hpp"

#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <memory>

#include "core/error.hpp"
#include "data/synthetic.hpp"
#include "tests/common/paths.hpp"

#include "train/families.hpp"

namespace st::test {

TempDir::TempDir(const std::string& tag) : path(make_temp_dir(tag)) {}

TempDir::~TempDir() {
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
}

void expect_input_error(const std::function<void()>& fn, const std::vector<std::string>& parts) {
  try {
    fn();
  } catch (const InputError& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
    return;
  }
  ADD_FAILURE() << "expected an st::InputError";
}

const std::string& synthetic_data_dir(const std::string& tag, uint64_t seed, int64_t sentiment_rows,
                                      int64_t instruct_rows) {
  static std::map<std::string, std::unique_ptr<TempDir>> dirs;
  auto it = dirs.find(tag);
  if (it == dirs.end()) {
    auto dir = std::make_unique<TempDir>(tag);
    SyntheticOptions o;
    o.dir = dir->path;
    o.seed = seed;
    o.sentiment_rows = sentiment_rows;
    o.instruct_rows = instruct_rows;
    write_synthetic_dataset(o);
    it = dirs.emplace(tag, std::move(dir)).first;
  }
  return it->second->path;
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const InputError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("WRONG EXCEPTION TYPE: ") + e.what();
  }
  return "NO EXCEPTION";
}

const PeftNames& peft_names(const std::string& arch) { return family_by_name(arch, "test").peft; }

}  // namespace st::test
