#!/usr/bin/env bash
# Every GPU check of the project in one run (about 8 minutes on a data-centre GPU):
# the gpu-marked tests, then bench/bench_gpu.py (capture vs generate at 135M fp32, 1B and 8B bf16
# with random weights of real shapes; evaluate-all-heads; circuit discovery).
#
# The machine is expected to have torch (a CUDA build), transformers, accelerate, rich, matplotlib
# and pillow, and no network: the other wheels come from bench/.wheels, made here by `make gpu-wheels`
# (gguf, platformdirs, filelock, bitsandbytes). Results go to $OUT (default bench/results/gpu).
#
# Usage: bash bench/gpu_check.sh [shapes...]   (default shapes: 135m 1b 8b)
set -u
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python}
{
  echo "# $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null)"
  $PY -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, '| transformers', transformers.__version__)"
} | tee "$OUT/machine.txt"
if [ -d bench/.wheels ]; then
  $PY -m pip install --quiet --no-index --find-links bench/.wheels gguf platformdirs filelock bitsandbytes 2>&1 | tail -2
fi
$PY -m pip install --quiet --no-deps --no-build-isolation -e . 2>&1 | tail -2
# the tests first: a wrong number makes the timings meaningless
timeout 240 $PY -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py 2>&1 | tee "$OUT/pytest_gpu.txt" | tail -15
shapes=${*:-135m 1b 8b}
timeout 300 $PY bench/bench_gpu.py --shapes $shapes --tokens 64 --rounds 3 2>&1 | tee "$OUT/bench_gpu.md"
