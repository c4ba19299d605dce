#include "train/run_dir.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <mutex>
#include <vector>

#include "core/atomic_file.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "io/h5util.hpp"
#include "parallel/comm.hpp"
#include "train/checkpoint.hpp"

namespace fs = std::filesystem;

namespace st {

namespace {

// Lock files this process holds: never closed, so the locks last until the process ends.
std::vector<int>& held_locks() {
  static std::vector<int> fds;
  return fds;
}

// A directory path that must be a directory (or not exist yet), never a regular file.
void refuse_file(const std::string& path, const std::string& source, const std::string& key) {
  std::error_code ec;
  if (fs::exists(path, ec) && !fs::is_directory(path, ec))
    ST_THROW_INPUT(source, ": ", key, " = ", path, " is a file, not a directory");
}

std::string origin_of(const RunConfig& c, const std::string& key) {
  const auto it = c.origin.find(key);
  return it == c.origin.end() ? std::string("options") : it->second;
}

void make_dir(const std::string& dir, const std::string& what) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec || !fs::is_directory(dir, ec))
    ST_THROW_INPUT(dir, ": cannot create the ", what, (ec ? ": " + ec.message() : std::string()));
}

// "outcome ok, 512 steps" of an earlier metrics.h5 ("" when it cannot be read).
struct EarlierRun {
  bool readable = false;
  std::string outcome;
  int64_t steps = -1;
};

EarlierRun read_earlier_run(const std::string& path) {
  EarlierRun r;
  try {
    h5::quiet_errors();
    h5::Handle fapl(H5Pcreate(H5P_FILE_ACCESS), h5::Handle::Kind::plist);
#if H5_VERSION_GE(1, 10, 7)
    H5Pset_file_locking(fapl, false, true);  // as the writer (metrics.cpp): no lock mismatch later
#endif
    const hid_t id = H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl);
    if (id < 0) return r;
    h5::Handle f(id, h5::Handle::Kind::file);
    if (h5::exists(f, "summary")) {
      h5::Handle s = h5::open_group(f, "summary");
      if (h5::has_attr(s, "outcome")) r.outcome = h5::read_attr_string(s, "outcome", path);
    }
    if (h5::exists(f, "steps")) {
      h5::Handle g = h5::open_group(f, "steps");
      if (h5::exists(g, "step")) r.steps = static_cast<int64_t>(h5::dataset_dims(g, "step", path).at(0));
    }
    r.readable = true;
  } catch (const std::exception&) {
  }
  return r;
}

std::string describe_run(const EarlierRun& r) {
  if (!r.readable) return "unreadable";
  return str("outcome ", r.outcome.empty() ? std::string("?") : r.outcome, r.steps >= 0 ? str(", ", r.steps, " steps logged") : std::string());
}

}  // namespace

void lock_directory(const std::string& dir, const std::string& what) {
  const std::string path = (fs::path(dir) / ".lock").string();
  const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) ST_THROW_INPUT(path, ": cannot open the ", what, " lock: ", std::strerror(errno));
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  int rc = -1;
#ifdef F_OFD_SETLK
  rc = ::fcntl(fd, F_OFD_SETLK, &fl);
  if (rc != 0 && errno == EINVAL) rc = ::fcntl(fd, F_SETLK, &fl);  // kernel without OFD locks
#else
  rc = ::fcntl(fd, F_SETLK, &fl);
#endif
  if (rc != 0) {
    const int err = errno;
    if (err == EAGAIN || err == EACCES) {
      char buf[256] = {0};
      const ssize_t n = ::pread(fd, buf, sizeof(buf) - 1, 0);
      ::close(fd);
      std::string holder = n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string("unknown");
      while (!holder.empty() && (holder.back() == '\n' || holder.back() == ' ')) holder.pop_back();
      ST_THROW_INPUT(dir, ": the ", what, " is in use by another run (", holder,
                     "): two runs must not share it; wait for that one to end, or choose another run_id or output_dir");
    }
    ::close(fd);
    // A file system without locks (some network mounts): the run goes on unprotected.
    ST_WARN(path, ": cannot lock the ", what, " (", std::strerror(err), "): a second run sharing it would not be noticed");
    return;
  }
  char host[256] = {0};
  if (::gethostname(host, sizeof(host) - 1) != 0) std::strcpy(host, "unknown-host");
  char when[64] = {0};
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  ::localtime_r(&now, &tm);
  std::strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &tm);
  const std::string who = str("host ", host, ", pid ", ::getpid(), ", since ", when, "\n");
  if (::ftruncate(fd, 0) == 0) (void)::pwrite(fd, who.data(), who.size(), 0);
  static std::mutex m;
  std::lock_guard<std::mutex> lock(m);
  held_locks().push_back(fd);
}

std::string claim_run_directory(const RunConfig& c, bool training, Comm& world) {
  refuse_file(c.output_dir, origin_of(c, "output_dir"), "output_dir");
  const std::string run_dir = (fs::path(c.output_dir) / c.run_id).string();
  if (fs::exists(run_dir) && !fs::is_directory(run_dir))
    ST_THROW_INPUT(origin_of(c, "run_id"), ": run_id = ", c.run_id, ": ", run_dir, " is a file, not a run directory");
  if (training) {
    // Refused now, not at the first checkpoint an hour in.
    refuse_file(checkpoint_root(c), origin_of(c, "checkpoint_dir"), "checkpoint_dir");
  }
  if (world.rank() == 0) make_dir(run_dir, "run directory");
  if (training) {
    if (world.rank() == 0) {
      lock_directory(run_dir, "run directory");
      if (!c.checkpoint_dir.empty()) {
        std::error_code ec;
        const fs::path root = fs::weakly_canonical(c.checkpoint_dir, ec), run = fs::weakly_canonical(run_dir, ec);
        const std::string rel = root.lexically_relative(run).string();
        if (rel.empty() || rel.rfind("..", 0) == 0) {  // outside the run directory: its own claim
          make_dir(c.checkpoint_dir, "checkpoint directory");
          lock_directory(c.checkpoint_dir, "checkpoint directory");
        }
      }
    }
    return run_dir;
  }
  // eval: a directory of its own, created with mkdir (which fails if it exists: never shared).
  double n = 0;
  if (world.rank() == 0) {
    for (int i = 1; i < 1000000; ++i) {
      const std::string d = (fs::path(run_dir) / str("eval-", i)).string();
      if (::mkdir(d.c_str(), 0755) == 0) {
        n = i;
        break;
      }
      if (errno != EEXIST) ST_THROW_INPUT(d, ": cannot create the eval directory: ", std::strerror(errno));
    }
    if (n == 0) ST_THROW_INPUT(run_dir, ": no free eval-<n> directory");
  }
  if (world.size() > 1) n = world.all_reduce_max(n);
  return (fs::path(run_dir) / str("eval-", static_cast<int64_t>(n))).string();
}

void check_run_replacement(const RunConfig& c, const std::string& run_dir, const std::string& resume_dir) {
  const std::string metrics = (fs::path(run_dir) / "metrics.h5").string();
  std::error_code ec;
  const bool have_metrics = fs::exists(metrics, ec);
  // Complete checkpoints a fresh start would delete.
  int64_t checkpoints = 0;
  for (const auto& e : fs::directory_iterator(checkpoint_root(c), ec))
    if (checkpoint_dir_step(e.path().filename().string()) >= 0 && checkpoint_complete(e.path().string())) ++checkpoints;
  if (resume_dir.empty() && (have_metrics || checkpoints > 0)) {
    const EarlierRun before = have_metrics ? read_earlier_run(metrics) : EarlierRun{};
    const std::string what =
        have_metrics ? str(metrics, " exists (", describe_run(before), ")")
                     : str(checkpoint_root(c), " holds ", checkpoints, " complete checkpoint", checkpoints == 1 ? "" : "s");
    if (c.overwrite) {
      ST_WARN("overwrite = true: replacing the earlier run ", c.run_id, ": ", what);
    } else if (c.resume == "auto" && have_metrics && checkpoints == 0 && before.readable && before.outcome != "ok") {
      // A requeued job that died before its first checkpoint: it starts again.
      ST_WARN("resume = auto found no checkpoint: starting run ", c.run_id, " again over its unfinished attempt (", what, ")");
    } else if (have_metrics && checkpoints == 0 && before.readable && before.outcome != "ok" && before.steps == 0) {
      // An attempt refused or failed during set-up, before its first step: nothing to keep.
      ST_WARN("replacing run ", c.run_id, ", which ended before its first step (", what, ")");
    } else {
      ST_THROW_INPUT(origin_of(c, "run_id"), ": run_id = ", c.run_id, ": ", what,
                     ": a finished run is not replaced; choose another run_id, set overwrite = true to replace it",
                     c.resume == "none" ? ", or resume = auto to continue it from its checkpoints" : "");
    }
  }
  // The other ranks' outcomes of the run being replaced or continued belong to it.
  for (const auto& e : fs::directory_iterator(run_dir, ec))
    if (e.path().filename().string().rfind("outcome-rank", 0) == 0) fs::remove(e.path(), ec);
}

}  // namespace st
