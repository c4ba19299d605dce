#!/usr/bin/env bash
# The run matrices of the three reference experiments, shared by jobs/exp{1,2,3}.sbatch
# and jobs/run_matrix.sh. Source it, then:
#   matrix_rows EXP [cpu]   one line per run: RUN_ID RANKS DECK PARALLEL TP_SIZE
#                           (GPU-size decks; with `cpu`, the CPU-size decks on 2 and 4 ranks)
#   matrix_row EXP INDEX [cpu]       the line of array index INDEX (0-based), or fails
#   matrix_indices EXP RANKS [cpu]   the indices with RANKS ranks, comma-separated (for --array)
# run_id = exp<N>_<model>_<method>_<strategy>_<ranks>; every run writes runs/<run_id>/.
# Matrices (GPU size; ranks 2, 4, 8):
#   exp1: llama7b {full, full-packed}, tp with tp_size = ranks                      ( 6 runs)
#   exp2: {t5large, t5xl} x {lora+zero3, full+zero3, full+ddp}, cap 40GiB           (18 runs)
#   exp3: {llama7b, llama13b} x {qlora, lora, full, lora-packed}, zero3             (24 runs)
# CPU size: the same methods and strategies on the tiny models, ranks 2 and 4.
# "-packed" methods run the deck's *_packed.cfg twin (packing = true, issue 19).

# _matrix_line RUN_ID RANKS DECK PARALLEL TP_SIZE
_matrix_line() { printf '%s %s %s %s %s\n' "$@"; }

matrix_rows() {
  local exp=$1 cpu=${2:-} ranks model method par
  local rank_list="2 4 8"
  [ "$cpu" = cpu ] && rank_list="2 4"
  case $exp in
    exp1)
      for packed in "" _packed; do
        for ranks in $rank_list; do
          if [ "$cpu" = cpu ]; then _matrix_line "exp1_cpu_full${packed/_/-}_tp_$ranks" "$ranks" inputs/exp1/cpu_tp$packed.cfg tp "$ranks"
          else _matrix_line "exp1_llama7b_full${packed/_/-}_tp_$ranks" "$ranks" inputs/exp1/llama7b_tp$packed.cfg tp "$ranks"; fi
        done
      done ;;
    exp2)
      local models="t5large t5xl"
      [ "$cpu" = cpu ] && models="cpu"
      for model in $models; do
        for method_par in lora:zero3 full:zero3 full:ddp; do
          method=${method_par%:*} par=${method_par#*:}
          for ranks in $rank_list; do
            local deck=inputs/exp2/cpu_$method.cfg
            [ "$model" = cpu ] || deck=inputs/exp2/flant5_${model#t5}_$method.cfg
            _matrix_line "exp2_${model}_${method}_${par}_$ranks" "$ranks" "$deck" "$par" 1
          done
        done
      done ;;
    exp3)
      local models="llama7b llama13b"
      [ "$cpu" = cpu ] && models="cpu"
      for model in $models; do
        for method in qlora lora full lora-packed; do
          for ranks in $rank_list; do
            local deck=inputs/exp3/${model}_${method/-/_}.cfg
            _matrix_line "exp3_${model}_${method}_zero3_$ranks" "$ranks" "$deck" zero3 1
          done
        done
      done ;;
    *) echo "matrix.sh: unknown experiment '$exp' (exp1, exp2, exp3)" >&2; return 2 ;;
  esac
}

matrix_row() {
  local rows
  rows=$(matrix_rows "$1" "${3:-}") || return 2
  [[ "$2" =~ ^[0-9]+$ ]] || { echo "matrix.sh: bad index '$2'" >&2; return 2; }
  local line
  line=$(sed -n "$(($2 + 1))p" <<< "$rows")
  [ -n "$line" ] || { echo "matrix.sh: $1 has no index $2 (0..$(($(wc -l <<< "$rows") - 1)))" >&2; return 2; }
  echo "$line"
}

matrix_indices() {
  matrix_rows "$1" "${3:-}" | awk -v r="$2" '$2 == r { printf "%s%d", (n++ ? "," : ""), NR - 1 } END { print "" }'
}
