"""Every keeper kind end to end: the real contracts on anvil, the local relay, a real keeper loop
with its built-in strategy, blocks stepped by the test (keepers_workshop.testing)."""

from __future__ import annotations

from itertools import pairwise

import pytest
import requests
from eth_account import Account
from web3 import Web3

from keepers.store.ledger import Ledger
from keepers_workshop.devnet.anvil import anvil_key
from keepers_workshop.relay.builder import COINBASE as _COINBASE
from keepers_workshop.testing import Devnet

pytestmark = pytest.mark.integration

E18 = 10**18
USDC = 10**6
COINBASE = Web3.to_checksum_address(_COINBASE)


def _fill_blocks(devnet: Devnet, order_id: int) -> list[int]:
    return [int(e["blockNumber"]) for e in devnet.fills(order_id)]


def test_limit_order_fills_at_the_first_block_it_is_executable(keepers_devnet: Devnet):
    d = keepers_devnet
    oid = d.place("WETH/USDC", "limit", E18, 2_050 * USDC)  # above the market: not executable yet
    with d.keeper("limit-stop", "best-execution") as k:
        d.mine(2)
        k.wait_synced(d.head)
        assert k.pending_bundle_blocks() == [], "nothing sent while the limit is out of reach"
        big = d.pools("WETH", "USDC")[0]
        d.swap(big, "USDC", 150_000 * USDC)  # buys WETH: the pool now pays more than 2050
        executable = d.head
        k.wait_for_bundle(executable + 1)
        d.mine()
        k.wait_idle()
        k.wait_synced(d.head)
        status = requests.get(f"{k.api_url}/orders/{oid}", timeout=5).json()
        mine = requests.get(f"{k.api_url}/orders", params={"owner": d.traders[0].address}, timeout=5).json()
        missing = requests.get(f"{k.api_url}/orders/999999", timeout=5)
        assert k.engine is not None
        (booked,) = Ledger(k.engine).pnl()
    fills = d.fills(oid)
    assert [int(f["blockNumber"]) for f in fills] == [executable + 1]
    assert fills[0]["args"]["amountOut"] >= 2_050 * USDC, "never below the limit"

    # What the trader sees: filled, in the block after it became executable, with the fill's tx.
    assert status["status"] == "filled"
    assert (status["executable_block"], status["filled_block"], status["latency_blocks"]) == (
        executable, executable + 1, 1,
    )  # fmt: skip
    assert status["fills"][0]["tx_hash"] == "0x" + fills[0]["transactionHash"].hex().removeprefix("0x")
    assert int(status["fills"][0]["amount_out"]) == fills[0]["args"]["amountOut"]
    assert [o["order_id"] for o in mine["orders"]] == [oid]
    assert mine["next"] is None
    # ...in raw units and with the tokens' decimals: 1 WETH at 2050 USDC per WETH or better.
    assert (status["amount_in_decimal"], status["limit_price"]) == ("1", "2050")
    assert float(status["fills"][0]["price"]) >= 2050
    assert missing.status_code == 404
    assert "no order 999999" in missing.json()["error"]
    # What the operator sees: one landed action, its fee earned and its gas measured.
    assert (booked.keeper, booked.strategy, booked.included) == ("limit-stop", "best-execution", 1)
    assert booked.earned_wei > 0
    assert booked.spent_wei > 0


def test_stop_loss_fires_on_the_oracle_not_on_a_pool_spike(keepers_devnet: Devnet):
    d = keepers_devnet
    oid = d.place("WETH/USDC", "stop-loss", E18, 1_700 * USDC, trigger=1_900 * E18)
    with d.keeper("limit-stop", "best-execution") as k:
        d.swap(d.pools("WETH", "USDC")[1], "WETH", 30 * E18)  # the small pool dumps; the oracle does not move
        d.mine()
        k.wait_synced(d.head)
        assert k.pending_bundle_blocks() == []
        d.set_price("WETH", 1_890)
        crossed = d.head
        k.wait_for_bundle(crossed + 1)
        d.mine()
    assert _fill_blocks(d, oid) == [crossed + 1]


def test_take_profit_and_cancelled_orders(keepers_devnet: Devnet):
    d = keepers_devnet
    tp = d.place("WETH/USDC", "take-profit", E18, 1_900 * USDC, trigger=2_100 * E18)
    cancelled = d.place("WETH/USDC", "limit", E18, 1 * USDC, trader=1)
    d.send(d.traders[1], d.book, "cancelOrder", cancelled)
    with d.keeper("limit-stop", "best-execution") as k:
        d.move_market("WETH", 2_110)  # pools and oracle: a fill must be fair as well as crossed
        crossed = d.head
        k.wait_for_bundle(crossed + 1)
        d.mine(3)
    assert _fill_blocks(d, tp) == [crossed + 1]
    assert _fill_blocks(d, cancelled) == [], "a cancelled order is never filled"


def test_twap_slices_respect_their_interval(keepers_devnet: Devnet):
    d = keepers_devnet
    start = d.w3.eth.get_block("latest")["timestamp"]
    oid = d.place("WETH/USDC", "twap", 3 * E18, 5_400 * USDC, start=start, interval=60, slices=3)
    with d.keeper("twap", "on-schedule") as k:
        for _ in range(3):
            k.wait_for_bundle(d.head + 1)
            d.mine()
            k.wait_idle()
            d.mine(2)
            k.wait_synced(d.head)
            assert k.pending_bundle_blocks() == [], "no slice before its interval"
            d.advance_time(60)
            d.mine()
            k.wait_synced(d.head)
    fills = d.fills(oid)
    assert len(fills) == 3
    times = [d.w3.eth.get_block(f["blockNumber"])["timestamp"] for f in fills]
    assert all(b - a >= 60 for a, b in pairwise(times))
    assert d.order(oid)[0] == "0x0000000000000000000000000000000000000000", "fully filled and closed"


def test_iceberg_clips_never_exceed_the_clip_size(keepers_devnet: Devnet):
    d = keepers_devnet
    oid = d.place("WETH/USDC", "iceberg", 5 * E18, 9_500 * USDC, clip=2 * E18)
    with d.keeper("iceberg", "impact-bounded") as k:
        for _ in range(3):
            k.wait_for_bundle(d.head + 1)
            d.mine()
            # Not wait_idle: the keeper may already be sending the next clip for a block only
            # this test builds; it has handled the new head, and the loop waits for that bundle.
            k.wait_synced(d.head)
    fills = d.fills(oid)
    assert [f["args"]["amountIn"] for f in fills] == [2 * E18, 2 * E18, E18]
    assert all(f["args"]["amountOut"] * E18 >= f["args"]["amountIn"] * 1_900 * USDC for f in fills)


def _market(d: Devnet):
    from keepers_workshop.devnet.deploy import bind

    return bind(d.w3, "LendingMarket", d.deployment.lending_market)


def test_unhealthy_position_is_liquidated_in_the_next_block(keepers_devnet: Devnet):
    d = keepers_devnet
    market = _market(d)
    borrower = d.traders[2]
    d.send(borrower, d.token("WETH"), "approve", market.address, 2**256 - 1, mine=False)
    d.send(borrower, market, "depositCollateral", 10 * E18, mine=False)
    d.send(borrower, market, "borrow", 14_500 * USDC)
    keeper = d.keeper_account.address
    with d.keeper("liquidation", "max-profit") as k:
        d.mine()
        k.wait_synced(d.head)
        assert k.pending_bundle_blocks() == [], "a healthy position is left alone"
        d.set_price("WETH", 1_780)  # 10 * 1780 * 0.8 = 14,240 < 14,500
        unhealthy = d.head
        k.wait_for_bundle(unhealthy + 1)
        d.mine()
    events = market.events.Liquidated().get_logs(from_block=unhealthy + 1, to_block=unhealthy + 1)
    assert len(events) == 1
    assert d.token("WETH").functions.balanceOf(keeper).call() > 0, (
        "profit paid to the keeper, no inventory used"
    )


def test_drifted_vault_is_rebalanced_in_the_next_block(keepers_devnet: Devnet):
    from keepers_workshop.devnet.deploy import bind

    d = keepers_devnet
    vault = bind(d.w3, "RebalancingVault", d.deployment.vault)
    owner = d.traders[3]
    weth, usdc = d.token("WETH"), d.token("USDC")
    d.send(owner, weth, "approve", vault.address, 2**256 - 1, mine=False)
    d.send(owner, usdc, "approve", vault.address, 2**256 - 1, mine=False)
    d.send(owner, vault, "createBasket", [weth.address, usdc.address], [5_000, 5_000], 300, 200, 10)
    d.send(owner, vault, "deposit", 1, weth.address, 10 * E18, mine=False)
    d.send(owner, vault, "deposit", 1, usdc.address, 20_000 * USDC)
    with d.keeper("rebalancer", "drift-restoring") as k:
        d.mine()
        k.wait_synced(d.head)
        assert k.pending_bundle_blocks() == []
        for pool in d.pools("WETH", "USDC"):  # the market moves, pools first, then the oracle
            d.swap(pool, "USDC", 150_000 * USDC if pool == d.pools("WETH", "USDC")[0] else 30_000 * USDC)
        d.set_price("WETH", 2_300)
        drifted = d.head
        assert vault.functions.drift(1).call() >= 300
        k.wait_for_bundle(drifted + 1)
        d.mine()
    events = vault.events.Rebalanced().get_logs(from_block=drifted + 1, to_block=drifted + 1)
    assert len(events) == 1
    assert vault.functions.drift(1).call() < 300


def test_several_drifted_vaults_of_one_keeper_are_rebalanced_together_in_the_next_block(
    keepers_devnet: Devnet,
):
    """One signer's actions of one block go out as one bundle: three baskets drift at once and
    the keeper's three rebalances land in the same next block (as separate bundles with
    consecutive nonces, all but the first would fail a builder's simulation)."""
    from keepers_workshop.devnet.deploy import bind

    d = keepers_devnet
    vault = bind(d.w3, "RebalancingVault", d.deployment.vault)
    owner = d.traders[3]
    weth, usdc = d.token("WETH"), d.token("USDC")
    d.send(owner, weth, "approve", vault.address, 2**256 - 1, mine=False)
    d.send(owner, usdc, "approve", vault.address, 2**256 - 1, mine=False)
    for basket in (1, 2, 3):
        d.send(owner, vault, "createBasket", [weth.address, usdc.address], [5_000, 5_000], 300, 200, 10)
        d.send(owner, vault, "deposit", basket, weth.address, 10 * E18, mine=False)
        d.send(owner, vault, "deposit", basket, usdc.address, 20_000 * USDC)
    with d.keeper("rebalancer", "drift-restoring") as k:
        d.mine()
        k.wait_synced(d.head)
        for pool in d.pools("WETH", "USDC"):
            d.swap(pool, "USDC", 150_000 * USDC if pool == d.pools("WETH", "USDC")[0] else 30_000 * USDC)
        d.set_price("WETH", 2_300)
        drifted = d.head
        assert all(vault.functions.drift(b).call() >= 300 for b in (1, 2, 3))
        k.wait_for_bundle(drifted + 1)
        assert k.pending_bundle_blocks() == [drifted + 1]
        d.mine()
    events = vault.events.Rebalanced().get_logs(from_block=drifted + 1, to_block=drifted + 1)
    assert sorted(e["args"]["id"] for e in events) == [1, 2, 3], "all three in the next block"
    assert all(vault.functions.drift(b).call() < 300 for b in (1, 2, 3))


def test_oracle_follows_pools_and_ignores_one_manipulated_pool(keepers_devnet: Devnet):
    d = keepers_devnet
    weth = d.deployment.tokens["WETH"]
    with d.keeper("oracle", "median") as k:
        d.mine()
        k.wait_synced(d.head)
        assert k.pending_bundle_blocks() == [], "pools agree with the oracle: nothing due"
        d.swap(d.pools("WETH", "USDC")[1], "USDC", 200_000 * USDC)  # one pool pumped hard, alone
        d.mine()
        k.wait_synced(d.head)
        assert k.pending_bundle_blocks() == [], "one manipulated source is an outlier"
        # Both moves in one block: the keeper reacts to the block where the majority moved (a
        # block each let it update on the first alone, in the second's block, on a busy machine).
        d.swap(d.pools("WETH", "USDC")[0], "USDC", 100_000 * USDC, mine=False)
        d.swap(d.pools("WETH", "DAI")[0], "DAI", 50_000 * E18, mine=False)
        moved = d.mine()
        k.wait_for_bundle(moved + 1)
        d.mine()
        _r, price, _at = d.oracle.functions.latestRound(weth).call()
        assert 2_050 * E18 < price < 2_400 * E18, "the oracle followed the majority of pools"
        rounds = d.oracle.functions.latestRound(weth).call()[0]
        d.advance_time(3_600)  # heartbeat: due again with no move
        d.mine()
        k.wait_for_bundle(d.head + 1)
        d.mine()
        assert d.oracle.functions.latestRound(weth).call()[0] > rounds


def test_two_keepers_sharing_a_signer_fill_once_and_never_collide(keepers_devnet: Devnet, tmp_path):
    d = keepers_devnet
    shared_db = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    with (
        d.keeper("limit-stop", "best-execution", db=shared_db) as a,
        d.keeper("limit-stop", "fee-maximising", {"min_fee_bps": 0}, db=shared_db) as b,
    ):
        # Placed in one block while both run, so both see the orders at once and both act.
        terms = (d.deployment.markets["WETH/USDC"], 0, E18, 1_900 * USDC, 0, 10, 0, 0, 0, 0, 0)
        for i in range(3):
            d.send(d.traders[i % 3], d.book, "placeOrder", terms, mine=False)
        d.mine()
        oids = [
            e["args"]["id"] for e in d.book.events.OrderPlaced().get_logs(from_block=d.head, to_block=d.head)
        ]
        assert len(oids) == 3
        a.wait_synced(d.head)
        b.wait_synced(d.head)
        a.wait_for_bundle(d.head + 1)
        d.mine(2)
        a.wait_idle()
        b.wait_idle()
    for oid in oids:
        assert len(d.fills(oid)) == 1, "each order filled once"
    keeper_txs = d.w3.eth.get_transaction_count(d.keeper_account.address)
    assert keeper_txs >= 1
    from sqlmodel import Session, select

    from keepers.store.engine import make_engine
    from keepers.store.tables import TxRecord

    with Session(make_engine(shared_db)) as s:
        live = [r.nonce for r in s.exec(select(TxRecord).where(TxRecord.state != "dropped")).all()]
    assert len(live) == len(set(live)), "no two live transactions on one nonce"


def test_the_keeper_that_bids_more_wins_and_the_loser_pays_nothing(keepers_devnet: Devnet):
    d = keepers_devnet
    oid = d.place("WETH/USDC", "limit", E18, 2_050 * USDC, fee_bps=50)
    rival_key = anvil_key(8)
    rival = Account.from_key(rival_key).address
    plain_nonce = d.w3.eth.get_transaction_count(d.keeper_account.address)
    with (
        d.keeper("limit-stop", "best-execution") as plain,
        d.keeper(
            "limit-stop",
            "best-execution",
            {"builder_share_bps": 5_000, "priority_fee_gwei": 3},
            key=rival_key,
        ) as bidder,
    ):
        d.swap(d.pools("WETH", "USDC")[0], "USDC", 150_000 * USDC)  # the order becomes executable
        executable = d.head
        plain.wait_for_bundles(executable + 1, count=2)  # both keepers want it
        coinbase_before = d.w3.eth.get_balance(COINBASE)
        d.mine()
        tip = d.w3.eth.get_balance(COINBASE) - coinbase_before
        d.mine(3)  # the outbid keeper's bundle is retried for its deadline blocks, never landing
        plain.wait_idle()
        bidder.wait_idle()
        bidder.wait_synced(d.head)
        assert bidder.engine is not None
        (booked,) = Ledger(bidder.engine).pnl()
    fills = d.fills(oid)
    assert [(int(f["blockNumber"]), f["args"]["keeper"]) for f in fills] == [(executable + 1, rival)]
    receipt = d.w3.eth.get_transaction_receipt(fills[0]["transactionHash"])
    base_fee = d.w3.eth.get_block(executable + 1)["baseFeePerGas"]
    assert receipt["effectiveGasPrice"] - base_fee == 3 * 10**9, "the strategy's priority fee bid"
    assert d.w3.eth.get_transaction_count(d.keeper_account.address) == plain_nonce, (
        "the outbid keeper's batch would have filled nothing, reverted in the builder and never landed"
    )
    assert booked.earned_wei > 0
    assert tip >= booked.earned_wei * 5_000 // 10_000, "half the expected fee went to the builder"
    assert booked.spent_wei > booked.earned_wei * 5_000 // 10_000, "the ledger books the payment and gas"
