#include "data/tokenizer.hpp"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <unordered_map>

#include "core/atomic_file.hpp"
#include "core/error.hpp"
#include "core/sha256.hpp"

namespace st {

namespace fs = std::filesystem;

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

static std::string read_whole_file(const std::string& path, const char* what) {
  std::error_code ec;
  if (!fs::exists(path, ec)) ST_THROW_INPUT(path, ": ", what, " not found");
  if (!fs::is_regular_file(path, ec)) ST_THROW_INPUT(path, ": ", what, " is not a regular file");
  std::ifstream f(path, std::ios::binary);
  if (!f) ST_THROW_INPUT(path, ": cannot open ", what);
  std::ostringstream os;
  os << f.rdbuf();
  if (f.bad()) ST_THROW_INPUT(path, ": read error on ", what);
  return os.str();
}

Tokenizer Tokenizer::load(const std::string& path) {
  // Read once: the checksum and the model come from the same bytes.
  const std::string bytes = read_whole_file(path, "tokenizer model");
  if (bytes.empty()) ST_THROW_INPUT(path, ": tokenizer model is empty");
  auto sp = std::make_unique<sentencepiece::SentencePieceProcessor>();
  const auto status = sp->LoadFromSerializedProto(bytes);
  if (!status.ok())
    ST_THROW_INPUT(path, ": not a valid SentencePiece model (", status.ToString(), ")");
  if (sp->GetPieceSize() <= 0) ST_THROW_INPUT(path, ": SentencePiece model has no pieces");
  Tokenizer t;
  t.sp_ = std::move(sp);
  t.path_ = path;
  t.sha256_ = sha256_hex(bytes);
  return t;
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  ST_CHECK(sp_, "tokenizer not loaded");
  std::vector<int> ids;
  const auto status = sp_->Encode(absl::string_view(text.data(), text.size()), &ids);
  if (!status.ok()) ST_THROW(path_, ": encoding failed: ", status.ToString());
  return std::vector<int32_t>(ids.begin(), ids.end());
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  ST_CHECK(sp_, "tokenizer not loaded");
  std::vector<int> v(ids.begin(), ids.end());
  for (int id : v)
    if (id < 0 || id >= sp_->GetPieceSize())
      ST_THROW(path_, ": cannot decode id ", id, " (vocabulary size ", sp_->GetPieceSize(), ")");
  std::string out;
  const auto status = sp_->Decode(v, &out);
  if (!status.ok()) ST_THROW(path_, ": decoding failed: ", status.ToString());
  return out;
}

std::string Tokenizer::piece(int32_t id) const {
  ST_CHECK(sp_, "tokenizer not loaded");
  if (id < 0 || id >= sp_->GetPieceSize())
    ST_THROW(path_, ": token id ", id, " outside the vocabulary [0, ", sp_->GetPieceSize(), ")");
  return sp_->IdToPiece(id);
}

int64_t Tokenizer::vocab_size() const { return sp_ ? sp_->GetPieceSize() : 0; }
int32_t Tokenizer::bos_id() const { return sp_ ? sp_->bos_id() : -1; }
int32_t Tokenizer::eos_id() const { return sp_ ? sp_->eos_id() : -1; }
int32_t Tokenizer::unk_id() const { return sp_ ? sp_->unk_id() : -1; }
int32_t Tokenizer::pad_id() const {
  const int32_t p = sp_ ? sp_->pad_id() : -1;
  return p >= 0 ? p : 0;
}

namespace {

class VectorSentenceIterator : public sentencepiece::SentenceIterator {
 public:
  explicit VectorSentenceIterator(const std::vector<std::string>& v) : v_(v) {}
  bool done() const override { return i_ >= v_.size(); }
  void Next() override { ++i_; }
  const std::string& value() const override { return v_[i_]; }
  sentencepiece::util::Status status() const override { return sentencepiece::util::Status(); }

 private:
  const std::vector<std::string>& v_;
  size_t i_ = 0;
};

}  // namespace

void train_tokenizer(const std::vector<std::string>& sentences, const TokenizerTrainOptions& opt) {
  ST_CHECK_INPUT(!opt.model_prefix.empty(), "train_tokenizer: empty model_prefix");
  ST_CHECK_INPUT(opt.model_type == "bpe" || opt.model_type == "unigram",
                 "train_tokenizer: model_type must be bpe or unigram (got '", opt.model_type, "')");
  ST_CHECK_INPUT(!sentences.empty(), "train_tokenizer: no training sentences");

  sentencepiece::SetRandomGeneratorSeed(opt.seed);
  const std::unordered_map<std::string, std::string> kwargs = {
      {"model_type", opt.model_type},
      {"vocab_size", std::to_string(opt.vocab_size)},
      {"character_coverage", "1.0"},
      {"byte_fallback", opt.byte_fallback ? "true" : "false"},
      {"split_digits", opt.split_digits ? "true" : "false"},
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"input_sentence_size", "0"},  // use every sentence: no random sampling
      {"shuffle_input_sentence", "false"},
      {"num_threads", std::to_string(opt.num_threads)},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"minloglevel", "2"},  // SentencePiece's training log is long; errors come back as status
  };
  VectorSentenceIterator it(sentences);
  std::string proto;
  const auto status = sentencepiece::SentencePieceTrainer::Train(kwargs, &it, &proto);
  if (!status.ok())
    ST_THROW_INPUT("SentencePiece training of ", opt.model_prefix, ".model (vocab_size ",
                   opt.vocab_size, ", ", opt.model_type, ") failed: ", status.ToString());

  // The .vocab file in SentencePiece's format, "piece<TAB>score" per id, for people to read;
  // a newline or tab inside a piece is written as "\n" / "\t" to keep one line per id.
  sentencepiece::SentencePieceProcessor sp;
  const auto load = sp.LoadFromSerializedProto(proto);
  if (!load.ok()) ST_THROW("trained SentencePiece model does not load: ", load.ToString());
  std::ostringstream vocab;
  for (int i = 0; i < sp.GetPieceSize(); ++i) {
    for (char c : sp.IdToPiece(i)) {
      if (c == '\n') vocab << "\\n";
      else if (c == '\t') vocab << "\\t";
      else vocab << c;
    }
    vocab << '\t' << sp.GetScore(i) << '\n';
  }

  atomic_write_file(opt.model_prefix + ".model", proto);
  atomic_write_file(opt.model_prefix + ".vocab", vocab.str());
}

}  // namespace st
