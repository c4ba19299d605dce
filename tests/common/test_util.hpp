// Small helpers shared by the GoogleTest files.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace st {
struct PeftNames;
}

namespace st::test {

// A temporary directory removed when the object goes out of scope.
struct TempDir {
  std::string path;
  explicit TempDir(const std::string& tag);
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
};

// The embedded synthetic dataset and tokenizer (data/synthetic.hpp) written once per test program
// for each `tag`, into a temporary directory removed at exit.
const std::string& synthetic_data_dir(const std::string& tag, uint64_t seed, int64_t sentiment_rows,
                                      int64_t instruct_rows);

// The message of the st::InputError fn throws; "NO EXCEPTION" or "WRONG EXCEPTION TYPE: ..."
// otherwise (so a test's EXPECT on the text fails with what happened).
std::string error_of(const std::function<void()>& fn);
inline bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// Runs fn and expects an st::InputError whose message contains every one of `parts`.
void expect_input_error(const std::function<void()>& fn, const std::vector<std::string>& parts);

// The PEFT names of the model family `arch` (its registry entry, train/families.hpp).
const PeftNames& peft_names(const std::string& arch);

}  // namespace st::test
