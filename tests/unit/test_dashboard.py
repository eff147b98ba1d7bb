"""The Grafana dashboard and the alert rules read series the keepers export: a renamed metric
or label shows up here, not as an empty panel or an alert that can never fire."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

from keepers.obs import metrics

CHART = Path(__file__).resolve().parents[2] / "helm" / "keepers"
SELECTOR = re.compile(r"(keepers_[a-z_]+)(\{[^}]*\})?")


def _exported() -> dict[str, set[str]]:
    """Every sample name the keepers export, with its labels (series made for the purpose)."""
    assert metrics.REACTION is not None  # imported for its registrations
    out: dict[str, set[str]] = {}
    for family in REGISTRY.collect():
        if not family.name.startswith("keepers_"):
            continue
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    # Series that exist only once a label value is used: their families still name the labels.
    for metric in vars(metrics).values():
        names = getattr(metric, "_labelnames", None)
        name = getattr(metric, "_name", "")
        if names is None or not name.startswith("keepers_"):
            continue
        kind = getattr(metric, "_type", "")
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(kind, [""])
        for suffix in suffixes:
            out.setdefault(name + suffix, set()).update(names, {"le"} if suffix == "_bucket" else set())
    return out


def _dashboard_exprs() -> list[str]:
    board = json.loads((CHART / "files" / "dashboard.json").read_text())
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def test_the_dashboard_is_templated_by_namespace_and_chain() -> None:
    board = json.loads((CHART / "files" / "dashboard.json").read_text())
    variables = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "namespace", "chain"} <= variables
    exported = _exported()
    for expr in _dashboard_exprs():
        for name, labels in SELECTOR.findall(expr):
            assert labels, f"{name} is not filtered in: {expr}"
            assert 'namespace=~"$namespace"' in labels, expr
            if "chain" in exported.get(name, set()):
                assert 'chain=~"$chain"' in labels, f"{name} has a chain label: filter it: {expr}"


def test_every_series_a_panel_or_an_alert_reads_is_exported_with_its_labels() -> None:
    exported = _exported()
    rules = (CHART / "templates" / "prometheusrule.yaml").read_text()
    exprs = _dashboard_exprs() + re.findall(r"expr: (.*)", rules)
    for expr in exprs:
        for name, _labels in SELECTOR.findall(expr):
            assert name in exported, f"{name} is not a series the keepers export ({expr})"
        for by in re.findall(r"by \(([^)]*)\)", expr):
            wanted = {label.strip() for label in by.split(",")} - {"le", "pod", "namespace"}
            names = [n for n, _ in SELECTOR.findall(expr)]
            have = set().union(*(exported.get(n, set()) for n in names)) if names else wanted
            assert wanted <= have, f"grouped by {wanted - have}, which no series of {names} has: {expr}"


def test_build_info_names_the_release() -> None:
    from keepers import __version__

    value = REGISTRY.get_sample_value(
        "keepers_build_info", {"version": __version__, "python": __import__("platform").python_version()}
    )
    assert value == 1
