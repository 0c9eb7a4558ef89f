#!/usr/bin/env bash
# The whole test run, as CI runs it: install, the suite in the build venv (torch, build side and runtime), then
# the runtime's own tests again in a venv that holds only ldm-runtime[onnxruntime] and the test tools, reading
# bundles and oracle values the build side recorded (tests/fixtures.py). Extra arguments go to the first pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install torch==2.13.0 -e "./runtimes[onnxruntime]" -e ".[dev]"
.venv/bin/pip install --no-deps tensorrt-stubs==10.13.0.35.1   # type stubs only: tests/tensorrt/test_typecheck.py
.venv/bin/python -m pytest "$@"
rm -rf .runtime-fixtures
.venv/bin/python -m tests.fixtures .runtime-fixtures
python3 -m venv .venv-runtime
.venv-runtime/bin/pip install -e "./runtimes[onnxruntime]" pytest hypothesis
# -I: the checkout is not on the path (from its root, `python -c` would find ./ldm_export and ./tests)
.venv-runtime/bin/python -I -c "import importlib.util as u, sys; sys.exit(bool(u.find_spec('torch') or u.find_spec('ldm_export')))" \
    || { echo "the runtime venv must not hold torch or ldm_export" >&2; exit 1; }
LDM_RUNTIME_FIXTURES="$PWD/.runtime-fixtures" .venv-runtime/bin/python -m pytest tests/runtime -p no:cacheprovider
