#include "io/h5util.hpp"

#include "core/error.hpp"

namespace st::h5 {

Handle& Handle::operator=(Handle&& o) noexcept {
  if (this != &o) {
    reset();
    id_ = o.id_;
    kind_ = o.kind_;
    o.id_ = H5I_INVALID_HID;
  }
  return *this;
}

void Handle::reset() {
  if (id_ < 0) return;
  switch (kind_) {
    case Kind::file: H5Fclose(id_); break;
    case Kind::group: H5Gclose(id_); break;
    case Kind::dataset: H5Dclose(id_); break;
    case Kind::dataspace: H5Sclose(id_); break;
    case Kind::datatype: H5Tclose(id_); break;
    case Kind::plist: H5Pclose(id_); break;
    case Kind::attribute: H5Aclose(id_); break;
  }
  id_ = H5I_INVALID_HID;
}

void quiet_errors() {
  static bool done = false;
  if (!done) {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    done = true;
  }
}

namespace {
herr_t collect_error(unsigned n, const H5E_error2_t* e, void* out) {
  auto* v = static_cast<std::vector<std::string>*>(out);
  (void)n;
  if (e && e->desc) v->push_back(e->desc);
  return 0;
}
}  // namespace

std::string error_cause() {
  std::vector<std::string> descs;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_DOWNWARD, collect_error, &descs);  // outermost first
  for (auto it = descs.rbegin(); it != descs.rend(); ++it) {
    // The file drivers put strerror() in the innermost entry: "..., errno = 28, error message =
    // 'No space left on device', ...".
    const size_t at = it->find("error message = '");
    if (at != std::string::npos) {
      const size_t b = at + 17, e = it->find('\'', b);
      return it->substr(b, e == std::string::npos ? std::string::npos : e - b);
    }
  }
  return descs.empty() ? std::string() : descs.back();
}

std::string error_suffix() {
  const std::string c = error_cause();
  return c.empty() ? std::string() : ": " + c;
}

void close_file_checked(Handle& f, const std::string& path) {
  if (!f.valid()) return;
  if (H5Fflush(f, H5F_SCOPE_LOCAL) < 0) ST_THROW("cannot write ", path, ": flushing failed", error_suffix());
  const hid_t id = f.get();
  f.release();
  if (H5Fclose(id) < 0) ST_THROW("cannot write ", path, ": closing failed", error_suffix());
}

static std::string object_name(hid_t obj) {
  char buf[512] = {0};
  ssize_t n = H5Iget_name(obj, buf, sizeof(buf));
  std::string name = n > 0 ? std::string(buf) : std::string("?");
  char fbuf[1024] = {0};
  ssize_t fn = H5Fget_name(obj, fbuf, sizeof(fbuf));
  if (fn > 0) return std::string(fbuf) + ":" + name;
  return name;
}

Handle create_file(const std::string& path) {
  quiet_errors();
  hid_t f = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  if (f < 0) ST_THROW_INPUT(path, ": cannot create HDF5 file", error_suffix());
  return Handle(f, Handle::Kind::file);
}

Handle open_file_read(const std::string& path) {
  quiet_errors();
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) ST_THROW_INPUT(path, ": cannot open as an HDF5 file (missing, unreadable, truncated or not HDF5)");
  return Handle(f, Handle::Kind::file);
}

Handle open_file_rw(const std::string& path) {
  quiet_errors();
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  if (f < 0) ST_THROW_INPUT(path, ": cannot open HDF5 file for writing");
  return Handle(f, Handle::Kind::file);
}

Handle create_group(hid_t parent, const std::string& name) {
  hid_t g = H5Gcreate2(parent, name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  if (g < 0) ST_THROW(object_name(parent), ": cannot create group '", name, "'");
  return Handle(g, Handle::Kind::group);
}

Handle open_group(hid_t parent, const std::string& name) {
  hid_t g = H5Gopen2(parent, name.c_str(), H5P_DEFAULT);
  if (g < 0) ST_THROW_INPUT(object_name(parent), ": missing group '", name, "'");
  return Handle(g, Handle::Kind::group);
}

bool exists(hid_t parent, const std::string& name) {
  return H5Lexists(parent, name.c_str(), H5P_DEFAULT) > 0;
}

static void replace_attr(hid_t obj, const std::string& name) {
  if (H5Aexists(obj, name.c_str()) > 0) H5Adelete(obj, name.c_str());
}

// Variable-length UTF-8: h5py reads it as str (a fixed-length string attribute comes back as bytes).
void write_attr(hid_t obj, const std::string& name, const std::string& value) {
  replace_attr(obj, name);
  Handle type(H5Tcopy(H5T_C_S1), Handle::Kind::datatype);
  H5Tset_size(type, H5T_VARIABLE);
  H5Tset_cset(type, H5T_CSET_UTF8);
  Handle space(H5Screate(H5S_SCALAR), Handle::Kind::dataspace);
  Handle attr(H5Acreate2(obj, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT), Handle::Kind::attribute);
  if (!attr.valid()) ST_THROW(object_name(obj), ": cannot create attribute '", name, "'", error_suffix());
  const char* p = value.c_str();
  if (H5Awrite(attr, type, &p) < 0)
    ST_THROW(object_name(obj), ": cannot write attribute '", name, "'", error_suffix());
}

// h5py's boolean type: an 8-bit enum {FALSE = 0, TRUE = 1} (read back as numpy.bool_).
void write_attr_bool(hid_t obj, const std::string& name, bool value) {
  replace_attr(obj, name);
  Handle type(H5Tenum_create(H5T_NATIVE_INT8), Handle::Kind::datatype);
  const int8_t f = 0, t = 1;
  H5Tenum_insert(type, "FALSE", &f);
  H5Tenum_insert(type, "TRUE", &t);
  Handle space(H5Screate(H5S_SCALAR), Handle::Kind::dataspace);
  Handle attr(H5Acreate2(obj, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT), Handle::Kind::attribute);
  const int8_t v = value ? 1 : 0;
  if (!attr.valid() || H5Awrite(attr, type, &v) < 0)
    ST_THROW(object_name(obj), ": cannot write attribute '", name, "'", error_suffix());
}

template <typename T>
static void write_scalar_attr(hid_t obj, const std::string& name, hid_t type, T value) {
  replace_attr(obj, name);
  Handle space(H5Screate(H5S_SCALAR), Handle::Kind::dataspace);
  Handle attr(H5Acreate2(obj, name.c_str(), type, space, H5P_DEFAULT, H5P_DEFAULT), Handle::Kind::attribute);
  if (!attr.valid() || H5Awrite(attr, type, &value) < 0)
    ST_THROW(object_name(obj), ": cannot write attribute '", name, "'");
}

void write_attr(hid_t obj, const std::string& name, int64_t value) {
  write_scalar_attr(obj, name, H5T_NATIVE_INT64, value);
}
void write_attr(hid_t obj, const std::string& name, double value) {
  write_scalar_attr(obj, name, H5T_NATIVE_DOUBLE, value);
}

void write_attr(hid_t obj, const std::string& name, const std::vector<int32_t>& values) {
  replace_attr(obj, name);
  hsize_t n = values.size();
  Handle space(n ? H5Screate_simple(1, &n, nullptr) : H5Screate(H5S_NULL), Handle::Kind::dataspace);
  Handle attr(H5Acreate2(obj, name.c_str(), H5T_NATIVE_INT32, space, H5P_DEFAULT, H5P_DEFAULT),
              Handle::Kind::attribute);
  if (!attr.valid()) ST_THROW(object_name(obj), ": cannot create attribute '", name, "'");
  if (n && H5Awrite(attr, H5T_NATIVE_INT32, values.data()) < 0)
    ST_THROW(object_name(obj), ": cannot write attribute '", name, "'");
}

bool has_attr(hid_t obj, const std::string& name) { return H5Aexists(obj, name.c_str()) > 0; }

static Handle open_attr(hid_t obj, const std::string& name, const std::string& where) {
  if (H5Aexists(obj, name.c_str()) <= 0) ST_THROW_INPUT(where, ": missing attribute '", name, "'");
  Handle a(H5Aopen(obj, name.c_str(), H5P_DEFAULT), Handle::Kind::attribute);
  if (!a.valid()) ST_THROW_INPUT(where, ": cannot open attribute '", name, "'");
  return a;
}

std::string read_attr_string(hid_t obj, const std::string& name, const std::string& where) {
  Handle a = open_attr(obj, name, where);
  Handle type(H5Aget_type(a), Handle::Kind::datatype);
  if (H5Tget_class(type) != H5T_STRING) ST_THROW_INPUT(where, ": attribute '", name, "' is not a string");
  if (H5Tis_variable_str(type) > 0) {
    Handle mem(H5Tcopy(H5T_C_S1), Handle::Kind::datatype);
    H5Tset_size(mem, H5T_VARIABLE);
    H5Tset_cset(mem, H5Tget_cset(type));  // HDF5 will not convert between ASCII and UTF-8
    char* s = nullptr;
    if (H5Aread(a, mem, &s) < 0) ST_THROW_INPUT(where, ": cannot read attribute '", name, "'");
    std::string out = s ? s : "";
    Handle space(H5Aget_space(a), Handle::Kind::dataspace);
    H5Dvlen_reclaim(mem, space, H5P_DEFAULT, &s);
    return out;
  }
  const size_t size = H5Tget_size(type);
  std::string out(size, '\0');
  Handle mem(H5Tcopy(H5T_C_S1), Handle::Kind::datatype);
  H5Tset_size(mem, size);
  H5Tset_strpad(mem, H5T_STR_NULLPAD);
  H5Tset_cset(mem, H5Tget_cset(type));  // HDF5 will not convert between ASCII and UTF-8
  if (H5Aread(a, mem, out.data()) < 0) ST_THROW_INPUT(where, ": cannot read attribute '", name, "'");
  const size_t nul = out.find('\0');
  if (nul != std::string::npos) out.resize(nul);
  return out;
}

int64_t read_attr_int(hid_t obj, const std::string& name, const std::string& where) {
  Handle a = open_attr(obj, name, where);
  int64_t v = 0;
  if (H5Aread(a, H5T_NATIVE_INT64, &v) < 0) ST_THROW_INPUT(where, ": attribute '", name, "' is not an integer");
  return v;
}

double read_attr_double(hid_t obj, const std::string& name, const std::string& where) {
  Handle a = open_attr(obj, name, where);
  double v = 0;
  if (H5Aread(a, H5T_NATIVE_DOUBLE, &v) < 0) ST_THROW_INPUT(where, ": attribute '", name, "' is not a number");
  return v;
}

std::vector<int32_t> read_attr_i32_vector(hid_t obj, const std::string& name, const std::string& where) {
  Handle a = open_attr(obj, name, where);
  Handle space(H5Aget_space(a), Handle::Kind::dataspace);
  const hssize_t n = H5Sget_simple_extent_npoints(space);
  std::vector<int32_t> v(n > 0 ? static_cast<size_t>(n) : 0);
  if (!v.empty() && H5Aread(a, H5T_NATIVE_INT32, v.data()) < 0)
    ST_THROW_INPUT(where, ": attribute '", name, "' is not an integer array");
  return v;
}

void write_dataset(hid_t parent, const std::string& name, hid_t native_type, const void* data,
                   const std::vector<hsize_t>& dims, const std::vector<hsize_t>& chunk,
                   int deflate_level) {
  Handle space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), Handle::Kind::dataspace);
  Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), Handle::Kind::plist);
  bool nonempty = true;
  for (hsize_t d : dims) nonempty = nonempty && d > 0;
  if (!chunk.empty() && nonempty) {
    std::vector<hsize_t> c(chunk);
    for (size_t i = 0; i < c.size() && i < dims.size(); ++i) c[i] = std::max<hsize_t>(1, std::min(c[i], dims[i]));
    H5Pset_chunk(dcpl, static_cast<int>(c.size()), c.data());
    if (deflate_level > 0) {
      H5Pset_shuffle(dcpl);
      H5Pset_deflate(dcpl, static_cast<unsigned>(deflate_level));
    }
  }
  Handle ds(H5Dcreate2(parent, name.c_str(), native_type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT),
            Handle::Kind::dataset);
  if (!ds.valid()) ST_THROW(object_name(parent), ": cannot create dataset '", name, "'", error_suffix());
  if (nonempty && H5Dwrite(ds, native_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
    ST_THROW(object_name(parent), ": cannot write dataset '", name, "'", error_suffix());
}

std::vector<hsize_t> dataset_dims(hid_t parent, const std::string& name, const std::string& where) {
  if (!exists(parent, name)) ST_THROW_INPUT(where, ": missing dataset '", name, "'");
  Handle ds(H5Dopen2(parent, name.c_str(), H5P_DEFAULT), Handle::Kind::dataset);
  if (!ds.valid()) ST_THROW_INPUT(where, ": cannot open dataset '", name, "'");
  Handle space(H5Dget_space(ds), Handle::Kind::dataspace);
  const int nd = H5Sget_simple_extent_ndims(space);
  if (nd < 0) ST_THROW_INPUT(where, ": dataset '", name, "' has no simple shape");
  std::vector<hsize_t> dims(static_cast<size_t>(nd));
  H5Sget_simple_extent_dims(space, dims.data(), nullptr);
  return dims;
}

void read_dataset(hid_t parent, const std::string& name, hid_t native_type, void* out,
                  const std::string& where) {
  if (!exists(parent, name)) ST_THROW_INPUT(where, ": missing dataset '", name, "'");
  Handle ds(H5Dopen2(parent, name.c_str(), H5P_DEFAULT), Handle::Kind::dataset);
  if (!ds.valid()) ST_THROW_INPUT(where, ": cannot open dataset '", name, "'");
  if (H5Dread(ds, native_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out) < 0)
    ST_THROW_INPUT(where, ": cannot read dataset '", name, "' (truncated or corrupt file?)");
}

void create_extendible(hid_t parent, const std::string& name, hid_t native_type, hsize_t chunk) {
  hsize_t dims = 0, maxdims = H5S_UNLIMITED;
  Handle space(H5Screate_simple(1, &dims, &maxdims), Handle::Kind::dataspace);
  Handle dcpl(H5Pcreate(H5P_DATASET_CREATE), Handle::Kind::plist);
  H5Pset_chunk(dcpl, 1, &chunk);
  Handle ds(H5Dcreate2(parent, name.c_str(), native_type, space, H5P_DEFAULT, dcpl, H5P_DEFAULT),
            Handle::Kind::dataset);
  if (!ds.valid()) ST_THROW(object_name(parent), ": cannot create dataset '", name, "'");
}

void append_value(hid_t parent, const std::string& name, hid_t native_type, const void* value) {
  Handle ds(H5Dopen2(parent, name.c_str(), H5P_DEFAULT), Handle::Kind::dataset);
  if (!ds.valid()) ST_THROW(object_name(parent), ": missing dataset '", name, "'");
  Handle space(H5Dget_space(ds), Handle::Kind::dataspace);
  hsize_t n = 0;
  H5Sget_simple_extent_dims(space, &n, nullptr);
  hsize_t newn = n + 1;
  if (H5Dset_extent(ds, &newn) < 0) ST_THROW(object_name(parent), ": cannot extend '", name, "'");
  Handle fspace(H5Dget_space(ds), Handle::Kind::dataspace);
  hsize_t start = n, count = 1;
  H5Sselect_hyperslab(fspace, H5S_SELECT_SET, &start, nullptr, &count, nullptr);
  Handle mspace(H5Screate_simple(1, &count, nullptr), Handle::Kind::dataspace);
  if (H5Dwrite(ds, native_type, mspace, fspace, H5P_DEFAULT, value) < 0)
    ST_THROW(object_name(parent), ": cannot append to '", name, "'");
}

static Handle vlen_string_type() {
  Handle t(H5Tcopy(H5T_C_S1), Handle::Kind::datatype);
  H5Tset_size(t, H5T_VARIABLE);
  H5Tset_cset(t, H5T_CSET_UTF8);
  return t;
}

void create_extendible_string(hid_t parent, const std::string& name, hsize_t chunk) {
  Handle t = vlen_string_type();
  create_extendible(parent, name, t, chunk);
}

void append_string(hid_t parent, const std::string& name, const std::string& value) {
  Handle t = vlen_string_type();
  const char* p = value.c_str();
  append_value(parent, name, t, &p);
}

}  // namespace st::h5
