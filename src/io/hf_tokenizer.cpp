#include "io/hf_tokenizer.hpp"

#include <filesystem>

#include <nlohmann/json.hpp>

#include "core/atomic_file.hpp"
#include "core/error.hpp"
#include "data/tokenizer.hpp"
#include "io/hf_checkpoint.hpp"

namespace fs = std::filesystem;

namespace st {

namespace {

using ojson = nlohmann::ordered_json;

// A special token's piece, or null when the model has no such id.
ojson piece_or_null(const Tokenizer& t, int32_t id) {
  if (id < 0 || id >= t.vocab_size()) return nullptr;
  return t.piece(id);
}

}  // namespace

void save_hf_tokenizer(const std::string& tokenizer_path, const std::string& dir, HfTokenizerKind kind,
                       int64_t model_max_length, int64_t model_vocab) {
  copy_tokenizer(tokenizer_path, dir);
  // A tokenizer that comes with its Hugging Face files (a checkpoint's own tokenizer.model): theirs.
  const fs::path src = fs::path(tokenizer_path).parent_path();
  std::error_code ec;
  const bool own_config = fs::is_regular_file(src / "tokenizer_config.json", ec);
  const bool own_map = fs::is_regular_file(src / "special_tokens_map.json", ec);
  for (const char* f : {"tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"})
    if (fs::is_regular_file(src / f, ec)) atomic_copy_file((src / f).string(), (fs::path(dir) / f).string());
  if (own_config && own_map) return;
  const Tokenizer tok = Tokenizer::load(tokenizer_path);
  ojson special = ojson::object();
  ojson cfg = ojson::object();
  const ojson bos = piece_or_null(tok, tok.bos_id()), eos = piece_or_null(tok, tok.eos_id()),
              unk = piece_or_null(tok, tok.unk_id());
  // The model's own pad piece (T5's is id 0, "<pad>"); Tokenizer::pad_id falls back to 0 when the
  // model has none, which for a Llama tokenizer is <unk>: no pad token then.
  const ojson pad = tok.pad_id() != 0 || kind == HfTokenizerKind::t5 ? piece_or_null(tok, tok.pad_id()) : ojson(nullptr);
  if (kind == HfTokenizerKind::t5) {
    // T5: no BOS; an EOS ends every sequence; sentinels <extra_id_N> above the pieces.
    const int64_t extra = model_vocab - tok.vocab_size() >= 100 ? 100 : 0;
    cfg["tokenizer_class"] = "T5Tokenizer";
    cfg["eos_token"] = eos;
    cfg["unk_token"] = unk;
    cfg["pad_token"] = pad;
    cfg["extra_ids"] = extra;
    ojson sentinels = ojson::array();
    for (int64_t i = 0; i < extra; ++i) sentinels.push_back("<extra_id_" + std::to_string(i) + ">");
    cfg["additional_special_tokens"] = sentinels;
    special["eos_token"] = eos;
    special["unk_token"] = unk;
    special["pad_token"] = pad;
    if (extra > 0) special["additional_special_tokens"] = sentinels;
  } else {
    cfg["tokenizer_class"] = "LlamaTokenizer";
    cfg["bos_token"] = bos;
    cfg["eos_token"] = eos;
    cfg["unk_token"] = unk;
    cfg["pad_token"] = pad;
    cfg["add_bos_token"] = !bos.is_null();  // as `shardtune prepare` writes rows (--add-bos)
    cfg["add_eos_token"] = false;           // prompts end without EOS; prepare adds it after answers
    cfg["legacy"] = true;  // SentencePiece's own encoding, as `shardtune prepare` tokenizes
    cfg["sp_model_kwargs"] = ojson::object();
    special["bos_token"] = bos;
    special["eos_token"] = eos;
    special["unk_token"] = unk;
    if (!pad.is_null()) special["pad_token"] = pad;
  }
  cfg["model_max_length"] = model_max_length;
  cfg["clean_up_tokenization_spaces"] = false;
  for (auto it = special.begin(); it != special.end();)  // absent roles are left out
    it = it.value().is_null() ? special.erase(it) : std::next(it);
  if (!own_config) atomic_write_file((fs::path(dir) / "tokenizer_config.json").string(), cfg.dump(2) + "\n");
  if (!own_map) atomic_write_file((fs::path(dir) / "special_tokens_map.json").string(), special.dump(2) + "\n");
}

}  // namespace st
