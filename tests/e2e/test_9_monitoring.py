"""The lab's Prometheus (lab-prometheus, monitoring/prometheus.yml): it scrapes both gateway
agents and the cloud API by their lab names, and every alert rule of monitoring/alerts.yml
loads and evaluates without error against the series they export."""

from __future__ import annotations

import httpx

from tests.e2e.lab import GATEWAYS, lab_address, wait_for

PROMETHEUS = "lab-prometheus"


def _get(path: str) -> dict:
    answer = httpx.get(f"http://{lab_address(PROMETHEUS)}:9090{path}", timeout=10)
    answer.raise_for_status()
    return answer.json()["data"]


def test_prometheus_scrapes_the_gateways_and_the_api_and_evaluates_every_rule():
    def targets():
        active = _get("/api/v1/targets")["activeTargets"]
        health = {t["scrapeUrl"]: t["health"] for t in active}
        return health if set(health.values()) == {"up"} else None

    health = wait_for(targets, 60, "every scrape target to be up", interval=2)
    assert set(health) == {
        *(f"http://{g}:8089/metrics" for g in GATEWAYS),
        "http://lab-api:9108/metrics",
    }
    rules = [r for group in _get("/api/v1/rules")["groups"] for r in group["rules"]]
    assert rules, "monitoring/alerts.yml loaded no rule"
    assert {r["name"]: r["health"] for r in rules if r["health"] != "ok"} == {}
