"""The compiled contracts on a real anvil chain, driven as keepers and traders drive them."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from web3 import Web3
from web3.logs import DISCARD

from keepers.chain.pool_math import amount_out, decayed_volatility, dynamic_fee
from keepers_workshop.devnet.anvil import DEFAULT_KEYS
from keepers_workshop.devnet.deploy import POOL_FEES, DeployError, Deployment, Sender, bind, units
from tests.helpers.demo_fill import place_and_fill

pytestmark = pytest.mark.integration

STOP_LOSS = 1
NOT_TRIGGERED = 3  # OrderBook.SkipReason.NotTriggered


def _weth_usdc_pool(dep: Deployment) -> str:
    return next(p["address"] for p in dep.pools if (p["base"], p["quote"]) == ("WETH", "USDC"))


@pytest.mark.usefixtures("fresh_state")
def test_limit_order_fills_at_or_above_its_limit(w3: Web3, deployment: Deployment):
    fill = place_and_fill(w3, deployment, DEFAULT_KEYS[1], DEFAULT_KEYS[2])
    assert fill.amount_in == 10**18
    assert fill.amount_out >= 1900 * 10**6, "never below the limit"
    gross = fill.amount_out + fill.keeper_fee
    assert fill.keeper_fee == gross * 10 // 10_000, "10 bps keeper fee paid from output"


@pytest.mark.usefixtures("fresh_state")
def test_bad_order_is_rejected_with_a_named_error(w3: Web3, deployment: Deployment):
    trader = Sender(w3, DEFAULT_KEYS[3])
    book = bind(w3, "OrderBook", deployment.order_book)
    params = (deployment.markets["WETH/USDC"], 0, 10**18, 1, 0, 101, 0, 0, 0, 0, 0)
    with pytest.raises(DeployError, match=r"OrderBook\.KeeperFeeTooHigh\(feeBps=101, maxBps=100\)"):
        trader.call(book, "placeOrder", params)


@pytest.mark.usefixtures("fresh_state")
def test_stop_loss_waits_for_the_oracle_then_fills(w3: Web3, deployment: Deployment):
    trader = Sender(w3, DEFAULT_KEYS[1])
    keeper = Sender(w3, DEFAULT_KEYS[2])
    admin = Sender(w3, DEFAULT_KEYS[0])
    weth = bind(w3, "DevnetToken", deployment.tokens["WETH"])
    book = bind(w3, "OrderBook", deployment.order_book)
    oracle = bind(w3, "PriceOracle", deployment.oracle)
    trader.call(weth, "mint", trader.account.address, 10**18)
    trader.call(weth, "approve", book.address, 10**18)
    market = deployment.markets["WETH/USDC"]
    params = (market, STOP_LOSS, 10**18, 1700 * 10**6, 0, 10, 1800 * 10**18, 0, 0, 0, 0)
    placed = trader.call(book, "placeOrder", params)
    order_id = book.events.OrderPlaced().process_receipt(placed, errors=DISCARD)[0]["args"]["id"]
    group = (market, [_weth_usdc_pool(deployment)], [order_id], [])

    first = keeper.call(book, "executeBatch", [group], keeper.account.address)
    skipped = book.events.OrderSkipped().process_receipt(first, errors=DISCARD)
    assert [(e["args"]["id"], e["args"]["reason"]) for e in skipped] == [(order_id, NOT_TRIGGERED)]

    w3.provider.make_request("evm_increaseTime", [1])  # type: ignore[arg-type]  # one oracle write a block
    admin.call(oracle, "updatePrice", deployment.tokens["WETH"], 1790 * 10**18)
    second = keeper.call(book, "executeBatch", [group], keeper.account.address)
    armed = book.events.OrderArmed().process_receipt(second, errors=DISCARD)
    filled = book.events.OrderFilled().process_receipt(second, errors=DISCARD)
    assert armed[0]["args"]["oracleRate"] == 1790 * 10**18
    assert filled[0]["args"]["amountOut"] >= 1700 * 10**6


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(amount=st.integers(min_value=1, max_value=10**24), weth_in=st.booleans())
def test_offchain_quote_matches_the_pool_exactly(
    w3: Web3, deployment: Deployment, amount: int, weth_in: bool
):
    pool = bind(w3, "LiquidityPool", _weth_usdc_pool(deployment))
    token_in = deployment.tokens["WETH" if weth_in else "USDC"]
    r0, r1, last = pool.functions.getReserves().call()
    vol = pool.functions.volatility().call()
    t0 = pool.functions.token0().call()
    r_in, r_out = (r0, r1) if token_in == t0 else (r1, r0)
    # `volatility()` is already decayed to the current block, so the fee follows directly.
    fee = dynamic_fee(POOL_FEES["base_fee"], POOL_FEES["max_fee"], POOL_FEES["fee_per_volatility_bps"], vol)
    assert pool.functions.currentFee().call() == fee
    onchain, _ = pool.functions.getAmountOut(amount, token_in).call()
    assert amount_out(amount, r_in, r_out, fee) == onchain
    assert decayed_volatility(vol, w3.eth.get_block("latest")["timestamp"] - last, 60) <= vol


def test_deployment_prices_pools_at_the_oracle(w3: Web3, deployment: Deployment):
    pool = bind(w3, "LiquidityPool", _weth_usdc_pool(deployment))
    r0, r1, _ = pool.functions.getReserves().call()
    weth_is_0 = pool.functions.token0().call() == deployment.tokens["WETH"]
    weth, usdc = (r0, r1) if weth_is_0 else (r1, r0)
    price = Decimal(usdc) / 10**6 / (Decimal(weth) / 10**18)
    assert abs(price - 2000) < 1
    assert units(Decimal("1.5"), 6) == 1_500_000
