"""apply.lua again, in Python, over one account's `Account` (see `MemoryStore`): the same
flags, writes and read-back, step by step (each step's comment names the script's)."""

from __future__ import annotations

from metering.core.calls import APPLIED, DUPLICATE, REDELIVERED, ApplyCall, ApplyResult, WeeksReply
from metering.store.memory_data import (
    COUNT,
    LATEST,
    MAX,
    SUM,
    UNIQUE,
    WEEKS_KEPT,
    Account,
    Bucket,
    Hash,
    Undo,
    flat_weeks,
    int_ge,
    period_reply,
)


def apply_call(
    acct: Account,
    call: ApplyCall,
    bucket: int,
    ttl: int,
    now_ms: int,
    week_cutoff: str,
    weekly: frozenset[str],
    undo: Undo | None,
) -> ApplyResult:
    """One call of apply.lua on `acct`; what it changes is noted in `undo` when journaled."""
    events = call.events
    # 1. Offsets, then (source, id) digests (apply.lua "-- 1.").
    watermark = acct.wm.get(call.wm_field, -1)
    flags = [REDELIVERED] * len(events)
    fresh: list[int] = []
    max_offset = watermark
    # Events are read by position (EventUpdate's fields: offset, digest, period, week,
    # time_ms, updates), as the codec sends them: any tuple of that shape will do.
    for i, ev in enumerate(events):
        offset = ev[0]
        if offset > watermark:
            fresh.append(i)
            max_offset = max(max_offset, offset)
    if ttl > 0 and fresh:
        # the previous and the current bucket (HMGET each), and earlier in this call
        prev, cur = acct.dedup.get(bucket - 1), acct.dedup.get(bucket)
        in_prev = prev.digests if prev is not None and prev.expires_ms >= now_ms else ()
        in_cur = cur.digests if cur is not None and cur.expires_ms >= now_ms else ()
        seen: set[str] = set()
        record: list[str] = []
        for i in fresh:
            d = events[i][1]
            if d in in_prev or d in in_cur or d in seen:
                flags[i] = DUPLICATE
            else:
                seen.add(d)
                flags[i] = APPLIED
                record.append(d)
        if record:  # HSET the digests, EXPIRE the bucket
            if undo is not None and bucket not in undo.replaced:
                if cur is None or cur.expires_ms < now_ms:
                    undo.replaced[bucket] = cur  # created, or an expired one replaced
                else:
                    undo.expiry.setdefault(bucket, cur.expires_ms)
                    undo.digests += [(bucket, d) for d in record]
            if cur is None or cur.expires_ms < now_ms:
                cur = acct.dedup[bucket] = Bucket(set(), 0)
            cur.digests.update(record)
            cur.expires_ms = now_ms + ttl * 1000
    else:
        for i in fresh:
            flags[i] = APPLIED

    # 2.-3. Gather and write the applied events' updates (apply.lua "-- 2." and "-- 3.").
    # One event at a time: sums are exact integers (the script's doubles are exact by
    # construction), a maximum is the largest string by `int_ge`, `latest` is by event
    # time with ties to the later event (the same winner as the script's gathered one).
    week_bumps: dict[str, dict[str, int]] = {}
    periods, life = acct.periods, acct.life
    for i, ev in enumerate(events):
        if flags[i] != APPLIED:
            continue
        _, _, period, week, time_ms, updates = ev
        p = periods.get(period)
        if p is None:
            p = periods[period] = Hash()
        add = p.add
        for meter, op, arg in updates:
            add(meter + ":n", 1)
            if meter in weekly:
                wb = week_bumps.get(meter)
                if wb is None:
                    wb = week_bumps[meter] = {}
                wb[week] = wb.get(week, 0) + 1
            if op == COUNT:
                add(meter + ":v", 1)
                life.add(meter, 1)
            elif op == SUM:
                n = int(arg)
                add(meter + ":v", n)
                life.add(meter, n)
            else:
                life.add(meter, 1)
                if op == UNIQUE:
                    key = (meter, period)
                    members = acct.uniques.get(key)
                    if members is None:
                        members = acct.uniques[key] = set()
                        if undo is not None:
                            undo.new_sets.append(key)
                    if undo is not None and arg not in members:
                        undo.members.append((key, arg))
                    members.add(arg)
                elif op == MAX:
                    vfield = meter + ":v"
                    cur_max = p.get(vfield)
                    if cur_max is None or not int_ge(cur_max, arg):
                        p.set(vfield, arg)
                elif op == LATEST:
                    tfield = meter + ":t"
                    t = p.get(tfield)
                    if t is None or time_ms >= int(t):
                        p.set(meter + ":v", arg)
                        p.set(tfield, str(time_ms))

    # The weekly counts: HINCRBY each week; a week just created may overflow the 12 kept,
    # then every week before the cutoff goes (apply.lua "for wkey, bumps").
    for meter, bumps in week_bumps.items():
        weeks = acct.weeks.get(meter)
        if weeks is None:
            weeks = acct.weeks[meter] = {}
        created = False
        for week, n in bumps.items():
            before = weeks.get(week, 0)
            weeks[week] = before + n
            if before == 0:
                created = True
        if created and len(weeks) > WEEKS_KEPT:
            for w in [w for w in weeks if w < week_cutoff]:
                del weeks[w]

    if max_offset > watermark:
        acct.wm[call.wm_field] = max_offset

    # 4. Read back what trigger evaluation needs (apply.lua "-- 4.").
    return ApplyResult(
        "".join(flags),
        acct.sub_flat,
        [period_reply(acct, period, call.uniq) for period in call.periods],
        list(life.flat),
        [WeeksReply(meter, flat_weeks(acct.weeks.get(meter, {}))) for meter in call.weeks],
        [acct.fired.get(m, "") for m in call.marks],
        list(acct.outbox),
    )
