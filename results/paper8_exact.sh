#!/usr/bin/env bash
# The paper's exact paper8 recipe (configs/paper/as-written/paper8_l2_5e-4.toml) for 2 epochs with each
# Xavier reading: Glorot's normalised init (the paper's text; init = "xavier") and Caffe's own
# filler (uniform +-sqrt(3 / fan_in); init = "caffe_xavier"). Does either leave chance?
#   bash results/paper8_exact.sh CACHE OUT [THREADS]
#   INITS="caffe_xavier" bash results/paper8_exact.sh ...   # one of them
#   EXTRA="--set train.precision='fp32'" bash results/paper8_exact.sh ...   # more overrides
# Each run is an ordinary run folder OUT/INIT with a snapshot every 100 iterations; re-running
# resumes an interrupted one and returns at once for a finished one (~3.5 hours each on 2 AVX2
# cores in fp32, 94 minutes on 2 Xeon cores without AMX in fp32, ~17 minutes on 2 AMX cores). The
# table at the end: the epochs' losses and errors.
set -euo pipefail -f  # -f: no globbing of EXTRA
cache=$1 out=$2 threads=${3:-0}
preset=configs/paper/as-written/paper8_l2_5e-4.toml
for init in ${INITS:-xavier caffe_xavier}; do
  run=$out/$init
  if [[ -f $run/checkpoints/last.pt ]]; then
    tinycnn train --resume "$run"
  else
    # The paper trained on all 100,000 training images: no tuning split taken out of them.
    # shellcheck disable=SC2086
    tinycnn train --data "$cache" --config "$preset" --set model.init="\"$init\"" \
      --set train.epochs=2 --set data.holdout_per_class=0 --set train.snapshot_every=100 \
      --set train.threads="$threads" ${EXTRA:-} --out "$run"
  fi
done
python - "$out" <<'PY'
import json, sys
from pathlib import Path
print("| init | epoch | iterations | train loss | val loss | val top-1 error | minutes |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for run in sorted(p for p in Path(sys.argv[1]).iterdir() if (p / "metrics.jsonl").exists()):
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        print(f"| {run.name} | {r['epoch']} | {r['iteration']} | {r['train_loss']:.4f} | "
              f"{r['val_loss']:.4f} | {r['val_top1_error']:.2%} | {r['elapsed_seconds'] / 60:.0f} |")
PY
