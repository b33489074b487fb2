"""monitoring/: the alert rules and the scrape config pass the real promtool, the rules' unit
tests pass, and the rules and the Grafana dashboard only use series the code exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from iotistic_vpn.api.metrics import ApiMetrics
from iotistic_vpn.gateway.metrics import Metrics

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
ALERTS = MONITORING / "alerts.yml"
DASHBOARD = MONITORING / "grafana" / "iotistic-vpn.json"

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (make deps)"
)

# The sample names each metric type exposes beside (or instead of) its family name.
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}
_NAME = re.compile(r"\biotistic_[a-z0-9_]+")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["promtool", *args], cwd=MONITORING, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result


def _sample_names(registry: CollectorRegistry) -> set[str]:
    """Every sample name a scrape can show: from the samples present and, for series whose
    labelled children do not exist yet, from the family's type."""
    names = set()
    for family in registry.collect():
        names.update(sample.name for sample in family.samples)
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return names


def exported_names() -> set[str]:
    return _sample_names(Metrics(["iotistic-0", "iotistic-1"]).registry) | _sample_names(
        ApiMetrics(lambda: 0).registry
    )


def _rule_exprs() -> list[str]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule["expr"] for group in doc["groups"] for rule in group["rules"]]


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _dashboard_exprs(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", []) if "expr" in t]
    for var in dashboard["templating"]["list"]:
        query = var.get("query")
        if var["type"] == "query":
            exprs.append(query["query"] if isinstance(query, dict) else query)
    return exprs


@needs_promtool
def test_promtool_checks_the_rules():
    out = _promtool("check", "rules", "alerts.yml")
    assert "SUCCESS" in out.stdout


@needs_promtool
def test_promtool_runs_the_rules_unit_tests():
    out = _promtool("test", "rules", "alerts.test.yml")
    assert "SUCCESS" in out.stdout


@needs_promtool
def test_promtool_checks_the_scrape_config_and_the_rules_it_loads():
    out = _promtool("check", "config", "prometheus.yml")
    assert "1 rule files found" in out.stdout


def test_every_alert_has_for_severity_and_annotations_naming_where():
    doc = yaml.safe_load(ALERTS.read_text())
    alerts = [rule for group in doc["groups"] for rule in group["rules"]]
    assert len(alerts) >= 12
    for rule in alerts:
        name = rule["alert"]
        assert rule.get("for"), name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert set(rule["annotations"]) == {"summary", "description"}, name
        for text in rule["annotations"].values():
            assert "$labels.instance" in text or "$labels.gateway" in text, name


def test_every_alert_is_unit_tested_firing_and_not_firing():
    alerts = {rule["alert"] for group in yaml.safe_load(ALERTS.read_text())["groups"]
              for rule in group["rules"]}  # fmt: skip
    tests = yaml.safe_load((MONITORING / "alerts.test.yml").read_text())["tests"]
    cases = [case for test in tests for case in test["alert_rule_test"]]
    fired = {c["alertname"] for c in cases if c["exp_alerts"]}
    quiet = {c["alertname"] for c in cases if not c["exp_alerts"]}
    assert alerts - fired == set()
    assert alerts - quiet == set()


def test_the_rules_use_only_series_the_code_exports():
    used = {name for expr in _rule_exprs() for name in _NAME.findall(expr)}
    assert used, "no iotistic_ series in the rules"
    assert used - exported_names() == set()


def test_the_dashboard_uses_only_series_the_code_exports():
    used = {name for expr in _dashboard_exprs(_dashboard()) for name in _NAME.findall(expr)}
    assert used, "no iotistic_ series on the dashboard"
    assert used - exported_names() == set()


def test_the_dashboard_has_a_datasource_variable_and_no_fixed_datasource():
    dashboard = _dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"

    def datasources(node):
        if isinstance(node, dict):
            if isinstance(node.get("datasource"), dict):
                yield node["datasource"]
            for value in node.values():
                yield from datasources(value)
        elif isinstance(node, list):
            for value in node:
                yield from datasources(value)

    for ds in datasources({"panels": dashboard["panels"], "templating": dashboard["templating"]}):
        assert ds == {"type": "prometheus", "uid": "${datasource}"}


def test_every_dashboard_panel_has_a_title_and_a_query():
    panels = _dashboard()["panels"]
    graphs = [p for p in panels if p["type"] != "row"]
    assert len(graphs) >= 12
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["title"].strip(), panel["id"]
    for panel in graphs:
        assert any(t.get("expr", "").strip() for t in panel["targets"]), panel["title"]
