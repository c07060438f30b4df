#!/usr/bin/env bash
# Every GPU test and the GPU benchmarks, in one command, in under 8 minutes on an H100/H200:
#
#     scripts/gpu_check.sh                 # results and logs in ./gpu_check_out
#     OUT=/some/dir scripts/gpu_check.sh   # ... or in $OUT
#
# Writes under $OUT (flat, few files: the device tool fetches at most 8): env.txt, gpu_tests.log
# (pytest -m gpu tests/), bench.log and <suite>_cuda.json per benchmark suite (benchmarks/conftest.py).
#
# The package need not be installed, and nothing is compiled: a throw-away import shim makes
# `convirt_fast` importable from this checkout. Its __init__ sets the package's __path__ to
# [<repo>/convirt_fast, <repo>] (so `convirt_fast.kernels` resolves to <repo>/kernels, as
# setup.py's package_dir maps it) and then runs the real convirt_fast/__init__.py. PYTHONSAFEPATH=1
# keeps the working directory off sys.path, so the un-shimmed <repo>/convirt_fast cannot shadow it.
# Modules that need the C++ extension (convirt_fast._C, not built here) fail to import; their
# tests are CPU tests anyway: only files whose GPU tests collect are run.
#
# Knobs (environment): PYTHON (default python3), GPU_CHECK_TESTS (default tests/),
# GPU_CHECK_BENCH (default: benchmarks/bench_loss.py first, then the other suites in benchmarks/),
# GPU_CHECK_TEST_TIMEOUT / GPU_CHECK_BENCH_TIMEOUT in seconds (defaults 240 / 190: the whole
# script stays under 8 minutes; a suite interrupted by its timeout still writes its JSON).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$REPO/gpu_check_out}"
PYTHON="${PYTHON:-python3}"
TEST_TIMEOUT="${GPU_CHECK_TEST_TIMEOUT:-240}"
BENCH_TIMEOUT="${GPU_CHECK_BENCH_TIMEOUT:-190}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"

SHIM="$(mktemp -d)"
trap 'rm -rf "$SHIM"' EXIT
mkdir -p "$SHIM/convirt_fast"
cat >"$SHIM/convirt_fast/__init__.py" <<EOF
# gpu_check.sh's import shim: the checkout's convirt_fast, with kernels/ as convirt_fast.kernels.
import os as _os
_repo = "$REPO"
__path__ = [_os.path.join(_repo, "convirt_fast"), _repo]
__file__ = _os.path.join(_repo, "convirt_fast", "__init__.py")
exec(compile(open(__file__).read(), __file__, "exec"))
EOF
export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONSAFEPATH=1
export CONVIRT_BENCH_DIR="$OUT"
cd "$REPO"

{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  git rev-parse HEAD 2>/dev/null || true
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  "$PYTHON" -c "import sys, torch, triton; print(sys.version); print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available()); print('triton', triton.__version__)"
  "$PYTHON" -c "import convirt_fast.kernels as k; print('convirt_fast.kernels from', k.__file__)"
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "WARNING: no CUDA device: GPU tests will skip and Triton cases will not run" | tee -a "$OUT/env.txt"
fi

status=0
echo "== GPU tests (timeout ${TEST_TIMEOUT}s) =="
# Collect first and run only the files whose GPU tests collected: a module that cannot be imported
# here (the C++ extension, a missing test dependency) holds no runnable GPU test, and its import
# error, listed in the log, must not fail the check.
"$PYTHON" -m pytest -m gpu ${GPU_CHECK_TESTS:-tests/} -p no:cacheprovider --collect-only -q \
  --continue-on-collection-errors >"$OUT/gpu_tests.log" 2>&1
files=$(grep -o '^[^:[:space:]]*\.py::' "$OUT/gpu_tests.log" | sed 's/::$//' | sort -u)
grep -E '^(ERROR|E  )' "$OUT/gpu_tests.log" | head -20
if [ -z "$files" ]; then
  echo "no GPU test collected" | tee -a "$OUT/gpu_tests.log"
else
  echo "running the GPU tests of:" $files | tee -a "$OUT/gpu_tests.log"
  timeout -s INT -k 20 "$TEST_TIMEOUT" "$PYTHON" -m pytest -m gpu $files -p no:cacheprovider -q -rs \
    2>&1 | tee -a "$OUT/gpu_tests.log"
  rc=${PIPESTATUS[0]}
  # 0: passed; 5: none selected; 1: failures; 2: interrupted; 124: timed out
  echo "gpu tests exit code: $rc" | tee -a "$OUT/gpu_tests.log"
  [ "$rc" -eq 0 ] || [ "$rc" -eq 5 ] || status=1
fi

echo "== GPU benchmarks (timeout ${BENCH_TIMEOUT}s) =="
start=$(date +%s)
: >"$OUT/bench.log"
if [ -n "${GPU_CHECK_BENCH:-}" ]; then
  suites=($GPU_CHECK_BENCH)
else
  suites=(benchmarks/bench_loss.py $(ls benchmarks/bench_*.py | grep -v '/bench_loss.py$'))
fi
for suite in "${suites[@]}"; do
  left=$(( BENCH_TIMEOUT - ($(date +%s) - start) ))
  if [ "$left" -le 10 ]; then
    echo "skipped $suite: benchmark time budget spent" | tee -a "$OUT/bench.log"
    continue
  fi
  echo "-- $suite (${left}s left)" | tee -a "$OUT/bench.log"
  timeout -s INT -k 20 "$left" "$PYTHON" -m pytest "$suite" --benchmark-only -p no:cacheprovider -q -rs \
    ${GPU_CHECK_BENCH_ARGS:-} 2>&1 | tee -a "$OUT/bench.log"
  rc=${PIPESTATUS[0]}
  echo "$suite exit code: $rc" | tee -a "$OUT/bench.log"
  [ "$rc" -eq 0 ] || [ "$rc" -eq 5 ] || status=1
done

echo "== results in $OUT =="
ls -l "$OUT"
exit $status
