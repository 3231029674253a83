"""Redis memory of the engine's key prefix: bytes per active account (every key but the
dedup hashes, over the accounts that have keys) and bytes per deduplicated event id (the
dedup hashes over the ids they hold: the dense `<base>dd:<bucket>` (issue 14) by their values'
bytes / 12, the earlier one-field-per-id `<base>d:<bucket>` by their field count). MEMORY USAGE
with SAMPLES 0 is exact for aggregates (it walks every element)."""

from __future__ import annotations

import re
from typing import Any

import redis

from bench.infra import REDIS_URL

DEDUP = re.compile(rb":(?:d|dd):-?\d+$")
DIGEST_BYTES = 12  # a dense bucket holds 12-byte digests back to back
ACCOUNT = re.compile(rb"\{([^}]*)\}")


def measure(prefix: str, url: str = REDIS_URL) -> dict[str, Any]:
    r = redis.Redis.from_url(url)
    try:
        keys = list(r.scan_iter(match=f"{prefix}:*", count=5000))
        account_bytes = dedup_bytes = dedup_ids = 0
        accounts: set[bytes] = set()
        for i in range(0, len(keys), 1000):
            chunk = keys[i : i + 1000]
            pipe = r.pipeline(transaction=False)
            for k in chunk:
                pipe.memory_usage(k, samples=0)
            usage = pipe.execute()
            dedup_keys = [k for k in chunk if DEDUP.search(k)]
            pipe = r.pipeline(transaction=False)
            for k in dedup_keys:
                if k.rsplit(b":", 2)[-2] == b"dd":
                    pipe.hvals(k)
                else:
                    pipe.hlen(k)
            lengths = {
                k: sum(len(v) for v in got) // DIGEST_BYTES if isinstance(got, list) else int(got)
                for k, got in zip(dedup_keys, pipe.execute(), strict=True)
            }
            for k, raw in zip(chunk, usage, strict=True):
                used = int(raw or 0)
                if k in lengths:
                    dedup_bytes += used
                    dedup_ids += int(lengths[k])
                else:
                    account_bytes += used
                    m = ACCOUNT.search(k)
                    if m:
                        accounts.add(m.group(1))
        used_memory = int(r.info("memory")["used_memory"])
    finally:
        r.close()
    return {
        "keys": len(keys),
        "accounts": len(accounts),
        "bytes_per_account": account_bytes / len(accounts) if accounts else 0.0,
        "dedup_ids": dedup_ids,
        "bytes_per_dedup_id": dedup_bytes / dedup_ids if dedup_ids else 0.0,
        "account_bytes": account_bytes,
        "dedup_bytes": dedup_bytes,
        "redis_used_memory": used_memory,
    }
