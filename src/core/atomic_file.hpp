// Durable output files: every model, checkpoint and export file is written to "<path>.tmp",
// fsynced, and renamed over `path` (then the directory is fsynced), so a reader, or a rerun after
// a kill, sees either no file / the old file or the complete new one, never a partial file with
// the final name. Every failure (cannot create, ENOSPC, EACCES, EFBIG, short write, failed fsync,
// close or rename) throws st::Error naming the final path, the temporary path and strerror, and
// removes the temporary file; the final path is left as it was.
#pragma once

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

namespace st {

class AtomicFile {
 public:
  explicit AtomicFile(const std::string& path);  // throws Error if the temp file cannot be created
  ~AtomicFile();                                  // without commit(): removes the temp file
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t bytes);
  void write(std::string_view bytes) { write(bytes.data(), bytes.size()); }
  void commit();  // fsync, close, rename over `path`, fsync the directory (a device or FIFO: close)

  const std::string& path() const { return path_; }
  const std::string& tmp_path() const { return tmp_path_; }

 private:
  [[noreturn]] void fail(const char* what, int err);

  std::string path_;
  std::string tmp_path_;
  int fd_ = -1;
  bool committed_ = false;
  bool in_place_ = false;  // `path` is a device, FIFO or socket: written directly, never renamed over
};

// Writes `path` atomically: `writer` fills the AtomicFile, then it is committed. If `writer`
// throws, the temp file is removed and the exception propagates.
void atomic_write_file(const std::string& path, const std::function<void(AtomicFile&)>& writer);
// Writes `bytes` to `path` atomically.
void atomic_write_file(const std::string& path, std::string_view bytes);
// Copies the regular file `src` to `dst` atomically. InputError naming `src` if it cannot be
// read; Error naming `dst` if it cannot be written.
void atomic_copy_file(const std::string& src, const std::string& dst);

// For a file another library wrote under a temporary name (HDF5 shards): fsync `tmp`, rename it
// over `path`, fsync the directory. Error naming both paths and strerror on failure (`tmp` is
// left for the caller to remove).
void durable_rename(const std::string& tmp, const std::string& path);

// fsync a file another library wrote (throws Error naming it and strerror), and a directory
// (best effort: some file systems refuse it, which is harmless).
void durable_sync(const std::string& path);
void durable_sync_dir(const std::string& dir);

// Writes the directory `dir` as a whole (a saved model, an adapter, an export): `writer` fills a
// new sibling directory "<dir>.tmp-<pid>", which then takes the place of `dir` (one atomic
// exchange of the two where the file system supports it, else two renames), and the old
// contents are removed. If `writer` throws, the staging directory is removed and `dir` is left
// as it was: a failed save (disk full) never leaves a half-written directory in its place.
// An existing `dir` holding anything `owned(name)` does not recognise (a file that is not one
// this save writes) is refused before anything is written (InputError naming it): pointing an
// output at the wrong directory must not delete it.
void replace_directory(const std::string& dir, const std::function<void(const std::string& staging)>& writer,
                       const std::function<bool(const std::string& name)>& owned);

// Writes all `bytes` to an open descriptor, retrying short writes and EINTR; throws Error
// "<what>: write failed after K of N bytes: <strerror>" (used by AtomicFile; exposed for tests
// that need a descriptor such as /dev/full).
void write_all_fd(int fd, const void* data, size_t bytes, const std::string& what);

}  // namespace st
