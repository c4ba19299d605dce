// SentencePiece tokenizer: loading, encoding and decoding, and training a small model.
//
// The processor is held behind a pointer so that only tokenizer.cpp includes the SentencePiece
// headers. pad_id() is the model's pad id when it has one (>= 0), else 0: it only fills the
// padding of [N, L] rows, which the loss mask and lengths exclude.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace st {

class Tokenizer {
 public:
  Tokenizer();
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // Throws InputError naming the path when the file is missing or not a SentencePiece model.
  static Tokenizer load(const std::string& path);

  bool loaded() const { return sp_ != nullptr; }
  // Plain encoding: no BOS/EOS; the model's dummy prefix ("▁") is applied when it has one.
  std::vector<int32_t> encode(std::string_view text) const;
  std::string decode(const std::vector<int32_t>& ids) const;
  std::string piece(int32_t id) const;  // throws on an id outside [0, vocab_size)
  int64_t vocab_size() const;
  int32_t bos_id() const;  // -1 when the model has none
  int32_t eos_id() const;
  int32_t unk_id() const;
  int32_t pad_id() const;  // the model's pad id if >= 0, else 0
  const std::string& path() const { return path_; }
  const std::string& sha256() const { return sha256_; }  // of the model file's bytes

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::string path_;
  std::string sha256_;
};

struct TokenizerTrainOptions {
  std::string model_prefix;        // writes <prefix>.model and <prefix>.vocab
  int vocab_size = 512;            // includes unk/bos/eos and, with byte_fallback, 256 byte pieces
  std::string model_type = "bpe";  // "bpe" | "unigram"
  uint32_t seed = 1234;            // SentencePiece's random generator (sampling, unigram EM)
  int num_threads = 1;
  bool byte_fallback = true;       // any UTF-8 text encodes, unknown characters as bytes
  bool split_digits = true;        // numbers as digit sequences (arithmetic tasks)
};

// Trains a SentencePiece model on in-memory sentences (each one training "line"; newlines inside
// are kept as characters)
// with identity normalization, unk=0, bos=1, eos=2, no pad. Each file is written as
// "<file>.tmp" and renamed. Throws InputError when SentencePiece refuses the options (e.g. a
// vocabulary too small for the byte pieces and characters, or too large for the text).
void train_tokenizer(const std::vector<std::string>& sentences, const TokenizerTrainOptions& options);

}  // namespace st
