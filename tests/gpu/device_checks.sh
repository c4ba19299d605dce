#!/usr/bin/env bash
# Everything a session checks on the GPU host, in one call (the host is scarce): build, golden
# fixtures from transformers, the GPU test binary, PEFT interop, and optionally benchmarks.
# Each step logs to $OUT/<step>.log and the run goes on after a failing step; $OUT/summary.txt
# lists each step's exit status and seconds. Regenerated fixtures are copied into the tree
# (so the tests of this call use them) and to $OUT/golden/ (to commit).
#
#   tests/gpu/device_checks.sh [STEP ...]     (default: build goldens test-gpu golden-cpu peft)
#
# Steps: build, goldens, test-gpu, golden-cpu (the CPU golden tests against fresh fixtures),
# peft, bench-packing, bench (BENCH_ARGS), bench-regress (.bench_before vs this tree, twice,
# interleaved: REGRESS_CONFIGS), generate-check (the CLI on CUDA, cached and not), calibrate (a
# device profile, CALIBRATE_SECONDS), predict (predicted vs measured step time: PREDICT_CONFIGS), fp8-quality (FP8Q_ARGS),
# profile (per-op tables: PROFILE_DECKS, PROFILE_CKPT, PROFILE_LEVEL), profile-ab (the same for this
# tree and .bench_before in one call: before/after per-op tables), attn-ab (attention tests, kernel
# bench and step times of this tree and .bench_before in one short call), kinds-ab (the opt-in
# SHARDTUNE_SKINNY kinds: tested one by one, the passing ones A/B'd against the default),
# autotune-ab (SHARDTUNE_GEMM_AUTOTUNE=all against off), attn-keys-ab (the 128-key attention
# backward against the 64-key one), split-ab (the attention backward's GQA head split against none),
# fwd-rows-ab (the attention forward in blocks of 128 queries against 64),
# ncu (Nsight Compute sections of chosen kernels: NCU_KERNELS, NCU_FILTER),
# ab (any environment variable: AB_VAR, AB_VALUES), skinny-ab (SHARDTUNE_SKINNY
# cublaslt vs custom: tests, benchmark, per-op tables, step times). Needs BOOST_PO_SRC for the image's
# missing Boost.Program_options (docs/NOTES.md "Device notes"); carry .boost_po.
set -u
OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT"
JOBS=${JOBS:-16}
BOOST_PO_SRC=${BOOST_PO_SRC:-.boost_po/src}
# The same as an absolute path, for builds of .bench_before (session 13 lost a call's "before"
# tree to a relative-only join).
case $BOOST_PO_SRC in /*) BOOST_PO_ABS=$BOOST_PO_SRC ;; *) BOOST_PO_ABS=$PWD/$BOOST_PO_SRC ;; esac
MPI="mpirun --allow-run-as-root --bind-to none"
MK="make -j$JOBS BOOST_PO_SRC=$BOOST_PO_SRC CUDA_ARCHS=90"
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(build goldens test-gpu golden-cpu peft)

run_step() {
  local name=$1; shift
  local t0=$(date +%s)
  # DEADLINE (epoch seconds): steps that would start after it are skipped, so that a call's
  # results can still be packed before the device tool's limit.
  if [ -n "${DEADLINE:-}" ] && [ "$t0" -ge "$DEADLINE" ]; then
    echo "== $name: skipped (past DEADLINE)" | tee -a "$OUT/summary.txt"
    return 0
  fi
  echo "== $name: $*" | tee -a "$OUT/summary.txt"
  ( "$@" ) > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "   $name rc=$rc $(( $(date +%s) - t0 )) s" | tee -a "$OUT/summary.txt"
  tail -n 5 "$OUT/$name.log"
  return $rc
}

# Step times of PROFILE_DECKS (default the 7B LoRA bench deck) for each checkpointing setting in
# CKPTS, each round in ROUNDS (a round named prof runs with SHARDTUNE_PROFILE=2: per-op tables) and
# each value of the environment variable VAR in VALUES, interleaved, STEPS steps a run:
#   ab_runs TAG VAR "VALUES" "ROUNDS" "CKPTS" STEPS
ab_runs() {
  local tag=$1 var=$2 values=$3 rounds=$4 ckpts=$5 steps=$6 deck ck round val lvl name
  for deck in ${PROFILE_DECKS:-inputs/bench/llama7b_lora.cfg}; do
    for ck in $ckpts; do
      for round in $rounds; do
        for val in $values; do
          lvl=0; [ $round = prof ] && lvl=2
          name=$tag-$(basename $deck .cfg)-ckpt-$ck-$(echo $val | tr , +)-$round
          run_step $name env $var=$val SHARDTUNE_PROFILE=$lvl build/shardtune train --deck $deck \
            --activation_checkpointing $ck --output_dir "$OUT/profile-runs" --run_id r-$name --save_adapter false \
            --max_steps $steps
        done
      done
    done
  done
  rm -rf "$OUT/profile-runs"
}

# CudaAttentionBench with each value of the environment variable VAR, two rounds, interleaved:
#   attn_bench_ab TAG VAR "VALUES"
attn_bench_ab() {
  local tag=$1 var=$2 values=$3 round val
  for round in 1 2; do
    for val in $values; do
      run_step $tag-$val-$round env $var=$val build/tests/gpu_tests --gtest_also_run_disabled_tests \
        --gtest_filter='CudaAttentionBench.*'
    done
  done
}

# ../shared/data does not travel to the GPU host: a session copies what the checks read
# (models/stories260K, tokenizers/llama2) into the ignored .device_data and carries it.
if [ ! -d ../shared/data ] && [ -d .device_data ]; then
  mkdir -p ../shared && ln -sfn "$PWD/.device_data" ../shared/data
fi
# The bench's random shards (the profile decks read them).
make_shards() {
  run_step shards python3 -c "import sys; sys.path.insert(0, 'analysis'); import bench
for d, t, v in (('data/bench/random-1024', None, 32000), ('data/bench/random-t5-512-128', 128, 32128)):
    bench.ensure_shards('build/shardtune', {'dir': d, 'rows': 256, 'seq_len': 1024 if t is None else 512, 'target_len': t, 'vocab': v}, '$OUT', [], True)"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

for s in "${steps[@]}"; do
  case $s in
    build)
      run_step build bash -c "rm -rf build && $MK build build/tests/gpu_tests build/tests/unit_tests" ;;
    goldens)
      mkdir -p "$OUT/golden"
      run_step golden-nf4 python3 tests/golden/make_nf4_golden.py --device cuda --out "$OUT/golden"
      run_step golden-families python3 tests/golden/make_family_golden.py --out "$OUT/golden"
      run_step golden-generate python3 tests/golden/make_generate_golden.py --out "$OUT/golden"
      cp -r "$OUT/golden/." tests/golden/
      # one file back (the tool returns a bounded number of files)
      tar czf "$OUT/golden.tgz" -C "$OUT" golden && rm -rf "$OUT/golden" ;;
    test-gpu)
      run_step test-gpu build/tests/gpu_tests --gtest_brief=1 ;;
    golden-cpu)
      run_step golden-cpu build/tests/unit_tests --gtest_brief=1 \
        --gtest_filter='*Golden*:*Nf4*:*NF4*:*Generate*' ;;
    peft)
      run_step peft python3 tests/gpu/peft_interop.py --bin build/shardtune --device cuda ${PEFT_ARGS:-} ;;
    bench-packing)
      run_step bench-packing python3 analysis/bench_packing.py --bin build/shardtune --data-dir data/bench \
        --mpirun "$MPI" --out "$OUT/packing" ${PACKING_ARGS:-} ;;
    bench)
      run_step bench $MK bench BENCH_ARGS="${BENCH_ARGS:-}" ;;
    bench-regress)
      # Before/after a structural change: the old tree is a `git archive` in .bench_before
      # (carried as an ignored folder); each tree runs its own bench.py and decks on shared shards.
      root=$PWD
      run_step build-before bash -c "cd .bench_before && rm -rf build && make -j$JOBS BOOST_PO_SRC=$BOOST_PO_ABS CUDA_ARCHS=90 build"
      for round in $(seq 1 ${REGRESS_ROUNDS:-2}); do
        for tree in after before; do
          dir=$root; [ $tree = before ] && dir=$root/.bench_before
          run_step bench-$tree-$round bash -c "cd $dir && env -u OUT python3 analysis/bench.py --bin build/shardtune \
            --configs ${REGRESS_CONFIGS:-7b_lora,1b_full} --skip-reference --mpirun \"$MPI\" --data-dir $root/data/bench/random-1024 \
            --out-dir $OUT/bench-$tree-$round --quiet"
        done
      done ;;
    calibrate)
      # The device profile of this GPU over the generic shape sweep (issue 21), kept in $OUT.
      run_step calibrate build/shardtune calibrate --device cuda --seconds ${CALIBRATE_SECONDS:-30} \
        --out "$OUT/calibrated-profile.json" ;;
    predict)
      # Predicted vs measured step time on this GPU (issue 21): PREDICT_CONFIGS, PREDICT_SECONDS.
      run_step predict python3 analysis/predict_vs_measured.py --bin build/shardtune \
        --configs ${PREDICT_CONFIGS:-7b_lora,1b_full} --seconds ${PREDICT_SECONDS:-10} --mpirun "$MPI" \
        --out-dir "$OUT/predict" ${PREDICT_ARGS:-} ;;
    profile)
      # Per-op GPU time tables (SHARDTUNE_PROFILE=$PROFILE_LEVEL, default 1) of each deck in
      # PROFILE_DECKS (default the 7B LoRA bench deck) for each activation_checkpointing value in
      # PROFILE_CKPT (default "true false"; PROFILE_TAG suffixes the log names), then the same runs unprofiled (their s/step lines are
      # the undisturbed step times); needs the bench's random shards (the bench or predict step
      # makes them).
      for deck in ${PROFILE_DECKS:-inputs/bench/llama7b_lora.cfg}; do
        for ck in ${PROFILE_CKPT:-true false}; do
          name=$(basename $deck .cfg)-ckpt-$ck${PROFILE_TAG:-}
          run_step profile-$name env SHARDTUNE_PROFILE=${PROFILE_LEVEL:-1} build/shardtune train --deck $deck \
            --activation_checkpointing $ck --output_dir "$OUT/profile-runs" --run_id prof-$name --save_adapter false \
            --max_steps ${PROFILE_STEPS:-8} ${PROFILE_ARGS:-}
          run_step plain-$name build/shardtune train --deck $deck --activation_checkpointing $ck \
            --output_dir "$OUT/profile-runs" --run_id plain-$name --save_adapter false --max_steps ${PROFILE_STEPS:-8} \
            ${PROFILE_ARGS:-}
        done
      done
      rm -rf "$OUT/profile-runs" ;;
    profile-ab)
      # Per-op tables and plain step times of this tree and of .bench_before (a `git archive` of
      # the tree before a change, carried as an ignored folder) in one call, interleaved per
      # deck: PROFILE_DECKS (default the 7B LoRA bench deck), PROFILE_CKPT (default false),
      # PROFILE_LEVEL (default 2), PROFILE_STEPS (default 10). Makes the bench's random shards.
      root=$PWD
      run_step build-before bash -c "cd .bench_before && rm -rf build && make -j$JOBS BOOST_PO_SRC=$BOOST_PO_ABS CUDA_ARCHS=90 build"
      make_shards
      for deck in ${PROFILE_DECKS:-inputs/bench/llama7b_lora.cfg}; do
        for ck in ${PROFILE_CKPT:-false}; do
          for tree in after before; do
            bin=build/shardtune; [ $tree = before ] && bin=.bench_before/build/shardtune
            name=$(basename $deck .cfg)-ckpt-$ck-$tree
            for lvl in ${PROFILE_LEVEL:-2} 0; do
              run_step prof$lvl-$name env SHARDTUNE_PROFILE=$lvl $bin train --deck $deck --activation_checkpointing $ck \
                --output_dir "$OUT/profile-runs" --run_id p$lvl-$name --save_adapter false --max_steps ${PROFILE_STEPS:-10}
            done
          done
        done
      done
      rm -rf "$OUT/profile-runs" ;;
    attn-ab)
      # A kernel change against .bench_before in one short call (session 12): both trees built
      # side by side, the attention tests, CudaAttentionBench interleaved (after, before, twice),
      # the whole GPU suite, then plain step times (AB_DECKS, default the 7B LoRA bench deck; AB_CKPT,
      # default "false true"; 12 steps each) of both trees, interleaved. Needs nothing else built.
      root=$PWD
      ( cd .bench_before && make -j8 BOOST_PO_SRC=$BOOST_PO_ABS CUDA_ARCHS=90 build build/tests/gpu_tests \
          > "$OUT/build-before.log" 2>&1; echo "   build-before rc=$?" >> "$OUT/summary.txt" ) &
      run_step build-after make -j8 BOOST_PO_SRC=$BOOST_PO_SRC CUDA_ARCHS=90 build build/tests/gpu_tests
      wait
      run_step attn-tests build/tests/gpu_tests --gtest_brief=1 --gtest_filter='*ttention*'
      for round in 1 2; do
        for tree in after before; do
          bin=build/tests/gpu_tests; [ $tree = before ] && bin=.bench_before/build/tests/gpu_tests
          run_step attn-bench-$tree-$round $bin --gtest_also_run_disabled_tests --gtest_filter='CudaAttentionBench.*'
        done
      done
      run_step test-gpu build/tests/gpu_tests --gtest_brief=1
      make_shards
      for deck in ${AB_DECKS:-inputs/bench/llama7b_lora.cfg}; do
        for ck in ${AB_CKPT:-false true}; do
          for tree in after before; do
            bin=build/shardtune; [ $tree = before ] && bin=.bench_before/build/shardtune
            name=$(basename $deck .cfg)-ckpt-$ck-$tree
            run_step step-$name $bin train --deck $deck --activation_checkpointing $ck --output_dir "$OUT/ab-runs" \
              --run_id $name --save_adapter false --max_steps 12
          done
        done
      done
      rm -rf "$OUT/ab-runs" ;;
    kinds-ab)
      # Opt-in SHARDTUNE_SKINNY kinds (KINDS_NEW, default "swiglu") in one call: each kind's kernel
      # test, then the LoRA and model GPU tests with `<KINDS_BASE>,<kind>`; the kinds that pass both
      # are kept (kinds-kept.txt) and A/B'd together against KINDS_BASE (default expand,rope,pair,
      # session 15's default): the skinny benchmark, then per-op tables and plain step times
      # of PROFILE_DECKS (default the 7B LoRA bench deck) for PROFILE_CKPT (default "false true"),
      # a profiled round and KINDS_ROUNDS (default 2) plain rounds, interleaved.
      declare -A kind_test=([rope]='CudaOps.SkinnyExpandWithRope' [pair]='CudaOps.SkinnyLoraDyPair'
                            [swiglu]='CudaOps.SkinnySwigluLora')
      kept=""
      for k in ${KINDS_NEW:-swiglu}; do
        run_step kind-test-$k build/tests/gpu_tests --gtest_brief=1 --gtest_filter="${kind_test[$k]:-none}" || continue
        run_step kind-model-$k env SHARDTUNE_SKINNY=${KINDS_BASE:-expand,rope,pair},$k build/tests/gpu_tests --gtest_brief=1 \
          --gtest_filter='CudaLora.*:CudaModel.*' || continue
        kept="$kept,$k"
      done
      base=${KINDS_BASE:-expand,rope,pair}
      new=$base$kept
      echo "$new" > "$OUT/kinds-kept.txt"
      echo "== kinds kept: $new" | tee -a "$OUT/summary.txt"
      [ -z "$kept" ] && continue
      run_step kinds-all-tests env SHARDTUNE_SKINNY=$new build/tests/gpu_tests --gtest_brief=1
      run_step kinds-bench build/tests/gpu_tests --gtest_also_run_disabled_tests --gtest_filter='CudaSkinnyBench.*'
      make_shards
      ab_runs kinds SHARDTUNE_SKINNY "$base $new" "prof $(seq 1 ${KINDS_ROUNDS:-2})" "${PROFILE_CKPT:-false true}" \
        ${PROFILE_STEPS:-10} ;;
    attn-keys-ab)
      # SHARDTUNE_ATTN_BWD_KEYS=128 (the attention backward in blocks of 128 keys, head dim 64, 128)
      # against the default 64: the attention tests with it, CudaAttentionBench both ways
      # interleaved, then plain step times of PROFILE_DECKS (default the 7B LoRA bench deck) for
      # PROFILE_CKPT (default "false true"), AB_ROUNDS (default 2) interleaved.
      run_step attn128-tests env SHARDTUNE_ATTN_BWD_KEYS=128 build/tests/gpu_tests --gtest_brief=1 --gtest_filter='*ttention*'
      attn_bench_ab attn128-bench SHARDTUNE_ATTN_BWD_KEYS "64 128"
      make_shards
      ab_runs keys SHARDTUNE_ATTN_BWD_KEYS "64 128" "$(seq 1 ${AB_ROUNDS:-2})" "${PROFILE_CKPT:-false true}" \
        ${PROFILE_STEPS:-12} ;;
    ab)
      # Any environment variable's values A/B'd on plain step times (and per-op tables in a round
      # named prof): AB_VAR, AB_VALUES (space-separated), AB_ROUNDS (default "prof 1"), PROFILE_DECKS,
      # PROFILE_CKPT (default false), PROFILE_STEPS (default 10), interleaved.
      make_shards
      ab_runs ab-${AB_VAR:?AB_VAR} $AB_VAR "${AB_VALUES:?AB_VALUES}" "${AB_ROUNDS:-prof 1}" "${PROFILE_CKPT:-false}" \
        ${PROFILE_STEPS:-10} ;;
    split-ab)
      # The attention backward's GQA head split (SHARDTUNE_ATTN_HEAD_SPLIT=1, the default) against none
      # (0): CudaAttentionBench both ways, twice, interleaved, then plain
      # 1B full steps (PROFILE_DECKS default the 1B full deck), AB_ROUNDS (default 2) rounds; first the
      # attention and model tests with the split on.
      run_step split-tests env SHARDTUNE_ATTN_HEAD_SPLIT=1 build/tests/gpu_tests --gtest_brief=1 \
        --gtest_filter='*ttention*:CudaModel.*'
      attn_bench_ab split-bench SHARDTUNE_ATTN_HEAD_SPLIT "0 1"
      make_shards
      PROFILE_DECKS=${PROFILE_DECKS:-inputs/bench/llama1b_full.cfg} ab_runs split SHARDTUNE_ATTN_HEAD_SPLIT "0 1" \
        "$(seq 1 ${AB_ROUNDS:-2})" "${PROFILE_CKPT:-false}" ${PROFILE_STEPS:-12} ;;
    fwd-rows-ab)
      # The attention forward in blocks of 128 queries (SHARDTUNE_ATTN_FWD_ROWS=128, and 128x2: held
      # to two blocks an SM at head dim 64 too; both opt-in) against 64: the attention and model GPU
      # tests with each on, CudaAttentionBench each way, twice, interleaved, then plain steps of
      # PROFILE_DECKS (default the 7B LoRA and 1B full bench decks) with PROFILE_CKPT (default
      # "false true"), AB_ROUNDS (default 1) rounds. FWD_ROWS_VALUES (default "64 128 128x2").
      vals=${FWD_ROWS_VALUES:-64 128 128x2}
      for v in $vals; do
        [ "$v" = 64 ] && continue
        run_step fwd-rows-tests-$v env SHARDTUNE_ATTN_FWD_ROWS=$v build/tests/gpu_tests --gtest_brief=1 \
          --gtest_filter='*ttention*:CudaModel.*'
      done
      attn_bench_ab fwd-rows-bench SHARDTUNE_ATTN_FWD_ROWS "$vals"
      make_shards
      PROFILE_DECKS=${PROFILE_DECKS:-inputs/bench/llama7b_lora.cfg inputs/bench/llama1b_full.cfg} \
        ab_runs fwd-rows SHARDTUNE_ATTN_FWD_ROWS "$vals" "$(seq 1 ${AB_ROUNDS:-1})" "${PROFILE_CKPT:-false true}" \
        ${PROFILE_STEPS:-10} ;;
    ncu)
      # Nsight Compute on kernels of a GPU benchmark test: throughput, memory, occupancy, scheduler
      # and warp-stall sections of NCU_COUNT (default 4) launches of each kernel in NCU_KERNELS
      # (default pair_kernel swiglu_lora_kernel), NCU_SKIP (default 2) skipped first, one ncu run
      # per kernel (session 16's one run over three names spent its count on the small sum_splits
      # launches), of NCU_FILTER (default CudaSkinnyBench.*, with SHARDTUNE_SKINNY=custom so every
      # kind runs; CudaAttentionBench.* for attention_forward_kernel / attention_backward_kernel),
      # as text in ncu-<kernel>.log.
      for kern in ${NCU_KERNELS:-pair_kernel swiglu_lora_kernel}; do
        run_step ncu-$kern env SHARDTUNE_SKINNY=custom /usr/local/cuda/bin/ncu --target-processes all \
          -k "regex:$kern" -s ${NCU_SKIP:-2} -c ${NCU_COUNT:-4} \
          --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section LaunchStats \
          --section WarpStateStats --section SchedulerStats build/tests/gpu_tests --gtest_also_run_disabled_tests \
          --gtest_filter="${NCU_FILTER:-CudaSkinnyBench.*}"
      done ;;
    autotune-ab)
      # SHARDTUNE_GEMM_AUTOTUNE=all (every GEMM shape timed over cuBLASLt's candidates on its first
      # call) against the heuristic's first choice: plain step times of PROFILE_DECKS (default the
      # 7B LoRA bench deck), PROFILE_CKPT (default false), AUTOTUNE_ROUNDS (default 2) interleaved;
      # the first steps carry the tuning, the median of the later ones does not.
      make_shards
      ab_runs autotune SHARDTUNE_GEMM_AUTOTUNE "0 all" "$(seq 1 ${AUTOTUNE_ROUNDS:-2})" "${PROFILE_CKPT:-false}" \
        ${PROFILE_STEPS:-12} ;;
    skinny-ab)
      # The skinny-GEMM kernels (cuda/skinny.cu) against cuBLASLt on this tree: their tests, the
      # per-call benchmark, the LoRA and model tests with SHARDTUNE_SKINNY=custom, then per-op
      # tables (SHARDTUNE_PROFILE=2) and plain step times of PROFILE_DECKS (default the 7B LoRA
      # bench deck; PROFILE_CKPT default false, PROFILE_STEPS default 10) with SHARDTUNE_SKINNY
      # = cublaslt and = SKINNY_CUSTOM (default thin,reduce,expand,rope,pair: the default plus thin and reduce), interleaved;
      # SKINNY_ROUNDS (default 1) plain rounds after the profiled one. SKINNY_BASE (default cublaslt)
      # is the setting compared against (e.g. expand, the default, against expand,rope,pair).
      run_step skinny-tests build/tests/gpu_tests --gtest_brief=1 --gtest_filter='CudaOps.Skinny*:CudaOps.Matmul*'
      run_step skinny-bench build/tests/gpu_tests --gtest_also_run_disabled_tests --gtest_filter='CudaSkinnyBench.*'
      run_step skinny-lora env SHARDTUNE_SKINNY=${SKINNY_CUSTOM:-thin,reduce,expand,rope,pair} build/tests/gpu_tests --gtest_brief=1 \
        --gtest_filter='CudaLora.*:CudaModel.*'
      make_shards
      ab_runs skinny SHARDTUNE_SKINNY "${SKINNY_BASE:-cublaslt} ${SKINNY_CUSTOM:-thin,reduce,expand,rope,pair}" \
        "prof $(seq 1 ${SKINNY_ROUNDS:-1})" "${PROFILE_CKPT:-false}" ${PROFILE_STEPS:-10} ;;
    fp8-quality)
      # Issue 20's FP8 quality run (stories260K LoRA on TinyStories, bf16 vs fp8 base); carry
      # .device_data with corpus/tinystories_subset and models/stories260K (its tokenizer). FP8Q_ARGS=--pretrain:
      # a random-init 1024 x 8 Llama trained in full on the corpus first, LoRA on all seven projections.
      run_step fp8-quality python3 analysis/fp8_quality.py --bin build/shardtune --out "$OUT/fp8_quality" ${FP8Q_ARGS:-} ;;
    generate-check)
      # The CLI on the GPU: stories260K greedy in f32 and bf16 (text and tokens/s in the JSON lines),
      # and the cached vs uncached rate.
      run_step generate-check bash -c "for dt in ${GEN_DTYPES:-bf16}; do for c in true false; do \
        build/shardtune generate --model ../shared/data/models/stories260K --prompt 'Once upon a time' \
          --prompt 'The little dog' --max-new-tokens 256 --stop-at-eos false --device cuda --dtype \$dt \
          --kv-cache \$c --output $OUT/generate_\${dt}_cache_\$c.jsonl || exit 1; done; done" ;;
    *)
      echo "unknown step $s" | tee -a "$OUT/summary.txt" ;;
  esac
done
cat "$OUT/summary.txt"
