#!/usr/bin/env bash
# The GPU measurement of the hf/ provider, for a machine with one CUDA GPU: label scoring
# images/s and LoRA training steps/s on Qwen2-VL-2B's shape with random weights. Writes
# ${OUT:-.}/hf-2b.json; the card's name is in it. About 5 minutes on an H100-class card
# (most of it building and saving the random 2B model).
set -euo pipefail
OUT=${OUT:-.}
python - <<'PY'
import torch
print(torch.__version__, torch.cuda.get_device_name())
PY
python benchmarks/bench_hf.py --size 2b --device cuda --images 32 --label-batch 120 \
  --train-steps 32 --data /tmp/vlm-classify-bench-hf-gpu --json "$OUT/hf-2b.json"
