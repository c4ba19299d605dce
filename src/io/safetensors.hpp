// safetensors files: a strict reader and an atomic writer (core/atomic_file.hpp).
//
// Format: an 8-byte little-endian u64 header length N, N bytes of UTF-8 JSON (an object mapping
// tensor names to {"dtype", "shape", "data_offsets": [begin, end]}, plus an optional
// "__metadata__" object of strings), then the data buffer; offsets are relative to the buffer.
//
// The reader validates the whole header when the file is opened, as the reference implementation
// does: header length <= 100 MiB and within the file; valid JSON, an object, nested at most 16
// deep (checked while parsing); no repeated names; each entry exactly dtype, shape and
// data_offsets; __metadata__ strings only; known dtypes; non-negative 63-bit dimensions; sizes
// equal to numel * element size (overflow-checked); offsets that tile the data buffer from 0 to
// its last byte without gaps or overlaps. A bad or hostile file is refused with an InputError
// naming the file and the tensor or field (tests/unit/test_safetensors_fuzz.cpp fuzzes this).
// Tensor data is read with pread at the entry's offset, never the whole file.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/atomic_file.hpp"
#include "core/tensor.hpp"

namespace st {

struct SafetensorsEntry {
  std::string name;
  std::string dtype;           // as on disk: "F32", "BF16", "I32", ...
  std::vector<int64_t> shape;  // any rank; Tensor supports up to Shape::kMaxDims
  uint64_t begin = 0;          // byte range [begin, end) within the data buffer
  uint64_t end = 0;

  int64_t numel() const;  // fits: checked when the file was opened
  uint64_t nbytes() const { return end - begin; }
};

// Element size of a safetensors dtype name, 0 when unsupported. Supported: F64, F32, F16, BF16,
// I64, I32, I16, I8, U8, BOOL.
size_t safetensors_dtype_size(const std::string& dtype);
// True for F64, F32, F16, BF16.
bool safetensors_is_float(const std::string& dtype);
// "[a, b]" for an entry's shape in messages.
std::string shape_str(const std::vector<int64_t>& shape);

class SafetensorsFile {
 public:
  // Opens and validates the header; throws InputError naming `path` on any defect.
  static SafetensorsFile open(const std::string& path);

  SafetensorsFile(SafetensorsFile&& o) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&& o) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile();

  const std::string& path() const { return path_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }  // in offset order
  const SafetensorsEntry* find(const std::string& name) const;               // nullptr if absent

  // A float tensor (F64/F32/F16/BF16 on disk) converted to `dtype` (f32, f64, bf16 or f16), in a
  // new Tensor on `device` counted under `cat`. InputError if absent, not float, or rank > 4.
  Tensor read_float(const std::string& name, DType dtype, Device device, MemCategory cat) const;
  // The raw little-endian bytes of a tensor of any dtype.
  std::vector<uint8_t> read_raw(const std::string& name) const;

 private:
  SafetensorsFile() = default;
  const SafetensorsEntry& entry_or_throw(const std::string& name) const;
  // Reads `bytes` bytes at `offset` within the data buffer; InputError if the file is short.
  void read_at(const SafetensorsEntry& e, uint64_t offset, void* dst, size_t bytes) const;

  std::string path_;
  int fd_ = -1;
  uint64_t data_start_ = 0;  // 8 + N: file offset of the data buffer
  std::map<std::string, std::string> metadata_;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, size_t> index_;  // name -> position in entries_
};

// Writes tensors (f32, f64, bf16, f16, i32, i64, u8; CPU or device) in the given order with
// contiguous offsets; the header is padded with spaces to a multiple of 8 bytes and carries
// "__metadata__" when `metadata` is non-empty. Written through atomic_write_file (temp file,
// fsync, rename), so a file with the final name is always complete. Throws Error naming `path` on
// I/O failure (with strerror) or a duplicate/empty name.
void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace st
