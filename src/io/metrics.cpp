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

#include <algorithm>
#include <filesystem>
#include <limits>
#include <set>

#include "core/error.hpp"
#include "io/h5util.hpp"

namespace st {

namespace {

// Categories every /ranks table has (zero where a rank reported none), in this order.
const char* const kRankCategories[] = {"weights", "gradients", "optimizer", "activations", "communication", "workspace"};

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

MetricsWriter::MetricsWriter(const std::string& path, const std::map<std::string, std::string>& config)
    : path_(path) {
  ST_CHECK(!path.empty(), "metrics path is empty");
  create_parent_directories(path);
  impl_ = std::make_unique<Impl>();
  impl_->file = create_unlocked_file(path);
  const hid_t f = impl_->file;

  h5::Handle cfg = h5::create_group(f, "config");
  for (const auto& [key, value] : config) {
    ST_CHECK(!key.empty(), path, ": empty /config key");
    h5::write_attr(cfg, key, value);
  }

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

  flush();
}

std::unique_ptr<MetricsWriter> MetricsWriter::reopen(const std::string& path,
                                                     const std::map<std::string, std::string>& config,
                                                     int64_t last_step, int64_t last_epoch) {
  if (!std::filesystem::exists(path)) return std::make_unique<MetricsWriter>(path, config);
  std::unique_ptr<MetricsWriter> w(new MetricsWriter());
  w->path_ = path;
  w->impl_ = std::make_unique<Impl>();
  w->impl_->file = open_unlocked_file_rw(path);
  const hid_t f = w->impl_->file;
  for (const char* g : {"steps", "evals", "epochs"})
    if (!h5::exists(f, g)) ST_THROW_INPUT(path, ": no /", g, " table: not a metrics file this version wrote");
  // /config: this run's options; /summary: afresh (outcome running), the end of the run rewrites it.
  for (const char* g : {"config", "summary", "ranks"})
    if (h5::exists(f, g) && H5Ldelete(f, g, H5P_DEFAULT) < 0) ST_THROW(path, ": cannot replace /", g);
  {
    h5::Handle cfg = h5::create_group(f, "config");
    for (const auto& [key, value] : config) h5::write_attr(cfg, key, value);
  }
  w->impl_->summary = h5::create_group(f, "summary");
  h5::write_attr(w->impl_->summary, "outcome", std::string("running"));
  truncate_table(f, "steps", "step", last_step, path);
  truncate_table(f, "evals", "step", last_step, path);
  truncate_table(f, "epochs", "epoch", last_epoch, path);
  w->impl_->steps = h5::open_group(f, "steps");
  w->impl_->evals = h5::open_group(f, "evals");
  w->impl_->epochs = h5::open_group(f, "epochs");
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
