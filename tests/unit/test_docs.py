"""The documentation's links from outside the site: the alert rules' runbook annotations and the
README's table of contents point at pages and anchors that exist. Links inside docs/ are checked
by `mkdocs build --strict` (./dev test, ./dev fast), which fails on a missing page or anchor."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "helm" / "keepers" / "templates" / "prometheusrule.yaml"


def _anchors(page: Path) -> set[str]:
    """Explicit ids (`<a id="keeperdown"></a>`) and headings' slugs, as MkDocs and GitHub make them."""
    text = page.read_text()
    ids = set(re.findall(r'id="([^"]+)"', text))
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        ids.add(re.sub(r"[\s]+", "-", re.sub(r"[^\w\s-]", "", heading).strip().lower()))
    return ids


def test_every_alert_has_a_runbook_entry_that_exists():
    text = RULES.read_text()
    alerts = re.findall(r"^\s*- alert: (\w+)$", text, re.M)
    runbooks = re.findall(r"^\s*runbook: (\S+)$", text, re.M)
    assert alerts
    assert len(runbooks) == len(alerts), "every alert carries a runbook annotation"
    for alert, link in zip(alerts, runbooks, strict=True):
        path, _, anchor = link.partition("#")
        assert anchor == alert.lower(), f"{alert}'s runbook is {link}"
        page = ROOT / path
        assert page.is_file(), f"{alert}'s runbook page {path} does not exist"
        assert anchor in _anchors(page), f"{path} has no entry #{anchor} for {alert}"


def test_the_readme_links_to_pages_that_exist():
    links = re.findall(r"\]\(([^)#\s]+)(?:#([^)\s]+))?\)", (ROOT / "README.md").read_text())
    pages = [(path, anchor) for path, anchor in links if not re.match(r"[a-z]+://", path)]
    assert any(path.startswith("docs/") for path, _ in pages), "the README links to the docs"
    for path, anchor in pages:
        target = ROOT / path
        assert target.exists(), f"README links to {path}, which does not exist"
        if anchor:
            assert anchor in _anchors(target), f"README links to {path}#{anchor}, which does not exist"


def test_every_page_is_in_the_site_and_the_built_site_is_not_committed():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def pages(nav: list[object]) -> list[str]:
        out: list[str] = []
        for item in nav:
            for value in item.values() if isinstance(item, dict) else [item]:
                out += pages(value) if isinstance(value, list) else [str(value)]
        return out

    listed = pages(config["nav"])
    on_disk = sorted(str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md"))
    assert sorted(listed) == on_disk, "mkdocs.yml's nav and docs/ disagree"
    assert config["site_dir"] == "site"
    assert "site/" in (ROOT / ".gitignore").read_text().splitlines()
