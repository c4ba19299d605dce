// Durable output files (core/atomic_file): temp file + fsync + rename, and every failure (no
// permission, not a directory, disk full, file size limit mid-write, failed rename) reported
// with the path and strerror, leaving no partial file under the final name and no temp file.
// The model writers (write_safetensors, config.json, tokenizer copy) go through it.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstring>
#include <functional>
#include <filesystem>

#include "core/atomic_file.hpp"
#include "core/error.hpp"
#include "core/tensor.hpp"
#include "io/hf_checkpoint.hpp"
#include "io/safetensors.hpp"
#include "tests/common/paths.hpp"
#include "tests/common/test_util.hpp"

namespace fs = std::filesystem;
using st::test::contains;

namespace {

// The message of the st::Error (of any kind) fn throws, or "NO EXCEPTION".
std::string error_message(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const st::Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("WRONG EXCEPTION TYPE: ") + e.what();
  }
  return "NO EXCEPTION";
}

// Only the given names are in `dir` (no temp file left behind).
std::vector<std::string> names_in(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

TEST(AtomicFile, WritesAndReplacesWithoutLeavingATempFile) {
  st::test::TempDir d("atomic");
  const std::string p = d.path + "/out.txt";
  st::atomic_write_file(p, "first");
  EXPECT_EQ(st::test::read_file(p), "first");
  st::atomic_write_file(p, [](st::AtomicFile& f) {
    f.write("sec", 3);
    f.write(std::string_view("ond"));
  });
  EXPECT_EQ(st::test::read_file(p), "second");
  EXPECT_EQ(names_in(d.path), (std::vector<std::string>{"out.txt"}));
}

// A FIFO (as /dev/null or /dev/stdout, a node that is not a regular file) is written in place:
// the reader gets the bytes and the node stays a FIFO, with no temp file beside it. A rename
// would have replaced the node itself with a regular file (as root, /dev/null: seen once).
TEST(AtomicFile, DevicesAndPipesAreWrittenInPlaceNeverReplaced) {
  st::test::TempDir d("atomic");
  const std::string p = d.path + "/pipe";
  ASSERT_EQ(::mkfifo(p.c_str(), 0600), 0) << std::strerror(errno);
  const int rd = ::open(p.c_str(), O_RDONLY | O_NONBLOCK);  // a reader, so the writer's open returns
  ASSERT_GE(rd, 0) << std::strerror(errno);
  st::atomic_write_file(p, "through the pipe");
  char buf[64] = {};
  const ssize_t n = ::read(rd, buf, sizeof(buf));
  ::close(rd);
  EXPECT_EQ(std::string(buf, n > 0 ? static_cast<size_t>(n) : 0), "through the pipe");
  struct stat sb;
  ASSERT_EQ(::lstat(p.c_str(), &sb), 0);
  EXPECT_TRUE(S_ISFIFO(sb.st_mode)) << "the FIFO was replaced";
  EXPECT_EQ(names_in(d.path), (std::vector<std::string>{"pipe"}));
}

TEST(AtomicFile, WriterFailureKeepsTheOldFileAndRemovesTheTemp) {
  st::test::TempDir d("atomic");
  const std::string p = d.path + "/out.txt";
  st::atomic_write_file(p, "old");
  EXPECT_THROW(st::atomic_write_file(p,
                                     [&](st::AtomicFile& f) {
                                       f.write("partial new content", 19);
                                       EXPECT_TRUE(fs::exists(p + ".tmp"));
                                       ST_THROW("writer failed");
                                     }),
               st::Error);
  EXPECT_EQ(st::test::read_file(p), "old");
  EXPECT_EQ(names_in(d.path), (std::vector<std::string>{"out.txt"}));
}

TEST(AtomicFile, ParentIsAFileErrorNamesThePath) {
  // Works as root too (unlike permission bits): the parent "directory" is a regular file.
  st::test::TempDir d("atomic");
  st::test::write_file(d.path + "/file", "x");
  const std::string p = d.path + "/file/model.safetensors";
  const std::string msg = error_message([&] { st::write_safetensors(p, {{"w", st::Tensor::zeros({4}, st::DType::f32)}}); });
  EXPECT_TRUE(contains(msg, "cannot write " + p)) << msg;
  EXPECT_TRUE(contains(msg, "Not a directory")) << msg;
  EXPECT_EQ(names_in(d.path), (std::vector<std::string>{"file"}));
}

TEST(AtomicFile, ReadOnlyDirectoryErrorNamesThePath) {
  st::test::TempDir d("atomic");
  const std::string ro = d.path + "/ro";
  fs::create_directory(ro);
  fs::permissions(ro, fs::perms::owner_read | fs::perms::owner_exec);
  if (::access(ro.c_str(), W_OK) == 0) {  // root (CAP_DAC_OVERRIDE): permission bits do not stop writes
    fs::permissions(ro, fs::perms::owner_all);
    GTEST_SKIP() << "running as root: ParentIsAFile, DiskFull and WriteFailingMidFile cover the failure paths";
  }
  const std::string cfg = ro + "/config.json";
  const std::string msg = error_message([&] { st::write_text_file_atomic(cfg, "{}\n"); });
  fs::permissions(ro, fs::perms::owner_all);
  EXPECT_TRUE(contains(msg, "cannot write " + cfg)) << msg;
  EXPECT_TRUE(contains(msg, "Permission denied")) << msg;
  EXPECT_TRUE(names_in(ro).empty());
}

TEST(AtomicFile, DiskFullErrorNamesThePathAndStrerror) {
  const int fd = ::open("/dev/full", O_WRONLY | O_CLOEXEC);
  if (fd < 0) GTEST_SKIP() << "/dev/full is not available";
  std::vector<char> buf(100000, 'x');
  const std::string msg =
      error_message([&] { st::write_all_fd(fd, buf.data(), buf.size(), "cannot write /some/model.safetensors"); });
  ::close(fd);
  EXPECT_TRUE(contains(msg, "cannot write /some/model.safetensors")) << msg;
  EXPECT_TRUE(contains(msg, "No space left on device")) << msg;
  EXPECT_TRUE(contains(msg, "after 0 of 100000 bytes")) << msg;
}

TEST(AtomicFile, WriteFailingMidFileLeavesNoPartialFile) {
  // RLIMIT_FSIZE makes write() fail part-way (EFBIG, with SIGXFSZ ignored), for root as well:
  // the stand-in for a disk filling up during a model save.
  st::test::TempDir d("atomic");
  const std::string p = d.path + "/model.safetensors";
  st::write_safetensors(p, {{"old", st::Tensor::zeros({2}, st::DType::f32)}});
  const std::string old = st::test::read_file(p);
  const st::Tensor big = st::Tensor::zeros({1 << 18}, st::DType::f32);  // 1 MiB

  struct rlimit saved;
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &saved), 0);
  struct rlimit lim = saved;
  lim.rlim_cur = 64 << 10;
  auto* old_handler = std::signal(SIGXFSZ, SIG_IGN);
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &lim), 0);
  const std::string msg = error_message([&] { st::write_safetensors(p, {{"w", big}}); });
  ::setrlimit(RLIMIT_FSIZE, &saved);
  std::signal(SIGXFSZ, old_handler);

  EXPECT_TRUE(contains(msg, "cannot write " + p)) << msg;
  EXPECT_TRUE(contains(msg, "File too large")) << msg;
  EXPECT_TRUE(contains(msg, " of 1048576 bytes")) << msg;
  EXPECT_FALSE(contains(msg, "after 0 of")) << msg;  // a short write up to the limit first, then the error
  EXPECT_EQ(st::test::read_file(p), old);            // the previous file is untouched
  EXPECT_EQ(names_in(d.path), (std::vector<std::string>{"model.safetensors"}));
}

TEST(AtomicFile, FailedRenameNamesThePathAndRemovesTheTemp) {
  st::test::TempDir d("atomic");
  const std::string p = d.path + "/config.json";
  fs::create_directories(p + "/occupied");  // a non-empty directory where the file should go
  const std::string msg = error_message([&] { st::write_text_file_atomic(p, "{}\n"); });
  EXPECT_TRUE(contains(msg, "cannot write " + p)) << msg;
  EXPECT_TRUE(contains(msg, "rename failed")) << msg;
  EXPECT_TRUE(contains(msg, "Is a directory")) << msg;
  EXPECT_EQ(names_in(d.path), (std::vector<std::string>{"config.json"}));
  EXPECT_TRUE(fs::is_directory(p));
}

TEST(AtomicFile, CopyTokenizerIsAtomicAndNamesBothEnds) {
  st::test::TempDir d("atomic");
  const std::string src = d.path + "/src.model";
  std::string content(3 << 20, '\0');  // over one 1 MiB copy buffer
  for (size_t i = 0; i < content.size(); ++i) content[i] = static_cast<char>(i * 131 % 251);
  st::test::write_file(src, content);
  fs::create_directory(d.path + "/model");
  st::copy_tokenizer(src, d.path + "/model");
  EXPECT_EQ(st::test::read_file(d.path + "/model/tokenizer.model"), content);
  EXPECT_EQ(names_in(d.path + "/model"), (std::vector<std::string>{"tokenizer.model"}));

  st::test::expect_input_error([&] { st::copy_tokenizer(d.path + "/absent.model", d.path + "/model"); },
                               {d.path + "/absent.model", "No such file or directory"});
  st::test::expect_input_error([&] { st::copy_tokenizer(d.path, d.path + "/model"); }, {d.path, "not a regular file"});
  const std::string msg = error_message([&] { st::copy_tokenizer(src, src); });  // "dir" is a file
  EXPECT_TRUE(contains(msg, src + "/tokenizer.model")) << msg;
  EXPECT_TRUE(contains(msg, "Not a directory")) << msg;
}
