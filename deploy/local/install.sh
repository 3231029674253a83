#!/usr/bin/env bash
# Install the project, its dev tools and the benchmark's extra (the Quix Streams row, which
# the benchmark smoke test runs) into the current Python (idempotent, quiet).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
python3 -m pip install -q --disable-pip-version-check -e '.[dev,bench]'
