#!/usr/bin/env bash
# The GPU half of the engine's checks, in one run on a machine with a CUDA device:
#   1. the CUDA path's tests: every backend on the GPU against the reference loop on the CPU in float64
#      (outputs, final states, every gradient; every cell option, lengths, two bidirectional layers), every
#      backend under float16 autocast against float32, the GPU memory measurement, a task trained with
#      accelerator="gpu", and `rnnkit bench --device cuda --quick`;
#   2. the full benchmark against cuDNN: `rnnkit bench --device cuda`.
# Usage, from the repository root:  bash benchmarks/gpu_check.sh [OUT_DIR]   (default: $OUT, else gpu-check)
# Needs a python3 whose torch sees the GPU, with pytest, typer and rich (the lent device machines' image has
# them); rnnkit comes from this checkout through PYTHONPATH, so nothing is installed. CPU-only machines never
# need this script: there the same code path runs on the meta device (tests/engine/test_devices.py).
set -uo pipefail
out=${1:-${OUT:-gpu-check}}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 -c '
import torch
assert torch.cuda.is_available(), f"torch {torch.__version__} sees no CUDA device"
print("torch", torch.__version__, "on", torch.cuda.get_device_name(), "cuDNN", torch.backends.cudnn.version())
' || exit 1
python3 -m pytest -q -p no:cacheprovider tests/engine/test_devices.py tests/test_benchmark.py \
    tests/tasks/test_accelerator.py -k "cuda or gpu or cudnn" 2>&1 | tee "$out/tests.txt"
tests=${PIPESTATUS[0]}
python3 -c 'import sys; from rnnkit.cli import app; sys.exit(app())' bench --device cuda \
    --markdown "$out/bench-cuda.md" 2>&1 | tee "$out/bench.txt"
bench=${PIPESTATUS[0]}
echo "tests exit $tests, bench exit $bench"
exit $((tests != 0 || bench != 0))
