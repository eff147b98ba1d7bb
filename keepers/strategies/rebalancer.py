"""rebalancer: baskets whose drift passes their threshold, brought back with the fewest direct
trades (overweight into underweight), each sized within the basket's oracle slippage bound and
checked with an eth_call of the real rebalance before it is sent."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict

from keepers.sdk import (
    Action,
    BlockContext,
    Call,
    MarketSnapshot,
    Strategy,
    VaultView,
    calldata,
    checksum,
    load_artifact,
    usd_to_wei,
)

BPS = 10_000
log = structlog.get_logger("rebalancer")


class RebalancerParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    native_token: str | None = None
    max_trades: int = 4


def plan_trades(
    snap: MarketSnapshot,
    tokens: list[str],
    weights: Sequence[int],
    balances: list[int],
    max_slippage_bps: int,
    max_trades: int,
) -> list[tuple[str, str, int]]:
    """(pool, tokenIn, amountIn) moving value from overweight to underweight tokens, by the
    vault's own rules: a token over its target is only sold and one under it only bought; what
    is sold stays within the seller's distance to target and what arrives within the buyer's
    (both valued at the oracle as the contract values them); each trade at no worse than the
    oracle value less the basket's slippage bound. Each trade is quoted on the pools as the
    trades before it leave them."""
    values = [snap.value_usd(t, b) for t, b in zip(tokens, balances, strict=True)]
    total = sum(values)
    if total == 0:
        return []
    targets = [total * w // BPS for w in weights]
    seller = {t: v > target for t, v, target in zip(tokens, values, targets, strict=True)}
    room = {t: abs(v - target) for t, v, target in zip(tokens, values, targets, strict=True)}
    trades: list[tuple[str, str, int]] = []
    state = snap
    for _ in range(max_trades):
        sellers = [t for t in tokens if seller[t] and room[t] > 0]
        buyers = [t for t in tokens if not seller[t] and room[t] > 0]
        if not sellers or not buyers:
            break
        over = max(sellers, key=lambda t: room[t])
        under = max(buyers, key=lambda t: room[t])
        pools = [p for p in state.pools if p.has(over) and p.has(under)]
        price, _fresh = state.prices[over]
        amount = min(room[over], room[under]) * 10 ** state.decimals[over] // price if price else 0
        best = max(pools, key=lambda p: p.quote(over, amount), default=None)
        if best is None or amount == 0:
            room[over] = room[under] = 0
            continue
        bought = snap.value_usd(under, best.quote(over, amount))
        for _ in range(8):
            if bought <= room[under] or amount == 0:
                break
            # The pool pays above the oracle: sell less, so what arrives fits the buyer's room
            # (output is concave in input, so scaling down once can still overshoot a little).
            amount = amount * room[under] // bought - 1
            bought = snap.value_usd(under, best.quote(over, max(amount, 0)))
        if bought > room[under]:
            break
        sold = snap.value_usd(over, amount)
        if amount == 0 or bought * BPS < sold * (BPS - max_slippage_bps):
            break  # the pool is too far from the oracle: the contract would refuse it
        trades.append((best.address, over, amount))
        state = state.after_swap((best.address,), over, amount)
        room[over] -= sold
        room[under] -= bought
    return trades


class DriftRestoring(Strategy[RebalancerParams]):
    kind = "rebalancer"
    Params = RebalancerParams

    async def on_block(self, ctx: BlockContext) -> Sequence[Action]:
        snap, vault_addr = ctx.market, ctx.contracts.get("vault")
        if snap is None or vault_addr is None or ctx.reader is None:
            return []
        vault: Any = ctx.reader.eth.contract(
            address=checksum(vault_addr), abi=load_artifact("RebalancingVault").abi
        )
        actions = []
        vaults: Sequence[VaultView] = ctx.candidates
        for v in vaults:
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
