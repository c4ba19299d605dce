// `shardtune generate`: text from a model (a Hugging Face decoder checkpoint, optionally with a
// PEFT LoRA adapter), one prompt after another, each through a KV-cached decoder
// (model/llama_cache.hpp) with greedy decoding or sampling (train/generate.hpp). One process,
// on the CPU or one GPU.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <boost/program_options.hpp>
#include <omp.h>
#include <nlohmann/json.hpp>

#include "adapters/peft.hpp"
#include "cli/commands.hpp"
#include "cli/generate_options.hpp"
#include "cli/inference_model.hpp"
#include "config/run_config.hpp"
#include "config/strict_value.hpp"
#include "core/allocator.hpp"
#include "core/atomic_file.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "core/log_redirect.hpp"
#include "data/tokenizer.hpp"
#include "train/families.hpp"
#include "train/generate.hpp"
#include "train/preflight.hpp"
#include "train/setup.hpp"
#include "train/trainer.hpp"

namespace po = boost::program_options;
namespace fs = std::filesystem;

namespace st {

namespace {


const char* kGenerateUsage =
    "Usage: shardtune generate --model DIR | --adapter DIR  --prompt TEXT ... | --prompt-file FILE  [options]\n\n"
    "Continues each prompt with up to --max-new-tokens tokens from the model (a Hugging Face decoder checkpoint:\n"
    "llama, mistral, qwen2), with a PEFT LoRA adapter when --adapter is given, one prompt after another through\n"
    "a key/value cache. Greedy decoding by default (--temperature 0, as transformers' do_sample=False); with\n"
    "--temperature T > 0 it samples from softmax(top_p(top_k(logits / T))), in transformers' order, drawing\n"
    "from --seed (the same seed gives the same text). Prompts are encoded with the tokenizer, BOS first.\n"
    "Output: each prompt and its continuation as text on stdout (statistics on stderr); with --output FILE one\n"
    "JSON object per prompt in FILE (written when all are done; '-': stdout): prompt, prompt_ids, new_ids\n"
    "(with the EOS token when generation stopped at it), text (the continuation), finish (eos | length),\n"
    "prefill_seconds, decode_seconds, tokens_per_second.\n\n";

const char* kRunKeysHelp =
    "Model and run options (deck keys, also --key value; see `shardtune train --help`):\n"
    "  --model DIR           Hugging Face checkpoint directory (config.json + model.safetensors), e.g. a\n"
    "                        merged export or a run's model/; default: the adapter's base_model_name_or_path\n"
    "  --adapter DIR         PEFT LoRA adapter applied to the model (a QLoRA run's adapter runs on the NF4\n"
    "                        base it was trained on, as `eval` does, unless --method is set)\n"
    "  --tokenizer FILE      SentencePiece model (default: DIR/tokenizer.model of --model)\n"
    "  --seed N              seed of the sampling draws (default 1234)\n"
    "  --device cpu|cuda     (default cpu)\n"
    "  --dtype auto|f32|f64|bf16   compute dtype (default auto: f32 on cpu, bf16 on cuda; f32/f64 on cpu only)\n"
    "  --threads N           OpenMP threads (default 0: every core)\n"
    "  --deck FILE           read these keys from an input deck\n";

po::options_description generate_options(GenerateFlags& f) {
  po::options_description d("Generation options");
  d.add_options()("prompt", po::value<std::vector<std::string>>(&f.prompts)->composing(),
                  "a prompt (repeatable); prompts of --prompt-file follow")(
      "prompt-file", po::value<std::string>(&f.prompt_file)->default_value("", "\"\""),
      "a file of prompts: one per line (blank lines skipped), or with a .jsonl name one JSON object per line "
      "with a string field \"prompt\"")(
      "max-new-tokens", (new strict_value<int64_t>(&f.max_new_tokens, "--max-new-tokens"))->default_value(64),
      "the most tokens generated per prompt")(
      "temperature", (new strict_value<double>(&f.temperature, "--temperature"))->default_value(0.0, "0"),
      "0: greedy decoding; > 0: sampling with logits / temperature")(
      "top-k", (new strict_value<int64_t>(&f.top_k, "--top-k"))->default_value(0),
      "sampling: keep the k most probable tokens (0: all)")(
      "top-p", (new strict_value<double>(&f.top_p, "--top-p"))->default_value(1.0, "1"),
      "sampling: keep the most probable tokens whose probability sums to p, in (0, 1] (1: all)")(
      "stop-at-eos", po::value<bool>(&f.stop_at_eos)->default_value(true, "true"),
      "stop a prompt's generation at the model's EOS token (true | false)")(
      "add-bos", po::value<bool>(&f.add_bos)->default_value(true, "true"),
      "start each prompt with the tokenizer's BOS token (true | false)")(
      "kv-cache", po::value<bool>(&f.kv_cache)->default_value(true, "true"),
      "keep the keys and values of past positions (false: every step recomputes the whole sequence; for "
      "comparisons)")(
      "output", po::value<std::string>(&f.output)->default_value("", "\"\""),
      "write JSON lines to this file ('-': stdout) instead of text to stdout");
  return d;
}

// Launched with more than one rank (mpirun, srun): generate runs on one.
int launcher_world_size() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"})
    if (const char* s = std::getenv(v)) return std::atoi(s);
  return 1;
}

void check_flags(const GenerateFlags& f, const po::variables_map& vm) {
  if (f.max_new_tokens < 1 || f.max_new_tokens > kMaxPositions)
    ST_THROW_INPUT("command line: --max-new-tokens ", f.max_new_tokens, " must be in [1, ", kMaxPositions, "]");
  if (f.temperature < 0)
    ST_THROW_INPUT("command line: --temperature ", format_real(f.temperature), " must be >= 0 (0: greedy decoding)");
  if (f.top_k < 0 || f.top_k > kMaxVocab)
    ST_THROW_INPUT("command line: --top-k ", f.top_k, " must be in [0, ", kMaxVocab, "] (0: off)");
  if (!(f.top_p > 0 && f.top_p <= 1))
    ST_THROW_INPUT("command line: --top-p ", format_real(f.top_p), " must be in (0, 1] (1: off)");
  if (f.temperature == 0)
    for (const char* k : {"top-k", "top-p"})
      if (!vm[k].defaulted())
        ST_THROW_INPUT("command line: --", k, " applies to sampling, but --temperature is 0 (greedy decoding): set "
                       "--temperature > 0 to sample");
  if (f.prompts.empty() && f.prompt_file.empty())
    ST_THROW_INPUT("command line: generate needs --prompt TEXT (repeatable) or --prompt-file FILE");
}

// A regular file (or a new one) is written whole or not at all (a temporary file renamed over it);
// anything else that exists (/dev/null, /dev/stdout, a pipe) is written to in place, never
// replaced.
void write_output(const std::string& path, const std::string& text) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (!ec && fs::exists(st) && !fs::is_regular_file(st)) {
    if (fs::is_directory(st)) ST_THROW_INPUT("command line: --output ", path, " is a directory");
    std::ofstream out(path, std::ios::binary);
    out << text;
    out.flush();
    if (!out) ST_THROW_INPUT("command line: --output ", path, ": write failed");
    return;
  }
  atomic_write_file(path, text);
}

// The continuation's text: the whole sequence's decoding after the prompt's (SentencePiece drops
// the leading space of a text's first piece, so decoding the new ids alone can lose it).
std::string continuation_text(const Tokenizer& tok, std::vector<int32_t> prompt, const std::vector<int32_t>& new_ids,
                              int64_t eos) {
  if (!prompt.empty() && prompt.front() == tok.bos_id()) prompt.erase(prompt.begin());
  std::vector<int32_t> fresh;
  for (const int32_t t : new_ids)
    if (t != eos) fresh.push_back(t);
  std::vector<int32_t> all = prompt;
  all.insert(all.end(), fresh.begin(), fresh.end());
  const std::string head = tok.decode(prompt), whole = tok.decode(all);
  return whole.compare(0, head.size(), head) == 0 ? whole.substr(head.size()) : tok.decode(fresh);
}

}  // namespace

bool parse_generate_options(int argc, char** argv, GenerateFlags& f, RunConfig& cfg) {
  po::options_description gen = generate_options(f);
  po::options_description cli;
  cli.add(gen);
  cli.add_options()("help,h", "print this help");
  po::variables_map vm;
  std::vector<std::string> rest;
  try {
    const po::parsed_options parsed = po::command_line_parser(argc, argv).options(cli).allow_unregistered().run();
    po::store(parsed, vm);
    po::notify(vm);
    rest = po::collect_unrecognized(parsed.options, po::include_positional);
  } catch (const po::error& e) {
    ST_THROW_INPUT("command line: ", e.what());
  }
  if (vm.count("help")) {
    std::cout << kGenerateUsage << gen << "\n" << kRunKeysHelp;
    return false;
  }
  check_flags(f, vm);
  // The run options (model, adapter, tokenizer, device, dtype, seed, ...) through the deck parser.
  std::vector<char*> run_argv{argv[0]};
  for (std::string& s : rest) run_argv.push_back(s.data());
  cfg.data.assign(1, '-');  // generate reads no data
  return parse_run_config(static_cast<int>(run_argv.size()), run_argv.data(), "generate", cfg);
}

namespace {

int run_generate(int argc, char** argv) {
  set_info_log_to_stderr(true);  // stdout is the generated text (or JSON lines)
  GenerateFlags f;
  RunConfig cfg;
  if (!parse_generate_options(argc, argv, f, cfg)) return kExitOk;
  if (const int w = launcher_world_size(); w > 1)
    ST_THROW_INPUT("generate runs on one rank (started with ", w, "): run it without mpirun/srun");
  if (run_strategy(cfg) != Strategy::none || cfg.tp_size > 1)
    ST_THROW_INPUT(cfg.origin.at("parallel"), ": parallel = ", cfg.parallel, " (tp_size ", cfg.tp_size,
                   "): generate runs the whole model on one rank (parallel = none)");
  if (cfg.model.empty() && !cfg.adapter.empty()) {  // the adapter's own base, as export takes it
    cfg.model = peft_adapter_base(cfg.adapter);
    cfg.origin["model"] = str(cfg.adapter, "/", kPeftConfigFile, " (base_model_name_or_path)");
    ST_LOG("generate: base model ", cfg.model, " (from ", cfg.origin["model"], ")");
  }
  if (cfg.model.empty())
    ST_THROW_INPUT("command line: generate needs --model DIR (a Hugging Face checkpoint directory) or --adapter DIR "
                   "(a PEFT adapter whose base_model_name_or_path is one)");
  cfg = with_adapter_method(cfg);
  const ModelFamily& fam = model_family(cfg);
  if (fam.seq2seq)
    ST_THROW_INPUT(cfg.model, ": generate decodes the decoder families (llama, mistral, qwen2); the ", fam.name,
                   " family (encoder-decoder) has no incremental decoder yet");
  if (cfg.threads > 0) omp_set_num_threads(cfg.threads);

  // Prompts and the tokenizer.
  std::string tok_path = cfg.tokenizer;
  if (tok_path.empty() && fs::exists(fs::path(cfg.model) / "tokenizer.model"))
    tok_path = (fs::path(cfg.model) / "tokenizer.model").string();
  if (tok_path.empty())
    ST_THROW_INPUT(cfg.model, ": no tokenizer.model in the model directory: give --tokenizer FILE (a SentencePiece model)");
  const Tokenizer tok = Tokenizer::load(tok_path);
  std::vector<std::string> prompts = f.prompts;
  if (!f.prompt_file.empty())
    for (std::string& p : read_prompt_file(f.prompt_file)) prompts.push_back(std::move(p));
  std::vector<std::vector<int32_t>> ids;
  int64_t longest = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    std::vector<int32_t> p;
    if (f.add_bos && tok.bos_id() >= 0) p.push_back(tok.bos_id());
    for (const int32_t t : tok.encode(prompts[i])) p.push_back(t);
    if (p.empty())
      ST_THROW_INPUT("prompt ", i + 1, " is empty and no BOS token starts it (--add-bos false, or the tokenizer "
                     "has none): nothing to continue");
    longest = std::max<int64_t>(longest, static_cast<int64_t>(p.size()));
    ids.push_back(std::move(p));
  }
  const int64_t capacity = longest + f.max_new_tokens - 1;  // the last new token is not fed back

  // The model.
  DataShape shape;
  shape.seq_len = capacity;
  check_buffer_sizes(cfg, ShardInfo{}, shape);
  const Device dev = run_device(cfg);
  const DType dt = run_dtype(cfg, dev);
  if (dev == Device::cuda) select_cuda_device(0);
  std::unique_ptr<ModelRunner> model = load_inference_model(
      cfg, fam, dt, dev, 1, capacity, 1, run_method(cfg) == Method::qlora ? Method::qlora : Method::lora, "generate");
  if (tok.vocab_size() > model->vocab_size())
    ST_THROW_INPUT(tok_path, ": the tokenizer has ", tok.vocab_size(), " pieces but the model's vocabulary has only ",
                   model->vocab_size());
  std::unique_ptr<TokenDecoder> dec = f.kv_cache ? model->decoder(capacity, longest) : uncached_decoder(*model, capacity);

  GenerateOptions o;
  o.sampling = {f.temperature, f.top_k, f.top_p};
  o.max_new_tokens = f.max_new_tokens;
  o.stop_at_eos = f.stop_at_eos;
  o.eos_id = model->eos_id();
  o.seed = cfg.seed;
  ST_LOG("generate: ", prompts.size(), " prompt", prompts.size() == 1 ? "" : "s", ", up to ", f.max_new_tokens,
         " new tokens each, ",
         o.sampling.greedy() ? std::string("greedy")
                             : str("sampling (temperature ", format_real(f.temperature), ", top_k ", f.top_k,
                                   ", top_p ", format_real(f.top_p), ", seed ", cfg.seed, ")"),
         ", on ", device_name(dev), " in ", dtype_name(dt));
  std::ostringstream jsonl;
  int64_t total_new = 0;
  double total_time = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const GenerateResult r = generate_tokens(*dec, ids[i], o, i);
    const std::string text = continuation_text(tok, ids[i], r.new_ids, o.eos_id);
    total_new += static_cast<int64_t>(r.new_ids.size());
    total_time += r.prefill_seconds + r.decode_seconds;
    ST_LOG("generate: prompt ", i + 1, "/", prompts.size(), ": ", ids[i].size(), " prompt tokens, ", r.new_ids.size(),
           " new (", r.stopped_at_eos ? "stopped at EOS" : "length limit", "), ", format_real(std::round(r.tokens_per_second() * 10) / 10),
           " tokens/s");
    if (f.output.empty()) {
      std::cout << prompts[i] << text << "\n\n" << std::flush;
      continue;
    }
    nlohmann::json j = {{"prompt", prompts[i]},
                        {"prompt_ids", ids[i]},
                        {"new_ids", r.new_ids},
                        {"text", text},
                        {"finish", r.stopped_at_eos ? "eos" : "length"},
                        {"prefill_seconds", r.prefill_seconds},
                        {"decode_seconds", r.decode_seconds},
                        {"tokens_per_second", r.tokens_per_second()}};
    jsonl << j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
  }
  if (f.output == "-") std::cout << jsonl.str() << std::flush;
  else if (!f.output.empty()) {
    write_output(f.output, jsonl.str());
    ST_LOG("generate: ", prompts.size(), " generations -> ", f.output);
  }
  ST_LOG("generate: ", total_new, " tokens in ", format_real(std::round(total_time * 1000) / 1000), " s (",
         format_real(std::round(total_time > 0 ? total_new / total_time * 10 : 0) / 10), " tokens/s)");
  return kExitOk;
}

}  // namespace

int cmd_generate(int argc, char** argv) {
  try {
    return run_generate(argc, argv);
  } catch (const Error& e) {
    fatal(e);
  } catch (const std::exception& e) {
    fatal(__FILE__, __LINE__, str("generate: ", e.what()), kExitError);
  }
}

}  // namespace st
