// SHA-256 (FIPS 180-4) of bytes or a file, as a lowercase hex string.
//
// Used for dataset provenance: shards record the checksums of their source text and of the
// tokenizer model, so a shard written by another tokenizer is refused at load time.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace st {

// Incremental hasher: update() any number of times, then digest() once.
class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t n);
  void update(std::string_view bytes) { update(bytes.data(), bytes.size()); }
  std::array<uint8_t, 32> digest();  // finalizes; the object must not be updated afterwards
  std::string hex_digest();          // digest() as 64 lowercase hex characters

 private:
  void compress(const uint8_t block[64]);
  std::array<uint32_t, 8> h_;
  std::array<uint8_t, 64> buf_{};
  size_t buf_len_ = 0;
  uint64_t total_bytes_ = 0;
  bool finalized_ = false;
};

std::string sha256_hex(std::string_view bytes);
// True when whole blocks go through the CPU's SHA instructions (x86 SHA-NI); the environment
// variable SHARDTUNE_SHA256_PORTABLE forces the portable code (tests compare the two).
bool sha256_uses_cpu_extensions();
// Streams the file; throws InputError naming the path if it cannot be read.
std::string sha256_file_hex(const std::string& path);

}  // namespace st
