"""margin-guard on a real devnet, through the `keepers_devnet` fixture that the keepers
package's pytest plugin provides."""

from __future__ import annotations

from keepers.sdk.testing import Devnet

E18 = 10**18
USDC = 10**6


def _crossed_limit_order(d: Devnet) -> int:
    # 1 WETH for at least 1,900 USDC with the market near 2,000: executable now.
    return d.place("WETH/USDC", "limit", E18, 1_900 * USDC, fee_bps=30)


def test_fills_when_the_fee_pays_for_the_gas(keepers_devnet: Devnet):
    d = keepers_devnet
    oid = _crossed_limit_order(d)
    with d.keeper("limit-stop", "margin-guard", {"min_margin": 1.0}) as k:
        target = k.wait_for_bundle(d.head + 1)
        d.mine()
    fills = d.fills(oid)
    assert [int(f["blockNumber"]) for f in fills] == [target]
    assert fills[0]["args"]["amountOut"] >= 1_900 * USDC


def test_leaves_orders_whose_fee_does_not_cover_the_margin(keepers_devnet: Devnet):
    d = keepers_devnet
    oid = _crossed_limit_order(d)
    with d.keeper("limit-stop", "margin-guard", {"min_margin": 10_000.0}) as k:
        d.mine(2)
        k.wait_synced(d.head)
        assert k.pending_bundle_blocks() == []
    assert d.fills(oid) == []
