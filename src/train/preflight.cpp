#include "train/preflight.hpp"

#include <algorithm>
#include <filesystem>
#include <initializer_list>

#include "core/error.hpp"
#include "train/families.hpp"

namespace fs = std::filesystem;

namespace st {

namespace {

std::string origin_of(const RunConfig& c, const std::string& key) {
  const auto it = c.origin.find(key);
  return it == c.origin.end() ? std::string("options") : it->second;
}

struct Factor {
  std::string name;
  int64_t value;
};

void check_product(const char* buffer, std::initializer_list<Factor> factors, const std::string& where) {
  __int128 p = 1;
  for (const Factor& f : factors) p *= std::max<int64_t>(f.value, 1);  // each factor < 2^32: no wrap in 128 bits
  if (p <= kMaxBufferElements) return;
  std::string expr;
  for (const Factor& f : factors) expr += str(expr.empty() ? "" : " x ", f.name, " (", f.value, ")");
  ST_THROW_INPUT(where, ": ", buffer, " would need ", expr, " = ", static_cast<double>(p),
                 " elements, beyond the 2^48 any device holds: lower the first of these that is an option");
}

}  // namespace

ModelDims model_dims(const RunConfig& c, const ShardInfo& info) {
  const ModelFamily& fam = model_family(c);
  ModelDims d;
  d.seq2seq = fam.seq2seq;
  if (!c.model.empty()) {
    const ModelShape m = fam.read_config(c.model);
    d.source = (fs::path(c.model) / "config.json").string();
    d.vocab = m.vocab;
    d.hidden = m.hidden;
    d.intermediate = m.intermediate;
    d.layers = m.layers;
    d.heads = m.heads;
    d.kv_heads = m.kv_heads;
    d.head_dim = m.head_dim;
    return d;
  }
  d.source = c.vocab_size > 0 ? origin_of(c, "vocab_size") : "the shards' tokenizer_vocab_size (vocab_size = 0)";
  d.vocab = c.vocab_size > 0 ? c.vocab_size : info.tokenizer_vocab_size;
  d.hidden = c.hidden_size;
  d.intermediate = c.intermediate_size;
  d.layers = c.num_layers + (fam.seq2seq ? (c.num_decoder_layers > 0 ? c.num_decoder_layers : c.num_layers) : 0);
  d.heads = c.num_heads;
  d.kv_heads = c.num_kv_heads > 0 ? c.num_kv_heads : c.num_heads;
  d.head_dim = c.head_dim > 0 ? c.head_dim : c.hidden_size / std::max<int64_t>(1, c.num_heads);
  return d;
}

void check_buffer_sizes(const RunConfig& c, const ShardInfo& info, const DataShape& shape) {
  const ModelDims m = model_dims(c, info);
  const std::string where = str(origin_of(c, "micro_batch_size"), " with ", m.source);
  const Factor B{"micro_batch_size", c.micro_batch_size}, T{"seq_len", shape.seq_len},
      Tt{"target_len", shape.target_len}, V{"vocab_size", m.vocab}, C{"hidden_size", m.hidden},
      I{"intermediate_size", m.intermediate}, L{"layers", m.layers}, H{"num_heads", m.heads},
      D{"head_dim", m.head_dim}, R{"lora_r", c.lora_r};
  const Factor Tdec = m.seq2seq ? Tt : T;  // the positions the head scores
  check_product("the embedding", {V, C}, where);
  check_product("the logits", {B, Tdec, V}, where);
  check_product("the activations", {B, T, C, L}, where);
  check_product("the attention scores", {B, H, T, T}, where);
  if (m.seq2seq) {
    check_product("the decoder activations", {B, Tt, C, L}, where);
    check_product("the cross-attention scores", {B, H, Tt, T}, where);
  }
  check_product("the MLP activations", {B, T, I}, where);
  check_product("an MLP weight", {I, C}, where);
  check_product("an attention weight", {H, D, C}, where);
  check_product("a LoRA factor", {R, I.value > C.value ? I : C}, where);
  // Steps of rows: micro-batch x accumulation (x data-parallel ranks, bounded by kMaxRanks).
  check_product("one optimizer step's rows", {B, {"grad_accum", c.grad_accum}, {"ranks", kMaxRanks}}, where);
}

void check_data_against_model(const RunConfig& c, const ShardDataset* train, const ShardDataset* val) {
  const ShardDataset* ref = train ? train : val;
  if (!ref) return;
  const ModelDims m = model_dims(c, ref->info());
  const std::string whose = c.model.empty() ? str("the model (", m.source, ")") : str("the model ", m.source);
  for (const ShardDataset* d : {train, val})
    if (d) d->check_token_ids(m.vocab, whose);
}

}  // namespace st
