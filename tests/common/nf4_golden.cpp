#include "tests/common/nf4_golden.hpp"

#include <gtest/gtest.h>

#include <cstring>

#include "io/h5util.hpp"
#include "quant/nf4.hpp"
#include "tests/common/paths.hpp"

namespace st::test {

namespace {

template <typename T>
std::vector<T> read_vec(hid_t g, const std::string& name, hid_t type, const std::string& where) {
  const auto dims = h5::dataset_dims(g, name, where);
  size_t n = 1;
  for (hsize_t d : dims) n *= static_cast<size_t>(d);
  std::vector<T> v(n);
  h5::read_dataset(g, name, type, v.data(), where);
  return v;
}

template <typename T>
std::vector<T> host_vec(const Tensor& t) {
  const Tensor h = t.to_cpu(t.dtype());
  std::vector<T> v(static_cast<size_t>(h.numel()));
  std::memcpy(v.data(), h.data(), h.nbytes());
  return v;
}

template <typename T>
void expect_bits_equal(const std::vector<T>& got, const std::vector<T>& want, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < got.size(); ++i)
    if (std::memcmp(&got[i], &want[i], sizeof(T)) != 0 && bad++ == 0) first = i;
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << got.size() << " differ, first at " << first;
}

}  // namespace

std::string nf4_golden_path() { return repo_root() + "/tests/golden/nf4_golden.h5"; }

Nf4Golden load_nf4_golden() {
  Nf4Golden g;
  g.path = nf4_golden_path();
  h5::Handle f = h5::open_file_read(g.path);
  g.dynamic_map = read_vec<float>(f, "dynamic_map", H5T_NATIVE_FLOAT, g.path);
  for (const char* name : {"b64_dq", "b128_plain", "b256_dq", "b64_dq_big"}) {
    h5::Handle grp = h5::open_group(f, name);
    const std::string where = g.path + ":" + name;
    Nf4GoldenCase c;
    c.name = name;
    c.rows = h5::read_attr_int(grp, "rows", where);
    c.cols = h5::read_attr_int(grp, "cols", where);
    c.block = h5::read_attr_int(grp, "block", where);
    c.double_quant = h5::read_attr_int(grp, "double_quant", where) != 0;
    c.w_bf16 = read_vec<uint16_t>(grp, "w_bf16", H5T_NATIVE_UINT16, where);
    c.dequantized_bf16 = read_vec<uint16_t>(grp, "dequantized_bf16", H5T_NATIVE_UINT16, where);
    c.codes = read_vec<uint8_t>(grp, "codes", H5T_NATIVE_UINT8, where);
    if (c.double_quant) {
      c.qabsmax = read_vec<uint8_t>(grp, "qabsmax", H5T_NATIVE_UINT8, where);
      c.absmax2 = read_vec<float>(grp, "absmax2", H5T_NATIVE_FLOAT, where);
      c.offset = static_cast<float>(h5::read_attr_double(grp, "offset", where));
    } else {
      c.absmax = read_vec<float>(grp, "absmax", H5T_NATIVE_FLOAT, where);
    }
    g.cases.push_back(std::move(c));
  }
  return g;
}

void check_nf4_golden_case(const Nf4GoldenCase& c, Device device) {
  SCOPED_TRACE(c.name);
  Tensor w = Tensor::empty({c.rows, c.cols}, DType::bf16);
  ASSERT_EQ(c.w_bf16.size(), static_cast<size_t>(w.numel()));
  std::memcpy(w.data(), c.w_bf16.data(), w.nbytes());
  if (device != Device::cpu) {
    Tensor d = Tensor::empty(w.shape(), DType::bf16, device);
    d.copy_from(w);
    w = d;
  }
  Nf4Config cfg;
  cfg.block = c.block;
  cfg.double_quant = c.double_quant;
  Nf4Tensor q = nf4_allocate(c.rows, c.cols, cfg, device);
  nf4_quantize(w, q);
  expect_bits_equal(host_vec<uint8_t>(q.codes), c.codes, "codes");
  if (c.double_quant) {
    EXPECT_EQ(q.offset, c.offset) << "offset (mean of the absmax values)";
    expect_bits_equal(host_vec<uint8_t>(q.qabsmax), c.qabsmax, "8-bit absmax codes");
    expect_bits_equal(host_vec<float>(q.absmax2), c.absmax2, "second-level absmax");
  } else {
    expect_bits_equal(host_vec<float>(q.absmax), c.absmax, "absmax");
  }
  Tensor out = Tensor::empty({c.rows, c.cols}, DType::bf16, device);
  nf4_dequantize(q, out);
  expect_bits_equal(host_vec<uint16_t>(out), c.dequantized_bf16, "dequantized bf16");
}

}  // namespace st::test
