"""oracle: the median of the prices every configured pool implies (outliers dropped, so one
manipulated pool does not move it), pushed when the contract says an update is due (deviation
or heartbeat), and never further than the contract's per-update bound: a larger move is pushed
as a bounded step, and the next block continues it."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from keepers.sdk import (
    Action,
    BlockContext,
    Call,
    MarketSnapshot,
    Strategy,
    calldata,
    checksum,
    load_artifact,
)

BPS = 10_000


class OracleParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    #: A source further than this from the median of all sources is dropped.
    outlier_bps: int = Field(default=300, ge=1)
    min_sources: int = Field(default=1, ge=1)
    #: Assets to keep updated (lowercase addresses); empty = every asset with a fresh price.
    assets: list[str] = Field(default_factory=list)


def implied_prices(snap: MarketSnapshot, asset: str) -> list[int]:
    """USD prices (18 decimals) of `asset` implied by each pool pairing it with a priced token."""
    out = []
    for p in snap.pools:
        if not p.has(asset):
            continue
        other = p.other(asset)
        price_other, fresh = snap.prices.get(other, (0, False))
        if not fresh or other == asset:
            continue
        r_asset, r_other = (p.reserve0, p.reserve1) if asset == p.token0 else (p.reserve1, p.reserve0)
        if r_asset == 0:
            continue
        out.append(
            r_other * price_other * 10 ** snap.decimals[asset] // (r_asset * 10 ** snap.decimals[other])
        )
    return out


def robust_median(prices: list[int], outlier_bps: int) -> int | None:
    if not prices:
        return None
    mid = statistics.median(prices)
    kept = [p for p in prices if abs(p - mid) * BPS <= mid * outlier_bps]
    return int(statistics.median(kept)) if kept else None


def bounded_step(current: int, target: int, max_change_bps: int) -> int:
    """The target, or the furthest point toward it the contract accepts in one update."""
    if current == 0:
        return target
    limit = current * (max_change_bps - 1) // BPS  # one bp of margin for rounding
    if target > current + limit:
        return current + limit
    if target < current - limit:
        return current - limit
    return target


class Median(Strategy[OracleParams]):
    kind = "oracle"
    Params = OracleParams

    async def on_block(self, ctx: BlockContext) -> Sequence[Action]:
        snap, oracle_addr = ctx.market, ctx.contracts.get("oracle")
        if snap is None or oracle_addr is None or ctx.reader is None:
            return []
        oracle: Any = ctx.reader.eth.contract(
            address=checksum(oracle_addr), abi=load_artifact("PriceOracle").abi
        )
        assets = self.params.assets or sorted(snap.prices)
        updates: list[tuple[str, int]] = []
        for asset in assets:
            sources = implied_prices(snap, asset)
            if len(sources) < self.params.min_sources:
                continue
            target = robust_median(sources, self.params.outlier_bps)
            if target is None:
                continue
            _round, current, _at = await oracle.functions.latestRound(checksum(asset)).call(
                block_identifier=ctx.number
            )
            _dev, max_change, _hb = await oracle.functions.assetConfig(checksum(asset)).call()
            price = bounded_step(int(current), target, int(max_change))
            if await oracle.functions.isUpdateDue(checksum(asset), price).call(block_identifier=ctx.number):
                updates.append((checksum(asset), price))
        if not updates:
            return []
        data = calldata("PriceOracle", "updatePrices", [a for a, _ in updates], [p for _, p in updates])
        return [
            Action(
                f"oracle:{ctx.chain_id}:{ctx.number}",
                (Call(to=checksum(oracle_addr), data=data, gas_limit=60_000 + 40_000 * len(updates)),),
                expected_value_wei=0,
                public_good=True,
                deadline_blocks=2,
            )
        ]
