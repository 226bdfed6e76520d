#!/usr/bin/env bash
# The test suite on a loaded machine: two CPU-bound processes spin beside it for its whole run
# and are killed when it ends, pass or fail. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PY:-.venv/bin/python}"
hogs=()
stop_hogs() { for pid in "${hogs[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap stop_hogs EXIT
for _ in 1 2; do
    "$PY" -c 'while True: pass' &
    hogs+=("$!")
done
echo "two CPU-bound processes running beside the suite: ${hogs[*]}"
start=$SECONDS
status=0
"$PY" -m pytest -q -ra "$@" || status=$?
echo "the suite under load took $((SECONDS - start)) s (exit $status)"
exit "$status"
