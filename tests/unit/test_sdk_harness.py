"""Built-in strategies unit-tested without a chain through `keepers.sdk.testing`, and the SDK
face itself: generic params, frozen candidate views, the old import paths still working."""

from __future__ import annotations

import dataclasses
import pickle
import time

import pytest

from keepers.sdk import OrderView, Strategy
from keepers.sdk.testing import KEEPER, MarketBuilder, address, block_context, make_strategy, run_block
from keepers.strategies.iceberg import ImpactBounded
from keepers.strategies.limit_stop import BestExecution, FeeMaximising, LimitStopParams


def _market() -> MarketBuilder:
    m = MarketBuilder(block=1_000)
    m.token("WETH", usd=2_000).token("USDC", usd=1, decimals=6)
    m.pool("WETH", "USDC", 1_000, 2_000_000, fee_pips=3_000)
    m.market(1, "WETH", "USDC")
    return m


def test_best_execution_fills_the_crossed_order_and_leaves_the_rest():
    started = time.perf_counter()
    m = _market()
    crossed = m.order(1, amount_in=1, min_out=1_900, fee_bps=30)
    beyond = m.order(1, amount_in=1, min_out=2_100, fee_bps=30)  # the pool pays ~1,994
    ctx = block_context(m, [beyond, crossed])
    actions = run_block(make_strategy(BestExecution), ctx)
    assert len(actions) == 1
    action = actions[0]
    assert action.order_ids == (crossed.order_id,)
    assert action.idempotency_key == "limit-stop:31337:1000"
    assert action.calls[0].to.lower() == address("order_book")
    assert KEEPER[2:] in action.calls[0].data.lower()  # the keeper is the fee recipient
    assert action.expected_value_wei > 0
    assert time.perf_counter() - started < 1.0


def test_nothing_without_a_market_or_candidates():
    strategy = make_strategy(BestExecution)
    assert run_block(strategy, block_context(None, [])) == []
    assert run_block(strategy, block_context(_market(), [])) == []


def test_unfair_pool_is_not_filled():
    """The oracle says WETH is worth 2,500: a fill at the pool's ~2,000 is beyond tolerance."""
    m = _market().price("WETH", 2_500)
    order = m.order(1, amount_in=1, min_out=1_000)
    assert run_block(make_strategy(BestExecution), block_context(m, [order])) == []


def test_fee_maximising_skips_orders_below_its_fee():
    m = _market()
    cheap = m.order(1, amount_in=1, min_out=1_900, fee_bps=2)
    paying = m.order(1, amount_in=1, min_out=1_900, fee_bps=20)
    actions = run_block(make_strategy(FeeMaximising, min_fee_bps=5), block_context(m, [cheap, paying]))
    assert [a.order_ids for a in actions] == [(paying.order_id,)]


def test_builder_share_becomes_the_coinbase_payment():
    m = _market()
    order = m.order(1, amount_in=1, min_out=1_900, fee_bps=30)
    (action,) = run_block(make_strategy(BestExecution, builder_share_bps=5_000), block_context(m, [order]))
    assert action.coinbase_payment_wei == action.expected_value_wei // 2


def test_iceberg_clips_to_what_meets_the_limit():
    m = _market()
    # 100 WETH in clips of 10; 10 WETH through a 1,000 WETH pool gets ~1,970 USDC each.
    order = m.order(1, amount_in=100, min_out=195_000, kind="iceberg", clip=10, fee_bps=10)
    (action,) = run_block(make_strategy(ImpactBounded), block_context(m, [order]))
    assert action.order_ids == (order.order_id,)


def test_params_are_typed_by_the_generic_argument():
    strategy = make_strategy(BestExecution, max_orders=3)
    assert isinstance(strategy.params, LimitStopParams)
    assert strategy.params.max_orders == 3

    from pydantic import BaseModel

    class P(BaseModel):
        x: int = 1

    class Inferred(Strategy[P]):  # Params taken from the generic argument
        kind = "limit-stop"

        async def on_block(self, ctx):
            return []

    assert Inferred.Params is P
    assert make_strategy(Inferred, x=2).params.x == 2


def test_order_views_are_frozen_slotted_and_picklable():
    order = _market().order(1, amount_in=1, min_out=1_900)
    with pytest.raises(dataclasses.FrozenInstanceError):
        order.remaining = 0  # type: ignore[misc]
    assert not hasattr(order, "__dict__")
    assert pickle.loads(pickle.dumps(order)) == order  # crosses to an isolated worker


def test_views_are_built_from_store_rows():
    from keepers.engine.views import PositionView, VaultView
    from keepers.store.tables import Order, Position, Vault

    order = _market().order(1, amount_in=1, min_out=1_900)
    row = Order(**{f.name: getattr(order, f.name) for f in dataclasses.fields(order)})
    assert OrderView.of(row) == order
    pos = Position(
        chain_id=1, market="0xm", borrower="0xb", collateral=5, borrowed=3, repaid=1, updated_block=9
    )
    assert PositionView.of(pos).collateral == 5
    vault = Vault(
        chain_id=1, vault="0xv", basket_id=2, owner="0xo", tokens=["0xa", "0xb"], weights_bps=[5_000, 5_000],
        drift_threshold_bps=100, max_slippage_bps=50, reward_bps=10, updated_block=9,
    )  # fmt: skip
    assert VaultView.of(vault).tokens == ("0xa", "0xb")


def test_old_import_paths_still_work():
    import keepers.sdk as sdk
    from keepers.engine.strategy import BlockContext
    from keepers.engine.strategy import Strategy as OldStrategy
    from keepers.tx.actions import Action

    assert OldStrategy is sdk.Strategy
    assert BlockContext is sdk.BlockContext
    assert Action is sdk.Action
