#!/usr/bin/env bash
# One line per local service; exit 3 when any is down.
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
rc=0
"$HERE/kafka.sh" status || rc=$?
"$HERE/redis.sh" status || rc=$?
exit $rc
