// `shardtune export`: a PEFT LoRA adapter on its base model, written as
//   --peft OUT     the adapter again in PEFT format (normalized: shardtune's names, f32, full
//                  tensors whatever TP layout trained it), and/or
//   --merged OUT   the base with the adapter merged (W += alpha/r B A), in Hugging Face layout:
//                  config.json, model.safetensors or shards + model.safetensors.index.json above
//                  --max-shard-size (default 5GB, as transformers), and tokenizer.model.
// The base is `model` (a Hugging Face checkpoint directory) and the adapter `adapter` (deck keys,
// or --model / --adapter). One process, on the CPU, in f32 (f64 with dtype = f64); no data.
//
// Testing aid (the PEFT interop script, tests/gpu/peft_interop.py): --logits-input IN.h5
// --logits-output OUT.h5 runs the model with the adapter attached (not merged; the base alone
// without --adapter) on `device` in
// `dtype` over IN's input_ids / attention_mask [B, T] (int64, right padding; T5 also
// decoder_input_ids [B, Td]) and writes logits [B, T or Td, V] (f32).
#include <cstring>
#include <filesystem>
#include <iostream>
#include <string>
#include <type_traits>
#include <vector>

#include "adapters/apply.hpp"
#include "adapters/peft.hpp"
#include "cli/commands.hpp"
#include "config/run_config.hpp"
#include "core/allocator.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "io/h5util.hpp"
#include "io/hf_checkpoint.hpp"
#include "io/hf_tokenizer.hpp"
#include "io/llama_io.hpp"
#include "io/t5_io.hpp"
#include "train/model_runner.hpp"
#include "train/preflight.hpp"
#include "train/setup.hpp"

namespace fs = std::filesystem;

namespace st {

namespace {

struct ExportArgs {
  std::string peft, merged, logits_in, logits_out;
  uint64_t max_shard = kHfDefaultMaxShardBytes;
};

const char* kExportHelp =
    "Usage: shardtune export --adapter DIR [--model BASE] [--peft OUT] [--merged OUT] [--max-shard-size 5GB]\n"
    "                        [--deck FILE] [--key value ...]\n\n"
    "Writes a PEFT LoRA adapter (--adapter DIR, or the deck's `adapter`) for its base model: `model` (--model\n"
    "or the deck), else the adapter's own base_model_name_or_path (absolute, or relative to DIR). One process,\n"
    "on the CPU, in f32 (dtype f64: f64); nothing is written outside OUT:\n"
    "  --peft OUT            OUT/adapter_config.json + OUT/adapter_model.safetensors (PEFT format)\n"
    "  --merged OUT          the base with the adapter merged, in Hugging Face layout: OUT/config.json,\n"
    "                        OUT/model.safetensors (or shards + model.safetensors.index.json), and with a\n"
    "                        tokenizer (`tokenizer`, or the base's tokenizer.model) OUT/tokenizer.model,\n"
    "                        OUT/tokenizer_config.json, OUT/special_tokens_map.json (AutoTokenizer loads them)\n"
    "  --max-shard-size S    shard the merged weights above S bytes (default 5GB; 0: one file)\n"
    "  --logits-input IN.h5 --logits-output OUT.h5\n"
    "                        (testing) logits of the base (+ adapter) on IN's input_ids / attention_mask\n"
    "                        (T5: and decoder_input_ids), on `device` in `dtype`\n"
    "Prints one line per output written (export: ... -> OUT).\n\n";

// Takes the export flags (--flag VALUE or --flag=VALUE) out of argv; the rest is the run options.
std::vector<char*> take_export_flags(int argc, char** argv, ExportArgs& a, bool& help) {
  std::vector<char*> rest;
  rest.push_back(argv[0]);
  for (int i = 1; i < argc; ++i) {
    std::string s = argv[i];
    if (s == "--help" || s == "-h") help = true;
    std::string* dst = nullptr;
    std::string shard;
    std::string key = s, value;
    const size_t eq = s.find('=');
    if (s.rfind("--", 0) == 0 && eq != std::string::npos) {
      key = s.substr(0, eq);
      value = s.substr(eq + 1);
    }
    if (key == "--peft") dst = &a.peft;
    else if (key == "--merged") dst = &a.merged;
    else if (key == "--logits-input") dst = &a.logits_in;
    else if (key == "--logits-output") dst = &a.logits_out;
    else if (key == "--max-shard-size") dst = &shard;
    if (!dst) {
      rest.push_back(argv[i]);
      continue;
    }
    if (eq == std::string::npos) {
      if (i + 1 >= argc) ST_THROW_INPUT("command line: ", key, " needs a value");
      value = argv[++i];
    }
    if (value.empty()) ST_THROW_INPUT("command line: ", key, " needs a non-empty value");
    *dst = value;
    if (dst == &shard) a.max_shard = parse_bytes(value, "--max-shard-size");
  }
  return rest;
}

std::string tokenizer_of(const RunConfig& c) {
  if (!c.tokenizer.empty()) return c.tokenizer;
  const fs::path p = fs::path(c.model) / "tokenizer.model";
  return fs::exists(p) ? p.string() : std::string();
}

struct Inputs {
  int64_t B = 0, T = 0, Td = 0;
  std::vector<int64_t> ids, mask, dec_ids;
};

Inputs read_inputs(const std::string& path, bool t5) {
  h5::Handle f = h5::open_file_read(path);
  Inputs in;
  const auto dims = h5::dataset_dims(f, "input_ids", path);
  if (dims.size() != 2) ST_THROW_INPUT(path, ": input_ids must be [B, T]");
  in.B = static_cast<int64_t>(dims[0]);
  in.T = static_cast<int64_t>(dims[1]);
  in.ids.resize(static_cast<size_t>(in.B * in.T));
  in.mask.assign(in.ids.size(), 1);
  h5::read_dataset(f, "input_ids", H5T_NATIVE_INT64, in.ids.data(), path);
  if (h5::exists(f, "attention_mask")) {
    if (h5::dataset_dims(f, "attention_mask", path) != dims) ST_THROW_INPUT(path, ": attention_mask must be [B, T]");
    h5::read_dataset(f, "attention_mask", H5T_NATIVE_INT64, in.mask.data(), path);
  }
  if (t5) {
    const auto dd = h5::dataset_dims(f, "decoder_input_ids", path);
    if (dd.size() != 2 || dd[0] != dims[0]) ST_THROW_INPUT(path, ": decoder_input_ids must be [B, Td]");
    in.Td = static_cast<int64_t>(dd[1]);
    in.dec_ids.resize(static_cast<size_t>(in.B * in.Td));
    h5::read_dataset(f, "decoder_input_ids", H5T_NATIVE_INT64, in.dec_ids.data(), path);
  }
  return in;
}

// Right padding: the length of a row is its number of mask ones (at least 1).
std::vector<int32_t> lengths_of(const Inputs& in) {
  std::vector<int32_t> len(static_cast<size_t>(in.B));
  for (int64_t b = 0; b < in.B; ++b) {
    int32_t n = 0;
    for (int64_t t = 0; t < in.T; ++t) n += in.mask[static_cast<size_t>(b * in.T + t)] != 0;
    len[static_cast<size_t>(b)] = std::max(1, n);
  }
  return len;
}

Tensor i32_tensor(const std::vector<int64_t>& v, Device d) {
  Tensor h = Tensor::empty({static_cast<int64_t>(v.size())}, DType::i32);
  for (size_t i = 0; i < v.size(); ++i) h.ptr<int32_t>()[i] = static_cast<int32_t>(v[i]);
  if (d == Device::cpu) return h;
  Tensor t = Tensor::empty(h.shape(), DType::i32, d, MemCategory::workspace);
  t.copy_from(h);
  return t;
}

Tensor filled(int64_t n, DType dt, Device d, double value) {
  Tensor h = Tensor::empty({n}, dt);
  for (int64_t i = 0; i < n; ++i) {
    if (dt == DType::i32) h.ptr<int32_t>()[i] = static_cast<int32_t>(value);
    else h.ptr<float>()[i] = static_cast<float>(value);
  }
  if (d == Device::cpu) return h;
  Tensor t = Tensor::empty(h.shape(), dt, d, MemCategory::workspace);
  t.copy_from(h);
  return t;
}

void write_logits(const std::string& path, const Tensor& logits, int64_t B, int64_t T, int64_t V) {
  const Tensor h = logits.slice(0, B * T).to_cpu(DType::f32);
  const std::string tmp = path + ".tmp";
  try {
    h5::Handle f = h5::create_file(tmp);
    h5::write_dataset(f, "logits", H5T_NATIVE_FLOAT, h.data(),
                      {static_cast<hsize_t>(B), static_cast<hsize_t>(T), static_cast<hsize_t>(V)});
    h5::close_file_checked(f, tmp);
    durable_rename(tmp, path);
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
}

// Builds the model on `device` in `dtype` with the adapter attached and loaded.
// (None when `adapter` is empty: the base model's logits.)
template <typename Model>
void attach_and_load(Model& m, const RunConfig& c, const std::string& arch, const std::vector<Linear*>& linears,
                     int64_t max_rows) {
  if (c.adapter.empty()) return;
  const LoraConfig lc = lora_config_from_peft(read_peft_config(c.adapter, arch), arch);
  attach_lora(m, lc, max_rows, c.seed);
  const int64_t n = load_peft_adapter(linears, c.adapter);
  ST_LOG("export: ", c.adapter, ": ", n, " LoRA modules, r=", lc.r, " alpha=", lc.alpha);
}

void dump_logits(const RunConfig& c, const std::string& arch, const ExportArgs& a) {
  const Device dev = run_device(c);
  const DType dt = run_dtype(c, dev);
  if (dev == Device::cuda) select_cuda_device(0);
  const Inputs in = read_inputs(a.logits_in, arch == "t5");
  const std::vector<int32_t> len = lengths_of(in);
  std::vector<int64_t> len64(len.begin(), len.end());
  if (arch == "llama") {
    LlamaModel m = load_llama(c.model, dt, dev);
    attach_and_load(m, c, arch, llama_linears(m), in.B * in.T);
    LlamaActivations acts = llama_activations(m, in.B, in.T, false, false);
    LlamaBatch b;
    b.B = in.B;
    b.T = in.T;
    b.ids = i32_tensor(in.ids, dev);
    b.targets = filled(in.B * in.T, DType::i32, dev, -1);
    b.weight = filled(in.B * in.T, DType::f32, dev, 0);
    b.lengths = i32_tensor(len64, dev);
    llama_forward(m, acts, b, LayerContext{}, false);
    write_logits(a.logits_out, acts.logits, in.B, in.T, m.cfg.vocab_size);
  } else {
    T5Model m = load_t5(c.model, dt, dev);
    attach_and_load(m, c, arch, t5_linears(m), in.B * std::max(in.T, in.Td));
    T5Activations acts = t5_activations(m, in.B, in.T, in.Td, false, false);
    T5Batch b;
    b.B = in.B;
    b.Te = in.T;
    b.Td = in.Td;
    b.enc_ids = i32_tensor(in.ids, dev);
    b.enc_lengths = i32_tensor(len64, dev);
    b.dec_ids = i32_tensor(in.dec_ids, dev);
    b.dec_targets = filled(in.B * in.Td, DType::i32, dev, -1);
    b.dec_weight = filled(in.B * in.Td, DType::f32, dev, 0);
    b.dec_lengths = filled(in.B, DType::i32, dev, static_cast<double>(in.Td));
    t5_forward(m, acts, b, false, LayerContext{});
    write_logits(a.logits_out, acts.logits, in.B, in.Td, m.cfg.vocab_size);
  }
  ST_LOG("export: logits of ", in.B, " rows -> ", a.logits_out, " (", device_name(dev), ", ", dtype_name(dt), ")");
}

template <typename Model, typename Load, typename Save>
void export_adapter(const RunConfig& c, const std::string& arch, const ExportArgs& a, Load load, Save save) {
  const DType dt = c.dtype == "f64" ? DType::f64 : DType::f32;
  Model m = load(dt);
  std::vector<Linear*> linears;
  if constexpr (std::is_same_v<Model, LlamaModel>) linears = llama_linears(m);
  else linears = t5_linears(m);
  attach_and_load(m, c, arch, linears, 1);
  if (!a.peft.empty()) {
    save_peft_adapter(linears, arch, c.model, a.peft);
    if (const auto t = read_adapter_training(c.adapter)) write_adapter_training(a.peft, *t);
    ST_LOG("export: adapter (PEFT format) -> ", a.peft);
  }
  if (!a.merged.empty()) {
    merge_adapters(m);
    save(m);
    ST_LOG("export: merged model (Hugging Face layout) -> ", a.merged);
  }
}

int run_export(int argc, char** argv) {
  ExportArgs a;
  bool help = false;
  std::vector<char*> rest = take_export_flags(argc, argv, a, help);
  if (help) std::cout << kExportHelp;
  RunConfig cfg;
  cfg.data = "-";  // export reads no data; `data` stays optional
  if (!parse_run_config(static_cast<int>(rest.size()), rest.data(), "export", cfg)) return kExitOk;
  if (cfg.model.empty() && !cfg.adapter.empty()) {  // the adapter's own base
    cfg.model = peft_adapter_base(cfg.adapter);
    cfg.origin["model"] = str(cfg.adapter, "/", kPeftConfigFile, " (base_model_name_or_path)");
    ST_LOG("export: base model ", cfg.model, " (from ", cfg.origin["model"], ")");
  }
  if (cfg.model.empty())
    ST_THROW_INPUT(cfg.origin.at("model"), ": export needs model = <the base model's Hugging Face checkpoint directory>");
  if (cfg.adapter.empty() && (!a.peft.empty() || !a.merged.empty() || a.logits_out.empty()))
    ST_THROW_INPUT("command line: export needs --adapter DIR (a PEFT LoRA adapter)");
  if (a.peft.empty() && a.merged.empty() && a.logits_out.empty())
    ST_THROW_INPUT("command line: export needs --peft OUT and/or --merged OUT");
  if (a.logits_in.empty() != a.logits_out.empty())
    ST_THROW_INPUT("command line: --logits-input and --logits-output go together");
  const std::string arch = model_arch(cfg);
  // The base's sizes (its config.json) before anything is allocated for it.
  DataShape one_row;
  one_row.seq_len = one_row.target_len = 1;
  check_buffer_sizes(cfg, ShardInfo{}, one_row);
  if (!a.logits_out.empty()) dump_logits(cfg, arch, a);
  if (a.peft.empty() && a.merged.empty()) return kExitOk;
  if (arch == "llama") {
    export_adapter<LlamaModel>(
        cfg, arch, a, [&](DType dt) { return load_llama(cfg.model, dt, Device::cpu); },
        [&](LlamaModel& m) { save_llama(m, a.merged, tokenizer_of(cfg), a.max_shard); });
  } else {
    export_adapter<T5Model>(
        cfg, arch, a, [&](DType dt) { return load_t5(cfg.model, dt, Device::cpu); },
        [&](T5Model& m) {
          save_t5(m, a.merged, a.max_shard);
          if (const std::string tok = tokenizer_of(cfg); !tok.empty())
            save_hf_tokenizer(tok, a.merged, "t5", kT5ModelMaxLength, m.cfg.vocab_size);
        });
  }
  return kExitOk;
}

}  // namespace

int cmd_export(int argc, char** argv) {
  try {
    return run_export(argc, argv);
  } catch (const Error& e) {
    fatal(e);
  } catch (const std::exception& e) {
    fatal(__FILE__, __LINE__, str("export: ", e.what()), kExitError);
  }
}

}  // namespace st
