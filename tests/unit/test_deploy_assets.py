"""Invariants of deploy/ that need no running service (SPEC 5.1 and the deployment contract).

- every YAML and JSON file parses;
- the dashboard and the alerts use only series that metering.metrics.Metrics defines, only
  labels those series carry, and never an account label (accounts are unbounded);
- the dashboard covers every metric family, has a fixed uid and picks its data source through
  the `datasource` variable;
- the Kubernetes manifests hold together: probes, secret references, the rules ConfigMap,
  maxReplicas <= partitions, labels and selectors;
- the compose file and the Prometheus config point at what exists.

tests/integration/test_prometheus_queries.py evaluates the same queries against a real Prometheus.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from metering.metrics import Metrics
from metering.settings import Settings
from rules.loader import parse_catalog
from tests.paths import ROOT

DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "metering.json"
PROMETHEUS = DEPLOY / "prometheus"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose"

ALERTS = {
    "MeteringConsumerLagGrowing",
    "MeteringConsumerRestarts",
    "MeteringDeadLetters",
    "MeteringNotReady",
    "MeteringOutboxGrowing",
    "MeteringDown",
    "MeteringRulesReloadRefused",
}
# Labels Prometheus adds to every scraped series, and the histogram bucket bound.
TARGET_LABELS = {"job", "instance", "le"}
METRIC_NAME = re.compile(r"\b(?:metering_[a-z0-9_]+|up)\b(?!\s*\()")
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
MATCHER = re.compile(r"[{,]\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")


# --- helpers -------------------------------------------------------------------------------


def _deploy_files(*suffixes: str) -> list[Path]:
    # deploy/local/.state holds generated state (broker jars, data, copies of configs).
    return sorted(
        p
        for p in DEPLOY.rglob("*")
        if p.is_file() and p.suffix in suffixes and ".state" not in p.relative_to(DEPLOY).parts
    )


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _family_series() -> dict[str, dict[str, set[str]]]:
    """Metric family -> {series name a query may use -> its label names}, derived from a
    Metrics registry: counters `_total`, histograms `_bucket/_sum/_count`, Info `_info`,
    gauges bare."""
    out: dict[str, dict[str, set[str]]] = {}
    for attr in vars(Metrics()).values():
        labelnames = set(getattr(attr, "_labelnames", ()))
        for family in attr.describe() if hasattr(attr, "describe") else ():
            name = family.name
            if family.type == "counter":
                out[name] = {f"{name}_total": labelnames}
            elif family.type == "histogram":
                out[name] = {f"{name}{suffix}": labelnames for suffix in ("_bucket", "_sum", "_count")}
            elif family.type == "info":
                out[name] = {f"{name}_info": labelnames | {"version", "source"}}
            else:
                out[name] = {name: labelnames}
    return out


def _series_labels() -> dict[str, set[str]]:
    """Every series name a query may use (plus Prometheus' own `up`) -> its label names."""
    out: dict[str, set[str]] = {"up": set()}
    for series in _family_series().values():
        out.update(series)
    return out


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _dashboard_exprs() -> list[str]:
    return [t["expr"] for p in _panels(_dashboard()["panels"]) for t in p.get("targets", [])]


def _alert_rules() -> list[dict[str, Any]]:
    return [r for g in _yaml(PROMETHEUS / "alerts.yml")["groups"] for r in g["rules"] if "alert" in r]


def _all_exprs() -> list[str]:
    return _dashboard_exprs() + [r["expr"] for r in _alert_rules()]


def _k8s(name: str) -> dict[str, Any]:
    data: dict[str, Any] = _yaml(K8S / name)
    return data


def _container() -> dict[str, Any]:
    (container,) = _k8s("deployment.yaml")["spec"]["template"]["spec"]["containers"]
    c: dict[str, Any] = container
    return c


def _env() -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in _container()["env"]}


# --- every file parses ---------------------------------------------------------------------


@pytest.mark.parametrize("path", _deploy_files(".yaml", ".yml"), ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path: Path) -> None:
    docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    assert docs and all(d is not None for d in docs), f"{path}: empty document"


@pytest.mark.parametrize("path", _deploy_files(".json"), ids=lambda p: str(p.relative_to(ROOT)))
def test_json_parses(path: Path) -> None:
    json.loads(path.read_text(encoding="utf-8"))


def test_expected_assets_exist() -> None:
    for rel in (
        "grafana/dashboards/metering.json",
        "grafana/provisioning/datasources/prometheus.yaml",
        "grafana/provisioning/dashboards/metering.yaml",
        "prometheus/prometheus.yml",
        "prometheus/alerts.yml",
        "local/prometheus.sh",
        "compose/docker-compose.yml",
        "compose/Dockerfile",
        "compose/README.md",
        *(
            f"k8s/{n}.yaml"
            for n in ("deployment", "configmap", "secret.example", "service", "pdb", "hpa", "kustomization")
        ),
    ):
        assert (DEPLOY / rel).is_file(), rel


# --- metric names and labels ---------------------------------------------------------------


def test_series_derivation_matches_exposition() -> None:
    # The derived names are exactly what the registry exposes once every series is touched
    # (guards _series_labels against a prometheus_client that names things differently).
    m = Metrics()
    m.set_rules("v", "s")
    m.events_deduplicated.labels(kind="duplicate")
    m.events_deadlettered.labels(reason="late")
    m.account_updates.labels(result="applied")
    m.triggers_published.labels(kind="milestone")
    m.redis_seconds.labels(script="apply")
    m.consumer_lag.labels(topic="t", partition="0")
    m.retries.labels(dependency="redis")
    m.meter_value_missing.labels(meter="tokens")
    m.consumer_restarts.labels(reason="no_heartbeat")
    m.conversions.labels(kind="milestone")
    m.mrr_movement.labels(movement="expansion")
    m.mrr_month.labels(figure="starting")
    exposed = {s.name for family in m.registry.collect() for s in family.samples}
    assert exposed == set(_series_labels()) - {"up"}


@pytest.mark.parametrize("expr", _all_exprs())
def test_expr_uses_defined_series_and_labels(expr: str) -> None:
    series = _series_labels()
    names = set(METRIC_NAME.findall(expr))
    assert names, f"no metric in {expr!r}"
    unknown = names - set(series)
    assert not unknown, f"{expr!r} uses series not in metering/metrics.py: {sorted(unknown)}"
    allowed = set().union(*(series[n] for n in names)) | TARGET_LABELS
    used = {label.strip() for group in GROUPING.findall(expr) for label in group.split(",") if label.strip()}
    used |= set(MATCHER.findall(expr))
    assert used <= allowed, f"{expr!r} uses labels {sorted(used - allowed)} that {sorted(names)} lack"


def test_no_account_label_anywhere() -> None:
    # metering_account_updates_total is a metric *name*; no label may name an account.
    for name, labels in _series_labels().items():
        assert not any("account" in label for label in labels), name
    texts = _all_exprs()
    texts += [
        t.get("legendFormat", "") for p in _panels(_dashboard()["panels"]) for t in p.get("targets", [])
    ]
    for rule in _alert_rules():
        texts += [json.dumps(rule.get("labels", {})), json.dumps(rule.get("annotations", {}))]
    for text in texts:
        stripped = METRIC_NAME.sub("", text)
        assert not re.search(r"account[a-z_]*\s*(=|,|\)|\}\})|\$labels\.account", stripped), text


# --- dashboard -----------------------------------------------------------------------------


def test_dashboard_identity_and_datasource() -> None:
    d = _dashboard()
    assert d["uid"] == "metering-overview"
    assert d["schemaVersion"] == 39
    (var,) = [v for v in d["templating"]["list"] if v["name"] == "datasource"]
    assert var["type"] == "datasource" and var["query"] == "prometheus"
    for panel in _panels(d["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target.get("datasource", panel["datasource"])["uid"] == "${datasource}"


def test_dashboard_panel_ids_unique_and_grid_in_bounds() -> None:
    panels = list(_panels(_dashboard()["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]


def test_dashboard_covers_every_metric_family() -> None:
    # "A dashboard over exactly these series": each family of Metrics has a panel.
    used = set()
    for expr in _dashboard_exprs():
        used |= set(METRIC_NAME.findall(expr))
    families = _family_series()
    # Every family of the registry is described (an attribute of Metrics we did not see would
    # otherwise escape this check).
    assert set(families) == {family.name for family in Metrics().registry.collect()}
    missing = {family for family, series in families.items() if not used & set(series)}
    assert not missing, f"no panel shows {sorted(missing)}"


def test_dashboard_has_requested_views() -> None:
    exprs = "\n".join(_dashboard_exprs())
    for needle in (
        "histogram_quantile(0.5, sum by (le) (rate(metering_batch_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(metering_batch_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (script, le) (rate(metering_redis_script_duration_seconds_bucket",
        "histogram_quantile(0.5, sum by (le) (rate(metering_event_lag_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(metering_event_lag_seconds_bucket",
        "sum by (topic) (metering_consumer_lag_records)",
        "max by (topic, partition) (metering_consumer_lag_records)",
        "sum by (reason) (rate(metering_events_deadlettered_total",
        "sum by (kind) (rate(metering_triggers_published_total",
    ):
        assert needle in exprs, needle


def test_grafana_provisioning() -> None:
    ds = _yaml(DEPLOY / "grafana/provisioning/datasources/prometheus.yaml")
    assert [d["type"] for d in ds["datasources"]] == ["prometheus"]
    prov = _yaml(DEPLOY / "grafana/provisioning/dashboards/metering.yaml")
    (provider,) = prov["providers"]
    assert provider["type"] == "file"
    # compose mounts deploy/grafana/dashboards at the provider's path.
    compose = _yaml(COMPOSE / "docker-compose.yml")
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"../grafana/dashboards:{provider['options']['path']}:ro" in mounts


# --- Prometheus config and alerts ----------------------------------------------------------


def test_alert_rules_complete() -> None:
    rules = _alert_rules()
    assert {r["alert"] for r in rules} == ALERTS
    for r in rules:
        assert r["labels"]["severity"] in {"critical", "warning"}, r["alert"]
        assert r["annotations"]["summary"].strip() and r["annotations"]["description"].strip()
        assert "for" in r, f"{r['alert']}: fires on one bad sample"
    by_name = {r["alert"]: r for r in rules}
    lag = by_name["MeteringConsumerLagGrowing"]["expr"]
    assert re.search(r"(deriv|delta)\(sum\(metering_consumer_lag_records", lag)
    assert "absent(metering_ready" in by_name["MeteringNotReady"]["expr"]
    assert by_name["MeteringNotReady"]["for"] == "2m"
    assert 'up{job="metering"} == 0' in by_name["MeteringDown"]["expr"]


def test_prometheus_config_shape() -> None:
    cfg = _yaml(PROMETHEUS / "prometheus.yml")
    assert cfg["rule_files"] == ["alerts.yml"]
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "metering"]
    assert job["scrape_interval"] == "5s"
    # deploy/local/prometheus.sh replaces exactly this target; compose has a service of that name.
    assert job["static_configs"] == [{"targets": ["metering:9400"]}]
    compose = _yaml(COMPOSE / "docker-compose.yml")
    assert "metering" in compose["services"]
    assert "../prometheus:/etc/prometheus:ro" in compose["services"]["prometheus"]["volumes"]


# --- compose -------------------------------------------------------------------------------


def test_compose_services_and_build() -> None:
    compose = _yaml(COMPOSE / "docker-compose.yml")
    services = compose["services"]
    assert {"kafka", "redis", "metering", "prometheus", "grafana"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert "--appendonly" in services["redis"]["command"]
    build = services["metering"]["build"]
    assert (COMPOSE / build["context"]).resolve() == ROOT
    assert (ROOT / build["dockerfile"]).resolve() == COMPOSE / "Dockerfile"
    env = services["metering"]["environment"]
    assert env["METERING_HTTP_HOST"] == "0.0.0.0"
    for name in env:
        assert name.removeprefix("METERING_").lower() in Settings.model_fields, name
    for svc in services.values():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE / source).exists(), volume


def test_dockerfile() -> None:
    text = (COMPOSE / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"^RUN pip install \.", text, re.M)
    assert re.search(r"^USER \d+", text, re.M), "must run as non-root"
    assert 'ENTRYPOINT ["metering"]' in text and 'CMD ["run"]' in text
    for src in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for part in src.split():
            assert (ROOT / part).exists(), f"COPY {part}: missing from the build context"


# --- Kubernetes ----------------------------------------------------------------------------


def test_deployment_probes_and_lifecycle() -> None:
    spec = _k8s("deployment.yaml")["spec"]["template"]["spec"]
    c = _container()
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["port"] in ports
    assert str(ports["http"]) == _env()["METERING_HTTP_PORT"]["value"]
    assert _env()["METERING_HTTP_HOST"]["value"] == "0.0.0.0"
    assert spec["terminationGracePeriodSeconds"] == 30
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["resources"]["requests"] and c["resources"]["limits"]


def test_deployment_env_names_are_settings() -> None:
    for name in _env():
        assert name.startswith("METERING_"), name
        assert name.removeprefix("METERING_").lower() in Settings.model_fields, name


def test_rules_come_from_the_configmap() -> None:
    spec = _k8s("deployment.yaml")["spec"]["template"]["spec"]
    rules_path = Path(_env()["METERING_RULES"]["value"])
    (mount,) = [m for m in _container()["volumeMounts"] if Path(m["mountPath"]) == rules_path.parent]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    cm = _k8s("configmap.yaml")
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    text = cm["data"][rules_path.name]
    catalog = parse_catalog(yaml.safe_load(text), f"configmap.yaml:{rules_path.name}")
    assert catalog.triggers


def test_secret_refs_exist_in_the_example() -> None:
    secret = _k8s("secret.example.yaml")
    keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    refs = [
        e["valueFrom"]["secretKeyRef"] for e in _env().values() if "secretKeyRef" in e.get("valueFrom", {})
    ]
    assert refs, "credentials must come from a Secret"
    for ref in refs:
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in keys, ref
    for volume in _k8s("deployment.yaml")["spec"]["template"]["spec"]["volumes"]:
        if "secret" in volume:
            assert volume["secret"]["secretName"] == secret["metadata"]["name"]
            assert {i["key"] for i in volume["secret"].get("items", [])} <= keys
    # Passwords never sit in plain env values.
    for name, e in _env().items():
        if name.endswith("_PASSWORD"):
            assert "valueFrom" in e, name


def test_hpa_bounded_by_partitions() -> None:
    hpa = _k8s("hpa.yaml")
    assert hpa["apiVersion"] == "autoscaling/v2"
    spec = hpa["spec"]
    env = _env()
    partitions = int(
        env["METERING_PARTITIONS"]["value"] if "METERING_PARTITIONS" in env else Settings().partitions
    )
    assert spec["maxReplicas"] <= partitions, "members beyond the partition count sit idle"
    assert 1 <= spec["minReplicas"] <= spec["maxReplicas"]
    assert spec["scaleTargetRef"]["name"] == _k8s("deployment.yaml")["metadata"]["name"]
    (metric,) = spec["metrics"]
    assert metric["type"] in {"External", "Pods"}
    key = metric["type"].lower()
    assert metric[key]["metric"]["name"] == "metering_consumer_lag_records"


def test_selectors_match_pod_labels() -> None:
    dep = _k8s("deployment.yaml")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    selectors = [
        dep["spec"]["selector"]["matchLabels"],
        _k8s("pdb.yaml")["spec"]["selector"]["matchLabels"],
        _k8s("service.yaml")["spec"]["selector"],
    ]
    for selector in selectors:
        assert selector.items() <= pod_labels.items(), selector
    assert _k8s("pdb.yaml")["spec"]["maxUnavailable"] == 1
    (port,) = _k8s("service.yaml")["spec"]["ports"]
    assert port["targetPort"] in {"http", 9400}


def test_kustomization_resources() -> None:
    kust = _k8s("kustomization.yaml")
    resources = kust["resources"]
    for name in resources:
        assert (K8S / name).is_file(), name
    # The real Secret is created out of band; the example must never be applied.
    assert "secret.example.yaml" not in resources
    expected = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert set(resources) == expected
