#include "tests/common/nf4_golden.hpp"

#include <gtest/gtest.h>

#include <cmath>
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

double nf4_offset_tolerance(int64_t n, double mean) {
  // Both offsets are an f32 sum of the same n absmax values (all >= 0) times the same f32
  // reciprocal of n, the sums in different orders. A sum whose longest chain of additions has d
  // roundings is within gamma_d = d u / (1 - d u) of the exact sum (u = 2^-24; Higham, "Accuracy
  // and Stability of Numerical Algorithms", 2nd ed., section 4.2). Ours: d = ceil(n / 256) + 8
  // (256 strided lanes, then a tree). torch.mean on the GPU (ATen's Reduce.cuh): at least 32
  // threads share the values, each with a few accumulators combined by trees over the
  // accumulators, the block and the blocks: d <= ceil(n / 32) + 32. The final product rounds
  // each once more: u (half an ulp each).
  const double u = std::ldexp(1.0, -24);
  const double d = std::ceil(static_cast<double>(n) / 256) + 8 + std::ceil(static_cast<double>(n) / 32) + 32;
  return (d * u / (1 - d * u) + u) * mean;
}

void check_nf4_golden_case(const Nf4GoldenCase& c, Device device) {
  SCOPED_TRACE(c.name);
  Tensor w = Tensor::empty({c.rows, c.cols}, DType::bf16);
  ASSERT_EQ(c.w_bf16.size(), static_cast<size_t>(w.numel()));
  std::memcpy(w.data(), c.w_bf16.data(), w.nbytes());
  const Tensor w_cpu = w;
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
    // The first-level absmax, exact (a max of magnitudes), from the CPU quantizer without double quantization.
    Nf4Config plain = cfg;
    plain.double_quant = false;
    Nf4Tensor raw = nf4_allocate(c.rows, c.cols, plain, Device::cpu);
    nf4_quantize(w_cpu, raw);
    const int64_t nb = raw.nblocks();
    const float* absmax = raw.absmax.ptr<float>();
    double exact = 0;
    for (int64_t b = 0; b < nb; ++b) exact += absmax[b];
    exact /= static_cast<double>(nb);
    // The offset: bitsandbytes' f32 mean, summed in another order than torch's (the bound above).
    const double tol = nf4_offset_tolerance(nb, exact);
    EXPECT_LE(std::fabs(static_cast<double>(q.offset) - c.offset), 2 * tol) << "offset " << q.offset << " vs the fixture's " << c.offset;
    EXPECT_LE(std::fabs(static_cast<double>(q.offset) - exact), tol) << "offset " << q.offset << " vs the exact mean " << exact;
    // Given the fixture's offset, the second level is bit-equal to it; given its own, this
    // device's second level is the CPU's.
    std::vector<uint8_t> qa(static_cast<size_t>(nb));
    std::vector<float> a2(static_cast<size_t>((nb + Nf4Config::kBlock2 - 1) / Nf4Config::kBlock2));
    nf4_double_quantize(absmax, nb, c.offset, qa.data(), a2.data());
    expect_bits_equal(qa, c.qabsmax, "8-bit absmax codes (with the fixture's offset)");
    expect_bits_equal(a2, c.absmax2, "second-level absmax (with the fixture's offset)");
    nf4_double_quantize(absmax, nb, q.offset, qa.data(), a2.data());
    expect_bits_equal(host_vec<uint8_t>(q.qabsmax), qa, "8-bit absmax codes (with this device's offset)");
    expect_bits_equal(host_vec<float>(q.absmax2), a2, "second-level absmax (with this device's offset)");
    // Dequantization of the fixture's quantized state below.
    Tensor hq = Tensor::empty({nb}, DType::u8), ha2 = Tensor::empty({static_cast<int64_t>(c.absmax2.size())}, DType::f32);
    std::memcpy(hq.data(), c.qabsmax.data(), c.qabsmax.size());
    std::memcpy(ha2.data(), c.absmax2.data(), c.absmax2.size() * sizeof(float));
    q.qabsmax.copy_from(hq);
    q.absmax2.copy_from(ha2);
    q.offset = c.offset;
  } else {
    expect_bits_equal(host_vec<float>(q.absmax), c.absmax, "absmax");
  }
  Tensor out = Tensor::empty({c.rows, c.cols}, DType::bf16, device);
  nf4_dequantize(q, out);
  expect_bits_equal(host_vec<uint16_t>(out), c.dequantized_bf16, "dequantized bf16");
}

}  // namespace st::test
