#!/usr/bin/env bash
# The capstone's recorded CPU rows: eight meta-learners on one budget, made with the project's CLI.
#
# Budget (the same for every method): Omniglot 5-way 1-shot, Conv4-32, 1,500 meta-steps of 16 tasks,
# validation on 100 fixed episodes every 250 steps, test on the same 600 episodes (seed 0). Each
# method keeps its own inner loop: MAML/FOMAML/ANIL/Meta-SGD one step of 0.4, Proto-MAML one
# first-order step of 0.1 from the prototypes (lesson 05's), ProtoNet none, Reptile its paper's
# (3 Adam steps with beta1 = 0 on 15 training shots; outer SGD of 1.0 annealed linearly), the
# in-context learner none, with lesson 06's meta-learning rate (1e-3, where the others keep the
# preset's 3e-3). Training seed 0 (SEED=N: another). Writes runs/cpu-compare/<method>/,
# results/cpu-*.json and the tested models, weights only, as results/checkpoints/cpu-*.pt (replacing
# the files of an earlier run).
#
#   bash benchmarks/cpu_comparison.sh            # all eight, one after another
#   bash benchmarks/cpu_comparison.sh maml anil  # some of them (results/README.md has the wall times)
#   SEED=1 bash benchmarks/cpu_comparison.sh maml protonet  # another training seed: the same validation
#                                                # and test episodes; results/seeds/cpu-<method>-seed1.json
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-runs/cpu-compare}
COMMON=(--preset cpu-maml-omniglot-5w1s --time-budget 1000000 --test-episodes 600 --threads "${THREADS:-1}"
        --no-progress)
SEED=${SEED:-0}
SUFFIX="" RESULTS=results KEEP_WEIGHTS=1
if [ "$SEED" != 0 ]; then
  COMMON+=(--seed "$SEED")
  SUFFIX="-seed$SEED" RESULTS=results/seeds KEEP_WEIGHTS=0
fi
declare -A EXTRA=(
  [maml]="--algorithm maml"
  [fomaml]="--algorithm fomaml"
  [anil]="--algorithm anil"
  [metasgd]="--algorithm metasgd"
  [protonet]="--algorithm protonet"
  [protomaml]="--algorithm protomaml --first-order --inner-lr 0.1"
  [reptile]="--algorithm reptile --shots 15 --test-shots 1 --inner-steps 3 --inner-lr 0.001 --test-inner-steps 5
             --optimizer sgd --meta-lr 1.0 --lr-schedule linear --set inner_optimizer=adam --set inner_batch=25"
  [in-context]="--algorithm in-context --meta-lr 0.001 --inner-steps 0 --inner-lr 0 --test-inner-steps 0"
)
# Test-time inner steps: each method that adapts is tested with the count among 1, 3, 5, 10 that
# scores best on the 100 validation episodes (`compare record --choose-steps`).
CHOOSE=(--choose-steps 1,3,5,10)
# the methods' names and their order: mtl.course.recorded.METHODS (name -> file stem), read once
ALL=()
declare -A NAME=()
while IFS='=' read -r stem name; do
  ALL+=("$stem")
  NAME[$stem]=$name
done < <($PY -c 'from mtl.course.recorded import METHODS
for name, stem in METHODS.items(): print(f"{stem}={name}")')
[ ${#ALL[@]} -gt 0 ] || { echo "cpu_comparison.sh: could not read mtl.course.recorded.METHODS with $PY" >&2; exit 2; }
methods=("$@")
[ ${#methods[@]} -eq 0 ] && methods=("${ALL[@]}")
for m in "${methods[@]}"; do
  [ -n "${EXTRA[$m]:-}" ] && [ -n "${NAME[$m]:-}" ] ||
    { echo "cpu_comparison.sh: unknown method '$m': use one of ${ALL[*]}" >&2; exit 2; }
done
for m in "${methods[@]}"; do
  # shellcheck disable=SC2206
  extra=(${EXTRA[$m]})
  run="$OUT/$m$SUFFIX"
  cmd="python -m mtl train ${COMMON[*]} ${extra[*]} --out $run"
  echo "== $m: $cmd"
  $PY -m mtl train "${COMMON[@]}" "${extra[@]}" --out "$run" --overwrite
  weights=()
  if [ "$KEEP_WEIGHTS" = 1 ]; then
    mkdir -p results/checkpoints
    weights=(--weights "results/checkpoints/cpu-$m.pt")
  fi
  mkdir -p "$RESULTS"
  $PY -m mtl compare record "$run" --method "${NAME[$m]}" --command "$cmd" --out "$RESULTS/cpu-$m$SUFFIX.json" \
      "${weights[@]}" --force $([ "$m" = protonet ] || [ "$m" = in-context ] || echo "${CHOOSE[*]}")
done
