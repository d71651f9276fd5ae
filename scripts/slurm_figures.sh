#!/usr/bin/env bash
# Runs `cml figures` as two Slurm job arrays and a report: the first array runs the choices (the
# validation searches, `--stage choices`), the second the other units (`--stage runs`) once every
# choice is stored, so that no slice recomputes a search another slice holds; the report job
# starts when every slice has finished and draws the figures, tables and write-up.
#
#   scripts/slurm_figures.sh SLICES RESULTS_DIR OUT_DIR [cml figures flags...]
#   scripts/slurm_figures.sh 40 runs/paper runs/paper/out --scale paper --only training
#
# Each array task runs `cml figures --results RESULTS_DIR` with the flags given; cml reads its
# slice from SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT and skips units already stored, so a
# failed or timed-out task is resubmitted as it is (resumption). `cml figures --plan` with the
# same flags estimates the cost first. CML names the binary (default: cml on PATH); SBATCH_FLAGS
# adds sbatch options (partition, account, time).
set -euo pipefail

if [ $# -lt 3 ]; then
  echo "usage: $0 SLICES RESULTS_DIR OUT_DIR [cml figures flags...]" >&2
  exit 2
fi
slices=$1
results=$2
out=$3
shift 3
case $slices in
  ''|*[!0-9]*|0) echo "SLICES must be a positive whole number, got '$slices'" >&2; exit 2 ;;
esac
cml=${CML:-cml}
mkdir -p "$results"

# Quoted for the shell that runs each job (flags may hold spaces).
flags=$(printf ' %q' "$@")
run="$(printf '%q' "$cml") figures --results $(printf '%q' "$results")$flags"
choices=$(sbatch --parsable ${SBATCH_FLAGS:-} --job-name=cml-figures-choices --cpus-per-task=2 \
  --array="0-$((slices - 1))" --wrap="$run --stage choices")
runs=$(sbatch --parsable ${SBATCH_FLAGS:-} --job-name=cml-figures-runs --cpus-per-task=2 \
  --array="0-$((slices - 1))" --dependency="afterok:$choices" --wrap="$run --stage runs")
sbatch ${SBATCH_FLAGS:-} --job-name=cml-figures-report --cpus-per-task=1 \
  --dependency="afterok:$runs" \
  --wrap="$(printf '%q' "$cml") figures --report $(printf '%q' "$results") --out $(printf '%q' "$out")$flags"
echo "submitted array jobs $choices (choices) and $runs (runs), $slices slices each, and the report"
