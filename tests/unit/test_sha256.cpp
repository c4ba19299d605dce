// SHA-256 against the FIPS 180-4 / NIST CAVP example vectors, plus incremental and file hashing.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "core/error.hpp"
#include "core/sha256.hpp"
#include "tests/common/paths.hpp"

namespace {

TEST(Sha256, FipsVectors) {
  EXPECT_EQ(st::sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(st::sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  // 448 bits: the padding needs a second block.
  EXPECT_EQ(st::sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(st::sha256_hex("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopq"
                           "klmnopqrlmnopqrsmnopqrstnopqrstu"),
            "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
  EXPECT_EQ(st::sha256_hex(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256, IncrementalEqualsOneShotAtEveryBlockBoundary) {
  std::string msg;
  for (int i = 0; i < 300; ++i) msg.push_back(static_cast<char>((i * 131 + 7) & 0xff));
  // Lengths around the 55/56/64-byte padding boundaries, split at every position.
  for (size_t len : {0, 1, 55, 56, 57, 63, 64, 65, 119, 120, 128, 300}) {
    const std::string m = msg.substr(0, len);
    const std::string whole = st::sha256_hex(m);
    for (size_t cut = 0; cut <= len; cut += (len > 70 ? 7 : 1)) {
      st::Sha256 h;
      h.update(m.data(), cut);
      h.update(m.data() + cut, len - cut);
      ASSERT_EQ(h.hex_digest(), whole) << "len " << len << " cut " << cut;
    }
  }
  st::Sha256 h;
  for (int i = 0; i < 1000; ++i) h.update(std::string(1000, 'a'));
  EXPECT_EQ(h.hex_digest(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256, FileMatchesBytesAndMissingFileIsInputError) {
  const std::string dir = st::test::make_temp_dir("sha256");
  const std::string path = dir + "/f.bin";
  std::string content(3 << 20, 'x');  // several read buffers
  content += "tail";
  st::test::write_file(path, content);
  EXPECT_EQ(st::sha256_file_hex(path), st::sha256_hex(content));
  try {
    st::sha256_file_hex(dir + "/missing.bin");
    FAIL() << "expected InputError";
  } catch (const st::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("missing.bin"), std::string::npos) << e.what();
  }
  std::filesystem::remove_all(dir);
}

TEST(Sha256, DigestTwiceIsAnError) {
  st::Sha256 h;
  h.update("abc");
  (void)h.digest();
  EXPECT_THROW(h.digest(), st::Error);
  EXPECT_THROW(h.update("x"), st::Error);
}

}  // namespace
