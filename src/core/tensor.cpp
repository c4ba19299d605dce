#include "core/tensor.hpp"

#include "core/dryrun.hpp"
#include "core/op_trace.hpp"
#include "core/profile.hpp"

#include <cstring>
#include <sstream>

namespace st {

Shape::Shape(std::initializer_list<int64_t> dims) {
  if (dims.size() > static_cast<size_t>(kMaxDims)) ST_THROW("at most ", kMaxDims, " dimensions");
  for (int64_t v : dims) {
    if (v < 0) ST_THROW("negative dimension ", v);
    d[static_cast<size_t>(ndim++)] = v;
  }
}

int64_t Shape::numel() const {
  int64_t n = 1;
  for (int i = 0; i < ndim; ++i) n *= d[static_cast<size_t>(i)];
  return n;
}

bool Shape::operator==(const Shape& o) const {
  if (ndim != o.ndim) return false;
  for (int i = 0; i < ndim; ++i)
    if (d[static_cast<size_t>(i)] != o.d[static_cast<size_t>(i)]) return false;
  return true;
}

std::string Shape::str() const {
  std::ostringstream os;
  os << "[";
  for (int i = 0; i < ndim; ++i) os << (i ? ", " : "") << d[static_cast<size_t>(i)];
  os << "]";
  return os.str();
}

Storage::Storage(size_t nbytes, Device dev, MemCategory cat)
    : allocator(&allocator_for(dev)), bytes(nbytes), device(dev), category(cat) {
  ptr = allocator->allocate(nbytes, cat);
}

Storage::~Storage() { allocator->release(ptr, bytes, category); }

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device, MemCategory cat) {
  Tensor t;
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.device_ = device;
  t.storage_ = std::make_shared<Storage>(static_cast<size_t>(shape.numel()) * dtype_size(dtype),
                                         device, cat);
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device, MemCategory cat) {
  Tensor t = empty(shape, dtype, device, cat);
  t.zero_();
  return t;
}

int64_t Tensor::dim(int i) const {
  if (i < 0) i += shape_.ndim;
  if (i < 0 || i >= shape_.ndim) ST_THROW("dimension ", i, " out of range for ", str());
  return shape_[i];
}

void* Tensor::data() const {
  if (!storage_) ST_THROW("access to an undefined tensor");
  return static_cast<char*>(storage_->ptr) + offset_;
}

Tensor Tensor::view(const Shape& shape) const {
  if (shape.numel() != numel())
    ST_THROW("cannot view ", str(), " as ", shape.str(), ": element counts differ");
  Tensor t = *this;
  t.shape_ = shape;
  return t;
}

Tensor Tensor::slice(int64_t begin, int64_t end) const {
  if (shape_.ndim < 1 || begin < 0 || end < begin || end > shape_[0])
    ST_THROW("slice [", begin, ", ", end, ") out of range for ", str());
  Tensor t = *this;
  const int64_t row = shape_[0] == 0 ? 0 : numel() / shape_[0];
  t.offset_ += static_cast<size_t>(begin * row) * dtype_size(dtype_);
  t.shape_.d[0] = end - begin;
  return t;
}

Tensor Tensor::view_as(DType dtype, size_t byte_offset, const Shape& shape) const {
  const size_t bytes = static_cast<size_t>(shape.numel()) * dtype_size(dtype);
  if (!defined() || byte_offset + bytes > nbytes())
    ST_THROW("view_as: ", bytes, " bytes at offset ", byte_offset, " exceed ", str());
  if ((offset_ + byte_offset) % dtype_size(dtype) != 0)
    ST_THROW("view_as: offset ", byte_offset, " is not aligned for ", dtype_name(dtype));
  Tensor t = *this;
  t.offset_ += byte_offset;
  t.shape_ = shape;
  t.dtype_ = dtype;
  return t;
}

Tensor Tensor::adjacent_rows(const std::vector<const Tensor*>& parts) {
  if (parts.empty() || !parts.front()->defined() || parts.front()->ndim() < 1) return Tensor();
  const Tensor& first = *parts.front();
  Tensor t = first;
  size_t next = first.offset_ + first.nbytes();
  for (size_t i = 1; i < parts.size(); ++i) {
    const Tensor& p = *parts[i];
    if (p.storage_ != first.storage_ || p.dtype_ != first.dtype_ || p.ndim() != first.ndim() || p.offset_ != next)
      return Tensor();
    for (int d = 1; d < first.ndim(); ++d)
      if (p.shape_[d] != first.shape_[d]) return Tensor();
    t.shape_.d[0] += p.shape_[0];
    next += p.nbytes();
  }
  return t;
}

void Tensor::zero_() {
  if (numel() == 0) return;
  const TracedOp traced(OpFamily::copy, {this});
  if (traced.dry()) return;
  ProfileScope prof("zero (memset)", device_);
  device_memset_zero(data(), nbytes(), device_);
}

void Tensor::fill_(double value) {
  if (device_ != Device::cpu) ST_THROW("fill_ on a non-CPU tensor");
  if (dry_run_active()) return;
  const int64_t n = numel();
  switch (dtype_) {
    case DType::f32: { float* p = ptr<float>(); for (int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(value); break; }
    case DType::f64: { double* p = ptr<double>(); for (int64_t i = 0; i < n; ++i) p[i] = value; break; }
    default: ST_THROW("fill_ on ", str());
  }
}

void Tensor::copy_from(const Tensor& src) {
  if (src.dtype_ != dtype_ || src.numel() != numel())
    ST_THROW("copy from ", src.str(), " into ", str(), ": dtype or size differs");
  if (numel() == 0) return;
  TracedOp traced(OpFamily::copy, {this, &src});
  if (device_ != src.device_) traced.host_waits();  // cudaMemcpy between host and device
  if (traced.dry()) return;
  ProfileScope prof(device_ == src.device_ ? "copy (same device)" : "copy (host<->device)", device_ == Device::cuda ? device_ : src.device_);
  device_memcpy(data(), device_, src.data(), src.device_, nbytes());
}

Tensor Tensor::clone(MemCategory cat) const {
  Tensor t = empty(shape_, dtype_, device_, cat);
  t.copy_from(*this);
  return t;
}

Tensor Tensor::to_cpu(DType dtype) const {
  TracedOp traced(OpFamily::copy, {this, this});
  if (device_ != Device::cpu) traced.host_waits();
  if (traced.dry()) return empty(shape_, dtype, Device::cpu, MemCategory::other);  // the planner: sizes only
  Tensor host = *this;
  if (device_ != Device::cpu) {
    host = empty(shape_, dtype_, Device::cpu, MemCategory::other);
    host.copy_from(*this);
  }
  if (dtype == dtype_) return host.storage_ == storage_ ? clone(MemCategory::other) : host;
  Tensor out = empty(shape_, dtype, Device::cpu, MemCategory::other);
  const int64_t n = numel();
  auto load = [&](int64_t i) -> double {
    switch (dtype_) {
      case DType::f32: return static_cast<const float*>(host.data())[i];
      case DType::f64: return static_cast<const double*>(host.data())[i];
      case DType::bf16: return bf16_to_f32(static_cast<const uint16_t*>(host.data())[i]);
      case DType::f16: return f16_to_f32(static_cast<const uint16_t*>(host.data())[i]);
      case DType::i32: return static_cast<const int32_t*>(host.data())[i];
      default: ST_THROW("to_cpu: cannot convert from ", dtype_name(dtype_));
    }
  };
  for (int64_t i = 0; i < n; ++i) {
    const double v = load(i);
    switch (dtype) {
      case DType::f32: static_cast<float*>(out.data())[i] = static_cast<float>(v); break;
      case DType::f64: static_cast<double*>(out.data())[i] = v; break;
      case DType::bf16: static_cast<uint16_t*>(out.data())[i] = f32_to_bf16(static_cast<float>(v)); break;
      case DType::f16: static_cast<uint16_t*>(out.data())[i] = f32_to_f16(static_cast<float>(v)); break;
      default: ST_THROW("to_cpu: cannot convert to ", dtype_name(dtype));
    }
  }
  return out;
}

std::string Tensor::str() const {
  return st::str(dtype_name(dtype_), shape_.str(), " ", device_name(device_));
}

void check_shape(const Tensor& t, const Shape& expected, const char* what) {
  if (!t.defined()) ST_THROW(what, ": tensor is undefined, expected shape ", expected.str());
  if (t.shape() != expected) ST_THROW(what, ": shape ", t.shape().str(), ", expected ", expected.str());
}

void check_same_device(const Tensor& a, const Tensor& b, const char* what) {
  if (a.device() != b.device())
    ST_THROW(what, ": tensors on different devices (", a.str(), " and ", b.str(), ")");
}

#ifndef SHARDTUNE_CUDA
void device_memset_zero(void* ptr, size_t bytes, Device d) {
  if (d != Device::cpu) ST_THROW("CUDA memory in a build without CUDA");
  std::memset(ptr, 0, bytes);
}
void device_memcpy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes) {
  if (dst_dev != Device::cpu || src_dev != Device::cpu) ST_THROW("CUDA memory in a build without CUDA");
  std::memcpy(dst, src, bytes);
}
#endif

}  // namespace st
