#!/usr/bin/env bash
# Install the project and its dev tools into the current Python (idempotent, quiet).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
python3 -m pip install -q --disable-pip-version-check -e '.[dev]'
