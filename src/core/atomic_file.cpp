#include "core/atomic_file.hpp"

#include <fcntl.h>
#include <stdio.h>  // renameat2
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
  struct stat sb;
  if (::stat(path.c_str(), &sb) == 0 && !S_ISREG(sb.st_mode) && !S_ISDIR(sb.st_mode)) {
    // A device, FIFO or socket (e.g. /dev/null, /dev/stdout, a named pipe): written in place. A
    // rename over it would replace the node itself with a regular file (as root: /dev/null). A
    // directory takes the usual path: its rename fails and names it.
    in_place_ = true;
    tmp_path_ = path;
    fd_ = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd_ < 0) fail("cannot open", errno);
    return;
  }
  fd_ = ::open(tmp_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) fail("cannot create the temporary file", errno);
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_ && !in_place_) ::unlink(tmp_path_.c_str());
}

void AtomicFile::fail(const char* what, int err) {
  if (fd_ >= 0) ::close(std::exchange(fd_, -1));
  if (!in_place_) ::unlink(tmp_path_.c_str());  // no-op if it was never created
  ST_THROW("cannot write ", path_, ": ", what, " ", tmp_path_, ": ", std::strerror(err));
}

void AtomicFile::write(const void* data, size_t bytes) {
  ST_CHECK(fd_ >= 0, "write to ", tmp_path_, " after commit or failure");
  try {
    write_all_fd(fd_, data, bytes, str("cannot write ", path_, " (temporary file ", tmp_path_, ")"));
  } catch (...) {
    ::close(std::exchange(fd_, -1));
    if (!in_place_) ::unlink(tmp_path_.c_str());
    throw;
  }
}

void AtomicFile::commit() {
  ST_CHECK(fd_ >= 0, "commit of ", tmp_path_, " twice or after a failure");
  if (in_place_) {  // nothing to rename; fsync does not apply to devices and pipes
    if (::close(std::exchange(fd_, -1)) != 0) fail("close failed on", errno);
    committed_ = true;
    return;
  }
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

void durable_sync(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) ST_THROW("cannot write ", path, ": cannot open it to sync: ", std::strerror(errno));
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) ST_THROW("cannot write ", path, ": fsync failed: ", std::strerror(err));
}

void durable_sync_dir(const std::string& dir) {
  const int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

void replace_directory(const std::string& dir_in, const std::function<void(const std::string& staging)>& writer,
                       const std::function<bool(const std::string& name)>& owned) {
  namespace fs = std::filesystem;
  std::string dir = fs::path(dir_in).lexically_normal().string();
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  ST_CHECK(!dir.empty() && dir != "." && dir != "/", "replace_directory: bad directory '", dir_in, "'");
  std::error_code ec;
  const bool exists = fs::exists(dir, ec);
  if (exists) {
    if (!fs::is_directory(dir, ec)) ST_THROW_INPUT(dir, ": exists and is not a directory (refusing to replace it)");
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      const std::string name = e.path().filename().string();
      if (!owned(name))
        ST_THROW_INPUT(dir, ": holds '", name, "', which this save does not write: refusing to replace the directory "
                       "(choose an empty or new directory)");
    }
  }
  const fs::path parent = fs::path(dir).parent_path();
  if (!parent.empty()) {
    fs::create_directories(parent, ec);
    if (ec) ST_THROW_INPUT(parent.string(), ": cannot create directory: ", ec.message());
  }
  const std::string staging = dir + ".tmp-" + std::to_string(::getpid());
  fs::remove_all(staging, ec);
  if (::mkdir(staging.c_str(), 0755) != 0)
    ST_THROW("cannot write ", dir, ": cannot create ", staging, ": ", std::strerror(errno));
  try {
    writer(staging);
    durable_sync_dir(staging);
  } catch (...) {
    fs::remove_all(staging, ec);
    throw;
  }
  auto fail = [&](const char* what, int err) {
    fs::remove_all(staging, ec);
    ST_THROW("cannot write ", dir, ": ", what, ": ", std::strerror(err), " (", dir, " is unchanged)");
  };
  if (!exists) {
    if (::rename(staging.c_str(), dir.c_str()) != 0) fail("rename of the new directory failed", errno);
  } else if (::renameat2(AT_FDCWD, staging.c_str(), AT_FDCWD, dir.c_str(), RENAME_EXCHANGE) != 0) {
    // No atomic exchange here (an older kernel or a network file system): two renames.
    if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP) fail("exchange with the new directory failed", errno);
    const std::string old = dir + ".old-" + std::to_string(::getpid());
    fs::remove_all(old, ec);
    if (::rename(dir.c_str(), old.c_str()) != 0) fail("moving the old directory aside failed", errno);
    if (::rename(staging.c_str(), dir.c_str()) != 0) {
      const int err = errno;
      (void)::rename(old.c_str(), dir.c_str());
      fail("rename of the new directory failed", err);
    }
    fs::rename(old, staging, ec);  // removed below with the staging name
  }
  durable_sync_dir(parent.string());
  fs::remove_all(staging, ec);  // after an exchange: the old contents
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
