#!/usr/bin/env bash
# Runs one shard of a `cml sweep` as a task of a Slurm job array; merge the shards afterwards.
#
#   sbatch --array=0-9 scripts/slurm_sweep.sh configs/sweep_quadratic_deltas.toml runs/deltas
#   # when every task has finished:
#   cml sweep-merge --out runs/deltas/sweep.csv runs/deltas/shard_*.csv
#
# Arguments: the sweep's config file (flags as TOML keys, see docs/CLI.md) and an output folder.
# Slurm sets SLURM_ARRAY_TASK_ID (this task, 0-based with --array=0-N) and
# SLURM_ARRAY_TASK_COUNT (the number of tasks); each task runs the contiguous block
# ID/COUNT of the grid and writes OUT/shard_ID.csv with its OUT/shard_ID.config.json.
# CML names the binary (default: cml on PATH).
#SBATCH --job-name=cml-sweep
#SBATCH --cpus-per-task=2
#SBATCH --time=01:00:00
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 CONFIG.toml OUT_DIR (inside a Slurm array job, or with SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT set)" >&2
  exit 2
fi
config=$1
out=$2
: "${SLURM_ARRAY_TASK_ID:?not set: run this as a Slurm array job (sbatch --array=0-N) or set it by hand}"
: "${SLURM_ARRAY_TASK_COUNT:?not set: run this as a Slurm array job (sbatch --array=0-N) or set it by hand}"
cml=${CML:-cml}

mkdir -p "$out"
"$cml" sweep --config "$config" \
  --shard "${SLURM_ARRAY_TASK_ID}/${SLURM_ARRAY_TASK_COUNT}" \
  --out "$out/shard_${SLURM_ARRAY_TASK_ID}.csv"
