#!/usr/bin/env bash
# The GPU path in one go (under 8 minutes on one recent GPU): the CUDA-marked tests, training
# images/s and TFLOP/s of paper8 and the fastnet recipe (bf16 + channels_last, eager and
# torch.compile), and a short real-data run on the 10-class mini subset.
#   bash bench/gpu_check.sh [MINI_ARCHIVE]   (default ../shared/data/tiny-imagenet-mini.tar.gz)
set -euo pipefail
cd "$(dirname "$0")/.."
mini=${1:-../shared/data/tiny-imagenet-mini.tar.gz}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name())"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

echo "== CUDA-marked tests"
python -m pytest -q -m cuda tests/

echo "== a short real-data run on the mini subset (configs/quick.toml, on the GPU)"
tinycnn prepare "$mini" --out "$work/mini" >/dev/null
start=$(date +%s)
tinycnn train --data "$work/mini" --config configs/quick.toml --set 'train.device="cuda"' \
    --out "$work/quick" -q
tinycnn evaluate "$work/quick" --data "$work/mini" --tta flip
echo "mini run: $(( $(date +%s) - start )) s"

echo "== training throughput (batch 128; the mini cache stands in: speed does not depend on it)"
python bench/train_throughput.py --cache "$work/mini" --skip-naive --compile --iters 20 --rounds 3 \
    --fast-sizes 32 64
