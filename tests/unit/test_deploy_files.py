"""deploy/: the alert rules pass promtool (check and unit tests); the dashboard is sound."""

from __future__ import annotations

import json
import subprocess

from tests.promql import (
    ALERTS,
    DASHBOARD,
    DEPLOY,
    alert_expressions,
    dashboard_expressions,
    metric_names,
    promtool,
)


def test_promtool_accepts_the_alert_rules():
    done = subprocess.run(
        [promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_the_alert_rules_pass_their_promtool_unit_tests():
    done = subprocess.run(
        [promtool(), "test", "rules", "alerts_test.yml"],
        cwd=DEPLOY,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_of_the_brief_is_there_and_reads_relay_series():
    text = ALERTS.read_text()
    for alert in (
        "RelayProxyLatencyP99High",
        "RelayProxy5xxRateHigh",
        "RelayStoreDown",
        "RelayStoreErrors",
        "RelayDnsWriteErrors",
        "RelayEventConsumerLagging",
        "RelayEventsDeadLettered",
        "RelayDrainCutShort",
    ):
        assert f"alert: {alert}\n" in text
    exprs = alert_expressions()
    assert len(exprs) == 8
    for expr in exprs:
        names = metric_names(expr)
        assert names, expr
        assert all(n.startswith("relay_") for n in names), (expr, names)


def test_the_dashboard_is_an_importable_grafana_dashboard():
    dashboard = json.loads(DASHBOARD.read_text())
    for key in ("title", "uid", "panels", "schemaVersion", "templating", "__inputs", "time"):
        assert key in dashboard, key
    assert dashboard["__inputs"] == [
        {
            "name": "DS_PROMETHEUS",
            "label": "Prometheus",
            "description": "The Prometheus that scrapes the relays' /metrics",
            "type": "datasource",
            "pluginId": "prometheus",
            "pluginName": "Prometheus",
        }
    ]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    graphs = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(graphs) >= 10
    for panel in graphs:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
            assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
    read = set().union(*(metric_names(e) for e in dashboard_expressions()))
    assert all(n.startswith("relay_") for n in read), read
    # The panels the brief asks for, by the series they read.
    for name in (
        "relay_requests_total",
        "relay_request_duration_seconds_bucket",
        "relay_tunnels_current",
        "relay_request_bytes_total",
        "relay_response_bytes_total",
        "relay_store_errors_total",
        "relay_dns_write_total",
        "relay_events_consumer_lag_seconds",
    ):
        assert name in read, name


def test_metric_names_are_read_out_of_promql():
    expr = (
        'histogram_quantile(0.99, sum by (instance, le) (rate(relay_a_bucket{x="y", z=~"$i"}'
        "[$__rate_interval]))) > 5 and on (instance) relay_b_total / ignoring (op) relay_c"
    )
    assert metric_names(expr) == {"relay_a_bucket", "relay_b_total", "relay_c"}
    assert metric_names("label_values(relay_t, instance)") == {"relay_t"}
    assert metric_names('sum(rate(other_metric{status!="503"}[5m])) by (status)') == {
        "other_metric"
    }
