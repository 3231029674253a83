"""The naive consumer: what a first try looks like. Per event: pydantic validation of the
CloudEvent, one Redis round trip (a small Lua script: dedup mark and meter counters in this
phase's own key prefix), and, for each trigger, a synchronous produce (`send().get()`)."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Literal

import orjson
import redis
from kafka import KafkaConsumer, KafkaProducer
from pydantic import BaseModel, ConfigDict, Field

from bench.infra import KAFKA, REDIS_URL


class CloudEvent(BaseModel):
    model_config = ConfigDict(extra="allow")

    specversion: Literal["1.0"]
    id: str = Field(min_length=1)
    source: str = Field(min_length=1)
    type: str = Field(min_length=1)
    subject: str = Field(min_length=1)
    time: datetime
    data: dict[str, Any] | None = None


# KEYS: dedup key, period hash, unique-users set. ARGV: event id, dedup TTL s, user id ("" =
# none), concurrency ("" = none), then (field, increment) pairs for the period hash.
# Returns {new (0 = duplicate), api_calls in period, unique users, user added (0/1)}.
NAIVE_LUA = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[2])) == false then
  return {0, 0, 0, 0}
end
for i = 5, #ARGV, 2 do
  redis.call('HINCRBYFLOAT', KEYS[2], ARGV[i], ARGV[i + 1])
end
if ARGV[4] ~= '' then
  local cur = tonumber(redis.call('HGET', KEYS[2], 'peak_concurrency') or '0')
  if tonumber(ARGV[4]) > cur then redis.call('HSET', KEYS[2], 'peak_concurrency', ARGV[4]) end
end
local added = 0
if ARGV[3] ~= '' then added = redis.call('SADD', KEYS[3], ARGV[3]) end
local calls = tonumber(redis.call('HGET', KEYS[2], 'api_calls') or '0')
return {1, calls, redis.call('SCARD', KEYS[3]), added}
"""

# The free plan's limits from rules/example.yaml and the 80/100% levels of `limit-warn`.
API_CALL_LEVELS = {8000: 80, 10000: 100}
USER_LIMIT = 3


def _updates(ev: CloudEvent) -> tuple[str, str, list[str]]:
    data = ev.data or {}
    user = str(data.get("user_id", ""))
    conc = ""
    fields: list[str] = []
    if ev.type == "api.request":
        fields += ["api_calls", "1"]
        conc = str(data.get("concurrency", ""))
    elif ev.type == "llm.completion":
        fields += ["tokens", str(data.get("tokens", 0))]
    elif ev.type == "payment.captured":
        fields += ["payments", str(data.get("amount", 0))]
    elif ev.type == "storage.snapshot":
        fields += ["storage_gb", "0"]
    elif ev.type == "feature.used" and data.get("feature") == "reports":
        fields += ["report_runs", "1"]
    return user, conc, fields


def run_naive(topic: str, group: str, prefix: str, triggers_topic: str, n: int) -> dict[str, float]:
    """Process the first `n` records of the topic one at a time; events/s over them."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=[KAFKA],
        group_id=group,
        enable_auto_commit=True,
        auto_offset_reset="earliest",
        max_poll_records=500,
    )
    producer = KafkaProducer(bootstrap_servers=[KAFKA], acks="all")
    r = redis.Redis.from_url(REDIS_URL)
    script = r.register_script(NAIVE_LUA)
    done = fired = 0
    t0 = 0.0
    try:
        while done < n:
            for records in consumer.poll(timeout_ms=500).values():
                for rec in records:
                    if done >= n:
                        break
                    if not t0:
                        t0 = time.perf_counter()
                    ev = CloudEvent.model_validate_json(rec.value)
                    period = ev.time.strftime("%Y-%m")
                    base = f"{prefix}:{ev.subject}"
                    user, conc, fields = _updates(ev)
                    new, calls, users, added = script(
                        keys=[f"{base}:d:{ev.source}:{ev.id}", f"{base}:p:{period}", f"{base}:u:{period}"],
                        args=[ev.id, 86400, user, conc, *fields],
                    )
                    done += 1
                    if not new:
                        continue
                    level = API_CALL_LEVELS.get(int(calls)) if ev.type == "api.request" else None
                    if level is None and added and users == USER_LIMIT:
                        level = 100
                    if level is not None:
                        trigger = {
                            "type": "expansion.usage_threshold",
                            "subject": ev.subject,
                            "percent": level,
                        }
                        producer.send(
                            triggers_topic, key=ev.subject.encode(), value=orjson.dumps(trigger)
                        ).get(30)
                        fired += 1
        elapsed = time.perf_counter() - t0
    finally:
        consumer.close()
        producer.close()
        r.close()
    return {
        "events": done,
        "seconds": round(elapsed, 3),
        "eps": done / elapsed if elapsed > 0 else 0.0,
        "triggers": fired,
    }
