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
#include <vector>

#include "adapters/apply.hpp"
#include "adapters/peft.hpp"
#include "cli/commands.hpp"
#include "cli/inference_model.hpp"
#include "config/run_config.hpp"
#include "core/allocator.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "io/h5util.hpp"
#include "io/hf_checkpoint.hpp"
#include "train/families.hpp"
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

void write_logits(const std::string& path, const Tensor& logits) {
  const std::string tmp = path + ".tmp";
  try {
    h5::Handle f = h5::create_file(tmp);
    h5::write_dataset(f, "logits", H5T_NATIVE_FLOAT, logits.data(),
                      {static_cast<hsize_t>(logits.dim(0)), static_cast<hsize_t>(logits.dim(1)),
                       static_cast<hsize_t>(logits.dim(2))});
    h5::close_file_checked(f, tmp);
    durable_rename(tmp, path);
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
}

std::vector<int32_t> to_i32(const std::vector<int64_t>& v) { return std::vector<int32_t>(v.begin(), v.end()); }

void dump_logits(RunConfig c, const ModelFamily& fam, const ExportArgs& a) {
  const Device dev = run_device(c);
  const DType dt = run_dtype(c, dev);
  if (dev == Device::cuda) select_cuda_device(0);
  const Inputs in = read_inputs(a.logits_in, fam.seq2seq);
  LogitsInput li;
  li.B = in.B;
  li.T = in.T;
  li.Td = in.Td;
  li.ids = to_i32(in.ids);
  li.lengths = lengths_of(in);
  li.dec_ids = to_i32(in.dec_ids);
  std::unique_ptr<ModelRunner> m = load_inference_model(c, fam, dt, dev, in.B, in.T, std::max<int64_t>(1, in.Td), Method::lora,
                                                                "export");
  write_logits(a.logits_out, m->logits(li));
  ST_LOG("export: logits of ", in.B, " rows -> ", a.logits_out, " (", device_name(dev), ", ", dtype_name(dt), ")");
}

int run_export(int argc, char** argv) {
  ExportArgs a;
  bool help = false;
  std::vector<char*> rest = take_export_flags(argc, argv, a, help);
  if (help) std::cout << kExportHelp;
  RunConfig cfg;
  cfg.data.assign(1, '-');  // export reads no data; `data` stays optional
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
  const ModelFamily& fam = model_family(cfg);
  // The base's sizes (its config.json) before anything is allocated for it.
  DataShape one_row;
  one_row.seq_len = one_row.target_len = 1;
  check_buffer_sizes(cfg, ShardInfo{}, one_row);
  if (!a.logits_out.empty()) dump_logits(cfg, fam, a);
  if (a.peft.empty() && a.merged.empty()) return kExitOk;
  // On the CPU in f32 (f64 with dtype = f64), one rank: the factors and the merge exactly.
  RunConfig c = cfg;
  c.device = "cpu";
  c.dtype = cfg.dtype == "f64" ? "f64" : "f32";
  std::unique_ptr<ModelRunner> m = load_inference_model(c, fam, run_dtype(c, Device::cpu), Device::cpu, 1, 1, 1,
                                                                Method::lora, "export");
  if (!a.peft.empty()) {
    save_peft_adapter(m->linears(), fam.peft, cfg.model, a.peft);
    if (const auto t = read_adapter_training(cfg.adapter)) write_adapter_training(a.peft, *t);
    ST_LOG("export: adapter (PEFT format) -> ", a.peft);
  }
  if (!a.merged.empty()) {
    m->save(a.merged, tokenizer_of(cfg), a.max_shard);
    ST_LOG("export: merged model (Hugging Face layout) -> ", a.merged);
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
