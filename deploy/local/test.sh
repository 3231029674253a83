#!/usr/bin/env bash
# The whole test suite from a fresh clone: install, start the real local Kafka and Redis,
# lint, type-check, check the import layering, then pytest (extra arguments go to pytest).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
deploy/local/install.sh
deploy/local/up.sh
deploy/local/status.sh
# (one command per line: `set -e` does not stop at a failure on the left of `&&`)
echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy --strict"; mypy
echo "== import layering (pyproject.toml [tool.importlinter])"; lint-imports --no-cache
echo "== pytest"
exec python3 -m pytest "$@"
