"""rebalancer: baskets whose drift passes their threshold, brought back with the fewest direct
trades (overweight into underweight), each sized within the basket's oracle slippage bound and
checked with an eth_call of the real rebalance before it is sent."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict

from keepers.chain.artifacts import load_artifact
from keepers.engine.market import MarketSnapshot
from keepers.engine.strategy import BlockContext, Strategy
from keepers.store.tables import Vault
from keepers.tx.actions import Action, Call
from strategies.common import calldata, checksum, usd_to_wei

BPS = 10_000
log = structlog.get_logger("rebalancer")


class RebalancerParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    native_token: str | None = None
    max_trades: int = 4


def plan_trades(
    snap: MarketSnapshot,
    tokens: list[str],
    weights: list[int],
    balances: list[int],
    max_slippage_bps: int,
    max_trades: int,
) -> list[tuple[str, str, int]]:
    """(pool, tokenIn, amountIn) moving value from overweight to underweight tokens."""
    values = [snap.value_usd(t, b) for t, b in zip(tokens, balances, strict=True)]
    total = sum(values)
    if total == 0:
        return []
    gap = {t: v - total * w // BPS for t, v, w in zip(tokens, values, weights, strict=True)}
    trades: list[tuple[str, str, int]] = []
    for _ in range(max_trades):
        over = max(gap, key=lambda t: gap[t])
        under = min(gap, key=lambda t: gap[t])
        value = min(gap[over], -gap[under])
        if value <= 0:
            break
        pools = [p for p in snap.pools if p.has(over) and p.has(under)]
        price, _fresh = snap.prices[over]
        amount = value * 10 ** snap.decimals[over] // price
        best = max(pools, key=lambda p: p.quote(over, amount), default=None)
        if best is None or amount == 0:
            gap[over] = gap[under] = 0
            continue
        received = snap.value_usd(under, best.quote(over, amount))
        if received * BPS < value * (BPS - max_slippage_bps):
            break  # the pool is too far from the oracle: the contract would refuse it
        trades.append((best.address, over, amount))
        gap[over] -= value
        gap[under] += value
    return trades


class DriftRestoring(Strategy):
    kind = "rebalancer"
    Params = RebalancerParams

    async def on_block(self, ctx: BlockContext) -> Sequence[Action]:
        assert isinstance(self.params, RebalancerParams)
        snap, vault_addr = ctx.market, ctx.contracts.get("vault")
        if snap is None or vault_addr is None or ctx.reader is None:
            return []
        vault: Any = ctx.reader.eth.contract(
            address=checksum(vault_addr), abi=load_artifact("RebalancingVault").abi
        )
        actions = []
        for v in ctx.candidates:
            assert isinstance(v, Vault)
            drift = int(await vault.functions.drift(v.basket_id).call(block_identifier=ctx.number))
            if drift < v.drift_threshold_bps:
                continue
            tokens = [t.lower() for t in v.tokens]
            balances = [
                int(
                    await vault.functions.balanceOf(v.basket_id, checksum(t)).call(
                        block_identifier=ctx.number
                    )
                )
                for t in tokens
            ]
            trades = plan_trades(
                snap, tokens, v.weights_bps, balances, v.max_slippage_bps, self.params.max_trades
            )
            if not trades:
                continue
            args = [(checksum(p), checksum(t), a) for p, t, a in trades]
            try:
                reward_usd = int(
                    await vault.functions.rebalance(v.basket_id, args).call(
                        {"from": checksum(ctx.keeper_address)}, block_identifier=ctx.number
                    )
                )
            except Exception as exc:  # noqa: BLE001 - a plan the contract refuses is not sent
                log.info("rebalance plan refused by simulation", basket=v.basket_id, error=repr(exc))
                continue
            actions.append(
                Action(
                    f"rebalance:{ctx.chain_id}:{v.basket_id}:{ctx.number}",
                    (
                        Call(
                            to=checksum(vault_addr),
                            data=calldata("RebalancingVault", "rebalance", v.basket_id, args),
                            gas_limit=150_000 + 120_000 * len(args),
                        ),
                    ),
                    expected_value_wei=usd_to_wei(snap, reward_usd, self.params.native_token),
                )
            )
        return actions
