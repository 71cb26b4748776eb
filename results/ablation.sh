#!/usr/bin/env bash
# Ablation of the fastnet recipe on the tuning split (data.holdout_per_class = 50), each run on
# the same small compute budget: what each technique buys per PFLOP.
#   bash results/ablation.sh CACHE OUT [PFLOP] [THREADS]
#   VARIANTS="recipe paper8-bn" bash results/ablation.sh ...   # some of them
# The default list is the removals and the model; with-* variants add a technique the recipe
# leaves out at this budget, cosine swaps the one-cycle schedule for warm-up + cosine.
# Each run is an ordinary run folder OUT/NAME (re-running resumes or skips it); the table is
# printed at the end from their metrics.jsonl.
set -euo pipefail -f  # -f: no globbing of the [] in the overrides
cache=$1 out=$2 pflop=${3:-0.1} threads=${4:-0}
recipe=configs/fast/fastnet-0.5pflop.toml
common=(--data "$cache" --config "$recipe" --set train.max_pflop="$pflop" --set train.threads="$threads")
declare -A variants=(
  [recipe]=""
  [no-progressive]="--set augment.sizes=[] --set augment.size_until=[]"
  [no-label-smoothing]="--set optim.label_smoothing=0.0"
  [with-ema]="--set train.ema_decay=0.99"  # ~100 steps averaged: a sixth of a 0.1 PFLOP run
  [with-mixup]="--set augment.mixup=0.2"
  [with-cutmix]="--set augment.cutmix=1.0"
  [cosine]="--set schedule.name=cosine"
  [paper8-bn]="--set model.name=paper8 --set model.batch_norm=true --set model.dropout=0.0 --set augment.crop=56 --set augment.pad=0 --set augment.sizes=[] --set augment.size_until=[] --set optim.lr=0.05"
)
# paper8 takes none of fastnet's model options (width): its variant reads the recipe without them.
mkdir -p "$out"
grep -v '^width *=' "$recipe" > "$out/recipe-without-width.toml"
for name in ${VARIANTS:-recipe no-progressive no-label-smoothing paper8-bn}; do
  run=$out/$name
  if [[ -f $run/checkpoints/last.pt ]]; then
    tinycnn train --resume "$run"  # finishes an interrupted run; a finished one returns at once
  else
    config=()
    [[ $name == paper8-bn ]] && config=(--config "$out/recipe-without-width.toml")
    # shellcheck disable=SC2086
    tinycnn train "${common[@]}" "${config[@]}" ${variants[$name]} --out "$run"
  fi
done
python - "$out" <<'PY'
import json, sys
from pathlib import Path
print("| variant | PFLOP | tuning top-1 error | val top-1 error | minutes |")
print("| --- | --- | --- | --- | --- |")
for run in sorted(p for p in Path(sys.argv[1]).iterdir() if (p / "metrics.jsonl").exists()):
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    r = rows[-1]
    print(f"| {run.name} | {r['train_pflop']:.3f} | {r['tune_top1_error']:.2%} | "
          f"{r['val_top1_error']:.2%} | {r['elapsed_seconds'] / 60:.1f} |")
PY
