// `shardtune prepare`: text to HDF5 shards, the embedded synthetic dataset and tokenizer, or
// random-token shards for benchmarks.
#include <boost/program_options.hpp>
#include <cstdint>
#include <cstdio>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "cli/commands.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "data/prepare.hpp"
#include "data/synthetic.hpp"

namespace po = boost::program_options;

namespace st {

namespace {

constexpr const char* kUsage =
    "usage: shardtune prepare --input FILE --tokenizer MODEL --output DIR --split NAME [options]\n"
    "       shardtune prepare --synthetic DIR [--seed 1234] [--sentiment-rows 4000] [--instruct-rows 3000]\n"
    "                                         [--vocab-size 512]\n"
    "       shardtune prepare --random DIR --rows N --seq-len L --vocab V [--seed 1234] [--val-rows M]\n"
    "                                      [--arch seq2seq --target-len Lt]\n"
    "\n"
    "Tokenizes SST-2 (TSV: header 'sentence<TAB>label', label 0/1) or Alpaca (JSON list or JSONL of\n"
    "{instruction, input, output}) text with a SentencePiece model and writes padded HDF5 shards\n"
    "DIR/NAME-00000.h5, ... (existing shards of that split are deleted first). Rows too long for\n"
    "--max-seq-len are truncated (answer from its end, then prompt content word by word) or dropped;\n"
    "bad rows are skipped; all of it is counted in the report.\n"
    "With --arch seq2seq (T5/FlanT5), each row is an encoder input and a decoder target, with no BOS and\n"
    "an EOS ending both: SST-2 as 'sst2 sentence: {sentence}' -> 'negative'|'positive', Alpaca as the\n"
    "template's prompt -> the output. Inputs are cut to --max-seq-len, targets to --max-target-len\n"
    "(EOS kept last); rows with an empty target are dropped.\n"
    "With --synthetic, writes the embedded synthetic dataset (sentiment_{train,dev}.tsv,\n"
    "instruct_{train,val}.jsonl) and a SentencePiece tokenizer (tokenizer.model/.vocab) trained on it.\n"
    "With --random (benchmarks), writes DIR/train-00000.h5 (N rows) and DIR/validation-00000.h5 (M rows,\n"
    "default max(1, N/16)) of full-length rows: BOS (id 1), then L-1 ids drawn uniformly from [3, V), loss\n"
    "on every one of them; task 'random', tokenizer_sha256 'random-vocab-V', uncompressed. The same\n"
    "options give the same files. With --arch seq2seq: encoder rows of L-1 random ids then EOS (id 2), and\n"
    "targets of Lt-1 random ids then EOS, decoder start id 0 (pad).\n";

bool parse_bool(const std::string& option, const std::string& v) {
  if (v == "true" || v == "1" || v == "yes" || v == "on") return true;
  if (v == "false" || v == "0" || v == "no" || v == "off") return false;
  ST_THROW_INPUT("--", option, " must be true or false (got '", v, "')");
}

bool given(const po::variables_map& vm, const char* name) { return vm.count(name) && !vm[name].defaulted(); }

// The shards' created_by attribute.
std::string command_line(int argc, char** argv) {
  std::string s = "shardtune";
  for (int i = 0; i < argc; ++i) s += std::string(" ") + argv[i];
  return s;
}

int run_prepare(int argc, char** argv) {
  PrepareOptions o;
  std::string add_bos = "true", add_eos = "true";
  std::string synthetic_dir;
  int64_t seed = 1234, sentiment_rows = 4000, instruct_rows = 3000, vocab_size = 512;
  std::string random_dir;
  int64_t random_rows = 0, random_seq_len = 0, random_vocab = 0, random_val_rows = -1, random_target_len = 0;
  std::vector<std::string> positional;

  po::options_description text("Text to shards");
  text.add_options()
      ("input", po::value(&o.input)->value_name("FILE"), "input text: SST-2 .tsv, Alpaca .json (list) or .jsonl (required)")
      ("tokenizer", po::value(&o.tokenizer)->value_name("MODEL"), "SentencePiece .model file (required)")
      ("output", po::value(&o.output_dir)->value_name("DIR"), "directory for the shards, created if missing (required)")
      ("split", po::value(&o.split)->value_name("NAME"), "split name: shards are DIR/NAME-00000.h5, ... (required)")
      ("format", po::value(&o.format)->default_value("auto")->value_name("F"),
       "auto | sst2 | alpaca; auto: sst2 for .tsv, alpaca for .json/.jsonl")
      ("max-seq-len", po::value(&o.max_seq_len)->default_value(128)->value_name("L"),
       "row length L: rows are padded to it, longer ones truncated or dropped (>= 2)")
      ("loss-on", po::value(&o.loss_on)->default_value("answer")->value_name("WHAT"),
       "answer: loss on the answer tokens and eos; all: on every token from position 1")
      ("template", po::value(&o.prompt_template)->default_value("alpaca")->value_name("T"),
       "instruction prompt template: alpaca (Stanford Alpaca) | plain (### Instruction/Input/Response)")
      ("shard-rows", po::value(&o.shard_rows)->default_value(0)->value_name("N"), "rows per shard file; 0 = one shard")
      ("add-bos", po::value(&add_bos)->default_value("true")->value_name("BOOL"),
       "start every row with the tokenizer's BOS (causal only: seq2seq rows have none)")
      ("add-eos", po::value(&add_eos)->default_value("true")->value_name("BOOL"),
       "end every answer with the tokenizer's EOS (seq2seq: both the input and the target)")
      ("max-target-len", po::value(&o.max_target_len)->default_value(64)->value_name("Lt"),
       "--arch seq2seq: target length Lt: targets are padded to it, longer ones cut keeping EOS (>= 2)")
      ("limit", po::value(&o.limit)->default_value(0)->value_name("N"), "read at most N input rows (good or bad); 0 = all");

  po::options_description synth("Synthetic dataset");
  synth.add_options()
      ("synthetic", po::value(&synthetic_dir)->value_name("DIR"), "write the synthetic dataset and its tokenizer into DIR")
      ("sentiment-rows", po::value(&sentiment_rows)->default_value(4000)->value_name("N"),
       "sentiment train rows (the dev split gets N/10)")
      ("instruct-rows", po::value(&instruct_rows)->default_value(3000)->value_name("N"),
       "instruction train rows (the val split gets N/10)")
      ("vocab-size", po::value(&vocab_size)->default_value(512)->value_name("V"),
       "SentencePiece vocabulary size, including 256 byte-fallback pieces (>= 300)");

  po::options_description random("Random tokens (benchmarks)");
  random.add_options()
      ("random", po::value(&random_dir)->value_name("DIR"),
       "write random-token shards DIR/train-00000.h5 and DIR/validation-00000.h5")
      ("rows", po::value(&random_rows)->value_name("N"), "training rows (required, >= 1)")
      ("seq-len", po::value(&random_seq_len)->value_name("L"), "tokens per row, BOS included (required, >= 2)")
      ("vocab", po::value(&random_vocab)->value_name("V"), "vocabulary size: ids are drawn from [3, V) (required, >= 4)")
      ("val-rows", po::value(&random_val_rows)->value_name("M"), "validation rows (default: max(1, N/16))")
      ("target-len", po::value(&random_target_len)->value_name("Lt"),
       "--arch seq2seq: tokens per target, EOS included (required with seq2seq, >= 2)");

  po::options_description general("General");
  general.add_options()
      ("arch", po::value(&o.arch)->default_value("causal")->value_name("A"),
       "shard layout, for text and --random: causal (decoder-only LMs) | seq2seq (encoder-decoder, T5)")
      ("seed", po::value(&seed)->default_value(1234)->value_name("S"),
       "random seed for --synthetic and --random (>= 0); the same seed gives the same files")
      ("help,h", "print this help and exit");

  po::options_description hidden;
  hidden.add_options()("positional", po::value(&positional)->composing());
  po::positional_options_description pos;
  pos.add("positional", -1);

  po::options_description visible;
  visible.add(text).add(synth).add(random).add(general);
  po::options_description all;
  all.add(visible).add(hidden);

  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc, argv).options(all).positional(pos).run(), vm);
    po::notify(vm);
  } catch (const po::error& e) {
    ST_THROW_INPUT("prepare: ", e.what(), " (see shardtune prepare --help)");
  }
  if (vm.count("help")) {
    std::ostringstream os;
    os << kUsage << "\n" << visible;
    std::fputs(os.str().c_str(), stdout);
    return kExitOk;
  }
  if (!positional.empty())
    ST_THROW_INPUT("prepare: unexpected argument '", positional.front(), "' (options are --name value)");

  static const char* const kTextOptions[] = {"input", "tokenizer", "output", "split", "format", "max-seq-len",
                                             "loss-on", "template", "shard-rows", "add-bos", "add-eos", "limit",
                                             "max-target-len"};
  static const char* const kSynthOptions[] = {"synthetic", "sentiment-rows", "instruct-rows", "vocab-size"};
  static const char* const kRandomOptions[] = {"random", "rows", "seq-len", "vocab", "val-rows", "target-len"};

  ST_CHECK_INPUT(o.arch == "causal" || o.arch == "seq2seq", "--arch must be causal or seq2seq (got '", o.arch, "')");
  const bool seq2seq = o.arch == "seq2seq";

  if (given(vm, "random")) {
    for (const char* name : kTextOptions)
      if (given(vm, name)) ST_THROW_INPUT("prepare: --", name, " cannot be combined with --random");
    for (const char* name : kSynthOptions)
      if (given(vm, name)) ST_THROW_INPUT("prepare: --", name, " cannot be combined with --random");
    for (const char* name : {"rows", "seq-len", "vocab"})
      if (!given(vm, name)) ST_THROW_INPUT("prepare: --random needs --", name);
    if (seq2seq && !given(vm, "target-len")) ST_THROW_INPUT("prepare: --random --arch seq2seq needs --target-len");
    if (!seq2seq && given(vm, "target-len"))
      ST_THROW_INPUT("prepare: --target-len only applies with --arch seq2seq");
    ST_CHECK_INPUT(seed >= 0, "--seed must be >= 0 (got ", seed, ")");
    RandomShardOptions ro;
    ro.output_dir = random_dir;
    ro.rows = random_rows;
    ro.seq_len = random_seq_len;
    ro.vocab = random_vocab;
    ro.seed = static_cast<uint64_t>(seed);
    ro.val_rows = random_val_rows;
    ro.arch = o.arch;
    ro.target_len = random_target_len;
    ro.created_by = command_line(argc, argv);
    ST_LOG(format_random_shard_report(write_random_shards(ro)));
    return kExitOk;
  }
  for (const char* name : kRandomOptions)
    if (given(vm, name)) ST_THROW_INPUT("prepare: --", name, " only applies with --random");

  if (given(vm, "synthetic")) {
    for (const char* name : kTextOptions)
      if (given(vm, name)) ST_THROW_INPUT("prepare: --", name, " cannot be combined with --synthetic");
    if (given(vm, "arch")) ST_THROW_INPUT("prepare: --arch cannot be combined with --synthetic (it writes text)");
    ST_CHECK_INPUT(seed >= 0, "--seed must be >= 0 (got ", seed, ")");
    ST_CHECK_INPUT(vocab_size >= 300 && vocab_size <= 1000000, "--vocab-size must be in [300, 1000000] (got ",
                   vocab_size, ")");
    SyntheticOptions so;
    so.dir = synthetic_dir;
    so.seed = static_cast<uint64_t>(seed);
    so.sentiment_rows = sentiment_rows;
    so.instruct_rows = instruct_rows;
    so.vocab_size = static_cast<int>(vocab_size);
    const SyntheticResult r = write_synthetic_dataset(so);
    char buf[128];
    std::snprintf(buf, sizeof(buf), "%.2f s generating, %.2f s training the tokenizer", r.generate_seconds,
                  r.tokenizer_seconds);
    ST_LOG("prepare synthetic: ", synthetic_dir, " (seed ", seed, ", ", buf, ")");
    ST_LOG("  sentiment  ", r.sentiment_train, " train + ", r.sentiment_dev, " dev rows");
    ST_LOG("  instruct   ", r.instruct_train, " train + ", r.instruct_val, " val records");
    for (const auto& f : r.files) ST_LOG("  wrote      ", f);
    return kExitOk;
  }

  for (const char* name : kSynthOptions)
    if (given(vm, name)) ST_THROW_INPUT("prepare: --", name, " only applies with --synthetic");
  if (given(vm, "seed")) ST_THROW_INPUT("prepare: --seed only applies with --synthetic or --random");
  if (given(vm, "template") && !o.input.empty() && resolve_input_format(o.format, o.input) == "sst2")
    ST_THROW_INPUT("prepare: --template applies to instruction (alpaca) data only; SST-2 uses its own prompt");
  if (seq2seq && given(vm, "loss-on"))
    ST_THROW_INPUT("prepare: --loss-on applies to --arch causal only (seq2seq: the loss is on every target token)");
  if (!seq2seq && given(vm, "max-target-len"))
    ST_THROW_INPUT("prepare: --max-target-len only applies with --arch seq2seq");
  o.add_bos = parse_bool("add-bos", add_bos);
  if (seq2seq && given(vm, "add-bos") && o.add_bos)
    ST_THROW_INPUT("prepare: --add-bos true cannot be combined with --arch seq2seq (seq2seq rows have no BOS; "
                   "T5 tokenizers have none)");
  o.add_eos = parse_bool("add-eos", add_eos);
  o.created_by = command_line(argc, argv);
  const PrepareStats stats = prepare_dataset(o);
  ST_LOG(format_prepare_report(stats));
  return kExitOk;
}

}  // namespace

int cmd_prepare(int argc, char** argv) {
  try {
    return run_prepare(argc, argv);
  } catch (const Error& e) {
    fatal(e);
  } catch (const std::exception& e) {
    fatal(__FILE__, __LINE__, str("prepare: ", e.what()), kExitError);
  }
}

}  // namespace st
