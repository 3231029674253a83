#!/usr/bin/env bash
# Start (or confirm) the local Kafka broker and Redis; idempotent. Then create the SPEC topics
# when the metering CLI is installed.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$HERE/redis.sh" start
"$HERE/kafka.sh" start
