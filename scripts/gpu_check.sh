#!/usr/bin/env bash
# Everything worth measuring when a CUDA GPU is available, in one run of under 8 minutes
# (the sum of the stages' limits), into one text file:
#   1. the CUDA tests (pytest -m cuda);
#   2. the training benchmark at full size (five ResNet50 at 224 px), bf16, the largest
#      batch that fits: part-images/s, data-wait share, peak memory, share of bf16 peak;
#   3. the same benchmark at batch 64 through torch.compile (--compile), to set beside
#      stage 2's batch-64 line (compilation happens in the untimed warm-up steps);
#   4. a 2-epoch training run: the demo on ../shared/faces when present, otherwise the
#      full-size model on synthetic crops.
#
#   scripts/gpu_check.sh [REPORT]        (default REPORT: gpu_check_report.txt)
#
# Exit status: 0 every stage passed; 1 a stage failed (the report says which);
# 2 no CUDA GPU here (nothing else is run).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
REPORT=${1:-gpu_check_report.txt}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
failed=()

stage() {  # stage NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  echo
  echo "== $name (limit ${limit}s)"
  local started=$SECONDS
  timeout "$limit" "$@"
  local status=$?
  echo "-- $name: exit $status after $((SECONDS - started)) s"
  [ "$status" -eq 0 ] || failed+=("$name (exit $status)")
}

{
  echo "GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
    || echo "nvidia-smi: not available"
  if ! "$PY" -c "import sys, torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda); \
sys.exit(0 if torch.cuda.is_available() else 3)"; then
    echo "error: CUDA is not available to PyTorch on this machine; the GPU check needs a CUDA GPU."
    exit 2
  fi
  stage "CUDA tests" 120 "$PY" -m pytest -q -m cuda -p no:cacheprovider tests
  stage "full-size bf16 benchmark" 150 "$PY" benchmark_training.py --devices cuda --sizes full \
    --precision bf16 --largest-batch
  stage "full-size bf16 benchmark, compiled" 120 "$PY" benchmark_training.py --devices cuda --sizes full \
    --precision bf16 --batch-size 64 --steps 10 --compile
  if [ -d ../shared/faces ]; then
    stage "2-epoch demo run" 90 "$PY" run_demo.py --epochs 2 --output-dir "$WORK/demo"
  else
    stage "2-epoch full-size run (synthetic crops)" 90 "$PY" benchmark_training.py --devices cuda \
      --sizes full --precision bf16 --training-run 2
  fi
  echo
  if [ ${#failed[@]} -eq 0 ]; then
    echo "GPU check: every stage passed"
  else
    echo "GPU check: failed stages: ${failed[*]}"
    exit 1
  fi
} 2>&1 | tee "$REPORT"
exit "${PIPESTATUS[0]}"
