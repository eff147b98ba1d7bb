"""oracle: the median of the prices every configured pool implies (outliers dropped, so one
manipulated pool does not move it), pushed when the contract says an update is due (deviation
or heartbeat), and never further than the contract's per-update bound: a larger move is pushed
as a bounded step, and the next block continues it."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from functools import cached_property

from pydantic import BaseModel, ConfigDict, Field

from keepers.chain.calls import RawCall, call_all
from keepers.sdk import (
    Action,
    BlockContext,
    Call,
    MarketSnapshot,
    Strategy,
    calldata,
    checksum,
)

BPS = 10_000
#: Output types of PriceOracle.latestRound (round, price, updatedAt) and assetConfig
#: (deviationBps, maxChangeBps, heartbeat).
_ROUND = ("uint256", "uint256", "uint256")
_CONFIG = ("uint16", "uint16", "uint32")


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

    @cached_property
    def _reads(self) -> dict[tuple[str, str], tuple[RawCall, RawCall]]:
        return {}

    def _state_reads(self, oracle: str, asset: str) -> tuple[RawCall, RawCall]:
        """An asset's latest round and its config, encoded once."""
        key = (oracle, asset)
        if key not in self._reads:
            self._reads[key] = (
                RawCall(oracle, calldata("PriceOracle", "latestRound", asset), _ROUND),
                RawCall(oracle, calldata("PriceOracle", "assetConfig", asset), _CONFIG),
            )
        return self._reads[key]

    async def on_block(self, ctx: BlockContext) -> Sequence[Action]:
        snap, oracle_addr = ctx.market, ctx.contracts.get("oracle")
        if snap is None or oracle_addr is None or ctx.reader is None:
            return []
        oracle = checksum(oracle_addr)
        targets: dict[str, int] = {}
        for asset in self.params.assets or sorted(snap.prices):
            sources = implied_prices(snap, asset)
            if len(sources) < self.params.min_sources:
                continue
            target = robust_median(sources, self.params.outlier_bps)
            if target is not None:
                targets[checksum(asset)] = target
        if not targets:
            return []
        # Two round trips a block whatever the number of assets, every read of a round in
        # flight at once: on a busy machine a read per asset in turn outlasted the strategy's
        # timeout.
        state = await call_all(
            ctx.reader, [c for a in targets for c in self._state_reads(oracle, a)], ctx.number
        )
        steps = {
            a: bounded_step(int(state[2 * i][1]), target, int(state[2 * i + 1][1]))
            for i, (a, target) in enumerate(targets.items())
        }
        due = await call_all(
            ctx.reader,
            [
                RawCall(oracle, calldata("PriceOracle", "isUpdateDue", a, p), ("bool",))
                for a, p in steps.items()
            ],
            ctx.number,
        )
        updates = [(a, p) for (a, p), (is_due,) in zip(steps.items(), due, strict=True) if is_due]
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
