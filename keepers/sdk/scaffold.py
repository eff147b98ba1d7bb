"""`keepers strategies new NAME`: a strategy plugin project to start from, with its entry
point, a limit-stop strategy written against `keepers.sdk`, and a unit test on the fast
harness (`keepers.sdk.testing`) that passes as generated."""

from __future__ import annotations

import re
from pathlib import Path

NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


class ScaffoldError(ValueError):
    """The name or the directory cannot take a new project."""


_PYPROJECT = """\
[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "keepers-{name}"
version = "0.1.0"
description = "A Keepers strategy plugin: {name}"
requires-python = ">=3.11"
dependencies = ["keepers>=0.1"]

# The line that makes this a plugin: `keepers strategies list` shows it once installed, and
# `strategy = "{name}"` under [keepers.limit-stop] in a keeper's config selects it.
[project.entry-points."keepers.strategies"]
{name} = "{package}.strategy:{cls}"

[tool.setuptools.packages.find]
where = ["src"]

[tool.setuptools.package-data]
{package} = ["py.typed"]

[tool.pytest.ini_options]
testpaths = ["tests"]
pythonpath = ["src"]
"""

_INIT = '''\
"""{name}: a Keepers strategy plugin."""

from {package}.strategy import {cls}, {cls}Params

__all__ = ["{cls}", "{cls}Params"]
'''

_STRATEGY = '''\
"""{name}: fills the crossed limit/stop orders that pay at least `min_fee_bps`, batched per
market into one transaction with the OrderBook's own rules (`plan_groups`, `batch_action`)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from keepers.sdk import Action, BlockContext, OrderView, Strategy, batch_action, plan_groups
from pydantic import BaseModel, ConfigDict, Field


class {cls}Params(BaseModel):
    """Validated from the keeper's `params` table in config; unknown keys are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: Orders paying a smaller keeper fee are left to others.
    min_fee_bps: int = Field(default=5, ge=0, le=100)
    #: The wrapped native token (lowercase address), to value fees in wei.
    native_token: str | None = None


class {cls}(Strategy[{cls}Params]):
    kind = "limit-stop"
    Params = {cls}Params

    async def on_block(self, ctx: BlockContext) -> Sequence[Action]:
        snap, book = ctx.market, ctx.contracts.get("order_book")
        if snap is None or book is None:
            return []
        orders: Sequence[OrderView] = ctx.candidates  # the orders this block's prices cross
        by_market: dict[int, list[tuple[OrderView, int]]] = defaultdict(list)
        for order in orders:
            if order.keeper_fee_bps >= self.params.min_fee_bps:
                by_market[order.market].append((order, order.remaining))
        action = batch_action(
            f"{name}:{{ctx.chain_id}}:{{ctx.number}}",
            book,
            plan_groups(snap, by_market),
            snap,
            ctx.keeper_address,
            self.params.native_token,
        )
        return [action] if action else []
'''

_TEST = '''\
"""Unit tests on the fast harness: no chain, milliseconds each. For tests on a real devnet,
the `keepers_devnet` fixture of keepers-workshop (Keepers docs: "Write a strategy")."""

from __future__ import annotations

from keepers.sdk.testing import MarketBuilder, block_context, make_strategy, run_block

from {package} import {cls}


def market() -> MarketBuilder:
    m = MarketBuilder(block=1_000)
    m.token("WETH", usd=2_000).token("USDC", usd=1, decimals=6)
    m.pool("WETH", "USDC", 1_000, 2_000_000, fee_pips=3_000)  # whole tokens: 2,000 USDC a WETH
    m.market(1, "WETH", "USDC")
    return m


def test_fills_a_crossed_order_that_pays() -> None:
    m = market()
    order = m.order(1, amount_in=1, min_out=1_900, fee_bps=30)
    actions = run_block(make_strategy({cls}, min_fee_bps=5), block_context(m, [order]))
    assert [a.order_ids for a in actions] == [(order.order_id,)]


def test_leaves_orders_below_its_fee_or_beyond_the_market() -> None:
    m = market()
    cheap = m.order(1, amount_in=1, min_out=1_900, fee_bps=1)
    beyond = m.order(1, amount_in=1, min_out=2_100, fee_bps=30)
    assert run_block(make_strategy({cls}, min_fee_bps=5), block_context(m, [cheap, beyond])) == []
'''

_README = """\
# keepers-{name}

A Keepers strategy plugin (kind `limit-stop`).

    pip install -e .                 # registers the entry point
    keepers strategies show {name}   # its params schema
    pytest                           # unit tests on the fast harness, no chain

Select it in a keeper's config:

    [keepers.limit-stop]
    strategy = "{name}"
    params = {{ min_fee_bps = 5 }}
"""


def scaffold(name: str, directory: Path) -> list[Path]:
    """Writes a plugin project for strategy `name` (lowercase, dash-separated) into
    `directory` (new or empty); returns the files written."""
    if not NAME.match(name):
        raise ScaffoldError(
            f"strategy name {name!r}: use lowercase letters, digits and dashes (e.g. my-strategy)"
        )
    if directory.exists() and any(directory.iterdir()):
        raise ScaffoldError(f"{directory} is not empty")
    package = name.replace("-", "_")
    cls = "".join(part.capitalize() for part in name.split("-"))
    values = {"name": name, "package": package, "cls": cls}
    files = {
        "pyproject.toml": _PYPROJECT,
        "README.md": _README,
        f"src/{package}/__init__.py": _INIT,
        f"src/{package}/strategy.py": _STRATEGY,
        f"src/{package}/py.typed": "",
        "tests/test_strategy.py": _TEST,
    }
    written = []
    for rel, template in files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**values))
        written.append(path)
    return written
