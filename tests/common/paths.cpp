#include "tests/common/paths.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace fs = std::filesystem;

namespace st::test {

std::string repo_root() {
  if (const char* env = std::getenv("SHARDTUNE_REPO")) return env;
  fs::path p = fs::current_path();
  for (int i = 0; i < 8; ++i) {
    if (fs::exists(p / "Makefile") && fs::exists(p / "src" / "main.cpp")) return p.string();
    if (!p.has_parent_path() || p.parent_path() == p) break;
    p = p.parent_path();
  }
  throw std::runtime_error("cannot find the shardtune repository root (set SHARDTUNE_REPO)");
}

std::string shared_data_dir() {
  fs::path d = fs::path(repo_root()) / ".." / "shared" / "data";
  if (fs::is_directory(d)) return fs::canonical(d).string();
  return "";
}

std::string make_temp_dir(const std::string& tag) {
  const char* base = std::getenv("TMPDIR");
  std::string templ = std::string(base ? base : "/tmp") + "/shardtune-" + tag + "-XXXXXX";
  std::string buf = templ;
  if (!mkdtemp(buf.data())) throw std::runtime_error("mkdtemp failed for " + templ);
  return buf;
}

int run_command(const std::string& cmd, std::string* output) {
  std::string full = cmd + " 2>&1";
  FILE* p = popen(full.c_str(), "r");
  if (!p) return -1;
  std::array<char, 4096> buf;
  std::string out;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  int status = pclose(p);
  if (output) *output = out;
  if (status == -1) return -1;
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + path);
  std::ostringstream os;
  os << f.rdbuf();
  return os.str();
}

void write_file(const std::string& path, const std::string& content) {
  std::ofstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot write " + path);
  f << content;
}

std::string shardtune_bin() {
  if (const char* b = std::getenv("SHARDTUNE_BIN")) return b;
  return repo_root() + "/build/shardtune";
}

std::string shardtune_mpirun() {
  if (const char* m = std::getenv("SHARDTUNE_MPIRUN")) return m;
  return "mpirun --oversubscribe";
}

}  // namespace st::test
