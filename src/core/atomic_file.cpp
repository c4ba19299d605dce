#include "core/atomic_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <utility>
#include <vector>

#include "core/error.hpp"

namespace st {

namespace {

constexpr size_t kMaxIoChunk = 1ull << 30;  // Linux moves at most ~2 GiB per read/write call

// Makes a rename in the directory of `path` durable; some file systems refuse fsync on a
// directory, which is harmless.
void fsync_parent_dir(const std::string& path) {
  const std::string dir = std::filesystem::path(path).parent_path().string();
  const int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace

void write_all_fd(int fd, const void* data, size_t bytes, const std::string& what) {
  const auto* p = static_cast<const uint8_t*>(data);
  const size_t total = bytes;
  while (bytes > 0) {
    const ssize_t w = ::write(fd, p, std::min(bytes, kMaxIoChunk));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      // write() returns 0 only for a zero-byte request; treat it as "no space" rather than spin.
      const int err = w < 0 ? errno : ENOSPC;
      ST_THROW(what, ": write failed after ", total - bytes, " of ", total, " bytes: ", std::strerror(err));
    }
    p += w;
    bytes -= static_cast<size_t>(w);
  }
}

AtomicFile::AtomicFile(const std::string& path) : path_(path), tmp_path_(path + ".tmp") {
  ST_CHECK(!path.empty(), "AtomicFile: empty path");
  fd_ = ::open(tmp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) fail("cannot create the temporary file", errno);
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(tmp_path_.c_str());
}

void AtomicFile::fail(const char* what, int err) {
  if (fd_ >= 0) ::close(std::exchange(fd_, -1));
  ::unlink(tmp_path_.c_str());  // no-op if it was never created
  ST_THROW("cannot write ", path_, ": ", what, " ", tmp_path_, ": ", std::strerror(err));
}

void AtomicFile::write(const void* data, size_t bytes) {
  ST_CHECK(fd_ >= 0, "write to ", tmp_path_, " after commit or failure");
  try {
    write_all_fd(fd_, data, bytes, str("cannot write ", path_, " (temporary file ", tmp_path_, ")"));
  } catch (...) {
    ::close(std::exchange(fd_, -1));
    ::unlink(tmp_path_.c_str());
    throw;
  }
}

void AtomicFile::commit() {
  ST_CHECK(fd_ >= 0, "commit of ", tmp_path_, " twice or after a failure");
  if (::fsync(fd_) != 0) fail("fsync failed on", errno);
  const int fd = std::exchange(fd_, -1);
  if (::close(fd) != 0) fail("close failed on", errno);
  if (::rename(tmp_path_.c_str(), path_.c_str()) != 0) fail("rename failed from", errno);
  committed_ = true;
  fsync_parent_dir(path_);
}

void durable_rename(const std::string& tmp, const std::string& path) {
  const int fd = ::open(tmp.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) ST_THROW("cannot write ", path, ": cannot open the temporary file ", tmp, ": ", std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) ST_THROW("cannot write ", path, ": fsync failed on ", tmp, ": ", std::strerror(err));
  if (::rename(tmp.c_str(), path.c_str()) != 0)
    ST_THROW("cannot write ", path, ": rename failed from ", tmp, ": ", std::strerror(errno));
  fsync_parent_dir(path);
}

void atomic_write_file(const std::string& path, const std::function<void(AtomicFile&)>& writer) {
  AtomicFile out(path);
  writer(out);
  out.commit();
}

void atomic_write_file(const std::string& path, std::string_view bytes) {
  atomic_write_file(path, [&](AtomicFile& out) { out.write(bytes); });
}

void atomic_copy_file(const std::string& src, const std::string& dst) {
  const int in = ::open(src.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) ST_THROW_INPUT(src, ": cannot open for copying to ", dst, ": ", std::strerror(errno));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{in};
  struct stat sb;
  if (::fstat(in, &sb) != 0) ST_THROW_INPUT(src, ": cannot stat: ", std::strerror(errno));
  if (!S_ISREG(sb.st_mode)) ST_THROW_INPUT(src, ": not a regular file (cannot copy it to ", dst, ")");
  atomic_write_file(dst, [&](AtomicFile& out) {
    std::vector<char> buf(1 << 20);
    for (;;) {
      const ssize_t r = ::read(in, buf.data(), buf.size());
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) ST_THROW_INPUT(src, ": read failed while copying to ", dst, ": ", std::strerror(errno));
      if (r == 0) break;
      out.write(buf.data(), static_cast<size_t>(r));
    }
  });
}

}  // namespace st
