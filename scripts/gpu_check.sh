#!/usr/bin/env bash
# The GPU device check, in one go (python -m loadtest.benchmarks.gpu_check), bounded to
# 7.5 minutes. On a lent GPU machine, after scripts/gpu_check_prepare.sh ran here and
# .cache/gpu_check was carried:
#   run(command="scripts/gpu_check.sh", carry=[".cache/gpu_check"], timeout_s=540)
# It also runs on the CPU (PYTHON=.venv/bin/python scripts/gpu_check.sh --queries 64 ...):
# the GPU rows then say "no GPU provider". Extra arguments go to the Python module.
# Results: docs/results/gpu_check.{json,md}, copied to $OUT when that is set.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=.cache/gpu_check/whl
if [[ ! -d services/common/generated && -d .cache/gpu_check/generated ]]; then
  cp -r .cache/gpu_check/generated services/common/generated
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
# the project's dependencies that this Python lacks come from the carried wheels
if ! "$PY" -c "import loadtest.benchmarks.gpu_check" 2> /dev/null \
  && compgen -G "$WHEELS/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/gpu_check_site "$WHEELS"/*.whl || exit 3
  export PYTHONPATH="$PWD:/tmp/gpu_check_site${PYTHONPATH#"$PWD"}"
fi
"$PY" -c "import loadtest.benchmarks.gpu_check" || {
  echo "gpu_check cannot be imported here: a dependency is missing (see above);" \
    "run scripts/gpu_check_prepare.sh and carry .cache/gpu_check" >&2
  exit 4
}
args=()
if [[ -f .cache/gpu_check/artifact/CURRENT ]]; then
  args+=(--artifact ".cache/gpu_check/artifact/$(cat .cache/gpu_check/artifact/CURRENT)")
fi
timeout 450 "$PY" -m loadtest.benchmarks.gpu_check "${args[@]}" "$@"
rc=$?
if [[ -n "${OUT:-}" ]]; then
  cp docs/results/gpu_check.json docs/results/gpu_check.md "$OUT"/ 2>/dev/null || true
fi
exit $rc
