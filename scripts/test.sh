#!/usr/bin/env bash
# The test command (README, .ci/run): C++ unit tests through ctest, then pytest.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -x -k text`.
set -euo pipefail
cd "$(dirname "$0")/.."

build_dir=build/cpp-tests
cmake -S . -B "$build_dir" -G Ninja -DCONVIRT_BUILD_PYTHON=OFF -DCONVIRT_BUILD_TESTS=ON >/dev/null
cmake --build "$build_dir" -j "$(nproc)"
ctest --test-dir "$build_dir" --output-on-failure

python -m pytest tests/ "$@"
