"""The chart's alerts, as Prometheus evaluates them: `promtool check rules` on the rendered
PrometheusRule and `promtool test rules` on series that should page and series that should not:
a stalled node, every replica of a kind gone, a fresh deployment that never lands anything."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.unit.test_helm_chart import _values, of_kind, render

PROMTOOL = shutil.which("promtool")


def _rules(tmp_path: Path) -> Path:
    (rule,) = of_kind(render(_values("all-enabled-values.yaml")), "PrometheusRule")
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    return path


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None, "promtool is missing: ./dev test installs it (Debian's prometheus package)"
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, check=False)


def _leaders(except_kind: str = "") -> list[dict[str, str]]:
    kinds = ["iceberg", "limit-stop", "liquidation", "oracle", "rebalancer", "twap"]
    return [
        {
            "series": f'keepers_leader{{chain="mainnet",keeper="{k}",namespace="keepers",pod="{k}-0"}}',
            "values": "1x40",
        }
        for k in kinds
        if k != except_kind
    ]


def _alert(name: str, labels: dict[str, str], at: str) -> dict[str, Any]:
    return {"eval_time": at, "alertname": name, "exp_alerts": [{"exp_labels": {**labels}}]}


def test_the_rules_are_valid(tmp_path: Path) -> None:
    result = _promtool("check", "rules", str(_rules(tmp_path)))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_fire_when_they_must_and_not_otherwise(tmp_path: Path) -> None:
    rules = _rules(tmp_path)
    healthy = [
        *_leaders(),
        {"series": 'keepers_head_age_seconds{chain="mainnet",pod="a"}', "values": "3x40"},
        {"series": 'keepers_blocks_behind_head{chain="mainnet",pod="a"}', "values": "0x40"},
        {"series": 'keepers_actions_total{chain="mainnet",outcome="included",pod="a"}', "values": "0+2x40"},
        {"series": 'keepers_actions_total{chain="mainnet",outcome="missed",pod="a"}', "values": "0+1x40"},
        {"series": 'keepers_relay_fallback{chain="mainnet",keeper="limit-stop",pod="a"}', "values": "0x40"},
    ]
    stalled = [
        *_leaders(),
        # The node stops at minute 5: the head's age grows by 60 s a minute from then on.
        {"series": 'keepers_head_age_seconds{chain="mainnet",pod="a"}', "values": "3x5 60+60x35"},
    ]
    fresh = [
        *_leaders(),
        # A fresh deployment: every action rejected or missed, nothing ever included (the
        # counter exists at 0 from the start: the keeper creates every outcome's series).
        {"series": 'keepers_actions_total{chain="mainnet",outcome="included",pod="a"}', "values": "0x40"},
        {"series": 'keepers_actions_total{chain="mainnet",outcome="rejected",pod="a"}', "values": "0+3x40"},
    ]
    relay_down = [
        *_leaders(),
        # No relay takes bundles from minute 3 on: the keeper sends by its fallback route.
        {
            "series": 'keepers_relay_fallback{chain="mainnet",keeper="limit-stop",pod="a"}',
            "values": "0x3 1x30",
        },
    ]
    tests = [
        {
            "interval": "1m",
            "input_series": relay_down,
            "alert_rule_test": [
                {"eval_time": "6m", "alertname": "KeeperRelayFallback", "exp_alerts": []},
                {
                    "eval_time": "10m",
                    "alertname": "KeeperRelayFallback",
                    "exp_alerts": [
                        {
                            "exp_labels": {"severity": "warning", "chain": "mainnet", "keeper": "limit-stop"},
                            "exp_annotations": {
                                "summary": "limit-stop on mainnet has sent by its fallback route"
                                " for 5 minutes: no relay takes bundles",
                                "runbook": "docs/operate/alerts.md#keeperrelayfallback",
                            },
                        }
                    ],
                },
            ],
        },
        {
            "interval": "1m",
            "input_series": healthy,
            "alert_rule_test": [
                {"eval_time": "30m", "alertname": a, "exp_alerts": []}
                for a in (
                    "KeeperHeadStale",
                    "KeeperDown",
                    "KeeperNoInclusion",
                    "KeeperBehindHead",
                    "KeeperNoLeader",
                    "KeeperRelayFallback",
                )
            ],
        },
        {
            "interval": "1m",
            "input_series": stalled,
            "alert_rule_test": [
                {"eval_time": "6m", "alertname": "KeeperHeadStale", "exp_alerts": []},
                {
                    "eval_time": "10m",
                    "alertname": "KeeperHeadStale",
                    "exp_alerts": [
                        {
                            "exp_labels": {"severity": "critical", "chain": "mainnet"},
                            "exp_annotations": {
                                "summary": "Keepers on mainnet have seen no new head for 5m 0s",
                                "runbook": "docs/operate/alerts.md#keeperheadstale",
                            },
                        }
                    ],
                },
            ],
        },
        {
            "interval": "1m",
            "input_series": _leaders(except_kind="oracle"),
            "alert_rule_test": [
                {
                    "eval_time": "5m",
                    "alertname": "KeeperDown",
                    "exp_alerts": [
                        {
                            "exp_labels": {
                                "severity": "critical",
                                "keeper": "oracle",
                                "namespace": "keepers",
                            },
                            "exp_annotations": {
                                "summary": "No replica of oracle reports metrics",
                                "runbook": "docs/operate/alerts.md#keeperdown",
                            },
                        }
                    ],
                }
            ],
        },
        {
            "interval": "1m",
            "input_series": fresh,
            "alert_rule_test": [
                {
                    "eval_time": "20m",
                    "alertname": "KeeperNoInclusion",
                    "exp_alerts": [
                        {
                            "exp_labels": {"severity": "critical", "chain": "mainnet"},
                            "exp_annotations": {
                                "summary": "Keepers on mainnet sent actions for 15m and none was included",
                                "runbook": "docs/operate/alerts.md#keepernoinclusion",
                            },
                        }
                    ],
                }
            ],
        },
    ]
    spec = tmp_path / "alerts-test.yml"
    spec.write_text(yaml.safe_dump({"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": tests}))
    result = _promtool("test", "rules", str(spec))
    assert result.returncode == 0, result.stdout + result.stderr
