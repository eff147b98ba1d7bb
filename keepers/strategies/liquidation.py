"""liquidation: positions below health 1, repaid through the FlashLiquidator so the keeper
needs no inventory. Each candidate repayment is priced by an eth_call of the real liquidation;
max-profit takes the most profitable size, max-coverage the largest the close factor allows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog
from pydantic import Field

from keepers.sdk import (
    Action,
    BidParams,
    BlockContext,
    Call,
    PositionView,
    Strategy,
    calldata,
    checksum,
    load_artifact,
    usd_to_wei,
    with_bid,
)

WAD = 10**18
log = structlog.get_logger("liquidation")


class LiquidationParams(BidParams):
    native_token: str | None = None
    #: Share of the simulated profit required on chain (protects against the price moving).
    min_profit_share_bps: int = Field(default=9_000, ge=0, le=10_000)


class MaxProfit(Strategy[LiquidationParams]):
    kind = "liquidation"
    Params = LiquidationParams
    fractions_bps: tuple[int, ...] = (2_500, 5_000, 7_500, 10_000)

    async def on_block(self, ctx: BlockContext) -> Sequence[Action]:
        snap = ctx.market
        market_addr, liq_addr = ctx.contracts.get("lending_market"), ctx.contracts.get("flash_liquidator")
        if snap is None or ctx.reader is None or not market_addr or not liq_addr:
            return []
        market: Any = ctx.reader.eth.contract(
            address=checksum(market_addr), abi=load_artifact("LendingMarket").abi
        )
        liq: Any = ctx.reader.eth.contract(
            address=checksum(liq_addr), abi=load_artifact("FlashLiquidator").abi
        )
        collateral = str(await market.functions.collateralToken().call()).lower()
        debt_token = str(await market.functions.debtToken().call()).lower()
        close_bps = int(await market.functions.closeFactorBps().call())
        pools = [p for p in snap.pools if p.has(collateral) and p.has(debt_token)]
        if not pools:
            return []
        pool = max(pools, key=lambda p: p.reserve0 if p.token0 == debt_token else p.reserve1)
        actions = []
        positions: Sequence[PositionView] = ctx.candidates
        for pos in positions:
            if pos.collateral <= 0 or pos.market != market_addr.lower():
                continue
            borrower = checksum(pos.borrower)
            if int(await market.functions.healthFactor(borrower).call(block_identifier=ctx.number)) >= WAD:
                continue
            owed = int(await market.functions.debtOf(borrower).call(block_identifier=ctx.number))
            max_repay = owed * close_bps // 10_000
            best: tuple[int, int] | None = None  # (profit, repay)
            for frac in self.fractions_bps:
                repay = max_repay * frac // 10_000
                if repay == 0:
                    continue
                me = checksum(ctx.keeper_address)
                call = liq.functions.liquidate(
                    checksum(pool.address), checksum(market_addr), borrower, repay, 0, me
                )
                try:
                    profit = int(await call.call({"from": me}, block_identifier=ctx.number))
                except Exception as exc:  # noqa: BLE001 - a size the contracts refuse is not a candidate
                    log.debug("liquidation size refused by simulation", repay=repay, error=repr(exc))
                    continue
                if best is None or self.better(profit, repay, best):
                    best = (profit, repay)
            if best is None or best[0] <= 0:
                continue
            profit, repay = best
            min_profit = profit * self.params.min_profit_share_bps // 10_000
            me = checksum(ctx.keeper_address)
            args = (checksum(pool.address), checksum(market_addr), borrower, repay, min_profit, me)
            data = calldata("FlashLiquidator", "liquidate", *args)
            actions.append(
                with_bid(
                    Action(
                        f"liquidate:{ctx.chain_id}:{pos.borrower}:{ctx.number}",
                        (Call(to=checksum(liq_addr), data=data, gas_limit=400_000),),
                        expected_value_wei=usd_to_wei(
                            snap, snap.value_usd(collateral, profit), self.params.native_token
                        ),
                    ),
                    self.params,
                )
            )
        return actions

    def better(self, profit: int, repay: int, best: tuple[int, int]) -> bool:
        return profit > best[0]


class MaxCoverage(MaxProfit):
    """Repays as much as the close factor allows, as long as it still pays."""

    fractions_bps = (10_000, 7_500, 5_000)

    def better(self, profit: int, repay: int, best: tuple[int, int]) -> bool:
        return profit > 0 and repay > best[1]
