// Fuzz test of the safetensors reader: thousands of random and mutated files (fixed seed), each
// opened with SafetensorsFile::open and, when accepted, every entry read back. The reader must
// either accept a file consistently (entries tile the data buffer, every read returns the file's
// own bytes) or refuse it with st::InputError; any other exception type fails the test, and
// crashes and out-of-bounds reads are caught by the AddressSanitizer build of this file
// (`make test-fuzz`, which links it with only the safetensors sources).
//
// SHARDTUNE_FUZZ_CASES=<n> changes the number of random cases per family (default 2000);
// SHARDTUNE_FUZZ_LOG=<file> writes each case's outcome (the refusal message) there, one a line.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "core/tensor.hpp"
#include "io/safetensors.hpp"
#include "tests/common/paths.hpp"

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

namespace {

// splitmix64: the same sequence on every platform and standard library.
struct Rng {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  uint64_t below(uint64_t n) { return n == 0 ? 0 : next() % n; }
  bool chance(int percent) { return below(100) < static_cast<uint64_t>(percent); }
  template <typename T>
  const T& pick(const std::vector<T>& v) { return v[below(v.size())]; }
};

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  std::memcpy(s.data(), &n, 8);
  return s;
}

const std::vector<std::string> kDtypes = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL"};
size_t dtype_bytes(const std::string& d) { return st::safetensors_dtype_size(d); }

// A valid file: header JSON (as a value, for JSON-level mutations) and data bytes.
struct Valid {
  ojson header;
  std::string data;
};

Valid make_valid(Rng& r) {
  Valid v;
  v.header = ojson::object();
  if (r.chance(30)) v.header["__metadata__"] = {{"format", "pt"}, {"k" + std::to_string(r.below(9)), "v"}};
  const int n = static_cast<int>(r.below(6));
  struct T {
    std::string name;
    ojson entry;
  };
  std::vector<T> ts;
  uint64_t offset = 0;
  for (int i = 0; i < n; ++i) {
    const std::string dtype = r.pick(kDtypes);
    std::vector<int64_t> shape(r.below(5));
    uint64_t numel = 1;
    for (auto& d : shape) {
      d = static_cast<int64_t>(r.below(r.chance(10) ? 1 : 5));  // sometimes 0: an empty tensor
      numel *= static_cast<uint64_t>(d);
    }
    const uint64_t nbytes = numel * dtype_bytes(dtype);
    std::string name = "t";  // appended step by step: GCC 12 warns (-Wrestrict) on "t" + a + b
    name += std::to_string(i);
    if (r.chance(20)) name += ".weight";
    ts.push_back({name, ojson{{"dtype", dtype}, {"shape", shape}, {"data_offsets", {offset, offset + nbytes}}}});
    for (uint64_t b = 0; b < nbytes; ++b) v.data.push_back(static_cast<char>(r.next()));
    offset += nbytes;
  }
  // Header order need not be data order.
  for (size_t i = ts.size(); i > 1; --i) std::swap(ts[i - 1], ts[r.below(i)]);
  for (auto& t : ts) v.header[t.name] = t.entry;
  return v;
}

std::string file_of(const std::string& header_text, const std::string& data, bool pad) {
  std::string h = header_text;
  if (pad) h.append((8 - h.size() % 8) % 8, ' ');
  return le64(h.size()) + h + data;
}

// A random JSON value, sometimes nested, for replacing fields.
ojson random_value(Rng& r, int depth = 0) {
  switch (r.below(depth > 2 ? 7 : 9)) {
    case 0: return nullptr;
    case 1: return r.chance(50);
    case 2: return static_cast<int64_t>(r.next());  // often negative
    case 3: return r.next();                         // huge unsigned
    case 4: return static_cast<double>(r.below(1000)) / 7.0;
    case 5: return r.pick(kDtypes);
    case 6: return static_cast<uint64_t>(r.below(40));
    case 7: {
      ojson a = ojson::array();
      for (uint64_t i = r.below(4); i > 0; --i) a.push_back(random_value(r, depth + 1));
      return a;
    }
    default: {
      ojson o = ojson::object();
      for (uint64_t i = r.below(4); i > 0; --i) o["k" + std::to_string(r.below(5))] = random_value(r, depth + 1);
      return o;
    }
  }
}

// Interesting integers for offsets, shapes and lengths.
uint64_t edge_u64(Rng& r, uint64_t near) {
  const uint64_t edges[] = {0, 1, 2, 3, 4, 7, 8, near, near + 1, near - 1, near * 2, 1ull << 31, 1ull << 32,
                            (1ull << 62), (1ull << 63) - 1, 1ull << 63, ~0ull, ~0ull - 7, 100ull << 20,
                            (100ull << 20) + 1};
  return r.chance(80) ? edges[r.below(sizeof(edges) / sizeof(edges[0]))] : r.next();
}

// One JSON-level mutation of a valid header.
void mutate_json(Rng& r, ojson& h) {
  std::vector<std::string> names;
  for (auto it = h.begin(); it != h.end(); ++it)
    if (it.key() != "__metadata__") names.push_back(it.key());
  const uint64_t what = r.below(16);
  if (names.empty() || what >= 13) {
    switch (r.below(5)) {
      case 0: h["__metadata__"] = random_value(r); return;
      case 1: h = random_value(r); return;  // top level not an object (usually)
      case 2: h[r.chance(50) ? "" : "x"] = random_value(r); return;
      case 3: h["__metadata__"] = {{"a", "b"}, {"n", random_value(r)}}; return;
      default: {
        ojson e = {{"dtype", r.pick(kDtypes)}, {"shape", {edge_u64(r, 4)}},
                   {"data_offsets", {edge_u64(r, 4), edge_u64(r, 8)}}};
        h["new" + std::to_string(r.below(3))] = e;
        return;
      }
    }
  }
  ojson& e = h[r.pick(names)];
  switch (what) {
    case 0: e["dtype"] = r.chance(50) ? ojson(r.pick(kDtypes)) : random_value(r); return;
    case 1: e.erase(r.chance(33) ? "dtype" : r.chance(50) ? "shape" : "data_offsets"); return;
    case 2: e["extra"] = random_value(r); return;
    case 3: e["shape"] = random_value(r); return;
    case 4:
      if (e["shape"].is_array() && !e["shape"].empty()) e["shape"][r.below(e["shape"].size())] = edge_u64(r, 3);
      else e["shape"].push_back(edge_u64(r, 3));
      return;
    case 5:
      if (e["shape"].is_array() && !e["shape"].empty()) e["shape"][r.below(e["shape"].size())] = -1;
      return;
    case 6: e["data_offsets"] = random_value(r); return;
    case 7: e["data_offsets"][r.below(2)] = edge_u64(r, e["data_offsets"][1].get<uint64_t>()); return;
    case 8: {  // shift both offsets: gaps, overlaps, past the end
      const int64_t delta = static_cast<int64_t>(r.below(9)) - 4;
      for (int i = 0; i < 2; ++i) e["data_offsets"][i] = e["data_offsets"][i].get<uint64_t>() + static_cast<uint64_t>(delta);
      return;
    }
    case 9: std::swap(e["data_offsets"][0], e["data_offsets"][1]); return;
    case 10: e["data_offsets"].push_back(0); return;
    case 11: e = random_value(r); return;
    default: {  // the shape of a huge empty tensor, with offsets left as they are
      e["shape"] = r.chance(50) ? ojson{1ull << 62, 1ull << 62, 0} : ojson{0, 1ull << 62, 1ull << 62};
      return;
    }
  }
}

// One byte-level mutation of a whole file.
void mutate_bytes(Rng& r, std::string& f) {
  const uint64_t n = f.size() >= 8 ? [&] { uint64_t v; std::memcpy(&v, f.data(), 8); return v; }() : 0;
  const size_t header_end = static_cast<size_t>(std::min<uint64_t>(f.size(), 8 + n));
  switch (r.below(9)) {
    case 0:  // flip a bit in the header
      if (header_end > 8) f[8 + r.below(header_end - 8)] ^= static_cast<char>(1u << r.below(8));
      return;
    case 1:  // a random byte anywhere
      if (!f.empty()) f[r.below(f.size())] = static_cast<char>(r.next());
      return;
    case 2: {  // the length prefix
      const std::string len = le64(r.chance(50) ? n + static_cast<uint64_t>(static_cast<int64_t>(r.below(17)) - 8)
                                                : edge_u64(r, n));
      f.replace(0, std::min<size_t>(8, f.size()), len);
      return;
    }
    case 3:  // truncate
      f.resize(r.below(f.size() + 1));
      return;
    case 4:  // append garbage
      for (uint64_t i = r.below(16) + 1; i > 0; --i) f.push_back(static_cast<char>(r.next()));
      return;
    case 5:  // insert a JSON-significant byte in the header
      if (header_end > 8) f.insert(f.begin() + static_cast<long>(8 + r.below(header_end - 8)), "{}[]\",:0-9e\\\x80\xff"[r.below(15)]);
      return;
    case 6:  // delete a header byte
      if (header_end > 8) f.erase(8 + r.below(header_end - 8), 1);
      return;
    case 7:  // overwrite a digit in the header with another digit
      for (int tries = 0; tries < 8 && header_end > 8; ++tries) {
        const size_t i = 8 + r.below(header_end - 8);
        if (f[i] >= '0' && f[i] <= '9') {
          f[i] = static_cast<char>('0' + r.below(10));
          return;
        }
      }
      return;
    default:  // a random byte run in the header
      if (header_end > 8)
        for (uint64_t i = r.below(8) + 1, at = 8 + r.below(header_end - 8); i > 0 && at < header_end; --i, ++at)
          f[at] = static_cast<char>(r.next());
      return;
  }
}

struct Counts {
  int64_t cases = 0, accepted = 0, refused = 0, entries_read = 0;
};

class SafetensorsFuzz : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = st::test::make_temp_dir("safetensors_fuzz");
    if (const char* log = std::getenv("SHARDTUNE_FUZZ_LOG")) log_ = std::make_unique<std::ofstream>(log);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Opens `bytes` as a file; checks the reader's contract. Returns false (after ADD_FAILURE) on
  // a breach so the caller can stop early.
  bool check(const std::string& bytes, const std::string& what, bool must_accept = false) {
    ++counts_.cases;
    const std::string p = dir_ + "/case.safetensors";
    {
      std::ofstream o(p, std::ios::binary | std::ios::trunc);
      o.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    }
    try {
      const st::SafetensorsFile f = st::SafetensorsFile::open(p);
      ++counts_.accepted;
      return check_accepted(f, bytes, what);
    } catch (const st::InputError& e) {
      ++counts_.refused;
      if (log_) *log_ << what << "\t" << std::string(e.what()).substr(0, 300) << "\n";
      if (must_accept) {
        ADD_FAILURE() << what << ": a valid file was refused: " << e.what();
        return false;
      }
      if (std::string(e.what()).find(p) == std::string::npos) {
        ADD_FAILURE() << what << ": message does not name the file: " << e.what();
        return false;
      }
      return true;
    } catch (const std::exception& e) {
      ADD_FAILURE() << what << ": wrong exception type (not st::InputError): " << e.what() << "\n" << dump(bytes);
      return false;
    } catch (...) {
      ADD_FAILURE() << what << ": non-standard exception\n" << dump(bytes);
      return false;
    }
  }

  bool check_accepted(const st::SafetensorsFile& f, const std::string& bytes, const std::string& what) {
    uint64_t n;
    std::memcpy(&n, bytes.data(), 8);
    const uint64_t data_start = 8 + n;
    uint64_t offset = 0;
    for (const st::SafetensorsEntry& e : f.entries()) {
      // Accepted entries tile the data buffer and match their shape.
      if (e.begin != offset || e.end < e.begin || e.nbytes() != static_cast<uint64_t>(e.numel()) * dtype_bytes(e.dtype)) {
        ADD_FAILURE() << what << ": accepted entry '" << e.name << "' breaks the layout\n" << dump(bytes);
        return false;
      }
      offset = e.end;
      if (f.find(e.name) != &e) {
        ADD_FAILURE() << what << ": find('" << e.name << "') disagrees with entries()";
        return false;
      }
      try {
        const std::vector<uint8_t> raw = f.read_raw(e.name);
        ++counts_.entries_read;
        if (raw.size() != e.nbytes() ||
            (!raw.empty() && std::memcmp(raw.data(), bytes.data() + data_start + e.begin, raw.size()) != 0)) {
          ADD_FAILURE() << what << ": read_raw('" << e.name << "') returned other bytes than the file holds";
          return false;
        }
        if (st::safetensors_is_float(e.dtype)) {
          try {
            const st::Tensor t = f.read_float(e.name, st::DType::f32, st::Device::cpu, st::MemCategory::workspace);
            if (t.numel() != e.numel()) {
              ADD_FAILURE() << what << ": read_float('" << e.name << "') has " << t.numel() << " elements, not "
                            << e.numel();
              return false;
            }
          } catch (const st::InputError&) {
            // refused for this API (rank > 4, a shape Tensor cannot hold): fine
          }
        }
      } catch (const st::InputError& err) {
        ADD_FAILURE() << what << ": reading accepted entry '" << e.name << "' failed: " << err.what();
        return false;
      } catch (const std::exception& err) {
        ADD_FAILURE() << what << ": reading accepted entry '" << e.name << "': wrong exception type: " << err.what();
        return false;
      }
    }
    if (offset != bytes.size() - data_start) {
      ADD_FAILURE() << what << ": accepted file whose tensors cover " << offset << " of " << bytes.size() - data_start
                    << " data bytes";
      return false;
    }
    return true;
  }

  static std::string dump(const std::string& bytes) {
    std::string s = "file (" + std::to_string(bytes.size()) + " bytes): ";
    for (size_t i = 0; i < std::min<size_t>(bytes.size(), 400); ++i) {
      const unsigned char c = static_cast<unsigned char>(bytes[i]);
      if (c >= 32 && c < 127) s += static_cast<char>(c);
      else s += "\\x" + std::string(1, "0123456789abcdef"[c >> 4]) + "0123456789abcdef"[c & 15];
    }
    return s;
  }

  static int64_t cases_per_family() {
    const char* v = std::getenv("SHARDTUNE_FUZZ_CASES");
    return v ? std::max<int64_t>(1, std::atoll(v)) : 2000;
  }

  std::string dir_;
  Counts counts_;
  std::unique_ptr<std::ofstream> log_;
};

}  // namespace

TEST_F(SafetensorsFuzz, RandomAndMutatedFilesAreReadOrRefusedWithInputError) {
  const auto t0 = std::chrono::steady_clock::now();
  Rng r{20261124};
  const int64_t per = cases_per_family();

  // Valid files are accepted (padded or not) and read back.
  for (int64_t i = 0; i < per / 3; ++i) {
    const Valid v = make_valid(r);
    if (!check(file_of(v.header.dump(), v.data, r.chance(50)), "valid #" + std::to_string(i), true)) return;
  }
  // JSON-level mutations of valid files (1 to 3 each).
  for (int64_t i = 0; i < per; ++i) {
    Valid v = make_valid(r);
    for (uint64_t k = r.below(3) + 1; k > 0; --k) {
      try {
        mutate_json(r, v.header);
      } catch (const nlohmann::json::exception&) {
        // an earlier mutation changed the value's type: this one applies partly or not at all
      }
    }
    std::string data = v.data;
    if (r.chance(20)) data.resize(r.below(data.size() + 1));
    if (r.chance(10)) data += std::string(r.below(8) + 1, 'x');
    if (!check(file_of(v.header.dump(), data, r.chance(50)), "json mutation #" + std::to_string(i))) return;
  }
  // Byte-level mutations of valid files (1 to 4 each).
  for (int64_t i = 0; i < per; ++i) {
    const Valid v = make_valid(r);
    std::string f = file_of(v.header.dump(), v.data, r.chance(50));
    for (uint64_t k = r.below(4) + 1; k > 0; --k) mutate_bytes(r, f);
    if (!check(f, "byte mutation #" + std::to_string(i))) return;
  }
  // Random bytes, with and without a plausible length prefix.
  for (int64_t i = 0; i < per / 3; ++i) {
    std::string f(r.below(64), '\0');
    for (char& c : f) c = static_cast<char>(r.next());
    if (r.chance(50)) f = le64(r.below(f.size() + 4)) + f;
    if (!check(f, "random bytes #" + std::to_string(i))) return;
  }
  // Random JSON headers over random data.
  for (int64_t i = 0; i < per / 3; ++i) {
    ojson h = ojson::object();
    for (uint64_t k = r.below(4); k > 0; --k) {
      ojson e = ojson::object();
      if (r.chance(80)) e["dtype"] = r.chance(70) ? ojson(r.pick(kDtypes)) : random_value(r);
      if (r.chance(80)) e["shape"] = r.chance(60) ? ojson{r.below(4), r.below(3)} : random_value(r);
      if (r.chance(80)) e["data_offsets"] = r.chance(60) ? ojson{r.below(8), r.below(24)} : random_value(r);
      h[r.chance(90) ? "t" + std::to_string(k) : "__metadata__"] = r.chance(90) ? e : random_value(r);
    }
    if (!check(file_of(h.dump(), std::string(r.below(24), '\0'), r.chance(50)), "random json #" + std::to_string(i)))
      return;
  }

  // Hand-made hostile headers.
  const std::string deep_arrays = std::string(200000, '[') + std::string(200000, ']');
  std::string deep_objects;
  for (int i = 0; i < 50000; ++i) deep_objects += "{\"a\":";
  deep_objects += "1" + std::string(50000, '}');
  const std::vector<std::pair<std::string, std::string>> hostile = {
      {"deep arrays", file_of(deep_arrays, "", false)},
      {"deep objects", file_of(deep_objects, "", false)},
      {"deep shape", file_of(R"({"a":{"dtype":"U8","shape":)" + deep_arrays + R"(,"data_offsets":[0,0]}})", "", false)},
      {"deep metadata", file_of(R"({"__metadata__":{"x":)" + deep_arrays + "}}", "", false)},
      {"huge empty tensor, read", file_of(R"({"a":{"dtype":"F32","shape":[4611686018427387904,4611686018427387904,0],"data_offsets":[0,0]}})", "", false)},
      {"empty tensor with huge tail", file_of(R"({"a":{"dtype":"F64","shape":[0,4611686018427387904,4611686018427387904],"data_offsets":[0,0]}})", "", false)},
      {"rank 9", file_of(R"({"a":{"dtype":"F32","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,4]}})", "abcd", false)},
      {"offset near 2^64", file_of(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[18446744073709551615,0]}})", "x", false)},
      {"end 2^64-1", file_of(R"({"a":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,18446744073709551615]}})", "x", false)},
      {"2^63", file_of(R"({"a":{"dtype":"U8","shape":[9223372036854775808],"data_offsets":[0,9223372036854775808]}})", "x", false)},
      {"float offsets", file_of(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0.0,1.0]}})", "x", false)},
      {"1e400", file_of(R"({"a":{"dtype":"U8","shape":[1e400],"data_offsets":[0,1]}})", "x", false)},
      {"NUL in header", file_of(std::string("{\"a\0\":{}}", 9), "", false)},
      {"invalid UTF-8", file_of("{\"\xff\xfe\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", "x", false)},
      {"BOM", file_of("\xef\xbb\xbf{}", "", false)},
      {"long name", file_of("{\"" + std::string(1 << 20, 'n') + R"(":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", "x", false)},
      {"long dtype", file_of(R"({"a":{"dtype":")" + std::string(1 << 20, 'F') + R"(","shape":[1],"data_offsets":[0,1]}})", "x", false)},
      {"header length 2^64-1", le64(~0ull) + "{}"},
      {"header length limit + 1", le64((100ull << 20) + 1) + "{}"},
      {"empty", ""},
      {"7 bytes", "\x02\0\0\0\0\0\0"},
      {"only length", le64(2)},
      {"empty object", file_of("{}", "", false)},
      {"trailing garbage after JSON", file_of("{} x", "", false)},
      {"two objects", file_of("{}{}", "", false)},
  };
  for (const auto& [name, bytes] : hostile)
    if (!check(bytes, "hostile: " + name)) return;

  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::cout << "[ fuzz     ] " << counts_.cases << " files: " << counts_.accepted << " accepted ("
            << counts_.entries_read << " entries read), " << counts_.refused << " refused with InputError, in "
            << secs << " s\n";
  RecordProperty("cases", static_cast<int>(counts_.cases));
  RecordProperty("accepted", static_cast<int>(counts_.accepted));
  // The mix must exercise both sides of the reader.
  EXPECT_GT(counts_.accepted, per / 3);
  EXPECT_GT(counts_.refused, per);
}
