#!/usr/bin/env bash
# v2 (issue 13): the one command for a GPU (DESIGN.md section 8), in at most 7 minutes on one H100/H200:
#
#     scripts/gpu_check.sh                 # results in ./gpu_check_out (or $OUT)
#     scripts/gpu_check.sh --dry-run       # CI: every stage says it skipped, the table prints, exit 0
#
# This file stays thin: environment, the C++ build; the stages (ceilings, correctness,
# kernel resources, loss timings, N = 262,144, profile, end-to-end, GPU tests) are functions of
# scripts/gpu_check.py, each with its own time budget, under one deadline (GPU_CHECK_DEADLINE_S,
# default 400 s from the start of this script) so that the GPU tests, last, get what is left.
# Without a GPU (or with CUDA_VISIBLE_DEVICES empty) it behaves as --dry-run: nothing is built.
#
# Writes under $OUT (flat, at most 8 files: the device tool fetches no more): env.txt, run.log (all of
# this script's output), gpu_check.json (every stage's numbers, rewritten after each stage),
# table.md (the compact table, printed last), profile.txt, gpu_tests.log, bench_train_cuda.json.
#
# Nothing is installed: _C is built into convirt_fast/ (where an editable install puts it too) and
# the checkout's root goes on PYTHONPATH.
#
# Knobs (environment): PYTHON (default python3), GPU_CHECK_DEADLINE_S (default 400),
# GPU_CHECK_BUILD_TIMEOUT (default 60: CMake configure + build of _C; the run goes on without it).
set -uo pipefail
T0="$(date +%s.%N)"
T0_S="${T0%.*}"

DRY=0
case "${1:-}" in
  "") ;;
  --dry-run) DRY=1 ;;
  *) echo "usage: $0 [--dry-run]" >&2; exit 2 ;;
esac

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$REPO/gpu_check_out}"
PYTHON="${PYTHON:-python3}"
DEADLINE_S="${GPU_CHECK_DEADLINE_S:-400}"
BUILD_TIMEOUT="${GPU_CHECK_BUILD_TIMEOUT:-60}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
# a re-used folder: drop this script's own earlier outputs, so no stale number is read as new
rm -f "$OUT"/{env.txt,run.log,gpu_check.json,table.md,profile.txt,gpu_tests.log,bench_train_cuda.json}
exec > >(tee -a "$OUT/run.log") 2>&1
export PYTHONUNBUFFERED=1

# A GPU is there when nvidia-smi lists one and CUDA_VISIBLE_DEVICES does not hide them all.
HAS_GPU=0
if [ "$DRY" = 0 ] && [ "${CUDA_VISIBLE_DEVICES-unset}" != "" ] && [ "${CUDA_VISIBLE_DEVICES:-}" != "-1" ] \
   && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
  HAS_GPU=1
fi

BUILD_DIR="$(mktemp -d)"
trap 'rm -rf "$BUILD_DIR"' EXIT
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
cd "$REPO"

echo "== env =="
{
  echo "gpu_check v2, $(date -u +%Y-%m-%dT%H:%M:%SZ)$([ "$DRY" = 1 ] && echo ', dry run')"
  echo "git $(git rev-parse HEAD 2>/dev/null || echo unknown)," \
    "$(git status --porcelain 2>/dev/null | wc -l) paths modified or untracked"
  echo "host $(hostname), $(nproc) CPUs;" \
    "$("$PYTHON" -c 'import sys; print("Python", sys.version.split()[0], sys.executable)' 2>&1)"
  echo "cmake: $(cmake --version 2>/dev/null | head -1 || echo absent);" \
    "ninja: $(ninja --version 2>/dev/null || echo absent)"
  if [ "$HAS_GPU" = 1 ]; then
    nvidia-smi
    nvidia-smi -q -d CLOCK,PERFORMANCE,POWER 2>/dev/null | grep -v '^ *$'
  else
    echo "no GPU used ($([ "$DRY" = 1 ] && echo 'dry run' || echo 'none visible'))"
  fi
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

# _C (the C++ text ops) with CMake, under a time cap, then into convirt_fast/ (an earlier build for this
# Python is removed first, so a failed build cannot pass as this one): without it the loader, the
# trainer and their benchmarks cannot import, but every loss stage still runs.
build_c() {
  if [ "$DRY" = 1 ]; then BUILD_STATUS="skipped: dry run"; return; fi
  if [ "$HAS_GPU" = 0 ]; then BUILD_STATUS="skipped: no CUDA device"; return; fi
  local pybind11_dir generator=() so suffix
  pybind11_dir="$("$PYTHON" -m pybind11 --cmakedir 2>/dev/null)" \
    || { BUILD_STATUS="failed: pybind11 not importable by $PYTHON"; return; }
  suffix="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')"
  rm -f "$REPO/convirt_fast/_C$suffix"
  command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
  timeout -k 5 "$BUILD_TIMEOUT" bash -c '
    cmake -S "$1" -B "$2" "${@:7}" -DCONVIRT_BUILD_PYTHON=ON -DCONVIRT_BUILD_TESTS=OFF \
      -Dpybind11_DIR="$3" -DPython_EXECUTABLE="$4" -DCMAKE_LIBRARY_OUTPUT_DIRECTORY="$5" \
      && cmake --build "$2" --target _C -j "$6"' \
    _ "$REPO" "$BUILD_DIR/cmake" "$pybind11_dir" "$(command -v "$PYTHON")" "$BUILD_DIR/out" "$(nproc)" \
    ${generator[@]+"${generator[@]}"}
  local rc=$?
  # (find: a generator that ignored the output directory leaves it in the build tree)
  so="$(find "$BUILD_DIR" -name "_C$suffix" 2>/dev/null | head -1)"
  [ "$rc" -eq 0 ] && [ -n "$so" ] && cp "$so" "$REPO/convirt_fast/"
  if [ "$rc" -ne 0 ] || [ -z "$so" ]; then
    BUILD_STATUS="failed: cmake exit code $rc$([ "$rc" = 124 ] && echo " (timed out after ${BUILD_TIMEOUT} s)")"
  elif ! "$PYTHON" -c "import convirt_fast._C"; then
    BUILD_STATUS="failed: built _C$suffix but it does not import"
  else
    BUILD_STATUS="ok: _C$suffix"
  fi
}
echo "== build_C (cap ${BUILD_TIMEOUT} s) =="
build_start=$(date +%s.%N)
build_c
BUILD_S="$(awk -v a="$build_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')"
echo "build_C: $BUILD_STATUS (${BUILD_S} s)"

# The stages. They keep to the deadline themselves; this cap is the safety net (SIGINT: the stage in
# progress is recorded as interrupted, gpu_check.json keeps every finished stage).
export GPU_CHECK_T0="$T0" GPU_CHECK_DEADLINE_S="$DEADLINE_S" GPU_CHECK_HAS_GPU="$HAS_GPU"
export GPU_CHECK_BUILD_STATUS="$BUILD_STATUS" GPU_CHECK_BUILD_S="$BUILD_S"
cap=$(( DEADLINE_S - ($(date +%s) - T0_S) + 5 ))
[ "$cap" -lt 10 ] && cap=10
timeout -s INT -k 5 "$cap" "$PYTHON" "$REPO/scripts/gpu_check.py" --out "$OUT" $([ "$DRY" = 1 ] && echo --dry-run)
status=$?
[ "$status" -eq 124 ] && echo "gpu_check.py stopped by its ${cap} s cap"
# 1: a stage failed (the table says which); never 124/137, which the device tool reads as its own timeout
[ "$status" -ne 0 ] && status=1

echo
echo "== results in $OUT: $(ls "$OUT" | tr '\n' ' ')(in $(( $(date +%s) - T0_S )) s) =="
"$PYTHON" "$REPO/scripts/gpu_check.py" --out "$OUT" --table-only || status=1
exit "$status"
