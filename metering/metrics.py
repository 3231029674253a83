"""Every Prometheus series of the service (SPEC 5.1), in one place.

Conventions: `metering_` prefix, base units (seconds, records, the currency's major unit),
`_total` counters, and labels of bounded cardinality only (reason, kind, script, topic,
partition, movement, figure) — never an account id: accounts are unbounded. deploy/grafana
and deploy/prometheus use exactly these names; renaming one here breaks a panel or an alert.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, disable_created_metrics

# `_created` series double the page and are read by no panel or alert.
disable_created_metrics()  # type: ignore[no-untyped-call]

_BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 1000, 2000, 5000, 10000)
_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_LAG_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 86400)


class Metrics:
    """One registry per service instance (tests and the benchmark run several in a process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.events_consumed = Counter(
            "metering_events_consumed_total", "Usage event records polled from Kafka.", registry=r
        )
        self.events_processed = Counter(
            "metering_events_processed_total", "Usage events counted into the aggregates.", registry=r
        )
        self.events_deduplicated = Counter(
            "metering_events_deduplicated_total",
            "Events not counted again: duplicate (source, id) or an already applied offset.",
            ["kind"],
            registry=r,
        )
        self.events_deadlettered = Counter(
            "metering_events_deadlettered_total",
            "Records sent to the dead-letter topic.",
            ["reason"],
            registry=r,
        )
        self.meter_value_missing = Counter(
            "metering_meter_value_missing_total",
            "Counted events that a matching meter skipped because its value path is absent.",
            ["meter"],
            registry=r,
        )
        self.events_unmetered = Counter(
            "metering_events_unmetered_total",
            "Counted events that matched no meter (kept for dedup and triggers, aggregated nowhere).",
            registry=r,
        )
        self.account_updates = Counter(
            "metering_account_updates_total",
            "Subscription records from the accounts topic.",
            ["result"],
            registry=r,
        )
        self.triggers_published = Counter(
            "metering_triggers_published_total",
            "Expansion triggers acknowledged by Kafka.",
            ["kind"],
            registry=r,
        )
        # SPEC 7.3: the expansion loop. Money in the catalog's currency (its major unit, the
        # base unit of money here); movements by event time come from the store (the
        # scorecard's figures), by processing time from this process.
        self.conversions = Counter(
            "metering_expansion_conversions_total",
            "Triggers converted by an upgrade within the conversion window, once each, when recorded.",
            ["kind"],
            registry=r,
        )
        self.mrr_movement = Counter(
            "metering_mrr_movement_total",
            "MRR moved by the subscription records this process recorded, in the catalog currency "
            "(a positive amount per movement: churn and contraction subtract).",
            ["movement"],
            registry=r,
        )
        self.mrr_month = Gauge(
            "metering_mrr_month",
            "The current UTC month's scorecard from the store, in the catalog currency: starting "
            "and ending MRR and each movement so far (refreshed every METERING_SCORECARD_REFRESH).",
            ["figure"],
            registry=r,
        )
        self.batch_size = Histogram(
            "metering_batch_size_records", "Records per processed batch.", buckets=_BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "metering_batch_duration_seconds",
            "Wall time to process one batch, poll to commit.",
            buckets=_SECONDS,
            registry=r,
        )
        self.event_lag = Histogram(
            "metering_event_lag_seconds",
            "Event time to processing time of counted events.",
            buckets=_LAG_SECONDS,
            registry=r,
        )
        self.redis_seconds = Histogram(
            "metering_redis_script_duration_seconds",
            "Redis round trips of the store's scripts.",
            ["script"],
            buckets=_SECONDS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            "metering_consumer_lag_records",
            "Records behind the end of each assigned partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.outbox_depth = Gauge(
            "metering_outbox_depth",
            "Triggers recorded in Redis and not yet acknowledged by Kafka.",
            registry=r,
        )
        self.retries = Counter(
            "metering_dependency_retries_total",
            "Retries after a dependency failed.",
            ["dependency"],
            registry=r,
        )
        self.consumer_restarts = Counter(
            "metering_consumer_restarts_total",
            "Consumers closed without committing and rebuilt by the group-liveness watchdog.",
            ["reason"],
            registry=r,
        )
        self.consumer_forced_rejoins = Counter(
            "metering_consumer_forced_rejoins_total",
            "Group joins the Kafka client left half done, finished by a forced rejoin.",
            registry=r,
        )
        self.ready = Gauge(
            "metering_ready", "1 when partitions are assigned and Redis and Kafka answer.", registry=r
        )
        self.rules = Info("metering_rules", "The loaded rules catalog.", registry=r)
        self.rules_reload_failures = Counter(
            "metering_rules_reload_failures_total",
            "Rules reloads refused (invalid or incompatible catalog); the last good one stays.",
            registry=r,
        )

    def touch(self, reasons: tuple[str, ...], kinds: tuple[str, ...], meters: tuple[str, ...] = ()) -> None:
        """Create the labelled series at 0, so a dashboard shows 0 (not "no data") and an
        alert on a rate sees a series from the first scrape on. `meters`: those that read a
        value (the only ones that can miss one)."""
        for dependency in ("redis", "kafka"):
            self.retries.labels(dependency)
        for reason in reasons:
            self.events_deadlettered.labels(reason)
        for kind in kinds:
            self.triggers_published.labels(kind)
        for kind in ("duplicate", "redelivered"):
            self.events_deduplicated.labels(kind)
        for result in ("applied", "stale", "redelivered"):
            self.account_updates.labels(result)
        for kind in kinds:
            self.conversions.labels(kind)
        for movement in ("new", "expansion", "contraction", "churn", "reactivation"):
            self.mrr_movement.labels(movement)
        for meter in meters:
            self.meter_value_missing.labels(meter)
        for reason in ("no_heartbeat", "stuck_rebalance"):  # consumers/liveness.py REASONS
            self.consumer_restarts.labels(reason)

    def set_rules(self, version: str, source: str) -> None:
        self.rules.info({"version": version, "source": source})
