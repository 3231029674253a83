#!/usr/bin/env bash
# Stop the local Kafka broker and Redis (their data stays in deploy/local/.state).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$HERE/kafka.sh" stop
"$HERE/redis.sh" stop
