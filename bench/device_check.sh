#!/usr/bin/env bash
# The checks that need a GPU, as one short script (a few minutes on one H100), for a session that has one:
#   bash bench/device_check.sh            # DEVICE=cuda, results under ${OUT:-runs/device-check}
#   DEVICE=cpu SIZE=64 EPOCHS=1 bash bench/device_check.sh   # the same wiring on the CPU (what CI-like machines can do)
# 1. the input pipeline against the raw model on the device (bench/gpu.py: is the accelerator kept fed?)
# 2. one fine-tuning run on the device (bf16 autocast), then its ONNX export checked against PyTorch
# 3. with two or more GPUs: the same run data-parallel (--devices 2), which must end with equal weights
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-224}
EPOCHS=${EPOCHS:-5}
DATA=${DATA:-../shared/data/hymenoptera}
OUT=${OUT:-runs/device-check}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
export PYTHONPATH=src:bench

$PY bench/gpu.py "$DATA" --device "$DEVICE" --strategy full --image-size "$SIZE" --batch-size 64 \
  --epochs 2 --json "$OUT/gpu-pipeline.json"
$PY -m headstart.cli train "$DATA" --device "$DEVICE" --strategy lp-ft --epochs "$EPOCHS" --image-size "$SIZE" \
  --monitor-folder none --out "$OUT/lp-ft" --json > "$OUT/lp-ft.json"
$PY -m headstart.cli export "$OUT/lp-ft" --check "$DATA/val" --json > "$OUT/export.json"
if [ "$DEVICE" = cuda ] && [ "$($PY -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
  $PY -m headstart.cli train "$DATA" --device cuda --devices 2 --strategy lp-ft --epochs "$EPOCHS" \
    --image-size "$SIZE" --monitor-folder none --out "$OUT/lp-ft-ddp" --json > "$OUT/lp-ft-ddp.json"
fi
$PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for name in ("gpu-pipeline", "lp-ft", "export", "lp-ft-ddp"):
    path = out / f"{name}.json"
    if path.is_file():
        d = json.loads(path.read_text())
        keys = ("device", "headstart_vs_raw", "best_val_accuracy", "train_seconds", "devices", "check")
        print(name, {k: d[k] for k in keys if k in d})
EOF
