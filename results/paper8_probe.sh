#!/usr/bin/env bash
# Smallest faithful changes to the paper's exact paper8 recipe (configs/paper/as-written/paper8_l2_5e-4.toml),
# each alone, for the first ITERATIONS iterations (default 300): which one leaves chance?
#   bash results/paper8_probe.sh CACHE OUT [ITERATIONS]
#   PROBES="scale_1_256 kaiming" bash results/paper8_probe.sh ...   # some of them
# The probes (in order of faithfulness to the paper's Caffe runs):
#   caffe_xavier  Caffe's own xavier filler (uniform +-sqrt(3 / fan_in)) for Glorot's
#   scale_1_256   inputs multiplied by 0.00390625 after the mean-image subtraction (Caffe's
#                 transform_param scale, as in Caffe's own examples): a 0-1 pixel scale
#   kaiming       He's initialisation (normal, std sqrt(2 / fan_in)) for Glorot's
#   scale_kaiming both of the last two
# Everything else as the exact preset: all 100,000 training images, lr 1e-3, momentum 0.9, L2
# 5e-4, dropout, the paper's augmentation, 2 epochs' schedule (lr constant over the probe).
# Each probe is an ordinary run folder OUT/PROBE paused at ITERATIONS (tinycnn train --stop-at;
# re-running skips finished probes; `tinycnn train --resume OUT/PROBE` carries one on) with
# steps.jsonl: the training loss every 20 iterations (dropout and augmentation on). The table at
# the end: the mean training loss over each 100 iterations; chance is ln 200 = 5.298.
# The official val split is not looked at: which change learns is read off the training loss.
set -euo pipefail
cache=$1 out=$2 iterations=${3:-300}
preset=configs/paper/as-written/paper8_l2_5e-4.toml
declare -A SETS=(
  [caffe_xavier]='model.init="caffe_xavier"'
  [scale_1_256]='data.scale=0.00390625'
  [kaiming]='model.init="kaiming"'
  [scale_kaiming]='data.scale=0.00390625 model.init="kaiming"'
)
for probe in ${PROBES:-caffe_xavier scale_1_256 kaiming scale_kaiming}; do
  run=$out/$probe
  sets=()
  for item in ${SETS[$probe]}; do sets+=(--set "$item"); done
  if [[ -f $run/checkpoints/last.pt ]]; then
    tinycnn train --resume "$run" --stop-at "$iterations"
  else
    tinycnn train --data "$cache" --config "$preset" "${sets[@]}" --set train.epochs=2 \
      --set data.holdout_per_class=0 --set train.log_every=20 --set train.snapshot_every=100 \
      --out "$run" --stop-at "$iterations"
  fi
done
python - "$out" <<'PY'
import sys
from pathlib import Path

from tinycnn.training import read_steps

runs = [p for p in sorted(Path(sys.argv[1]).iterdir()) if (p / "steps.jsonl").exists()]
ends = sorted({-(-r["iteration"] // 100) * 100 for p in runs for r in read_steps(p)})
print("| probe | " + " | ".join(f"{e - 99}-{e}" for e in ends) + " |")
print("| --- |" + " --- |" * len(ends))
for run in runs:
    sums = {}
    for r in read_steps(run):
        bucket = sums.setdefault(-(-r["iteration"] // 100) * 100, [0.0, 0])
        bucket[0] += r["train_loss"] * r["images"]
        bucket[1] += r["images"]
    cells = [f"{sums[e][0] / sums[e][1]:.3f}" if e in sums else "" for e in ends]
    print(f"| {run.name} | " + " | ".join(cells) + " |")
PY
