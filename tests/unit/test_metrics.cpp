// MetricsWriter: the metrics.h5 layout of io/metrics.hpp, read back with the HDF5 C API, and
// the log property (a flushed file is readable while, or after, its writer dies unclosed).
//
// Set SHARDTUNE_METRICS_KEEP=<path> to have MetricsWriter.WritesEveryTable leave its file at
// <path> (e.g. to check it with analysis/st_read.py).
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <limits>

#include "core/error.hpp"
#include "io/h5util.hpp"
#include "io/metrics.hpp"
#include "tests/common/paths.hpp"

namespace fs = std::filesystem;

namespace st {
namespace {

// "i32", "i64", "f64", "str" or "?" for a dataset's stored type.
std::string column_type(hid_t group, const std::string& name) {
  h5::Handle ds(H5Dopen2(group, name.c_str(), H5P_DEFAULT), h5::Handle::Kind::dataset);
  if (!ds.valid()) return "missing";
  h5::Handle type(H5Dget_type(ds), h5::Handle::Kind::datatype);
  const H5T_class_t cls = H5Tget_class(type);
  const size_t size = H5Tget_size(type);
  if (cls == H5T_INTEGER && H5Tget_sign(type) == H5T_SGN_2) return size == 4 ? "i32" : size == 8 ? "i64" : "?";
  if (cls == H5T_FLOAT && size == 8) return "f64";
  if (cls == H5T_STRING && H5Tis_variable_str(type) > 0) return "str";
  return "?";
}

template <typename T>
std::vector<T> read_column(hid_t group, const std::string& name, hid_t native_type) {
  const std::vector<hsize_t> dims = h5::dataset_dims(group, name, "test");
  EXPECT_EQ(dims.size(), 1u) << name;
  std::vector<T> out(dims.empty() ? 0 : dims[0]);
  if (!out.empty()) h5::read_dataset(group, name, native_type, out.data(), "test");
  return out;
}
std::vector<int64_t> read_i64(hid_t g, const std::string& n) { return read_column<int64_t>(g, n, H5T_NATIVE_INT64); }
std::vector<int32_t> read_i32(hid_t g, const std::string& n) { return read_column<int32_t>(g, n, H5T_NATIVE_INT32); }
std::vector<double> read_f64(hid_t g, const std::string& n) { return read_column<double>(g, n, H5T_NATIVE_DOUBLE); }

std::vector<std::string> read_strings(hid_t group, const std::string& name) {
  h5::Handle ds(H5Dopen2(group, name.c_str(), H5P_DEFAULT), h5::Handle::Kind::dataset);
  EXPECT_TRUE(ds.valid()) << name;
  if (!ds.valid()) return {};
  h5::Handle space(H5Dget_space(ds), h5::Handle::Kind::dataspace);
  const hssize_t n = H5Sget_simple_extent_npoints(space);
  std::vector<char*> raw(static_cast<size_t>(n), nullptr);
  h5::Handle file_type(H5Dget_type(ds), h5::Handle::Kind::datatype);
  h5::Handle mem(H5Tcopy(H5T_C_S1), h5::Handle::Kind::datatype);
  H5Tset_size(mem, H5T_VARIABLE);
  H5Tset_cset(mem, H5Tget_cset(file_type));  // HDF5 does not convert ASCII <-> UTF-8
  std::vector<std::string> out;
  if (n > 0 && H5Dread(ds, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, raw.data()) >= 0) {
    for (char* s : raw) out.emplace_back(s ? s : "");
    H5Dvlen_reclaim(mem, space, H5P_DEFAULT, raw.data());
  }
  return out;
}

// Number of attributes on an object.
int attr_count(hid_t obj) {
  H5O_info_t info;
  if (H5Oget_info2(obj, &info, H5O_INFO_NUM_ATTRS) < 0) return -1;
  return static_cast<int>(info.num_attrs);
}

const std::map<std::string, std::string> kConfig = {
    {"run_id", "tiny-llama-tp-np2"}, {"deck", "inputs/exp1/tiny.cfg"},
    {"command_line", "shardtune train inputs/exp1/tiny.cfg --train.lr=3e-4"},
    {"train.lr", "3e-4"}, {"parallel.tp", "2"}, {"note", ""}, {"model.name", "tiny llama (été)"}};

StepRecord make_step(int64_t i) {
  StepRecord r;
  r.step = i + 1;
  r.epoch = static_cast<int32_t>(i / 2);
  r.loss = 3.0 - 0.25 * static_cast<double>(i);
  r.lr = 1e-4 * static_cast<double>(i + 1);
  r.grad_norm = 0.5 + static_cast<double>(i);
  r.tokens = 1000 + i;
  r.computed_tokens = 1600 + 3 * i;
  r.step_time = 0.125 * static_cast<double>(i + 1);
  r.tokens_per_s = 8000.0 / static_cast<double>(i + 1);
  r.mfu = i == 0 ? std::numeric_limits<double>::quiet_NaN() : 0.3;
  r.mem_current = (int64_t{1} << 30) + i;
  r.mem_peak = (int64_t{3} << 30) + i;
  return r;
}

EvalRecord make_eval(int64_t i) {
  EvalRecord r;
  r.step = 2 * i;
  r.epoch = 0.5 * static_cast<double>(i);
  r.val_loss = 2.5 - 0.5 * static_cast<double>(i);
  r.val_accuracy = 0.5 + 0.125 * static_cast<double>(i);
  r.val_tokens = 4096 + i;
  r.eval_time = 1.5 + static_cast<double>(i);
  return r;
}

EpochRecord make_epoch(int32_t i) {
  EpochRecord r;
  r.epoch = i;
  r.epoch_time = 10.0 + i;
  r.train_loss = 2.75 - 0.5 * i;
  r.val_loss = 2.0 - 0.5 * i;
  r.val_accuracy = 0.625 + 0.125 * i;
  r.steps = 2;
  return r;
}

std::vector<RankRecord> make_ranks(int n) {
  std::vector<RankRecord> ranks;
  for (int i = 0; i < n; ++i) {
    RankRecord r;
    r.rank = i;
    r.host = "node" + std::to_string(i / 2);
    r.peak_memory = (int64_t{2} << 30) + i;
    r.peak_by_category = {{"weights", 1000 + i}, {"gradients", 2000 + i}, {"optimizer", 3000 + i},
                          {"activations", 4000 + i}};  // no "workspace": must read as 0
    if (i == 1) r.peak_by_category["other"] = 77;
    r.comm_time = 0.25 * (i + 1);
    ranks.push_back(r);
  }
  return ranks;
}

// Write config + 3 steps + 2 evals + 1 epoch and flush, as a run that is still going.
void write_partial_run(MetricsWriter& w) {
  for (int i = 0; i < 3; ++i) w.append_step(make_step(i));
  for (int i = 0; i < 2; ++i) w.append_eval(make_eval(i));
  w.append_epoch(make_epoch(0));
  w.flush();
}

// Checks what write_partial_run wrote, from a fresh read-only handle (locking left on: the
// writer must not hold a lock that keeps readers out).
void expect_partial_run_readable(const std::string& path, int expected_steps) {
  h5::Handle f = h5::open_file_read(path);
  h5::Handle summary = h5::open_group(f, "summary");
  EXPECT_EQ(h5::read_attr_string(summary, "outcome", path), "running");
  h5::Handle cfg = h5::open_group(f, "config");
  EXPECT_EQ(h5::read_attr_string(cfg, "run_id", path), "tiny-llama-tp-np2");
  h5::Handle steps = h5::open_group(f, "steps");
  for (const char* c : {"step", "epoch", "loss", "lr", "grad_norm", "tokens", "step_time", "tokens_per_s",
                        "mfu", "mem_current", "mem_peak"})
    EXPECT_EQ(h5::dataset_dims(steps, c, path), std::vector<hsize_t>{hsize_t(expected_steps)}) << c;
  const std::vector<double> loss = read_f64(steps, "loss");
  for (int i = 0; i < expected_steps && i < int(loss.size()); ++i) EXPECT_EQ(loss[i], make_step(i).loss);
  h5::Handle evals = h5::open_group(f, "evals");
  EXPECT_EQ(read_f64(evals, "val_loss"), (std::vector<double>{2.5, 2.0}));
  h5::Handle epochs = h5::open_group(f, "epochs");
  EXPECT_EQ(read_i32(epochs, "epoch"), std::vector<int32_t>{0});
  EXPECT_FALSE(h5::exists(f, "ranks"));
}

class MetricsWriterTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::make_temp_dir("metrics"); }
  void TearDown() override { fs::remove_all(dir_); }
  std::string dir_;
};

TEST_F(MetricsWriterTest, WritesEveryTableAndAttribute) {
  const char* keep = std::getenv("SHARDTUNE_METRICS_KEEP");
  const std::string path = keep ? std::string(keep) : dir_ + "/runs/tiny-llama-tp-np2/metrics.h5";
  if (keep) fs::remove(path);
  {
    MetricsWriter w(path, kConfig);  // creates runs/<id>/ too
    EXPECT_EQ(w.path(), path);
    for (int i = 0; i < 4; ++i) w.append_step(make_step(i));
    for (int i = 0; i < 3; ++i) w.append_eval(make_eval(i));
    for (int i = 0; i < 2; ++i) w.append_epoch(make_epoch(i));
    w.write_ranks(make_ranks(2));
    SummaryRecord s1;
    s1.strings = {{"outcome", "ok"}, {"strategy", "tp"}, {"method", "full"}, {"run_id", "tiny-llama-tp-np2"}};
    s1.ints = {{"world_size", 2}, {"tp", 2}, {"dp", 1}, {"peak_memory", int64_t{3} << 30}};
    s1.reals = {{"total_time", 25.5}, {"mean_epoch_time", 10.5}};
    w.write_summary(s1);
    SummaryRecord s2;  // merges: overwrites total_time, adds final_val_loss, keeps the rest
    s2.reals = {{"total_time", 26.0}, {"final_val_loss", 1.5}};
    s2.ints = {{"epochs_completed", 2}};
    w.write_summary(s2);
  }

  h5::Handle f = h5::open_file_read(path);
  for (const char* g : {"config", "steps", "evals", "epochs", "ranks", "summary"}) EXPECT_TRUE(h5::exists(f, g)) << g;

  h5::Handle cfg = h5::open_group(f, "config");
  EXPECT_EQ(attr_count(cfg), int(kConfig.size()));
  for (const auto& [key, value] : kConfig) EXPECT_EQ(h5::read_attr_string(cfg, key, path), value) << key;

  h5::Handle steps = h5::open_group(f, "steps");
  const std::map<std::string, std::string> step_types = {
      {"step", "i64"}, {"epoch", "i32"}, {"loss", "f64"}, {"lr", "f64"}, {"grad_norm", "f64"},
      {"tokens", "i64"}, {"computed_tokens", "i64"}, {"step_time", "f64"}, {"tokens_per_s", "f64"}, {"mfu", "f64"},
      {"mem_current", "i64"}, {"mem_peak", "i64"}};
  H5G_info_t ginfo;
  H5Gget_info(steps, &ginfo);
  EXPECT_EQ(ginfo.nlinks, step_types.size());
  for (const auto& [name, type] : step_types) {
    EXPECT_EQ(column_type(steps, name), type) << name;
    EXPECT_EQ(h5::dataset_dims(steps, name, path), std::vector<hsize_t>{4}) << name;
  }
  const std::vector<int64_t> step = read_i64(steps, "step"), tokens = read_i64(steps, "tokens"),
                             computed = read_i64(steps, "computed_tokens"), mem_current = read_i64(steps, "mem_current"), mem_peak = read_i64(steps, "mem_peak");
  const std::vector<int32_t> epoch = read_i32(steps, "epoch");
  const std::vector<double> loss = read_f64(steps, "loss"), lr = read_f64(steps, "lr"),
                            grad_norm = read_f64(steps, "grad_norm"), step_time = read_f64(steps, "step_time"),
                            tps = read_f64(steps, "tokens_per_s"), mfu = read_f64(steps, "mfu");
  for (int i = 0; i < 4; ++i) {
    const StepRecord r = make_step(i);  // values are exact in binary: compare exactly
    EXPECT_EQ(step[i], r.step);
    EXPECT_EQ(epoch[i], r.epoch);
    EXPECT_EQ(loss[i], r.loss);
    EXPECT_EQ(lr[i], r.lr);
    EXPECT_EQ(grad_norm[i], r.grad_norm);
    EXPECT_EQ(tokens[i], r.tokens);
    EXPECT_EQ(computed[i], r.computed_tokens);
    EXPECT_EQ(step_time[i], r.step_time);
    EXPECT_EQ(tps[i], r.tokens_per_s);
    if (i == 0) EXPECT_TRUE(std::isnan(mfu[i]));
    else EXPECT_EQ(mfu[i], r.mfu);
    EXPECT_EQ(mem_current[i], r.mem_current);
    EXPECT_EQ(mem_peak[i], r.mem_peak);
  }

  h5::Handle evals = h5::open_group(f, "evals");
  H5Gget_info(evals, &ginfo);
  EXPECT_EQ(ginfo.nlinks, 6u);
  const std::map<std::string, std::string> eval_types = {{"step", "i64"}, {"epoch", "f64"}, {"val_loss", "f64"},
                                                         {"val_accuracy", "f64"}, {"val_tokens", "i64"},
                                                         {"eval_time", "f64"}};
  for (const auto& [name, type] : eval_types) EXPECT_EQ(column_type(evals, name), type) << name;
  EXPECT_EQ(read_i64(evals, "step"), (std::vector<int64_t>{0, 2, 4}));
  EXPECT_EQ(read_f64(evals, "epoch"), (std::vector<double>{0.0, 0.5, 1.0}));
  EXPECT_EQ(read_f64(evals, "val_loss"), (std::vector<double>{2.5, 2.0, 1.5}));
  EXPECT_EQ(read_f64(evals, "val_accuracy"), (std::vector<double>{0.5, 0.625, 0.75}));
  EXPECT_EQ(read_i64(evals, "val_tokens"), (std::vector<int64_t>{4096, 4097, 4098}));
  EXPECT_EQ(read_f64(evals, "eval_time"), (std::vector<double>{1.5, 2.5, 3.5}));

  h5::Handle epochs = h5::open_group(f, "epochs");
  H5Gget_info(epochs, &ginfo);
  EXPECT_EQ(ginfo.nlinks, 6u);
  const std::map<std::string, std::string> epoch_types = {{"epoch", "i32"}, {"epoch_time", "f64"},
                                                          {"train_loss", "f64"}, {"val_loss", "f64"},
                                                          {"val_accuracy", "f64"}, {"steps", "i64"}};
  for (const auto& [name, type] : epoch_types) EXPECT_EQ(column_type(epochs, name), type) << name;
  EXPECT_EQ(read_i32(epochs, "epoch"), (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(read_f64(epochs, "epoch_time"), (std::vector<double>{10.0, 11.0}));
  EXPECT_EQ(read_f64(epochs, "train_loss"), (std::vector<double>{2.75, 2.25}));
  EXPECT_EQ(read_f64(epochs, "val_loss"), (std::vector<double>{2.0, 1.5}));
  EXPECT_EQ(read_f64(epochs, "val_accuracy"), (std::vector<double>{0.625, 0.75}));
  EXPECT_EQ(read_i64(epochs, "steps"), (std::vector<int64_t>{2, 2}));

  h5::Handle ranks = h5::open_group(f, "ranks");
  EXPECT_EQ(column_type(ranks, "rank"), "i32");
  EXPECT_EQ(column_type(ranks, "host"), "str");
  EXPECT_EQ(column_type(ranks, "comm_time"), "f64");
  EXPECT_EQ(read_i32(ranks, "rank"), (std::vector<int32_t>{0, 1}));
  EXPECT_EQ(read_strings(ranks, "host"), (std::vector<std::string>{"node0", "node0"}));
  EXPECT_EQ(read_i64(ranks, "peak_memory"), (std::vector<int64_t>{int64_t{2} << 30, (int64_t{2} << 30) + 1}));
  EXPECT_EQ(read_i64(ranks, "peak_weights"), (std::vector<int64_t>{1000, 1001}));
  EXPECT_EQ(read_i64(ranks, "peak_gradients"), (std::vector<int64_t>{2000, 2001}));
  EXPECT_EQ(read_i64(ranks, "peak_optimizer"), (std::vector<int64_t>{3000, 3001}));
  EXPECT_EQ(read_i64(ranks, "peak_activations"), (std::vector<int64_t>{4000, 4001}));
  EXPECT_EQ(read_i64(ranks, "peak_workspace"), (std::vector<int64_t>{0, 0}));
  EXPECT_EQ(read_i64(ranks, "peak_other"), (std::vector<int64_t>{0, 77}));
  EXPECT_EQ(read_f64(ranks, "comm_time"), (std::vector<double>{0.25, 0.5}));
  for (const char* c : {"peak_memory", "peak_weights", "peak_workspace", "peak_other"})
    EXPECT_EQ(column_type(ranks, c), "i64") << c;

  h5::Handle summary = h5::open_group(f, "summary");
  EXPECT_EQ(attr_count(summary), 12);  // outcome + 3 strings + 4 ints + 2 reals + 2 added
  EXPECT_EQ(h5::read_attr_string(summary, "outcome", path), "ok");
  EXPECT_EQ(h5::read_attr_string(summary, "strategy", path), "tp");
  EXPECT_EQ(h5::read_attr_string(summary, "method", path), "full");
  EXPECT_EQ(h5::read_attr_string(summary, "run_id", path), "tiny-llama-tp-np2");
  EXPECT_EQ(h5::read_attr_int(summary, "world_size", path), 2);
  EXPECT_EQ(h5::read_attr_int(summary, "tp", path), 2);
  EXPECT_EQ(h5::read_attr_int(summary, "dp", path), 1);
  EXPECT_EQ(h5::read_attr_int(summary, "peak_memory", path), int64_t{3} << 30);
  EXPECT_EQ(h5::read_attr_int(summary, "epochs_completed", path), 2);
  EXPECT_EQ(h5::read_attr_double(summary, "total_time", path), 26.0);
  EXPECT_EQ(h5::read_attr_double(summary, "mean_epoch_time", path), 10.5);
  EXPECT_EQ(h5::read_attr_double(summary, "final_val_loss", path), 1.5);
}

TEST_F(MetricsWriterTest, FreshFileHasEmptyTablesAndOutcomeRunning) {
  const std::string path = dir_ + "/metrics.h5";
  { MetricsWriter w(path, {}); }
  h5::Handle f = h5::open_file_read(path);
  h5::Handle summary = h5::open_group(f, "summary");
  EXPECT_EQ(h5::read_attr_string(summary, "outcome", path), "running");
  EXPECT_EQ(attr_count(h5::open_group(f, "config")), 0);
  for (const char* g : {"steps", "evals", "epochs"}) {
    h5::Handle group = h5::open_group(f, g);
    H5G_info_t info;
    H5Gget_info(group, &info);
    EXPECT_EQ(info.nlinks, std::string(g) == "steps" ? 12u : 6u) << g;
    EXPECT_EQ(h5::dataset_dims(group, "epoch", path), std::vector<hsize_t>{0}) << g;
  }
  EXPECT_FALSE(h5::exists(f, "ranks"));
}

TEST_F(MetricsWriterTest, WriteRanksAgainReplacesTheTable) {
  const std::string path = dir_ + "/metrics.h5";
  {
    MetricsWriter w(path, kConfig);
    w.write_ranks(make_ranks(2));
    w.write_ranks(make_ranks(4));
  }
  h5::Handle f = h5::open_file_read(path);
  h5::Handle ranks = h5::open_group(f, "ranks");
  EXPECT_EQ(read_i32(ranks, "rank"), (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(read_strings(ranks, "host"), (std::vector<std::string>{"node0", "node0", "node1", "node1"}));
  EXPECT_EQ(read_i64(ranks, "peak_weights"), (std::vector<int64_t>{1000, 1001, 1002, 1003}));
  EXPECT_EQ(read_i64(ranks, "peak_other"), (std::vector<int64_t>{0, 77, 0, 0}));
  EXPECT_EQ(read_f64(ranks, "comm_time"), (std::vector<double>{0.25, 0.5, 0.75, 1.0}));
}

// A run killed after a flush: the child writes, flushes and _exits without closing the file.
TEST_F(MetricsWriterTest, FlushedButNeverClosedFileIsReadable) {
  const std::string path = dir_ + "/killed/metrics.h5";
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    try {
      auto* w = new MetricsWriter(path, kConfig);  // never deleted: no close
      write_partial_run(*w);
      _exit(0);
    } catch (...) {
      _exit(1);
    }
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child writer failed";
  expect_partial_run_readable(path, 3);
}

// A live run: a second process reads the file while the writer holds it open, twice, and
// sees the rows appended in between.
TEST_F(MetricsWriterTest, ReadableByAnotherProcessWhileWriterIsOpen) {
  const std::string path = dir_ + "/live/metrics.h5";
  int to_parent[2], to_child[2];
  ASSERT_EQ(pipe(to_parent), 0);
  ASSERT_EQ(pipe(to_child), 0);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(to_parent[0]);
    close(to_child[1]);
    char c = 0;
    try {
      MetricsWriter w(path, kConfig);
      write_partial_run(w);
      if (write(to_parent[1], "1", 1) != 1 || read(to_child[0], &c, 1) != 1) _exit(2);
      w.append_step(make_step(3));
      if (write(to_parent[1], "2", 1) != 1 || read(to_child[0], &c, 1) != 1) _exit(2);
      _exit(0);  // still open
    } catch (...) {
      _exit(1);
    }
  }
  close(to_parent[1]);
  close(to_child[0]);
  char c = 0;
  ASSERT_EQ(read(to_parent[0], &c, 1), 1) << "child writer failed";
  expect_partial_run_readable(path, 3);
  ASSERT_EQ(write(to_child[1], "a", 1), 1);
  ASSERT_EQ(read(to_parent[0], &c, 1), 1) << "child writer failed";
  expect_partial_run_readable(path, 4);
  ASSERT_EQ(write(to_child[1], "b", 1), 1);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  close(to_parent[0]);
  close(to_child[1]);
}

TEST_F(MetricsWriterTest, UncreatableFileThrowsNamingThePath) {
  const std::string blocker = dir_ + "/not_a_dir";
  test::write_file(blocker, "x");
  const std::string path = blocker + "/run/metrics.h5";
  try {
    MetricsWriter w(path, kConfig);
    FAIL() << "expected st::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
}

// Disk full, simulated in a child by a file-size limit just above the freshly created file:
// the next append's flush must throw an st::Error naming the path (the child sends its message).
TEST_F(MetricsWriterTest, DiskFullThrowsNamingThePath) {
  const std::string path = dir_ + "/full/metrics.h5";
  int to_parent[2];
  ASSERT_EQ(pipe(to_parent), 0);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(to_parent[0]);
    signal(SIGXFSZ, SIG_IGN);  // writes past the limit fail with EFBIG instead of killing us
    std::string msg = "no error";
    try {
      MetricsWriter w(path, kConfig);
      const rlimit limit{static_cast<rlim_t>(fs::file_size(path)), RLIM_INFINITY};
      if (setrlimit(RLIMIT_FSIZE, &limit) != 0) _exit(3);
      for (int i = 0; i < 10000; ++i) w.append_step(make_step(i));
    } catch (const Error& e) {
      msg = std::string("st::Error: ") + e.what();
    } catch (const std::exception& e) {
      msg = std::string("other exception: ") + e.what();
    }
    const ssize_t n = write(to_parent[1], msg.data(), msg.size());
    _exit(n == ssize_t(msg.size()) ? 0 : 2);
  }
  close(to_parent[1]);
  std::string msg;
  char buf[512];
  for (ssize_t n; (n = read(to_parent[0], buf, sizeof(buf))) > 0;) msg.append(buf, size_t(n));
  close(to_parent[0]);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "child status " << status;
  EXPECT_EQ(msg.rfind("st::Error: ", 0), 0u) << msg;
  EXPECT_NE(msg.find(path), std::string::npos) << msg;
}

// Resume: the reopened file keeps the rows up to the checkpoint's step (and complete epochs),
// drops those of the run that got further, and continues; /summary starts afresh.
TEST(MetricsWriter, ReopenCutsBackToTheCheckpointAndContinues) {
  const std::string dir = test::make_temp_dir("metrics-reopen"), path = dir + "/metrics.h5";
  {
    MetricsWriter w(path, {{"lr", "0.1"}});
    for (int64_t s = 1; s <= 7; ++s) {
      StepRecord r;
      r.step = s;
      r.epoch = s <= 4 ? 1 : 2;
      r.loss = 10.0 - static_cast<double>(s);
      w.append_step(r);
      if (s % 3 == 0) w.append_eval({s, 0.0, 1.0 / static_cast<double>(s), 0.5, 10, 0.1});
      if (s == 4) w.append_epoch({1, 1.0, 7.5, 1.0, 0.5, 4});
    }
    SummaryRecord sr;
    sr.strings["outcome"] = "error";
    sr.strings["error"] = "killed";
    w.write_summary(sr);
  }
  {
    std::unique_ptr<MetricsWriter> w = MetricsWriter::reopen(path, {{"lr", "0.1"}, {"resume", "auto"}}, 5, 1);
    StepRecord r;
    r.step = 6;
    r.epoch = 2;
    r.loss = 4.0;
    w->append_step(r);
  }
  h5::Handle f = h5::open_file_read(path);
  h5::Handle steps = h5::open_group(f, "steps");
  EXPECT_EQ(read_i64(steps, "step"), (std::vector<int64_t>{1, 2, 3, 4, 5, 6}));
  EXPECT_EQ(read_f64(steps, "loss"), (std::vector<double>{9, 8, 7, 6, 5, 4}));
  EXPECT_EQ(read_i32(steps, "epoch").size(), 6u);
  h5::Handle evals = h5::open_group(f, "evals");
  EXPECT_EQ(read_i64(evals, "step"), (std::vector<int64_t>{3}));
  EXPECT_EQ(read_f64(evals, "val_loss").size(), 1u);
  h5::Handle epochs = h5::open_group(f, "epochs");
  EXPECT_EQ(read_i32(epochs, "epoch"), (std::vector<int32_t>{1}));
  h5::Handle summary = h5::open_group(f, "summary");
  EXPECT_EQ(h5::read_attr_string(summary, "outcome", path), "running");
  EXPECT_FALSE(h5::has_attr(summary, "error"));
  EXPECT_EQ(h5::read_attr_string(h5::open_group(f, "config"), "resume", path), "auto");
  fs::remove_all(dir);
}

}  // namespace
}  // namespace st

namespace st {
namespace {

// metrics.h5 explains itself: root attributes, typed /config, units and a description on every
// dataset (also on /ranks columns made per category), and string attributes of variable length
// (h5py reads them as str, not bytes).
TEST(MetricsSelfDescription, RootAttributesTypedConfigAndUnits) {
  const std::string dir = test::make_temp_dir("metrics-desc");
  const std::string path = dir + "/m.h5";
  {
    const std::map<std::string, std::string> cfg = {
        {"lr", "0.0003"}, {"seed", "1234"}, {"shuffle", "true"}, {"method", "lora"}, {"command_line", "shardtune train x"}};
    const ConfigKinds kinds = {{"lr", ResolvedOption::Kind::real},
                               {"seed", ResolvedOption::Kind::integer},
                               {"shuffle", ResolvedOption::Kind::boolean}};
    MetricsWriter w(path, cfg, kinds);
    w.append_step(make_step(0));
    w.write_ranks(make_ranks(2));
  }
  h5::Handle f = h5::open_file_read(path);
  EXPECT_EQ(h5::read_attr_int(f, "format_version", path), kMetricsFormatVersion);
  EXPECT_EQ(h5::read_attr_int(f, "segments", path), 1);
  EXPECT_EQ(h5::read_attr_string(f, "command_line", path), "shardtune train x");
  for (const char* a : {"shardtune_version", "shardtune_commit", "shardtune_build", "start_time", "host"})
    EXPECT_FALSE(h5::read_attr_string(f, a, path).empty()) << a;
  h5::Handle cfg = h5::open_group(f, "config");
  EXPECT_EQ(h5::read_attr_double(cfg, "lr", path), 0.0003);
  EXPECT_EQ(h5::read_attr_int(cfg, "seed", path), 1234);
  EXPECT_EQ(h5::read_attr_string(cfg, "method", path), "lora");
  {
    h5::Handle a(H5Aopen(cfg, "shuffle", H5P_DEFAULT), h5::Handle::Kind::attribute);
    h5::Handle t(H5Aget_type(a), h5::Handle::Kind::datatype);
    EXPECT_EQ(H5Tget_class(t), H5T_ENUM);  // h5py's bool
    int8_t v = 0;
    ASSERT_GE(H5Aread(a, H5T_NATIVE_INT8, &v), 0);
    EXPECT_EQ(v, 1);
    h5::Handle m(H5Aopen(cfg, "method", H5P_DEFAULT), h5::Handle::Kind::attribute);
    h5::Handle mt(H5Aget_type(m), h5::Handle::Kind::datatype);
    EXPECT_GT(H5Tis_variable_str(mt), 0);
  }
  for (const char* g : {"steps", "evals", "epochs", "ranks"}) {
    h5::Handle grp = h5::open_group(f, g);
    H5G_info_t info;
    ASSERT_GE(H5Gget_info(grp, &info), 0);
    ASSERT_GT(info.nlinks, 0u) << g;
    for (hsize_t i = 0; i < info.nlinks; ++i) {
      char name[128];
      H5Lget_name_by_idx(grp, ".", H5_INDEX_NAME, H5_ITER_INC, i, name, sizeof(name), H5P_DEFAULT);
      h5::Handle ds(H5Dopen2(grp, name, H5P_DEFAULT), h5::Handle::Kind::dataset);
      EXPECT_TRUE(h5::has_attr(ds, "units")) << g << "/" << name;
      EXPECT_FALSE(h5::read_attr_string(ds, "description", name).empty()) << g << "/" << name;
    }
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace st
