"""The backtest (SPEC 7.2): files of past usage events and subscription records through the
service's own batch step (`Processor`: decode, meters, dedup, late and future, pricing, every
trigger kind, cooldowns) over an in-memory store, with no Kafka and no Redis. Nothing is
published: the triggers are the outbox entries the fire step leaves, read and acknowledged
as the service publishes and acknowledges them, so they carry the ids the service publishes.

**Input.** JSON Lines, streamed (never read whole). A file is either CloudEvents, one per line
(what `metering send` sends), or a Kafka record export, one record per line:
`{"timestamp": <epoch ms or RFC 3339>, "key": ..., "headers": ..., "value": <the CloudEvent,
as an object or a string>}` (`ts`/`payload`, as `kcat -J` writes them, are read too); the
first line with content says which. A record is what the service would consume: a line that is
not a CloudEvent is a dead letter with the service's reason.

**Now.** The service decides with "now" = its clock when it processes a record; the replay's
clock is the newest *arrival time* seen so far, in file order (= arrival order):
- a record's arrival time is its record timestamp in an export, else its own event time (an
  event is taken to arrive when it happened);
- "now" for a record is that clock once the record has arrived: it never goes back;
- so, as in the service: `late` = before the start of now's billing period minus the grace;
  `future` = more than the tolerance (5 min) ahead of now; the dedup bucket is now's.
A file sorted by event time, without arrival times, is replayed with now = each event's own
time (SPEC 7.2): nothing in it is late or future. An event older than one before it in the
file is judged against that newer one's time, as the service would judge it had the lines
arrived in that order. Only an arrival time can show an event from the future (a producer's
clock ahead): a bare line that is, moves the clock ahead with it. Subscription records take
effect at their arrival (or event) time, merged with the events; on a tie, first.

**Order and batching.** Records are processed in file order: the arrival order, which is the
order the service consumes an account's records in (one account, one partition). Every
decision is the one the service makes when it consumes ONE record per batch: each event is
evaluated against the state right after it, with the marks and cooldowns as they stand then.
(The service itself evaluates each account's events of a poll together; where that changes a
decision — a `latest` value that rises past a level and falls back inside one poll — its
answer depends on how its polls fell; the backtest's does not.) Batches keep it so:
- a batch holds records whose clocks share the billing period, the dedup bucket and the ISO
  week, so one "now" (the batch's newest clock) gives each the late cut, the dedup buckets, the
  weekly trim and the read-back periods of its own clock; and a record `future` at its own
  clock stays future at the batch's: the batch is cut before the clock reaches it;
- inside a batch, each account's events are cut into runs (`Replay.batch`): an event that a
  non-monotone rule looks at stands alone; the events between form runs; the k-th round holds
  every account's k-th run (accounts share no state). A run is applied and evaluated as one,
  journaled: every rule that looks at its events is monotone over it, so if nothing fires at
  its end, nothing would have fired at any of its events; if something fires, the run is taken
  back and replayed event by event.
The tests check it: any batch size gives what each record alone gives.

**Memory** grows with accounts (their aggregates, marks and subscription) and the ids inside
the dedup window, not with events: files are read line by line, batches are bounded, dedup
buckets expire with the clock, and periods before the late cutoff are dropped (with a late
grace of 0 every period stays reachable, and kept). The triggers found are kept for the
report.
"""

from metering.engine.backtest.clock import Backtest, Stats
from metering.engine.backtest.files import Line, read_lines
from metering.engine.backtest.outcome import (
    ACCOUNTS_TOPIC,
    BATCH_RECORDS,
    EVENTS_TOPIC,
    Counts,
    DeadExample,
    Options,
    Outcome,
)
from metering.engine.backtest.replay import Replay
from metering.engine.backtest.runs import ALONE_KINDS, MONOTONE_KINDS, Monotone

__all__ = [
    "ACCOUNTS_TOPIC",
    "ALONE_KINDS",
    "BATCH_RECORDS",
    "EVENTS_TOPIC",
    "MONOTONE_KINDS",
    "Backtest",
    "Counts",
    "DeadExample",
    "Line",
    "Monotone",
    "Options",
    "Outcome",
    "Replay",
    "Stats",
    "read_lines",
]
