"""A trader places a limit order and a keeper fills it through the order book's batch path,
step by step with plain transactions: the contracts' own path, without the keeper runtime."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from web3 import Web3
from web3.logs import DISCARD

from keepers_workshop.devnet.deploy import Deployment, Sender, bind, units

LIMIT = 0  # OrderBook.OrderType.Limit


@dataclass(frozen=True)
class DemoFill:
    """What the demo filled."""

    order_id: int
    amount_in: int
    amount_out: int
    keeper_fee: int
    block: int
    gas_used: int


def place_and_fill(w3: Web3, dep: Deployment, trader_key: str, keeper_key: str) -> DemoFill:
    """Trader sells 1 WETH for at least 1900 USDC; the keeper fills it in one batch."""
    trader = Sender(w3, trader_key)
    keeper = Sender(w3, keeper_key)
    weth = bind(w3, "DevnetToken", dep.tokens["WETH"])
    book = bind(w3, "OrderBook", dep.order_book)
    market = dep.markets["WETH/USDC"]
    amount_in = units(Decimal(1), 18)
    trader.call(weth, "mint", trader.account.address, amount_in)
    trader.call(weth, "approve", book.address, amount_in)
    params = (market, LIMIT, amount_in, units(Decimal(1900), 6), 0, 10, 0, 0, 0, 0, 0)
    placed = trader.call(book, "placeOrder", params)
    order_id = book.events.OrderPlaced().process_receipt(placed, errors=DISCARD)[0]["args"]["id"]

    pool = next(p["address"] for p in dep.pools if (p["base"], p["quote"]) == ("WETH", "USDC"))
    group: tuple[int, list[str], list[int], list[int]] = (market, [pool], [order_id], [])
    receipt = keeper.call(book, "executeBatch", [group], keeper.account.address)
    filled = book.events.OrderFilled().process_receipt(receipt, errors=DISCARD)
    if not filled:
        skipped = [e["args"] for e in book.events.OrderSkipped().process_receipt(receipt, errors=DISCARD)]
        failed = [e["args"] for e in book.events.GroupFailed().process_receipt(receipt, errors=DISCARD)]
        raise AssertionError(f"order {order_id} not filled: skipped {skipped}, groups failed {failed}")
    fill = filled[0]["args"]
    return DemoFill(
        order_id=order_id,
        amount_in=fill["amountIn"],
        amount_out=fill["amountOut"],
        keeper_fee=fill["keeperFee"],
        block=receipt["blockNumber"],
        gas_used=receipt["gasUsed"],
    )
