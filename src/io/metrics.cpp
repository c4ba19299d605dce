// MetricsWriter: rank 0's metrics.h5 (layout in metrics.hpp).
//
// The file is a log: every append flushes, so a killed run leaves a readable file whose
// /summary outcome is still "running" (tests/e2e: KilledRunLeavesMetricsReadableUpToTheLastFlush
// SIGKILLs a run and reads it back). HDF5 file locking is turned off for this file so that
// analysis/report.py, h5py or h5dump can read a live run while the trainer holds it open
// (the run directory belongs to one run_id, so there is no second writer to lock out).
// HDF5 refuses to reopen a file in the process holding it with a different locking setting,
// so code in the trainer's own process must not open metrics.h5 while the writer lives.
// After a failed write (disk full) HDF5 1.10 cannot close the file, and its atexit cleanup
// then crashes (h5py#914): leave the process through st::fatal(), which _Exits.
// A crash in the middle of a row can leave one table's columns of unequal length; readers
// (analysis/st_read.py) keep the rows every column has.
#include "io/metrics.hpp"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <limits>
#include <set>

#include "core/error.hpp"
#include "core/version.hpp"
#include "io/h5util.hpp"

namespace st {

namespace {

// Categories every /ranks table has (zero where a rank reported none), in this order.
const char* const kRankCategories[] = {"weights", "gradients", "optimizer", "activations", "communication", "workspace"};

// Units and meaning of every column, written as the datasets' "units" and "description"
// attributes (the layout comment in metrics.hpp says the same).
struct ColumnInfo {
  const char* name;
  const char* units;
  const char* description;
};

const ColumnInfo kStepColumns[] = {
    {"step", "1", "optimizer step (1-based, counted over the whole run)"},
    {"epoch", "1", "epoch the step belongs to (1-based)"},
    {"loss", "nats per target token", "training loss of the step: mean cross-entropy over every target token of the global batch"},
    {"lr", "1", "learning rate used by the step"},
    {"grad_norm", "1", "global L2 norm of the gradients before clipping"},
    {"tokens", "tokens", "real tokens processed by the step over every rank (input + target for seq2seq; padding not counted)"},
    {"computed_tokens", "tokens", "tokens the step computed over every rank, padding included (packed rows: their full length)"},
    {"step_time", "s", "wall time of the step on rank 0"},
    {"tokens_per_s", "tokens/s", "real tokens / step_time"},
    {"mfu", "1", "model FLOPs utilization (fraction of the device's peak; NaN where no peak is known)"},
    {"mem_current", "bytes", "rank 0's allocator bytes in use after the step"},
    {"mem_peak", "bytes", "rank 0's allocator peak so far"},
};
const ColumnInfo kEvalColumns[] = {
    {"step", "1", "optimizer steps completed when evaluated (0: the untrained model)"},
    {"epoch", "epochs", "fractional epoch when evaluated"},
    {"val_loss", "nats per target token", "validation loss: mean cross-entropy over every target token of the split"},
    {"val_accuracy", "1", "fraction of labelled rows whose label word scores highest (NaN without labels)"},
    {"val_tokens", "tokens", "target tokens evaluated"},
    {"eval_time", "s", "wall time of the evaluation"},
};
const ColumnInfo kEpochColumns[] = {
    {"epoch", "1", "epoch (1-based)"},
    {"epoch_time", "s", "training wall time of the epoch (evaluations excluded; summed over resumed segments)"},
    {"train_loss", "nats per target token", "token-weighted mean training loss over the epoch"},
    {"val_loss", "nats per target token", "validation loss at the end of the epoch"},
    {"val_accuracy", "1", "validation accuracy at the end of the epoch (NaN without labels)"},
    {"steps", "1", "optimizer steps in the epoch"},
};
const ColumnInfo kRankColumns[] = {
    {"rank", "1", "MPI rank"},
    {"host", "text", "host name of the rank"},
    {"peak_memory", "bytes", "the rank's allocator peak during training"},
    {"predicted_peak", "bytes", "the planner's prediction of peak_memory (0: none made)"},
    {"comm_time", "s", "time the rank spent in collectives"},
};

template <size_t N>
void describe_columns(hid_t group, const ColumnInfo (&cols)[N]) {
  for (const ColumnInfo& c : cols) {
    if (!h5::exists(group, c.name)) continue;
    h5::Handle ds(H5Dopen2(group, c.name, H5P_DEFAULT), h5::Handle::Kind::dataset);
    if (!ds.valid()) continue;
    h5::write_attr(ds, "units", std::string(c.units));
    h5::write_attr(ds, "description", std::string(c.description));
  }
}

std::string utc_now_iso8601() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string host_name() {
  char buf[256] = {0};
  if (gethostname(buf, sizeof(buf) - 1) != 0) return "unknown";
  return buf;
}

// /config: numbers as numbers, booleans as booleans, the rest as strings.
void write_config(hid_t f, const std::map<std::string, std::string>& config, const ConfigKinds& kinds,
                  const std::string& path) {
  h5::Handle cfg = h5::create_group(f, "config");
  for (const auto& [key, value] : config) {
    ST_CHECK(!key.empty(), path, ": empty /config key");
    const auto it = kinds.find(key);
    const ResolvedOption::Kind kind = it == kinds.end() ? ResolvedOption::Kind::text : it->second;
    try {
      if (kind == ResolvedOption::Kind::integer) {
        h5::write_attr(cfg, key, static_cast<int64_t>(std::stoll(value)));
        continue;
      }
      if (kind == ResolvedOption::Kind::real) {
        h5::write_attr(cfg, key, std::stod(value));
        continue;
      }
    } catch (const std::logic_error&) {
      // not a number after all (should not happen): stored as text below
    }
    if (kind == ResolvedOption::Kind::boolean && (value == "true" || value == "false"))
      h5::write_attr_bool(cfg, key, value == "true");
    else
      h5::write_attr(cfg, key, value);
  }
}

// Root attributes: what wrote the file, when, where and how it was started.
void write_root_attrs(hid_t f, const std::map<std::string, std::string>& config, bool resumed) {
  const std::string now = utc_now_iso8601();
  h5::write_attr(f, "format_version", kMetricsFormatVersion);
  h5::write_attr(f, "shardtune_version", std::string(shardtune_version()));
  h5::write_attr(f, "shardtune_commit", std::string(shardtune_commit()));
  h5::write_attr(f, "shardtune_build", std::string(shardtune_build_flags()));
  h5::write_attr(f, "host", host_name());
  const auto cl = config.find("command_line");
  h5::write_attr(f, "command_line", cl == config.end() ? std::string() : cl->second);
  int64_t segments = 1;
  if (resumed && h5::has_attr(f, "segments")) segments = h5::read_attr_int(f, "segments", "/") + 1;
  if (!resumed || !h5::has_attr(f, "start_time")) h5::write_attr(f, "start_time", now);
  h5::write_attr(f, "segments", segments);
  h5::write_attr(f, "last_start_time", now);
}

h5::Handle create_unlocked_file(const std::string& path) {
  h5::quiet_errors();
  h5::Handle fapl(H5Pcreate(H5P_FILE_ACCESS), h5::Handle::Kind::plist);
#if H5_VERSION_GE(1, 10, 7)
  H5Pset_file_locking(fapl, false, true);
#endif
  hid_t f = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
  if (f < 0) ST_THROW_INPUT(path, ": cannot create the metrics file (is the directory writable?)");
  return h5::Handle(f, h5::Handle::Kind::file);
}

h5::Handle open_unlocked_file_rw(const std::string& path) {
  h5::quiet_errors();
  h5::Handle fapl(H5Pcreate(H5P_FILE_ACCESS), h5::Handle::Kind::plist);
#if H5_VERSION_GE(1, 10, 7)
  H5Pset_file_locking(fapl, false, true);
#endif
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDWR, fapl);
  if (f < 0) ST_THROW_INPUT(path, ": cannot reopen the metrics file to continue it (resume)");
  return h5::Handle(f, h5::Handle::Kind::file);
}

// The names of a group's members.
std::vector<std::string> member_names(hid_t g) {
  H5G_info_t info;
  if (H5Gget_info(g, &info) < 0) return {};
  std::vector<std::string> out;
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    const ssize_t n = H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
    if (n < 0) continue;
    std::string name(static_cast<size_t>(n), '\0');
    H5Lget_name_by_idx(g, ".", H5_INDEX_NAME, H5_ITER_INC, i, name.data(), static_cast<size_t>(n) + 1, H5P_DEFAULT);
    out.push_back(name);
  }
  return out;
}

// Keep the leading rows of a table whose `key` column is <= last (rows are in increasing
// order), cutting every column to that length (and to its shortest column: a crash mid-row).
void truncate_table(hid_t f, const std::string& table, const std::string& key, int64_t last, const std::string& path) {
  h5::Handle g = h5::open_group(f, table);
  const std::vector<std::string> cols = member_names(g);
  hsize_t keep = std::numeric_limits<hsize_t>::max();
  for (const std::string& c : cols) keep = std::min(keep, h5::dataset_dims(g, c, path).at(0));
  if (cols.empty()) return;
  {
    std::vector<int64_t> k(static_cast<size_t>(h5::dataset_dims(g, key, path).at(0)));
    if (!k.empty()) h5::read_dataset(g, key, H5T_NATIVE_INT64, k.data(), path);
    hsize_t n = 0;
    while (n < k.size() && k[n] <= last) ++n;
    keep = std::min(keep, n);
  }
  for (const std::string& c : cols) {
    h5::Handle ds(H5Dopen2(g, c.c_str(), H5P_DEFAULT), h5::Handle::Kind::dataset);
    if (!ds.valid() || H5Dset_extent(ds, &keep) < 0) ST_THROW(path, ": cannot truncate /", table, "/", c);
  }
}

void create_parent_directories(const std::string& path) {
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (parent.empty()) return;
  std::error_code ec;
  std::filesystem::create_directories(parent, ec);
  if (ec) ST_THROW_INPUT(path, ": cannot create directory '", parent.string(), "': ", ec.message());
}

// Write a 1-D variable-length UTF-8 string dataset (h5py reads it as str via .asstr()).
void write_string_column(hid_t parent, const std::string& name, const std::vector<std::string>& values) {
  h5::Handle type(H5Tcopy(H5T_C_S1), h5::Handle::Kind::datatype);
  H5Tset_size(type, H5T_VARIABLE);
  H5Tset_cset(type, H5T_CSET_UTF8);
  std::vector<const char*> ptrs;
  for (const std::string& v : values) ptrs.push_back(v.c_str());
  h5::write_dataset(parent, name, type, ptrs.data(), {values.size()});
}

}  // namespace

struct MetricsWriter::Impl {
  h5::Handle file;  // declared first: closed last
  h5::Handle steps, evals, epochs, summary;
};

MetricsWriter::MetricsWriter(const std::string& path, const std::map<std::string, std::string>& config,
                             const ConfigKinds& kinds)
    : path_(path) {
  ST_CHECK(!path.empty(), "metrics path is empty");
  create_parent_directories(path);
  impl_ = std::make_unique<Impl>();
  impl_->file = create_unlocked_file(path);
  const hid_t f = impl_->file;
  write_root_attrs(f, config, false);
  write_config(f, config, kinds, path);

  impl_->summary = h5::create_group(f, "summary");
  h5::write_attr(impl_->summary, "outcome", std::string("running"));

  impl_->steps = h5::create_group(f, "steps");
  const hid_t s = impl_->steps;
  h5::create_extendible(s, "step", H5T_NATIVE_INT64, 1024);
  h5::create_extendible(s, "epoch", H5T_NATIVE_INT32, 1024);
  for (const char* c : {"loss", "lr", "grad_norm"}) h5::create_extendible(s, c, H5T_NATIVE_DOUBLE, 1024);
  h5::create_extendible(s, "tokens", H5T_NATIVE_INT64, 1024);
  h5::create_extendible(s, "computed_tokens", H5T_NATIVE_INT64, 1024);
  for (const char* c : {"step_time", "tokens_per_s", "mfu"}) h5::create_extendible(s, c, H5T_NATIVE_DOUBLE, 1024);
  for (const char* c : {"mem_current", "mem_peak"}) h5::create_extendible(s, c, H5T_NATIVE_INT64, 1024);

  impl_->evals = h5::create_group(f, "evals");
  const hid_t e = impl_->evals;
  h5::create_extendible(e, "step", H5T_NATIVE_INT64, 64);
  for (const char* c : {"epoch", "val_loss", "val_accuracy"}) h5::create_extendible(e, c, H5T_NATIVE_DOUBLE, 64);
  h5::create_extendible(e, "val_tokens", H5T_NATIVE_INT64, 64);
  h5::create_extendible(e, "eval_time", H5T_NATIVE_DOUBLE, 64);

  impl_->epochs = h5::create_group(f, "epochs");
  const hid_t p = impl_->epochs;
  h5::create_extendible(p, "epoch", H5T_NATIVE_INT32, 64);
  for (const char* c : {"epoch_time", "train_loss", "val_loss", "val_accuracy"})
    h5::create_extendible(p, c, H5T_NATIVE_DOUBLE, 64);
  h5::create_extendible(p, "steps", H5T_NATIVE_INT64, 64);
  describe_columns(s, kStepColumns);
  describe_columns(e, kEvalColumns);
  describe_columns(p, kEpochColumns);

  flush();
}

std::unique_ptr<MetricsWriter> MetricsWriter::reopen(const std::string& path,
                                                     const std::map<std::string, std::string>& config,
                                                     int64_t last_step, int64_t last_epoch, const ConfigKinds& kinds) {
  if (!std::filesystem::exists(path)) return std::make_unique<MetricsWriter>(path, config, kinds);
  std::unique_ptr<MetricsWriter> w(new MetricsWriter());
  w->path_ = path;
  w->impl_ = std::make_unique<Impl>();
  w->impl_->file = open_unlocked_file_rw(path);
  const hid_t f = w->impl_->file;
  for (const char* g : {"steps", "evals", "epochs"})
    if (!h5::exists(f, g)) ST_THROW_INPUT(path, ": no /", g, " table: not a metrics file this version wrote");
  // The earlier segments' wall time, before /summary is replaced.
  if (h5::exists(f, "summary")) {
    h5::Handle old = h5::open_group(f, "summary");
    if (h5::has_attr(old, "total_time")) w->previous_total_time_ = h5::read_attr_double(old, "total_time", path);
  }
  write_root_attrs(f, config, true);
  // /config: this run's options; /summary: afresh (outcome running), the end of the run rewrites it.
  for (const char* g : {"config", "summary", "ranks"})
    if (h5::exists(f, g) && H5Ldelete(f, g, H5P_DEFAULT) < 0) ST_THROW(path, ": cannot replace /", g);
  write_config(f, config, kinds, path);
  w->impl_->summary = h5::create_group(f, "summary");
  h5::write_attr(w->impl_->summary, "outcome", std::string("running"));
  truncate_table(f, "steps", "step", last_step, path);
  truncate_table(f, "evals", "step", last_step, path);
  truncate_table(f, "epochs", "epoch", last_epoch, path);
  w->impl_->steps = h5::open_group(f, "steps");
  w->impl_->evals = h5::open_group(f, "evals");
  w->impl_->epochs = h5::open_group(f, "epochs");
  describe_columns(w->impl_->steps, kStepColumns);  // files written before the descriptions existed
  describe_columns(w->impl_->evals, kEvalColumns);
  describe_columns(w->impl_->epochs, kEpochColumns);
  w->flush();
  return w;
}

MetricsWriter::~MetricsWriter() {
  if (!impl_ || !impl_->file.valid()) return;
  H5Fflush(impl_->file, H5F_SCOPE_GLOBAL);  // errors here cannot be reported: no throw
  impl_->steps.reset();
  impl_->evals.reset();
  impl_->epochs.reset();
  impl_->summary.reset();
  impl_->file.reset();
}

void MetricsWriter::append_step(const StepRecord& r) {
  const hid_t g = impl_->steps;
  h5::append_value(g, "step", H5T_NATIVE_INT64, &r.step);
  h5::append_value(g, "epoch", H5T_NATIVE_INT32, &r.epoch);
  h5::append_value(g, "loss", H5T_NATIVE_DOUBLE, &r.loss);
  h5::append_value(g, "lr", H5T_NATIVE_DOUBLE, &r.lr);
  h5::append_value(g, "grad_norm", H5T_NATIVE_DOUBLE, &r.grad_norm);
  h5::append_value(g, "tokens", H5T_NATIVE_INT64, &r.tokens);
  h5::append_value(g, "computed_tokens", H5T_NATIVE_INT64, &r.computed_tokens);
  h5::append_value(g, "step_time", H5T_NATIVE_DOUBLE, &r.step_time);
  h5::append_value(g, "tokens_per_s", H5T_NATIVE_DOUBLE, &r.tokens_per_s);
  h5::append_value(g, "mfu", H5T_NATIVE_DOUBLE, &r.mfu);
  h5::append_value(g, "mem_current", H5T_NATIVE_INT64, &r.mem_current);
  h5::append_value(g, "mem_peak", H5T_NATIVE_INT64, &r.mem_peak);
  flush();
}

void MetricsWriter::append_eval(const EvalRecord& r) {
  const hid_t g = impl_->evals;
  h5::append_value(g, "step", H5T_NATIVE_INT64, &r.step);
  h5::append_value(g, "epoch", H5T_NATIVE_DOUBLE, &r.epoch);
  h5::append_value(g, "val_loss", H5T_NATIVE_DOUBLE, &r.val_loss);
  h5::append_value(g, "val_accuracy", H5T_NATIVE_DOUBLE, &r.val_accuracy);
  h5::append_value(g, "val_tokens", H5T_NATIVE_INT64, &r.val_tokens);
  h5::append_value(g, "eval_time", H5T_NATIVE_DOUBLE, &r.eval_time);
  flush();
}

void MetricsWriter::append_epoch(const EpochRecord& r) {
  const hid_t g = impl_->epochs;
  h5::append_value(g, "epoch", H5T_NATIVE_INT32, &r.epoch);
  h5::append_value(g, "epoch_time", H5T_NATIVE_DOUBLE, &r.epoch_time);
  h5::append_value(g, "train_loss", H5T_NATIVE_DOUBLE, &r.train_loss);
  h5::append_value(g, "val_loss", H5T_NATIVE_DOUBLE, &r.val_loss);
  h5::append_value(g, "val_accuracy", H5T_NATIVE_DOUBLE, &r.val_accuracy);
  h5::append_value(g, "steps", H5T_NATIVE_INT64, &r.steps);
  flush();
}

void MetricsWriter::write_ranks(const std::vector<RankRecord>& ranks) {
  const hid_t f = impl_->file;
  if (h5::exists(f, "ranks") && H5Ldelete(f, "ranks", H5P_DEFAULT) < 0)
    ST_THROW(path_, ": cannot replace /ranks");
  h5::Handle g = h5::create_group(f, "ranks");

  const size_t n = ranks.size();
  std::vector<int32_t> rank(n);
  std::vector<std::string> host(n);
  std::vector<int64_t> peak(n), predicted(n);
  std::vector<double> comm(n);
  std::vector<std::string> categories(std::begin(kRankCategories), std::end(kRankCategories));
  std::set<std::string> seen(categories.begin(), categories.end());
  for (size_t i = 0; i < n; ++i) {
    rank[i] = ranks[i].rank;
    host[i] = ranks[i].host;
    peak[i] = ranks[i].peak_memory;
    predicted[i] = ranks[i].predicted_peak;
    comm[i] = ranks[i].comm_time;
    for (const auto& [cat, bytes] : ranks[i].peak_by_category) {
      (void)bytes;
      ST_CHECK(!cat.empty() && cat.find('/') == std::string::npos, path_, ": bad memory category '", cat, "'");
      if (seen.insert(cat).second) categories.push_back(cat);  // e.g. "other"
    }
  }
  h5::write_dataset(g, "rank", H5T_NATIVE_INT32, rank.data(), {n});
  write_string_column(g, "host", host);
  h5::write_dataset(g, "peak_memory", H5T_NATIVE_INT64, peak.data(), {n});
  h5::write_dataset(g, "predicted_peak", H5T_NATIVE_INT64, predicted.data(), {n});
  for (const std::string& cat : categories) {
    std::vector<int64_t> column(n, 0);
    for (size_t i = 0; i < n; ++i) {
      auto it = ranks[i].peak_by_category.find(cat);
      if (it != ranks[i].peak_by_category.end()) column[i] = it->second;
    }
    h5::write_dataset(g, "peak_" + cat, H5T_NATIVE_INT64, column.data(), {n});
  }
  h5::write_dataset(g, "comm_time", H5T_NATIVE_DOUBLE, comm.data(), {n});
  describe_columns(g, kRankColumns);
  for (const std::string& cat : categories) {
    h5::Handle ds(H5Dopen2(g, ("peak_" + cat).c_str(), H5P_DEFAULT), h5::Handle::Kind::dataset);
    h5::write_attr(ds, "units", std::string("bytes"));
    h5::write_attr(ds, "description", "the rank's peak bytes of category " + cat);
  }
  flush();
}

void MetricsWriter::write_summary(const SummaryRecord& s) {
  const hid_t g = impl_->summary;
  for (const auto& [key, value] : s.strings) h5::write_attr(g, key, value);
  for (const auto& [key, value] : s.ints) h5::write_attr(g, key, value);
  for (const auto& [key, value] : s.reals) h5::write_attr(g, key, value);
  flush();
}

void MetricsWriter::flush() {
  if (H5Fflush(impl_->file, H5F_SCOPE_GLOBAL) < 0)
    ST_THROW(path_, ": cannot flush the metrics file (disk full or I/O error?)");
}

}  // namespace st
