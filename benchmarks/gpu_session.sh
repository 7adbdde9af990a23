#!/usr/bin/env bash
# Every GPU check in one go, for a lent GPU machine: the `gpu` tests, the kernel benchmarks
# against PyTorch/cuDNN and the models' training steps. Logs go to $OUT (default ./gpu-logs).
#     bash benchmarks/gpu_session.sh
set -uo pipefail
OUT=${OUT:-gpu-logs}; mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
{
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv
  $PY -c "import sys, numpy, numba, cupy, torch; print(sys.version.split()[0], 'numpy', numpy.__version__, 'numba', numba.__version__, 'cupy', cupy.__version__, 'torch', torch.__version__, torch.cuda.is_available())"
  $PY -m pip show numba-cuda 2>/dev/null | head -2
  $PY -c "import pyconv; print(pyconv.backends())"
} 2>&1 | tee "$OUT/env.log"
# the test files that hold `gpu` tests (the others may need the C++ extension, not built here)
timeout ${TEST_S:-300} $PY -m pytest -m gpu -p no:cacheprovider -q -rfEs --durations=10 \
  $(grep -rl "mark.gpu" tests) 2>&1 | tee "$OUT/gpu_tests.log" | tail -40
timeout ${BENCH_S:-150} $PY benchmarks/bench_cuda.py 2>&1 | tee "$OUT/bench_cuda.log" | tail -40
timeout ${MODEL_S:-150} $PY benchmarks/gpu_model_steps.py --steps 10 2>&1 | tee "$OUT/gpu_model_steps.log" | tail -30
