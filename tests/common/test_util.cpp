#include "tests/common/test_util.hpp"

#include <gtest/gtest.h>

#include <filesystem>

#include "core/error.hpp"
#include "tests/common/paths.hpp"

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

}  // namespace st::test
