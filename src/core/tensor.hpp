// Tensor: a shape, an element type, a device and a (shared, reference-counted) buffer.
//
// Tensors are row-major and contiguous. A view (reshape, leading-dimension slice) shares the
// buffer of its source. Buffers come from the device's Allocator and count towards a memory
// category, so peak memory by category is known at any time.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "core/allocator.hpp"
#include "core/dtype.hpp"
#include "core/error.hpp"

namespace st {

struct Shape {
  static constexpr int kMaxDims = 4;
  int ndim = 0;
  std::array<int64_t, kMaxDims> d{};

  Shape() = default;
  Shape(std::initializer_list<int64_t> dims);
  int64_t operator[](int i) const { return d[static_cast<size_t>(i)]; }
  int64_t numel() const;
  bool operator==(const Shape& o) const;
  bool operator!=(const Shape& o) const { return !(*this == o); }
  std::string str() const;  // "[4, 16, 64]"
};

template <typename T> struct dtype_of;
template <> struct dtype_of<float> { static constexpr DType value = DType::f32; };
template <> struct dtype_of<double> { static constexpr DType value = DType::f64; };
template <> struct dtype_of<int32_t> { static constexpr DType value = DType::i32; };
template <> struct dtype_of<int64_t> { static constexpr DType value = DType::i64; };
template <> struct dtype_of<uint8_t> { static constexpr DType value = DType::u8; };

struct Storage {
  Allocator* allocator = nullptr;  // the one that made it (a dry run's, or the device's)
  void* ptr = nullptr;
  size_t bytes = 0;
  Device device = Device::cpu;
  MemCategory category = MemCategory::other;
  Storage(size_t nbytes, Device dev, MemCategory cat);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

class Tensor {
 public:
  Tensor() = default;

  static Tensor empty(const Shape& shape, DType dtype, Device device = Device::cpu,
                      MemCategory cat = MemCategory::other);
  static Tensor zeros(const Shape& shape, DType dtype, Device device = Device::cpu,
                      MemCategory cat = MemCategory::other);

  bool defined() const { return storage_ != nullptr; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return shape_.ndim; }
  int64_t dim(int i) const;
  int64_t numel() const { return shape_.numel(); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  MemCategory category() const { return storage_ ? storage_->category : MemCategory::other; }

  void* data() const;
  template <typename T>
  T* ptr() const {
    if (dtype_of<T>::value != dtype_)
      ST_THROW("tensor of dtype ", dtype_name(dtype_), " accessed as ", dtype_name(dtype_of<T>::value));
    return static_cast<T*>(data());
  }

  // Same buffer, new shape with the same element count.
  Tensor view(const Shape& shape) const;
  // Rows [begin, end) of the leading dimension (a view).
  Tensor slice(int64_t begin, int64_t end) const;
  // The bytes [byte_offset, byte_offset + shape.numel() * size(dtype)) of this tensor's buffer
  // reinterpreted as a `dtype` tensor of `shape` (a view; e.g. typed tensors inside a flat byte
  // buffer). The range must lie inside this tensor and be aligned for `dtype`.
  Tensor view_as(DType dtype, size_t byte_offset, const Shape& shape) const;
  // The rows of `parts` stacked as one tensor, when they are consecutive views of one buffer
  // (each part's rows start where the previous part's end; same dtype and trailing dimensions):
  // a view of that buffer. Otherwise (separate buffers, a gap, a mismatch) an undefined tensor.
  static Tensor adjacent_rows(const std::vector<const Tensor*>& parts);

  void zero_();
  void fill_(double value);            // CPU float tensors only
  void copy_from(const Tensor& src);   // same dtype and element count; any devices
  Tensor clone(MemCategory cat) const; // same device
  // A CPU copy converted to `dtype` (float types only), e.g. for checks and HDF5 output.
  Tensor to_cpu(DType dtype) const;

  std::string str() const;  // "f32[4, 16] cpu"

 private:
  std::shared_ptr<Storage> storage_;
  size_t offset_ = 0;  // bytes from storage_->ptr
  Shape shape_;
  DType dtype_ = DType::f32;
  Device device_ = Device::cpu;
};

// Check helpers used by every op launcher: shapes, dtypes and devices must agree exactly.
void check_shape(const Tensor& t, const Shape& expected, const char* what);
void check_same_device(const Tensor& a, const Tensor& b, const char* what);

// Device-side memory primitives; on CPU plain memset/memcpy, on CUDA the runtime's.
void device_memset_zero(void* ptr, size_t bytes, Device d);
void device_memcpy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes);

}  // namespace st
