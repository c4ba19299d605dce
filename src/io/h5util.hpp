// Small RAII and convenience layer over the HDF5 C API, shared by shards and metrics.
// Every failure throws with the file path and the object name.
#pragma once

#include <hdf5.h>

#include <cstdint>
#include <string>
#include <vector>

namespace st::h5 {

// Owns one hid_t and closes it with the right H5*close.
class Handle {
 public:
  enum class Kind { file, group, dataset, dataspace, datatype, plist, attribute };
  Handle() = default;
  Handle(hid_t id, Kind kind) : id_(id), kind_(kind) {}
  ~Handle() { reset(); }
  Handle(Handle&& o) noexcept : id_(o.id_), kind_(o.kind_) { o.id_ = H5I_INVALID_HID; }
  Handle& operator=(Handle&& o) noexcept;
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  hid_t get() const { return id_; }
  operator hid_t() const { return id_; }
  bool valid() const { return id_ >= 0; }
  void reset();
  void release() { id_ = H5I_INVALID_HID; }  // forget the id without closing it

 private:
  hid_t id_ = H5I_INVALID_HID;
  Kind kind_ = Kind::file;
};

// Silence HDF5's own error stack printing (we report errors ourselves). Idempotent.
void quiet_errors();

// The cause of the HDF5 call that just failed, from HDF5's error stack: strerror() of the system
// call when a file read or write failed (e.g. "No space left on device"), else HDF5's innermost
// description; "" when the stack is empty. error_suffix(): ": <cause>" or "".
std::string error_cause();
std::string error_suffix();

// Flushes and closes a file written to, throwing (with the cause) when either fails: closing
// through ~Handle ignores errors, so a write that only fails when the cache is flushed (disk
// full) would go unnoticed.
void close_file_checked(Handle& f, const std::string& path);

Handle create_file(const std::string& path);     // truncates
Handle open_file_read(const std::string& path);  // throws InputError naming the path
Handle open_file_rw(const std::string& path);
Handle create_group(hid_t parent, const std::string& name);
Handle open_group(hid_t parent, const std::string& name);
bool exists(hid_t parent, const std::string& name);

// Attributes (scalar or 1-D) on any object. Strings are variable-length UTF-8.
void write_attr(hid_t obj, const std::string& name, const std::string& value);
void write_attr_bool(hid_t obj, const std::string& name, bool value);
void write_attr(hid_t obj, const std::string& name, int64_t value);
void write_attr(hid_t obj, const std::string& name, double value);
void write_attr(hid_t obj, const std::string& name, const std::vector<int32_t>& values);
bool has_attr(hid_t obj, const std::string& name);
std::string read_attr_string(hid_t obj, const std::string& name, const std::string& where);
int64_t read_attr_int(hid_t obj, const std::string& name, const std::string& where);
double read_attr_double(hid_t obj, const std::string& name, const std::string& where);
std::vector<int32_t> read_attr_i32_vector(hid_t obj, const std::string& name, const std::string& where);

// Whole datasets of native types, 1-D or N-D (dims given), optionally chunked + deflated.
void write_dataset(hid_t parent, const std::string& name, hid_t native_type, const void* data,
                   const std::vector<hsize_t>& dims, const std::vector<hsize_t>& chunk = {},
                   int deflate_level = 0);
std::vector<hsize_t> dataset_dims(hid_t parent, const std::string& name, const std::string& where);
void read_dataset(hid_t parent, const std::string& name, hid_t native_type, void* out,
                  const std::string& where);

// 1-D extendible dataset (chunked, unlimited) appended to one element at a time.
void create_extendible(hid_t parent, const std::string& name, hid_t native_type, hsize_t chunk = 256);
void append_value(hid_t parent, const std::string& name, hid_t native_type, const void* value);
void append_string(hid_t parent, const std::string& name, const std::string& value);
void create_extendible_string(hid_t parent, const std::string& name, hsize_t chunk = 64);

}  // namespace st::h5
