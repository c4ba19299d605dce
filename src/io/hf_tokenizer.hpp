// The tokenizer files of a Hugging Face checkpoint directory written by shardtune (save_model,
// export --merged), so that `AutoTokenizer.from_pretrained(dir)` loads it:
//   tokenizer.model          the SentencePiece model, copied
//   tokenizer_config.json    tokenizer_class (LlamaTokenizer | T5Tokenizer), the special tokens,
//                            add_bos_token / add_eos_token as shardtune's prepare adds them,
//                            model_max_length (and T5's extra_ids)
//   special_tokens_map.json  the special tokens by role
// The special tokens are the SentencePiece model's own pieces (bos, eos, unk, pad ids). A
// tokenizer.model that sits beside its own tokenizer_config.json / special_tokens_map.json /
// tokenizer.json (a Hugging Face checkpoint's) brings those instead.
#pragma once

#include <cstdint>
#include <string>

namespace st {

// T5 has relative positions and no hard limit; its tokenizers say 512.
inline constexpr int64_t kT5ModelMaxLength = 512;

// Which transformers tokenizer class the files describe: LlamaTokenizer (the decoder families'
// SentencePiece tokenizers) or T5Tokenizer.
enum class HfTokenizerKind { llama, t5 };

// model_max_length: the longest sequence the model takes (Llama: max_position_embeddings; T5:
// 512 by convention). model_vocab: the model's vocabulary (T5: rows beyond the SentencePiece
// model's pieces are the <extra_id_N> sentinels when there are >= 100).
void save_hf_tokenizer(const std::string& tokenizer_path, const std::string& dir, HfTokenizerKind kind,
                       int64_t model_max_length, int64_t model_vocab);

}  // namespace st
