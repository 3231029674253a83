#!/usr/bin/env bash
# Run the service on a local Kafka and Redis that this script starts itself:
# install, start both, create the topics, then `metering run` with the example rules.
# Extra arguments go to `metering run`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
deploy/local/install.sh
deploy/local/up.sh
export METERING_RULES="${METERING_RULES:-$PWD/rules/example.yaml}"
metering topics create
if metering run --help >/dev/null 2>&1; then
  exec metering run "$@"
fi
echo "local Kafka and Redis are ready; the pipeline (metering run) is not built yet"
