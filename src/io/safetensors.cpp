#include "io/safetensors.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

namespace st {

// The on-disk format is little-endian; tensors are copied to and from memory as they are.
static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes a little-endian host");

namespace {

using json = nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100ull << 20;  // same cap as the reference implementation
// A valid header nests 3 deep (object > entry > shape array); anything far deeper is hostile and
// is refused while parsing, before it can cost memory.
constexpr int kMaxJsonDepth = 16;
constexpr size_t kMaxIoChunk = 1ull << 30;          // Linux moves at most ~2 GiB per read/write call
constexpr size_t kConvertChunkBytes = 16ull << 20;  // staging buffer for dtype conversion

const char* errno_str() { return std::strerror(errno); }

// Reads exactly `bytes` at file offset `off`; returns false if the file ends first.
bool pread_all(int fd, void* dst, size_t bytes, uint64_t off, const std::string& path) {
  auto* p = static_cast<uint8_t*>(dst);
  while (bytes > 0) {
    const ssize_t r = ::pread(fd, p, std::min(bytes, kMaxIoChunk), static_cast<off_t>(off));
    if (r < 0) {
      if (errno == EINTR) continue;
      ST_THROW(path, ": read failed at offset ", off, ": ", errno_str());
    }
    if (r == 0) return false;
    p += r;
    off += static_cast<uint64_t>(r);
    bytes -= static_cast<size_t>(r);
  }
  return true;
}

uint64_t read_u64_le(const uint8_t* b) {
  uint64_t v;
  std::memcpy(&v, b, 8);
  return v;
}

// DType for a float safetensors dtype (only called after safetensors_is_float).
DType float_dtype_of(const std::string& dtype) {
  if (dtype == "F64") return DType::f64;
  if (dtype == "F32") return DType::f32;
  if (dtype == "F16") return DType::f16;
  return DType::bf16;
}

const char* safetensors_tag(DType t) {
  switch (t) {
    case DType::f32: return "F32";
    case DType::f64: return "F64";
    case DType::bf16: return "BF16";
    case DType::f16: return "F16";
    case DType::i32: return "I32";
    case DType::i64: return "I64";
    case DType::u8: return "U8";
  }
  ST_THROW("no safetensors dtype for ", dtype_name(t));
}

// dst[i] = convert(load(src + i * Size)) for the four float destination types.
template <size_t Size, typename Load>
void convert_to(const uint8_t* src, void* dst, DType to, size_t n, Load load) {
  switch (to) {
    case DType::f32: {
      auto* d = static_cast<float*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = static_cast<float>(load(src + i * Size));
      return;
    }
    case DType::f64: {
      auto* d = static_cast<double*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = static_cast<double>(load(src + i * Size));
      return;
    }
    case DType::bf16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = f32_to_bf16(static_cast<float>(load(src + i * Size)));
      return;
    }
    case DType::f16: {
      auto* d = static_cast<uint16_t*>(dst);
      for (size_t i = 0; i < n; ++i) d[i] = f32_to_f16(static_cast<float>(load(src + i * Size)));
      return;
    }
    default: ST_THROW("float conversion to ", dtype_name(to));
  }
}

// Loads go through memcpy: the staging buffer is aligned, but this keeps UBSan and the
// aliasing rules happy at no cost.
void convert_floats(const uint8_t* src, DType from, void* dst, DType to, size_t n) {
  switch (from) {
    case DType::f64:
      return convert_to<8>(src, dst, to, n, [](const uint8_t* p) { double v; std::memcpy(&v, p, 8); return v; });
    case DType::f32:
      return convert_to<4>(src, dst, to, n, [](const uint8_t* p) { float v; std::memcpy(&v, p, 4); return v; });
    case DType::f16:
      return convert_to<2>(src, dst, to, n, [](const uint8_t* p) { uint16_t v; std::memcpy(&v, p, 2); return f16_to_f32(v); });
    case DType::bf16:
      return convert_to<2>(src, dst, to, n, [](const uint8_t* p) { uint16_t v; std::memcpy(&v, p, 2); return bf16_to_f32(v); });
    default: ST_THROW("float conversion from ", dtype_name(from));
  }
}

// A JSON value for a message: short scalars as they are, containers and long text by type only
// (a hostile value can be 100 MB or nested millions deep; dump() recurses).
std::string brief(const json& v) {
  if (v.is_structured()) return str("a JSON ", v.type_name());
  std::string s = v.dump();
  if (s.size() > 40) s = str(s.substr(0, 40), "... (", s.size(), " characters)");
  return s;
}

// A non-negative JSON integer that fits int64 (shape dims and offsets), or false.
bool get_u63(const json& v, uint64_t* out) {
  if (!v.is_number_unsigned()) return false;  // negative, float or huge literals are not unsigned
  const uint64_t u = v.get<uint64_t>();
  if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return false;
  *out = u;
  return true;
}

void parse_metadata(const json& m, const std::string& path, std::map<std::string, std::string>* out) {
  if (!m.is_object()) ST_THROW_INPUT(path, ": __metadata__ must be an object of strings, got ", m.type_name());
  for (const auto& [key, value] : m.items()) {
    if (!value.is_string())
      ST_THROW_INPUT(path, ": __metadata__ field '", key, "' must be a string, got ", value.type_name());
    (*out)[key] = value.get<std::string>();
  }
}

// Validates one header entry against a data buffer of `data_size` bytes.
SafetensorsEntry parse_entry(const std::string& name, const json& v, const std::string& path, uint64_t data_size) {
  const std::string where = str(path, ": tensor '", name, "'");
  if (name.empty()) ST_THROW_INPUT(path, ": a tensor has an empty name");
  if (!v.is_object()) ST_THROW_INPUT(where, ": entry must be an object, got ", v.type_name());
  for (const auto& [key, value] : v.items()) {
    (void)value;
    if (key != "dtype" && key != "shape" && key != "data_offsets")
      ST_THROW_INPUT(where, ": unknown field '", key.size() > 40 ? key.substr(0, 40) + "..." : key,
                     "' (an entry has exactly dtype, shape and data_offsets)");
  }
  SafetensorsEntry e;
  e.name = name;

  const auto dt = v.find("dtype");
  if (dt == v.end() || !dt->is_string()) ST_THROW_INPUT(where, ": field 'dtype' missing or not a string");
  e.dtype = dt->get<std::string>();
  const size_t elem = safetensors_dtype_size(e.dtype);
  if (elem == 0)
    ST_THROW_INPUT(where, ": unsupported dtype '", e.dtype.size() > 40 ? e.dtype.substr(0, 40) + "..." : e.dtype, "'");

  const auto sh = v.find("shape");
  if (sh == v.end() || !sh->is_array())
    ST_THROW_INPUT(where, ": field 'shape' missing or not an array");
  uint64_t numel = 1;
  bool overflow = false, has_zero = false;
  for (const json& d : *sh) {
    uint64_t u;
    if (!get_u63(d, &u)) ST_THROW_INPUT(where, ": field 'shape' must hold non-negative integers, got ", brief(d));
    e.shape.push_back(static_cast<int64_t>(u));
    has_zero |= (u == 0);
    overflow |= __builtin_mul_overflow(numel, u, &numel);
  }
  if (has_zero) {  // [huge, huge, 0] is a valid empty tensor
    numel = 0;
    overflow = false;
  }
  uint64_t nbytes = 0;
  overflow |= __builtin_mul_overflow(numel, static_cast<uint64_t>(elem), &nbytes);
  if (overflow) ST_THROW_INPUT(where, ": shape ", shape_str(e.shape), " is too large (size overflows)");

  const auto off = v.find("data_offsets");
  if (off == v.end() || !off->is_array() || off->size() != 2 || !get_u63((*off)[0], &e.begin) ||
      !get_u63((*off)[1], &e.end))
    ST_THROW_INPUT(where, ": field 'data_offsets' must be [begin, end] of non-negative integers");
  if (e.begin > e.end)
    ST_THROW_INPUT(where, ": data_offsets [", e.begin, ", ", e.end, "] has begin > end");
  if (e.end - e.begin != nbytes)
    ST_THROW_INPUT(where, ": data_offsets [", e.begin, ", ", e.end, "] span ", e.end - e.begin,
                   " bytes, but shape ", shape_str(e.shape), " of dtype ", e.dtype, " needs ", nbytes);
  if (e.end > data_size)
    ST_THROW_INPUT(where, ": truncated data: data_offsets [", e.begin, ", ", e.end,
                   "] end beyond the data buffer of ", data_size, " bytes");
  return e;
}

// As the reference implementation: sorted by offset, the byte ranges tile the data buffer
// exactly, from 0 to its last byte, without gaps or overlaps (an empty tensor sits at the
// running offset), so no byte of the file is unaccounted for.
void check_contiguous(const std::vector<SafetensorsEntry>& sorted, uint64_t data_size, const std::string& path) {
  uint64_t offset = 0;
  const SafetensorsEntry* prev = nullptr;
  for (const auto& e : sorted) {
    if (e.begin < offset)
      ST_THROW_INPUT(path, ": tensors '", prev->name, "' and '", e.name, "' overlap (data_offsets [", prev->begin,
                     ", ", prev->end, "] and [", e.begin, ", ", e.end, "])");
    if (e.begin > offset)
      ST_THROW_INPUT(path, ": gap in the data buffer: tensor '", e.name, "' starts at ", e.begin, " but ",
                     prev ? str("tensor '", prev->name, "' ends at ", offset) : std::string("the buffer starts at 0"));
    offset = e.end;
    prev = &e;
  }
  if (offset != data_size)
    ST_THROW_INPUT(path, ": the data buffer holds ", data_size, " bytes but the tensors cover ", offset,
                   " (trailing bytes after the last tensor)");
}

}  // namespace

int64_t SafetensorsEntry::numel() const {
  // A zero dimension first: [huge, huge, 0] is empty, and multiplying the huge ones would overflow.
  if (std::find(shape.begin(), shape.end(), 0) != shape.end()) return 0;
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

size_t safetensors_dtype_size(const std::string& dtype) {
  static const std::map<std::string, size_t> sizes = {
      {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8},
      {"I32", 4}, {"I16", 2}, {"I8", 1},  {"U8", 1},   {"BOOL", 1}};
  const auto it = sizes.find(dtype);
  return it == sizes.end() ? 0 : it->second;
}

bool safetensors_is_float(const std::string& dtype) {
  return dtype == "F64" || dtype == "F32" || dtype == "F16" || dtype == "BF16";
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// ------------------------------------------------------------------------------------ reader

SafetensorsFile::SafetensorsFile(SafetensorsFile&& o) noexcept { *this = std::move(o); }

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    path_ = std::move(o.path_);
    fd_ = std::exchange(o.fd_, -1);
    data_start_ = o.data_start_;
    metadata_ = std::move(o.metadata_);
    entries_ = std::move(o.entries_);
    index_ = std::move(o.index_);
  }
  return *this;
}

SafetensorsFile::~SafetensorsFile() {
  if (fd_ >= 0) ::close(fd_);
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  SafetensorsFile f;  // closes the descriptor if validation throws
  f.path_ = path;
  f.fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (f.fd_ < 0) ST_THROW_INPUT(path, ": cannot open: ", errno_str());
  struct stat sb;
  if (::fstat(f.fd_, &sb) != 0) ST_THROW_INPUT(path, ": cannot stat: ", errno_str());
  if (!S_ISREG(sb.st_mode)) ST_THROW_INPUT(path, ": not a regular file");
  const uint64_t file_size = static_cast<uint64_t>(sb.st_size);

  uint8_t len_bytes[8];
  if (file_size < 8 || !pread_all(f.fd_, len_bytes, 8, 0, path))
    ST_THROW_INPUT(path, ": file of ", file_size, " bytes is too short for a safetensors header length");
  const uint64_t n = read_u64_le(len_bytes);
  if (n == 0) ST_THROW_INPUT(path, ": header length is 0");
  if (n > kMaxHeaderBytes) ST_THROW_INPUT(path, ": header length ", n, " exceeds the limit of ", kMaxHeaderBytes);
  if (n > file_size - 8)
    ST_THROW_INPUT(path, ": truncated header: header length ", n, " but only ", file_size - 8, " bytes follow");
  std::string header(n, '\0');
  if (!pread_all(f.fd_, header.data(), n, 8, path)) ST_THROW_INPUT(path, ": truncated header");
  f.data_start_ = 8 + n;
  const uint64_t data_size = file_size - 8 - n;

  // Duplicate top-level keys would silently keep the last entry; refuse them instead.
  std::set<std::string> seen;
  std::string duplicate;
  auto on_event = [&](int depth, json::parse_event_t ev, json& parsed) {
    if ((ev == json::parse_event_t::object_start || ev == json::parse_event_t::array_start) && depth >= kMaxJsonDepth)
      ST_THROW_INPUT(path, ": header nests JSON deeper than ", kMaxJsonDepth, " levels");
    if (ev == json::parse_event_t::key && depth == 1 && !seen.insert(parsed.get<std::string>()).second)
      duplicate = parsed.get<std::string>();
    return true;
  };
  json j;
  try {
    j = json::parse(header, on_event);
  } catch (const json::exception& e) {
    ST_THROW_INPUT(path, ": header is not valid JSON: ", e.what());
  }
  if (!j.is_object()) ST_THROW_INPUT(path, ": header must be a JSON object, got ", j.type_name());
  if (!duplicate.empty()) ST_THROW_INPUT(path, ": tensor '", duplicate, "' appears twice in the header");

  for (const auto& [name, value] : j.items()) {
    if (name == "__metadata__") parse_metadata(value, path, &f.metadata_);
    else f.entries_.push_back(parse_entry(name, value, path, data_size));
  }
  std::sort(f.entries_.begin(), f.entries_.end(), [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end != b.end ? a.end < b.end : a.name < b.name;
  });
  check_contiguous(f.entries_, data_size, path);
  for (size_t i = 0; i < f.entries_.size(); ++i) f.index_[f.entries_[i].name] = i;
  return f;
}

const SafetensorsEntry* SafetensorsFile::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

const SafetensorsEntry& SafetensorsFile::entry_or_throw(const std::string& name) const {
  const SafetensorsEntry* e = find(name);
  if (!e) ST_THROW_INPUT(path_, ": no tensor '", name, "'");
  return *e;
}

void SafetensorsFile::read_at(const SafetensorsEntry& e, uint64_t offset, void* dst, size_t bytes) const {
  ST_CHECK(offset + bytes <= e.nbytes(), "read past the end of tensor ", e.name);
  // The header was checked against the file size at open; a short read now means the file
  // was truncated since.
  if (!pread_all(fd_, dst, bytes, data_start_ + e.begin + offset, path_))
    ST_THROW_INPUT(path_, ": tensor '", e.name, "': truncated data (file shorter than its header says)");
}

Tensor SafetensorsFile::read_float(const std::string& name, DType dtype, Device device, MemCategory cat) const {
  const SafetensorsEntry& e = entry_or_throw(name);
  if (!safetensors_is_float(e.dtype))
    ST_THROW_INPUT(path_, ": tensor '", name, "' has dtype ", e.dtype, ", expected a float type");
  if (!is_float(dtype)) ST_THROW("read_float: target dtype ", dtype_name(dtype), " is not a float type");
  if (e.shape.size() > static_cast<size_t>(Shape::kMaxDims))
    ST_THROW_INPUT(path_, ": tensor '", name, "' has ", e.shape.size(), " dimensions, at most ", Shape::kMaxDims,
                   " are supported");
  Shape shape;
  int64_t prefix = 1;  // Shape::numel multiplies in order: every partial product must fit
  for (int64_t d : e.shape) {
    if (__builtin_mul_overflow(prefix, d, &prefix))
      ST_THROW_INPUT(path_, ": tensor '", name, "' has shape ", shape_str(e.shape),
                     ", whose dimensions overflow a 64-bit element count");
    shape.d[static_cast<size_t>(shape.ndim++)] = d;
  }

  Tensor host = Tensor::empty(shape, dtype, Device::cpu, device == Device::cpu ? cat : MemCategory::workspace);
  const DType from = float_dtype_of(e.dtype);
  if (from == dtype) {
    read_at(e, 0, host.data(), e.nbytes());
  } else {
    // Convert through a bounded staging buffer rather than a second full-size copy.
    const size_t src_size = dtype_size(from), dst_size = dtype_size(dtype);
    const size_t n = static_cast<size_t>(e.numel());
    const size_t chunk = std::max<size_t>(1, kConvertChunkBytes / src_size);
    std::vector<uint8_t> staging(std::min(n, chunk) * src_size);
    auto* dst = static_cast<uint8_t*>(host.data());
    for (size_t i0 = 0; i0 < n; i0 += chunk) {
      const size_t cnt = std::min(chunk, n - i0);
      read_at(e, i0 * src_size, staging.data(), cnt * src_size);
      convert_floats(staging.data(), from, dst + i0 * dst_size, dtype, cnt);
    }
  }
  if (device == Device::cpu) return host;
  Tensor out = Tensor::empty(shape, dtype, device, cat);
  out.copy_from(host);
  return out;
}

std::vector<uint8_t> SafetensorsFile::read_raw(const std::string& name) const {
  const SafetensorsEntry& e = entry_or_throw(name);
  std::vector<uint8_t> bytes(e.nbytes());
  read_at(e, 0, bytes.data(), bytes.size());
  return bytes;
}

// ------------------------------------------------------------------------------------ writer

void write_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  // ordered_json keeps the header in the caller's order, which is also the data order.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (name.empty() || name == "__metadata__" || !names.insert(name).second)
      ST_THROW(path, ": cannot write tensor name '", name, "' (empty, reserved or repeated)");
    if (!t.defined()) ST_THROW(path, ": tensor '", name, "' is undefined");
    std::vector<int64_t> dims(t.shape().d.begin(), t.shape().d.begin() + t.ndim());
    header[name] = {{"dtype", safetensors_tag(t.dtype())}, {"shape", dims},
                    {"data_offsets", {offset, offset + t.nbytes()}}};
    offset += t.nbytes();
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    ST_THROW(path, ": cannot encode the header (", e.what(), ")");
  }
  text.append((8 - text.size() % 8) % 8, ' ');  // data buffer starts 8-byte aligned
  uint8_t len_bytes[8];
  const uint64_t n = text.size();
  std::memcpy(len_bytes, &n, 8);

  atomic_write_file(path, [&](AtomicFile& out) {
    out.write(len_bytes, 8);
    out.write(text);
    for (const auto& [name, t] : tensors) {
      if (t.device() == Device::cpu) {
        out.write(t.data(), t.nbytes());
      } else {
        Tensor host = Tensor::empty(t.shape(), t.dtype(), Device::cpu, MemCategory::workspace);
        host.copy_from(t);
        out.write(host.data(), host.nbytes());
      }
    }
  });
}

}  // namespace st
