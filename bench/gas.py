"""Gas of the platform's operations on one anvil, next to Uniswap V2's pair from its npm artifacts.

Every figure is the `gasUsed` of a real transaction receipt (21,000 base and calldata
included, refunds applied), each in its own block after 12 seconds, as on mainnet. Our pool
and the V2 pair get the same reserves and the same trade.

    python -m bench.gas            # writes bench/results/gas.{json,md}
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from web3 import Web3
from web3.contract import Contract
from web3.logs import DISCARD

from bench.common import RESULTS, machine, write_results
from keepers.toolchain import REPO_ROOT
from keepers_workshop.devnet.anvil import DEFAULT_KEYS, Anvil
from keepers_workshop.devnet.deploy import Deployment, Sender, bind, deploy_platform, units

LIMIT, STOP_LOSS, TWAP = 0, 1, 3
FLOOR_PER_ORDER_ABOVE_SWAP = 30_000


@dataclass
class Row:
    operation: str
    gas: int
    uniswap_v2: int | None = None
    note: str = ""


class Bench:
    def __init__(self, w3: Web3, dep: Deployment) -> None:
        self.w3 = w3
        self.dep = dep
        self.admin = Sender(w3, DEFAULT_KEYS[0])
        self.keeper = Sender(w3, DEFAULT_KEYS[2])
        self.book = bind(w3, "OrderBook", dep.order_book)
        self.weth = bind(w3, "DevnetToken", dep.tokens["WETH"])
        self.usdc = bind(w3, "DevnetToken", dep.tokens["USDC"])
        self.oracle = bind(w3, "PriceOracle", dep.oracle)
        self.market = dep.markets["WETH/USDC"]

    def next_block(self) -> None:
        self.w3.provider.make_request("evm_increaseTime", [12])  # type: ignore[arg-type]

    def fresh_pool(self, name: str) -> Contract:
        """A WETH/USDC pool of ours with 1000 WETH : 2,000,000 USDC, listed in the book."""
        t0, t1 = sorted([self.weth.address, self.usdc.address], key=lambda a: int(a, 16))
        pool = self.admin.deploy("LiquidityPool", t0, t1, 3000, 10_000, 50, 60)
        self._seed(pool.address)
        self.admin.call(pool, "mint", self.admin.account.address)
        self.admin.call(self.book, "setPool", pool.address, True)
        if name != "swap":
            self.warm(pool)
        return pool

    def fresh_v2_pair(self) -> Contract:
        """Uniswap V2's own pair, from @uniswap/v2-core's compiled artifacts, same reserves."""
        build = REPO_ROOT / "node_modules" / "@uniswap" / "v2-core" / "build"
        fac_art = json.loads((build / "UniswapV2Factory.json").read_text())
        pair_art = json.loads((build / "UniswapV2Pair.json").read_text())
        factory = self.admin.deploy_code(
            fac_art["abi"],
            "0x" + fac_art["bytecode"],
            self.admin.account.address,
            what="deploy UniswapV2Factory",
        )
        self.admin.call(factory, "createPair", self.weth.address, self.usdc.address)
        address = factory.functions.getPair(self.weth.address, self.usdc.address).call()
        pair: Contract = self.w3.eth.contract(address=address, abi=pair_art["abi"])
        self._seed(pair.address)
        self.admin.call(pair, "mint", self.admin.account.address)
        return pair

    def _seed(self, pool: str) -> None:
        self.admin.call(self.weth, "mint", pool, units(Decimal(1000), 18))
        self.admin.call(self.usdc, "mint", pool, units(Decimal(2_000_000), 6))

    def swap_gas(self, pool: Contract, amount_in: int, out: int) -> int:
        """Pays WETH into the pool, then measures the swap call alone (V2's calling pattern)."""
        trader = self.admin.account.address
        self.admin.call(self.weth, "mint", trader, amount_in)
        self.admin.call(self.weth, "transfer", pool.address, amount_in)
        weth_is_0 = int(self.weth.address, 16) < int(self.usdc.address, 16)
        out0, out1 = (0, out) if weth_is_0 else (out, 0)
        self.next_block()
        return int(self.admin.call(pool, "swap", out0, out1, trader, b"")["gasUsed"])

    def warm(self, pool: Contract) -> None:
        """One small swap in an earlier block, so price accumulators are non-zero as on any live pool."""
        self.next_block()
        self.swap_gas(pool, 10**15, 1_000_000)

    def place(self, trader: Sender, kind: int, amount_in: int, min_out: int, **extra: int) -> int:
        self.admin.call(self.weth, "mint", trader.account.address, amount_in)
        trader.call(self.weth, "approve", self.book.address, 2**256 - 1)
        params = (
            self.market,
            kind,
            amount_in,
            min_out,
            0,
            10,
            extra.get("trigger", 0),
            extra.get("start", 0),
            extra.get("interval", 0),
            extra.get("slices", 0),
            0,  # the market's fairness tolerance
        )
        receipt = trader.call(self.book, "placeOrder", params)
        return int(self.book.events.OrderPlaced().process_receipt(receipt, errors=DISCARD)[0]["args"]["id"])

    def fill_gas(self, pool: Contract, ids: list[int]) -> int:
        self.next_block()
        # What the built-in strategies send: executeBatchAtLeast(..., 1).
        receipt = self.keeper.call(
            self.book,
            "executeBatchAtLeast",
            [(self.market, [pool.address], ids, [])],
            self.keeper.account.address,
            1,
        )
        filled = self.book.events.OrderFilled().process_receipt(receipt, errors=DISCARD)
        assert len(filled) == len(ids), f"expected {len(ids)} fills, got {len(filled)}"
        return int(receipt["gasUsed"])


def run() -> dict[str, Any]:
    rows: list[Row] = []
    with Anvil(extra_args=("--accounts", "20")) as chain:
        w3 = Web3(Web3.HTTPProvider(chain.url))
        dep = deploy_platform(w3, DEFAULT_KEYS[0])
        b = Bench(w3, dep)
        traders = [Sender(w3, k) for k in DEFAULT_KEYS[1:5]]

        ours = b.fresh_pool("swap")
        v2 = b.fresh_v2_pair()
        b.warm(ours)
        b.warm(v2)
        quote, _ = ours.functions.getAmountOut(10**18, b.weth.address).call()
        ours_gas = b.swap_gas(ours, 10**18, quote)
        v2_gas = b.swap_gas(v2, 10**18, quote)
        rows.append(Row("swap 1 WETH -> USDC (pair call, input pre-paid)", ours_gas, v2_gas, "same trade"))
        swap_ref = rows[-1].gas

        # Orders are placed by traders who already hold the output token, as most do; a fill to an
        # empty balance costs the ERC-20's 20k zero-to-nonzero write on top.
        for t in traders:
            b.admin.call(b.usdc, "mint", t.account.address, 1)

        pool1 = b.fresh_pool("single")
        one = b.place(traders[0], LIMIT, 10**18, 1900 * 10**6)
        single = b.fill_gas(pool1, [one])
        rows.append(Row("limit fill, single order", single, note=f"{single - swap_ref:,} above the swap"))

        # The same fill in a market without the oracle bound (tolerance 10,000): the difference
        # is the fairness check, reading two oracle prices that no earlier call warmed.
        b.admin.call(b.book, "setMarketTolerance", b.market, 10_000)
        pool_lo = b.fresh_pool("limit-only")
        lo = b.place(traders[0], LIMIT, 10**18, 1900 * 10**6)
        limit_only = b.fill_gas(pool_lo, [lo])
        b.admin.call(b.book, "setMarketTolerance", b.market, 300)
        note = f"fairness check: {single - limit_only:,} (cold oracle account and two price slots)"
        rows.append(Row("limit fill, single order, market without oracle bound", limit_only, note=note))

        pool10 = b.fresh_pool("batch")
        ids = [b.place(traders[i % 4], LIMIT, 10**18, 1900 * 10**6) for i in range(10)]
        batch = b.fill_gas(pool10, ids)
        per_order = (batch - swap_ref) // 10
        note = f"{batch // 10:,} per order; {per_order:,} per order above the swap"
        rows.append(Row("limit fill, batch of 10 (one shared swap)", batch, note=note))

        pool_t = b.fresh_pool("twap")
        latest = w3.eth.get_block("latest")["timestamp"]
        twap = b.place(traders[1], TWAP, 10 * 10**18, 19_000 * 10**6, start=latest, interval=60, slices=10)
        rows.append(Row("TWAP slice (1 of 10)", b.fill_gas(pool_t, [twap])))

        pool_s = b.fresh_pool("stop")
        stop = b.place(traders[2], STOP_LOSS, 10**18, 1700 * 10**6, trigger=1950 * 10**18)
        b.next_block()  # the oracle takes one write per asset per block (per second)
        b.admin.call(b.oracle, "updatePrice", b.weth.address, 1940 * 10**18)
        rows.append(Row("stop-loss fill (arms on the oracle and fills)", b.fill_gas(pool_s, [stop])))

        b.next_block()
        due = b.admin.call(b.oracle, "updatePrice", b.weth.address, 1800 * 10**18)["gasUsed"]
        b.next_block()
        not_due = b.admin.call(b.oracle, "updatePrice", b.weth.address, 1801 * 10**18)["gasUsed"]
        rows.append(Row("oracle update (due)", int(due)))
        rows.append(Row("oracle update (not due: early return)", int(not_due)))

        rows.extend(_lending_rows(w3, b, dep))
        rows.append(_vault_row(w3, b, dep))

    per_order_above_swap = (batch - swap_ref) // 10
    checks = {
        "swap_not_above_uniswap_v2": rows[0].gas <= (rows[0].uniswap_v2 or 0),
        "batch10_per_order_above_swap": per_order_above_swap,
        "batch10_per_order_floor": FLOOR_PER_ORDER_ABOVE_SWAP,
        "batch10_within_floor": per_order_above_swap <= FLOOR_PER_ORDER_ABOVE_SWAP,
    }
    return {"machine": machine(), "rows": [r.__dict__ for r in rows], "checks": checks}


def _lending_rows(w3: Web3, b: Bench, dep: Deployment) -> list[Row]:
    market = bind(w3, "LendingMarket", dep.lending_market)
    borrower = Sender(w3, DEFAULT_KEYS[4])
    b.next_block()  # the oracle takes one write per asset per block (per second)
    b.admin.call(b.oracle, "updatePrice", b.weth.address, 2000 * 10**18)
    b.admin.call(b.weth, "mint", borrower.account.address, 20 * 10**18)
    borrower.call(b.weth, "approve", market.address, 2**256 - 1)
    borrower.call(market, "depositCollateral", 20 * 10**18)
    borrower.call(market, "borrow", 29_000 * 10**6)
    b.next_block()
    b.admin.call(b.oracle, "updatePrice", b.weth.address, 1780 * 10**18)
    b.admin.call(b.usdc, "mint", b.admin.account.address, 100_000 * 10**6)
    b.admin.call(b.usdc, "approve", market.address, 2**256 - 1)
    b.next_block()
    direct = b.admin.call(
        market, "liquidate", borrower.account.address, 2_000 * 10**6, b.admin.account.address
    )
    liquidator = bind(w3, "FlashLiquidator", dep.flash_liquidator)
    pool = b.fresh_pool("flash")
    b.next_block()
    flash = b.keeper.call(
        liquidator, "liquidate", pool.address, market.address, borrower.account.address, 2_000 * 10**6, 0,
        b.keeper.account.address,
    )  # fmt: skip
    return [
        Row("liquidation (liquidator pays from inventory)", int(direct["gasUsed"])),
        Row("liquidation funded by a flash swap", int(flash["gasUsed"]), note="no keeper inventory"),
    ]


def _vault_row(w3: Web3, b: Bench, dep: Deployment) -> Row:
    vault = bind(w3, "RebalancingVault", dep.vault)
    owner = Sender(w3, DEFAULT_KEYS[3])
    pool = b.fresh_pool("vault")
    b.admin.call(vault, "setPool", pool.address, True)
    b.next_block()  # the oracle takes one write per asset per block (per second)
    b.admin.call(b.oracle, "updatePrice", b.weth.address, 2000 * 10**18)
    b.admin.call(b.weth, "mint", owner.account.address, 10 * 10**18)
    b.admin.call(b.usdc, "mint", owner.account.address, 12_000 * 10**6)
    owner.call(b.weth, "approve", vault.address, 2**256 - 1)
    owner.call(b.usdc, "approve", vault.address, 2**256 - 1)
    receipt = owner.call(vault, "createBasket", [b.weth.address, b.usdc.address], [5000, 5000], 300, 300, 10)
    basket = vault.events.BasketCreated().process_receipt(receipt, errors=DISCARD)[0]["args"]["id"]
    owner.call(vault, "deposit", basket, b.weth.address, 10 * 10**18)
    owner.call(vault, "deposit", basket, b.usdc.address, 12_000 * 10**6)
    b.next_block()
    gas = b.keeper.call(vault, "rebalance", basket, [(pool.address, b.weth.address, 2 * 10**18)])["gasUsed"]
    return Row("vault rebalance (one trade, 2-token basket)", int(gas))


def to_markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        f"Gas per transaction (receipt gasUsed) on anvil, {m['date']}, {m['cores']} cores, "
        f"{m['anvil']}. Command: `./dev bench gas`.",
        "",
        "| operation | ours | Uniswap V2 | note |",
        "| --- | ---: | ---: | --- |",
    ]
    for r in result["rows"]:
        v2 = f"{r['uniswap_v2']:,}" if r["uniswap_v2"] else ""
        lines.append(f"| {r['operation']} | {r['gas']:,} | {v2} | {r['note']} |")
    c = result["checks"]
    lines += [
        "",
        f"Floors: swap at most Uniswap V2's: **{'met' if c['swap_not_above_uniswap_v2'] else 'MISSED'}**; "
        f"batch of 10 at most {c['batch10_per_order_floor']:,} gas per order above its swap: "
        f"**{c['batch10_per_order_above_swap']:,}** "
        f"({'met' if c['batch10_within_floor'] else 'MISSED'}).",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if a floor is missed")
    parser.add_argument(
        "--results-dir", type=Path, default=RESULTS, help="where to write gas.json and gas.md"
    )
    args = parser.parse_args()
    result = run()
    md = to_markdown(result)
    path = write_results("gas", result, md, args.results_dir)
    print(md)
    print(f"written: {path}")
    ok = result["checks"]["swap_not_above_uniswap_v2"] and result["checks"]["batch10_within_floor"]
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    raise SystemExit(main())
