// safetensors reader/writer and CheckpointReader: round trips, exact conversions, and one test per
// refusal of a bad file (each built byte by byte), checking the message names the file and field.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>

#include "core/error.hpp"
#include "core/tensor.hpp"
#include "io/hf_checkpoint.hpp"
#include "io/safetensors.hpp"
#include "tests/common/paths.hpp"
#include "tests/common/test_util.hpp"

namespace fs = std::filesystem;
using st::DType;
using st::Device;
using st::MemCategory;
using st::Tensor;

namespace {

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  std::memcpy(s.data(), &n, 8);
  return s;
}
// A safetensors file: length prefix, header text, data bytes.
std::string st_bytes(const std::string& header, const std::string& data) { return le64(header.size()) + header + data; }

using st::test::expect_input_error;

Tensor u16_tensor(const st::Shape& shape, DType dtype, const std::vector<uint16_t>& bits) {
  Tensor t = Tensor::empty(shape, dtype);
  EXPECT_EQ(static_cast<size_t>(t.numel()), bits.size());
  std::memcpy(t.data(), bits.data(), bits.size() * 2);
  return t;
}

std::vector<uint8_t> bytes_of(const Tensor& t) {
  const auto* p = static_cast<const uint8_t*>(t.data());
  return {p, p + t.nbytes()};
}

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = st::test::make_temp_dir("safetensors"); }
  void TearDown() override { fs::remove_all(dir_); }
  std::string path(const std::string& name) const { return dir_ + "/" + name; }
  // Writes a hand-made file and expects opening it to fail naming the file and `parts`.
  void expect_open_refused(const std::string& content, std::vector<std::string> parts) {
    const std::string p = path("bad.safetensors");
    st::test::write_file(p, content);
    parts.push_back(p);
    expect_input_error([&] { st::SafetensorsFile::open(p); }, parts);
  }
  std::string dir_;
};

}  // namespace

TEST_F(SafetensorsTest, RoundTripAllDtypesAndMetadata) {
  Tensor f32 = Tensor::empty({2, 3}, DType::f32);
  for (int i = 0; i < 6; ++i) f32.ptr<float>()[i] = 0.25f * static_cast<float>(i) - 1.0f;
  Tensor bf16 = u16_tensor({4}, DType::bf16, {0x3f80, 0xc020, 0x0001, 0x7f7f});
  Tensor f16 = u16_tensor({2, 2}, DType::f16, {0x3c00, 0xc100, 0x7bff, 0x8000});
  Tensor i32 = Tensor::empty({5}, DType::i32);
  for (int i = 0; i < 5; ++i) i32.ptr<int32_t>()[i] = i * 1000 - 2;
  Tensor u8 = Tensor::empty({3}, DType::u8);  // 3 bytes: the next offset is not 4-aligned
  for (int i = 0; i < 3; ++i) u8.ptr<uint8_t>()[i] = static_cast<uint8_t>(250 + i);
  Tensor f64 = Tensor::empty({1, 1, 2}, DType::f64);
  f64.ptr<double>()[0] = 1.0 / 3.0;
  f64.ptr<double>()[1] = -1e300;
  const std::vector<std::pair<std::string, Tensor>> tensors = {
      {"w.f32", f32}, {"b.bf16", bf16}, {"h.f16", f16}, {"ids", i32}, {"mask", u8}, {"d", f64}};
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "héllo"}};
  const std::string p = path("rt.safetensors");
  st::write_safetensors(p, tensors, meta);
  EXPECT_FALSE(fs::exists(p + ".tmp"));

  // Layout: header length a multiple of 8, contiguous offsets in the given order, no slack.
  const std::string raw = st::test::read_file(p);
  uint64_t n;
  std::memcpy(&n, raw.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  size_t total = 0;
  for (const auto& kv : tensors) total += kv.second.nbytes();
  EXPECT_EQ(raw.size(), 8 + n + total);

  const auto f = st::SafetensorsFile::open(p);
  EXPECT_EQ(f.path(), p);
  EXPECT_EQ(f.metadata(), meta);
  ASSERT_EQ(f.entries().size(), tensors.size());
  const std::vector<std::string> tags = {"F32", "BF16", "F16", "I32", "U8", "F64"};
  uint64_t offset = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const st::SafetensorsEntry& e = f.entries()[i];
    const Tensor& t = tensors[i].second;
    EXPECT_EQ(e.name, tensors[i].first);
    EXPECT_EQ(e.dtype, tags[i]);
    EXPECT_EQ(e.shape, std::vector<int64_t>(t.shape().d.begin(), t.shape().d.begin() + t.ndim()));
    EXPECT_EQ(e.begin, offset);
    EXPECT_EQ(e.end, offset + t.nbytes());
    offset = e.end;
    EXPECT_EQ(f.read_raw(e.name), bytes_of(t)) << e.name;
    EXPECT_EQ(f.find(e.name), &e);
  }
  EXPECT_EQ(f.find("absent"), nullptr);

  // Float tensors read back in their own dtype are bit-identical.
  for (const auto* name : {"w.f32", "b.bf16", "h.f16", "d"}) {
    const Tensor& src = std::find_if(tensors.begin(), tensors.end(), [&](auto& kv) { return kv.first == name; })->second;
    const Tensor back = f.read_float(name, src.dtype(), Device::cpu, MemCategory::weights);
    EXPECT_EQ(back.shape(), src.shape());
    EXPECT_EQ(back.category(), MemCategory::weights);
    EXPECT_EQ(bytes_of(back), bytes_of(src)) << name;
  }
}

TEST_F(SafetensorsTest, NoMetadataWritesNoMetadataKey) {
  const std::string p = path("plain.safetensors");
  st::write_safetensors(p, {{"x", Tensor::zeros({2}, DType::f32)}});
  EXPECT_EQ(st::test::read_file(p).find("__metadata__"), std::string::npos);
  EXPECT_TRUE(st::SafetensorsFile::open(p).metadata().empty());
}

TEST_F(SafetensorsTest, ReadFloatConvertsExactly) {
  // f16: 1, -2.5, 65504 (max), 2^-24 (smallest subnormal), -0, 1/3 rounded (0x3555).
  const Tensor f16 = u16_tensor({6}, DType::f16, {0x3c00, 0xc100, 0x7bff, 0x0001, 0x8000, 0x3555});
  const std::vector<float> f16_expect = {1.0f, -2.5f, 65504.0f, 0x1p-24f, -0.0f, 0.333251953125f};
  // bf16: 1, -2.5, 3.140625, 2^-133 (smallest subnormal), max finite.
  const Tensor bf16 = u16_tensor({5}, DType::bf16, {0x3f80, 0xc020, 0x4049, 0x0001, 0x7f7f});
  const std::vector<float> bf16_expect = {1.0f, -2.5f, 3.140625f, 0x1p-133f, 0x1.fep127f};
  // f32 -> bf16 rounds to nearest even: 1 + 2^-8 is a tie and goes down to 1.0; 1 + 3*2^-8 goes up.
  Tensor f32 = Tensor::empty({3}, DType::f32);
  f32.ptr<float>()[0] = 1.0f + 0x1p-8f;
  f32.ptr<float>()[1] = 1.0f + 3 * 0x1p-8f;
  f32.ptr<float>()[2] = -2.5f;
  const std::string p = path("conv.safetensors");
  st::write_safetensors(p, {{"h", f16}, {"b", bf16}, {"f", f32}});
  const auto f = st::SafetensorsFile::open(p);

  const Tensor h = f.read_float("h", DType::f32, Device::cpu, MemCategory::weights);
  for (size_t i = 0; i < f16_expect.size(); ++i) EXPECT_EQ(h.ptr<float>()[i], f16_expect[i]) << i;
  EXPECT_TRUE(std::signbit(h.ptr<float>()[4]));
  const Tensor b = f.read_float("b", DType::f32, Device::cpu, MemCategory::weights);
  for (size_t i = 0; i < bf16_expect.size(); ++i) EXPECT_EQ(b.ptr<float>()[i], bf16_expect[i]) << i;
  const Tensor b64 = f.read_float("b", DType::f64, Device::cpu, MemCategory::weights);
  for (size_t i = 0; i < bf16_expect.size(); ++i) EXPECT_EQ(b64.ptr<double>()[i], double(bf16_expect[i])) << i;

  const Tensor fb = f.read_float("f", DType::bf16, Device::cpu, MemCategory::weights);
  const auto* fb_bits = static_cast<const uint16_t*>(fb.data());
  EXPECT_EQ(fb_bits[0], 0x3f80);
  EXPECT_EQ(fb_bits[1], 0x3f82);
  EXPECT_EQ(fb_bits[2], 0xc020);
}

TEST_F(SafetensorsTest, ReadFloatConvertsAcrossStagingChunks) {
  // More elements than one 16 MiB staging chunk of bf16 holds (8 Mi), so the loop runs twice.
  const int64_t n = (8 << 20) + 1000;
  Tensor t = Tensor::empty({n}, DType::bf16);
  auto* bits = static_cast<uint16_t*>(t.data());
  for (int64_t i = 0; i < n; ++i) bits[i] = st::f32_to_bf16(static_cast<float>(i % 256));  // exact in bf16
  const std::string p = path("big.safetensors");
  st::write_safetensors(p, {{"big", t}});
  const Tensor back = st::SafetensorsFile::open(p).read_float("big", DType::f32, Device::cpu, MemCategory::weights);
  const float* v = back.ptr<float>();
  int64_t wrong = 0;
  for (int64_t i = 0; i < n; ++i) wrong += (v[i] != static_cast<float>(i % 256));
  EXPECT_EQ(wrong, 0);
}

TEST_F(SafetensorsTest, HandWrittenFileWithEmptyTensorAndUnpaddedHeader) {
  // Unpadded header, offsets listed out of order, a zero-sized tensor: all valid per the spec.
  const std::string header =
      R"({"b":{"dtype":"I8","shape":[2],"data_offsets":[4,6]},)"
      R"("e":{"dtype":"F32","shape":[0,3],"data_offsets":[4,4]},)"
      R"("a":{"dtype":"BOOL","shape":[2,2],"data_offsets":[0,4]}})";
  const std::string p = path("hand.safetensors");
  st::test::write_file(p, st_bytes(header, std::string("\x01\x00\x01\x01\x7f\x80", 6)));
  const auto f = st::SafetensorsFile::open(p);
  ASSERT_EQ(f.entries().size(), 3u);
  EXPECT_EQ(f.entries()[0].name, "a");  // offset order
  EXPECT_EQ(f.read_raw("b"), (std::vector<uint8_t>{0x7f, 0x80}));
  EXPECT_EQ(f.read_float("e", DType::f32, Device::cpu, MemCategory::weights).shape(), (st::Shape{0, 3}));
  expect_input_error([&] { f.read_float("b", DType::f32, Device::cpu, MemCategory::weights); },
                     {p, "'b'", "has dtype I8, expected a float type"});
}

// ---------------------------------------------------------------- refusals of bad files

TEST_F(SafetensorsTest, RefusesFileShorterThanLengthPrefix) {
  expect_open_refused(std::string(5, '\0'), {"too short"});
}

TEST_F(SafetensorsTest, RefusesZeroHeaderLength) { expect_open_refused(le64(0) + "{}", {"header length is 0"}); }

TEST_F(SafetensorsTest, RefusesHugeHeaderLength) {
  expect_open_refused(le64(uint64_t(1) << 62) + "{}", {"header length", "exceeds the limit"});
}

TEST_F(SafetensorsTest, RefusesHeaderLengthLargerThanFile) {
  expect_open_refused(le64(1000) + R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})",
                      {"truncated header", "1000"});
}

TEST_F(SafetensorsTest, RefusesTruncatedHeader) {
  const std::string header = R"({"weight":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  // The length prefix is right, but the file ends in the middle of the header.
  expect_open_refused(le64(header.size()) + header.substr(0, 20), {"truncated header"});
}

TEST_F(SafetensorsTest, RefusesTruncatedData) {
  const std::string header = R"({"weight":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})";
  expect_open_refused(st_bytes(header, std::string(8, '\0')), {"'weight'", "truncated data"});
}

TEST_F(SafetensorsTest, RefusesBadJson) {
  expect_open_refused(st_bytes(R"({"weight":{"dtype":"F32",)", ""), {"not valid JSON"});
}

TEST_F(SafetensorsTest, RefusesNonObjectHeader) {
  expect_open_refused(st_bytes("[1, 2, 3]", ""), {"must be a JSON object"});
}

TEST_F(SafetensorsTest, RefusesOverlappingOffsets) {
  const std::string header =
      R"({"first":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
      R"("second":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})";
  expect_open_refused(st_bytes(header, std::string(24, '\0')), {"'first'", "'second'", "overlap"});
}

TEST_F(SafetensorsTest, RefusesOffsetsNotMatchingNumelTimesSize) {
  const std::string header = R"({"weight":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,16]}})";
  expect_open_refused(st_bytes(header, std::string(16, '\0')), {"'weight'", "span 16 bytes", "needs 12"});
}

TEST_F(SafetensorsTest, RefusesUnsupportedDtype) {
  const std::string header = R"({"weight":{"dtype":"F8_E4M3","shape":[4],"data_offsets":[0,4]}})";
  expect_open_refused(st_bytes(header, std::string(4, '\0')), {"'weight'", "unsupported dtype 'F8_E4M3'"});
}

TEST_F(SafetensorsTest, RefusesBeginAfterEnd) {
  const std::string header = R"({"weight":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}})";
  expect_open_refused(st_bytes(header, std::string(4, '\0')), {"'weight'", "begin > end"});
}

TEST_F(SafetensorsTest, RefusesNegativeOrFractionalShape) {
  expect_open_refused(st_bytes(R"({"weight":{"dtype":"U8","shape":[-1],"data_offsets":[0,0]}})", ""),
                      {"'weight'", "'shape'"});
  expect_open_refused(st_bytes(R"({"weight":{"dtype":"U8","shape":[1.5],"data_offsets":[0,0]}})", ""),
                      {"'weight'", "'shape'"});
}

TEST_F(SafetensorsTest, RefusesShapeWhoseSizeOverflows) {
  // 2^62 * 2^62 elements wraps a u64; checked arithmetic must refuse it, not accept a tiny size.
  const std::string header =
      R"({"weight":{"dtype":"F32","shape":[4611686018427387904,4611686018427387904,4],"data_offsets":[0,0]}})";
  expect_open_refused(st_bytes(header, ""), {"'weight'", "too large"});
}

TEST_F(SafetensorsTest, RefusesMissingFields) {
  expect_open_refused(st_bytes(R"({"weight":{"dtype":"F32","shape":[1]}})", std::string(4, '\0')),
                      {"'weight'", "'data_offsets'"});
  expect_open_refused(st_bytes(R"({"weight":{"shape":[1],"data_offsets":[0,4]}})", std::string(4, '\0')),
                      {"'weight'", "'dtype'"});
}

TEST_F(SafetensorsTest, RefusesNonStringMetadata) {
  expect_open_refused(st_bytes(R"({"__metadata__":{"epoch":3}})", ""), {"__metadata__", "'epoch'"});
}

TEST_F(SafetensorsTest, RefusesDuplicateTensorNames) {
  const std::string header =
      R"({"weight":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
      R"("weight":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})";
  expect_open_refused(st_bytes(header, "ab"), {"'weight'", "appears twice"});
}

TEST_F(SafetensorsTest, RefusesMissingFile) {
  const std::string p = path("nope.safetensors");
  expect_input_error([&] { st::SafetensorsFile::open(p); }, {p, "cannot open"});
}

// ---------------------------------------------------------------- atomic writes

TEST_F(SafetensorsTest, FailedWriteLeavesNoFile) {
  const std::string p = path("partial.safetensors");
  // The second tensor is undefined: nothing may appear under the final name or as a temp file.
  EXPECT_THROW(st::write_safetensors(p, {{"ok", Tensor::zeros({2}, DType::f32)}, {"bad", Tensor()}}), st::Error);
  EXPECT_THROW(st::write_safetensors(p, {{"x", Tensor::zeros({2}, DType::f32)}, {"x", Tensor::zeros({2}, DType::f32)}}),
               st::Error);
  EXPECT_FALSE(fs::exists(p));
  EXPECT_FALSE(fs::exists(p + ".tmp"));
  EXPECT_THROW(st::write_safetensors(dir_ + "/no/such/dir/x.safetensors", {}), st::Error);
}

TEST_F(SafetensorsTest, RewriteReplacesExistingFile) {
  const std::string p = path("w.safetensors");
  st::write_safetensors(p, {{"a", Tensor::zeros({4}, DType::f32)}});
  st::write_safetensors(p, {{"b", Tensor::zeros({2}, DType::i32)}});
  const auto f = st::SafetensorsFile::open(p);
  ASSERT_EQ(f.entries().size(), 1u);
  EXPECT_EQ(f.entries()[0].name, "b");
  EXPECT_FALSE(fs::exists(p + ".tmp"));
}

// ---------------------------------------------------------------- CheckpointReader

TEST_F(SafetensorsTest, CheckpointReadsSingleFileAndTracksUse) {
  Tensor w = Tensor::empty({2, 3}, DType::f32);
  for (int i = 0; i < 6; ++i) w.ptr<float>()[i] = static_cast<float>(i);
  st::write_safetensors(path("model.safetensors"), {{"w", w}, {"n", Tensor::zeros({3}, DType::f32)}});
  auto ck = st::CheckpointReader::open(dir_);
  EXPECT_TRUE(ck.has("w"));
  EXPECT_FALSE(ck.has("x"));
  EXPECT_EQ(ck.names(), (std::vector<std::string>{"n", "w"}));
  EXPECT_EQ(ck.unused_names(), (std::vector<std::string>{"n", "w"}));
  const Tensor r = ck.read("w", {2, 3}, DType::f64, Device::cpu, MemCategory::weights);
  EXPECT_EQ(r.ptr<double>()[5], 5.0);
  EXPECT_EQ(ck.unused_names(), (std::vector<std::string>{"n"}));
  EXPECT_EQ(ck.entry("n").shape, (std::vector<int64_t>{3}));
}

TEST_F(SafetensorsTest, CheckpointRefusesWrongShape) {
  st::write_safetensors(path("model.safetensors"), {{"proj.weight", Tensor::zeros({2, 3}, DType::f32)}});
  auto ck = st::CheckpointReader::open(dir_);
  expect_input_error([&] { ck.read("proj.weight", {3, 2}, DType::f32, Device::cpu, MemCategory::weights); },
                     {path("model.safetensors"), "tensor 'proj.weight' has shape [2, 3], expected [3, 2]"});
  EXPECT_EQ(ck.unused_names().size(), 1u);  // a refused read does not count as use
}

TEST_F(SafetensorsTest, CheckpointRefusesIntegerDtype) {
  st::write_safetensors(path("model.safetensors"), {{"proj.weight", Tensor::zeros({4}, DType::i32)}});
  auto ck = st::CheckpointReader::open(dir_);
  expect_input_error([&] { ck.read("proj.weight", {4}, DType::f32, Device::cpu, MemCategory::weights); },
                     {path("model.safetensors"), "tensor 'proj.weight' has dtype I32, expected a float type"});
}

TEST_F(SafetensorsTest, CheckpointRefusesMissingTensorAndEmptyDir) {
  expect_input_error([&] { st::CheckpointReader::open(dir_); },
                     {dir_, "no model.safetensors or model.safetensors.index.json"});
  st::write_safetensors(path("model.safetensors"), {{"a", Tensor::zeros({1}, DType::f32)}});
  auto ck = st::CheckpointReader::open(dir_);
  expect_input_error([&] { ck.read("b", {1}, DType::f32, Device::cpu, MemCategory::weights); },
                     {dir_, "checkpoint has no tensor 'b'"});
}

TEST_F(SafetensorsTest, CheckpointReadsShardsThroughIndex) {
  Tensor a = Tensor::empty({2}, DType::f32);
  a.ptr<float>()[0] = 1.5f;
  a.ptr<float>()[1] = -3.0f;
  Tensor b = u16_tensor({1, 2}, DType::bf16, {0x4049, 0xc020});
  st::write_safetensors(path("model-00001-of-00002.safetensors"), {{"a", a}, {"c", Tensor::zeros({1}, DType::f32)}});
  st::write_safetensors(path("model-00002-of-00002.safetensors"), {{"b", b}});
  st::test::write_file(path("model.safetensors.index.json"),
                       R"({"metadata": {"total_size": 16}, "weight_map": {)"
                       R"("a": "model-00001-of-00002.safetensors", "c": "model-00001-of-00002.safetensors",)"
                       R"("b": "model-00002-of-00002.safetensors"}})");
  auto ck = st::CheckpointReader::open(dir_);
  EXPECT_EQ(ck.names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(ck.file_of("b"), path("model-00002-of-00002.safetensors"));
  const Tensor ra = ck.read("a", {2}, DType::f32, Device::cpu, MemCategory::weights);
  EXPECT_EQ(ra.ptr<float>()[0], 1.5f);
  EXPECT_EQ(ra.ptr<float>()[1], -3.0f);
  const Tensor rb = ck.read("b", {1, 2}, DType::f32, Device::cpu, MemCategory::weights);
  EXPECT_EQ(rb.ptr<float>()[0], 3.140625f);
  EXPECT_EQ(rb.ptr<float>()[1], -2.5f);
  EXPECT_EQ(ck.unused_names(), (std::vector<std::string>{"c"}));
}

TEST_F(SafetensorsTest, CheckpointRefusesMissingShard) {
  st::write_safetensors(path("model-00001-of-00002.safetensors"), {{"a", Tensor::zeros({1}, DType::f32)}});
  st::test::write_file(path("model.safetensors.index.json"),
                       R"({"weight_map": {"a": "model-00001-of-00002.safetensors",)"
                       R"("b": "model-00002-of-00002.safetensors"}})");
  expect_input_error([&] { st::CheckpointReader::open(dir_); },
                     {path("model.safetensors.index.json"), "model-00002-of-00002.safetensors", "'b'", "does not exist"});
}

TEST_F(SafetensorsTest, CheckpointRefusesTensorMissingFromItsShard) {
  st::write_safetensors(path("shard.safetensors"), {{"a", Tensor::zeros({1}, DType::f32)}});
  st::test::write_file(path("model.safetensors.index.json"),
                       R"({"weight_map": {"a": "shard.safetensors", "ghost": "shard.safetensors"}})");
  expect_input_error([&] { st::CheckpointReader::open(dir_); },
                     {path("model.safetensors.index.json"), "'ghost'", "not stored there"});
}

TEST_F(SafetensorsTest, CheckpointRefusesBadIndex) {
  const std::string index = path("model.safetensors.index.json");
  st::test::write_file(index, R"({"metadata": {}})");
  expect_input_error([&] { st::CheckpointReader::open(dir_); }, {index, "'weight_map'"});
  st::test::write_file(index, R"({"weight_map": {"a": "../outside.safetensors"}})");
  expect_input_error([&] { st::CheckpointReader::open(dir_); }, {index, "'a'", "not a file inside"});
  st::test::write_file(index, R"({"weight_map": {"a": 7}})");
  expect_input_error([&] { st::CheckpointReader::open(dir_); }, {index, "'a'", "must be a string"});
  st::test::write_file(index, R"({"weight_map": )");
  expect_input_error([&] { st::CheckpointReader::open(dir_); }, {index, "not valid JSON"});
}

// ---------------------------------------------------------------- header rules (issue 8 item 5)

TEST_F(SafetensorsTest, AcceptsEmptyHeaderObjectWithoutData) {
  const std::string p = path("empty.safetensors");
  st::test::write_file(p, st_bytes("{}", ""));
  EXPECT_TRUE(st::SafetensorsFile::open(p).entries().empty());
  st::test::write_file(p, st_bytes(R"({"__metadata__":{}}   )", ""));  // trailing spaces: padding
  EXPECT_TRUE(st::SafetensorsFile::open(p).entries().empty());
}

TEST_F(SafetensorsTest, RefusesUnknownEntryField) {
  const std::string header = R"({"w":{"dtype":"U8","shape":[2],"data_offsets":[0,2],"scale":1.5}})";
  expect_open_refused(st_bytes(header, "ab"), {"'w'", "unknown field 'scale'"});
}

TEST_F(SafetensorsTest, RefusesNonObjectEntryAndEmptyName) {
  expect_open_refused(st_bytes(R"({"w":[0,2]})", "ab"), {"'w'", "entry must be an object, got array"});
  expect_open_refused(st_bytes(R"({"":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})", "ab"), {"empty name"});
}

TEST_F(SafetensorsTest, RefusesNonObjectMetadata) {
  expect_open_refused(st_bytes(R"({"__metadata__":["format","pt"]})", ""), {"__metadata__", "must be an object"});
}

TEST_F(SafetensorsTest, RefusesMalformedDataOffsets) {
  for (const char* offsets : {"[0,2,4]", "[0]", "[\"0\",\"2\"]", "[-2,0]", "[0.0,2.0]", "{\"begin\":0}", "null"}) {
    const std::string header = std::string(R"({"w":{"dtype":"U8","shape":[2],"data_offsets":)") + offsets + "}}";
    expect_open_refused(st_bytes(header, "ab"), {"'w'", "'data_offsets' must be [begin, end]"});
  }
}

TEST_F(SafetensorsTest, RefusesShapeDimensionAbove63Bits) {
  // 2^63 does not fit an int64 dimension.
  expect_open_refused(st_bytes(R"({"w":{"dtype":"U8","shape":[9223372036854775808],"data_offsets":[0,0]}})", ""),
                      {"'w'", "'shape' must hold non-negative integers"});
}

TEST_F(SafetensorsTest, RefusesGapBetweenTensors) {
  const std::string header =
      R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},)"
      R"("b":{"dtype":"U8","shape":[2],"data_offsets":[3,5]}})";
  expect_open_refused(st_bytes(header, "abcde"), {"gap in the data buffer", "'b' starts at 3", "'a' ends at 2"});
}

TEST_F(SafetensorsTest, RefusesDataNotStartingAtZero) {
  const std::string header = R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}})";
  expect_open_refused(st_bytes(header, "abc"), {"gap in the data buffer", "'a' starts at 1"});
}

TEST_F(SafetensorsTest, RefusesTrailingBytesAfterLastTensor) {
  const std::string header = R"({"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}})";
  expect_open_refused(st_bytes(header, "abc"), {"holds 3 bytes but the tensors cover 2", "trailing"});
  expect_open_refused(st_bytes("{}", "x"), {"holds 1 bytes but the tensors cover 0"});
}

TEST_F(SafetensorsTest, RefusesEmptyTensorInsideAnother) {
  // An empty tensor must sit at the running offset, not inside another tensor's bytes.
  const std::string header =
      R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
      R"("e":{"dtype":"U8","shape":[0],"data_offsets":[2,2]}})";
  expect_open_refused(st_bytes(header, "abcd"), {"'a'", "'e'", "overlap"});
}

TEST_F(SafetensorsTest, RefusesDeeplyNestedHeader) {
  // Nesting is refused while parsing (a valid header nests 3 deep), before it costs memory.
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  expect_open_refused(st_bytes(deep, ""), {"nests JSON deeper than"});
  expect_open_refused(st_bytes(R"({"w":{"dtype":"U8","shape":)" + deep + R"(,"data_offsets":[0,0]}})", ""),
                      {"nests JSON deeper than"});
}

TEST_F(SafetensorsTest, RefusesInvalidUtf8AndTrailingText) {
  expect_open_refused(st_bytes("{\"\xff\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", "x"),
                      {"not valid JSON"});
  expect_open_refused(st_bytes("{} {}", ""), {"not valid JSON"});
}

TEST_F(SafetensorsTest, RefusesLongDtypeWithShortMessage) {
  const std::string dtype(100000, 'F');
  const std::string header = R"({"w":{"dtype":")" + dtype + R"(","shape":[1],"data_offsets":[0,1]}})";
  const std::string p = path("bad.safetensors");
  st::test::write_file(p, st_bytes(header, "x"));
  const std::string msg = st::test::error_of([&] { st::SafetensorsFile::open(p); });
  EXPECT_NE(msg.find("unsupported dtype 'FFFF"), std::string::npos) << msg.substr(0, 200);
  EXPECT_LT(msg.size(), 300u);
}

TEST_F(SafetensorsTest, HugeEmptyTensorIsEmptyAndReadFloatRefusesOverflowingShape) {
  // [2^62, 2^62, 0] holds no bytes (valid), but its leading dimensions overflow an element count
  // when multiplied in order: numel() is 0 and read_float refuses it instead of overflowing.
  const std::string header =
      R"({"e":{"dtype":"F32","shape":[4611686018427387904,4611686018427387904,0],"data_offsets":[0,0]},)"
      R"("z":{"dtype":"F32","shape":[0,4611686018427387904,4611686018427387904],"data_offsets":[0,0]}})";
  const std::string p = path("huge_empty.safetensors");
  st::test::write_file(p, st_bytes(header, ""));
  const auto f = st::SafetensorsFile::open(p);
  EXPECT_EQ(f.find("e")->numel(), 0);
  EXPECT_TRUE(f.read_raw("e").empty());
  expect_input_error([&] { f.read_float("e", DType::f32, Device::cpu, MemCategory::weights); },
                     {p, "'e'", "overflow a 64-bit element count"});
  EXPECT_EQ(f.read_float("z", DType::f32, Device::cpu, MemCategory::weights).numel(), 0);
}
