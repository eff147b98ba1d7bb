"""The devnet's referee: follows every block on its own, independent of the keepers, and
judges them. For each open order it asks the chain itself whether the order could be filled
on this block's state (an eth_call of executeBatchAtLeast for that order alone, through each
direct pool: the checker-per-order design, used here as ground truth), and when the order is
filled it measures the delay in blocks and checks the trader's limit.

Latency: an order executable on the state of block E can be filled at best in block E+1, so
latency = fill block - E, and 1 is the best there is. An order executable at E that the market
takes out of reach again before any fill is "lapsed", not missed; one that stays executable
and is not filled in the next block is late (or, at the end, unfilled).
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import requests
from web3 import Web3

from keepers.chain.artifacts import load_artifact
from keepers.chain.events import EventDecoder
from keepers.devnet.deploy import Deployment, bind
from keepers.devnet.public import chain_id_cached

KIND_NAMES = ("limit", "stop-loss", "take-profit", "twap", "iceberg")
#: A remainder under 1/DUST_DIVISOR of the order is dust: not judged (no fee on it pays a fill).
DUST_DIVISOR = 10_000
#: An order still open this many blocks after it became executable is left unfilled: a busy
#: machine may make a fill late (judged as such), but four blocks is not late, it is lost.
UNFILLED_AFTER = 4


@dataclass
class TrackedOrder:
    order_id: int
    owner: str
    kind: str
    market: int
    amount_in: int
    min_out: int
    placed_block: int
    remaining: int
    executable_since: int | None = None
    checks_executable: int = 0  # consecutive executable checks in this episode
    #: executeBatchAtLeast calldata for this order alone through each pool of its pair.
    calls: list[str] = field(default_factory=list)


@dataclass
class Miss:
    order_id: int
    kind: str
    executable_block: int
    filled_block: int | None
    why: str


@dataclass
class BlockStats:
    number: int
    fills: int = 0
    open_by_kind: Counter[str] = field(default_factory=Counter)


@dataclass
class Summary:
    blocks: int = 0
    placed: Counter[str] = field(default_factory=Counter)
    orders_filled: set[int] = field(default_factory=set)
    fills: int = 0
    latencies: list[int] = field(default_factory=list)
    unseen_fills: int = 0  # filled in the block they became due (TWAP slices), before any check
    gas_per_fill: list[int] = field(default_factory=list)
    below_limit: list[int] = field(default_factory=list)
    lapsed: int = 0
    misses: list[Miss] = field(default_factory=list)
    dust: list[int] = field(default_factory=list)
    cancelled: int = 0
    liquidations: int = 0
    rebalances: int = 0
    oracle_updates: int = 0

    @property
    def median_latency(self) -> float | None:
        return statistics.median(self.latencies) if self.latencies else None

    @property
    def worst_latency(self) -> int | None:
        return max(self.latencies) if self.latencies else None

    @property
    def median_gas_per_fill(self) -> int | None:
        return int(statistics.median(self.gas_per_fill)) if self.gas_per_fill else None

    def as_json(self) -> dict[str, Any]:
        return {
            "blocks": self.blocks,
            "orders_placed": dict(self.placed),
            "orders_placed_total": sum(self.placed.values()),
            "orders_filled": len(self.orders_filled),
            "fills": self.fills,
            "median_latency_blocks": self.median_latency,
            "latency_histogram": {str(k): v for k, v in sorted(Counter(self.latencies).items())},
            "worst_latency_blocks": self.worst_latency,
            "fills_due_in_their_block": self.unseen_fills,
            "median_gas_per_fill": self.median_gas_per_fill,
            "fills_below_limit": self.below_limit,
            "lapsed_before_fill": self.lapsed,
            "dust_remainders": self.dust,
            "unfilled_executable": [m.__dict__ for m in self.misses if m.filled_block is None],
            "late_fills": [m.__dict__ for m in self.misses if m.filled_block is not None],
            "cancelled": self.cancelled,
            "liquidations": self.liquidations,
            "rebalances": self.rebalances,
            "oracle_updates": self.oracle_updates,
        }


class FillMonitor:
    def __init__(self, url: str, dep: Deployment) -> None:
        self.url = url
        self.session = requests.Session()  # for the batches of checks
        self.w3 = w3 = Web3(chain_id_cached(url))
        self.dep = dep
        self.book = bind(w3, "OrderBook", dep.order_book)
        self.me = Web3.to_checksum_address("0x" + "5e" * 20)  # a neutral caller for eth_call
        self.decoder = EventDecoder(
            [
                (dep.order_book, load_artifact("OrderBook")),
                (dep.lending_market, load_artifact("LendingMarket")),
                (dep.vault, load_artifact("RebalancingVault")),
                (dep.oracle, load_artifact("PriceOracle")),
            ]
        )
        tokens_of = {m: tuple(self.book.functions.getMarket(m).call()[:2]) for m in dep.markets.values()}
        self.pools_of: dict[int, list[str]] = {}
        #: Markets that trade through the same pools (a pair's two directions) share a key.
        self.pair_of: dict[int, frozenset[str]] = {}
        for m, (tin, tout) in tokens_of.items():
            pair = {tin.lower(), tout.lower()}
            self.pair_of[m] = frozenset(pair)
            self.pools_of[m] = [
                p["address"]
                for p in dep.pools
                if {dep.tokens[p["base"]].lower(), dep.tokens[p["quote"]].lower()} == pair
            ]
        self.orders: dict[int, TrackedOrder] = {}
        self.summary = Summary()
        self.last_block = int(w3.eth.block_number)
        self.recent: list[BlockStats] = []
        self._gas: dict[str, tuple[int, int]] = {}  # tx hash -> (gas used, fills in it)
        self._pair_fills: Counter[tuple[frozenset[str], int]] = Counter()  # (pair, block) -> fills

    def open_orders(self) -> dict[int, str]:
        return {o.order_id: o.owner for o in self.orders.values()}

    def open_by_kind(self) -> Counter[str]:
        return Counter(o.kind for o in self.orders.values())

    def poll(self) -> list[BlockStats]:
        """Processes every block mined since the last call."""
        head = int(self.w3.eth.block_number)
        out = []
        while self.last_block < head:
            self.last_block += 1
            out.append(self._block(self.last_block))
        self.recent = (self.recent + out)[-30:]
        return out

    def _block(self, number: int) -> BlockStats:
        stats = BlockStats(number)
        self.summary.blocks += 1
        logs = self.w3.eth.get_logs(
            {
                "fromBlock": number,
                "toBlock": number,
                "address": [Web3.to_checksum_address(a) for a in self.decoder.addresses],
            }
        )
        for lg in logs:
            ev = self.decoder.decode(dict(lg))
            if ev is None:
                continue
            self._event(ev.name, ev.args, number, ev.tx_hash, stats)
        judged = [o for o in self.orders.values() if not self._dust(o)]
        executable = self._executable(judged, number)
        for order in judged:
            self._judge(order, number, order.order_id in executable)
        stats.open_by_kind = self.open_by_kind()
        return stats

    def _event(self, name: str, a: dict[str, Any], number: int, tx_hash: str, stats: BlockStats) -> None:
        s = self.summary
        if name == "OrderPlaced":
            p = a["params"]
            kind = KIND_NAMES[int(p["kind"])]
            self.orders[int(a["id"])] = TrackedOrder(
                int(a["id"]), str(a["owner"]).lower(), kind, int(a["market"]), int(p["amountIn"]),
                int(p["minAmountOut"]), number, int(p["amountIn"]),
            )  # fmt: skip
            s.placed[kind] += 1
        elif name == "OrderFilled":
            self._fill(int(a["id"]), a, number, tx_hash)
            stats.fills += 1
        elif name in ("OrderCancelled", "OrderExpired"):
            order = self.orders.pop(int(a["id"]), None)
            if order is not None and name == "OrderCancelled":
                s.cancelled += 1
        elif name == "Liquidated":
            s.liquidations += 1
        elif name == "Rebalanced":
            s.rebalances += 1
        elif name == "PriceUpdated":
            s.oracle_updates += 1

    def _fill(self, order_id: int, a: dict[str, Any], number: int, tx_hash: str) -> None:
        s = self.summary
        order = self.orders.get(order_id)
        s.fills += 1
        s.orders_filled.add(order_id)
        if tx_hash not in self._gas:
            receipt = self.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
            fills = sum(
                1
                for lg in receipt["logs"]
                if (e := self.decoder.decode(dict(lg))) and e.name == "OrderFilled"
            )
            self._gas[tx_hash] = (int(receipt["gasUsed"]), max(fills, 1))
        gas, n = self._gas[tx_hash]
        s.gas_per_fill.append(gas // n)
        if order is None:
            return
        self._pair_fills[(self.pair_of[order.market], number)] += 1
        fill_in, net = int(a["amountIn"]), int(a["amountOut"])
        if net * order.amount_in < fill_in * order.min_out:
            s.below_limit.append(order_id)
        if order.executable_since is None:
            s.unseen_fills += 1
        else:
            latency = number - order.executable_since
            s.latencies.append(latency)
            if latency > 1:
                since = order.executable_since
                pair = self.pair_of[order.market]
                others = sum(self._pair_fills[(pair, b)] for b in range(since + 1, number))
                why = f"executable from block {since}, filled {latency} blocks later"
                if others:
                    why += f"; {others} other fill(s) on its pair's pools in between (shared liquidity)"
                s.misses.append(Miss(order_id, order.kind, since, number, why))
        order.remaining = int(a["remaining"])
        order.executable_since, order.checks_executable = None, 0
        if order.remaining == 0:
            del self.orders[order_id]

    def _calls(self, order: TrackedOrder) -> list[str]:
        if not order.calls:
            groups: list[tuple[int, list[str], list[int], list[int]]] = [
                (order.market, [Web3.to_checksum_address(pool)], [order.order_id], [])
                for pool in self.pools_of.get(order.market, [])
            ]
            order.calls = [self.book.encode_abi("executeBatchAtLeast", [[g], self.me, 1]) for g in groups]
        return order.calls

    def _executable(self, orders: list[TrackedOrder], number: int) -> set[int]:
        """The orders that could be filled alone on block `number`'s state through some pool:
        one eth_call per order and pool, all in one JSON-RPC batch. A revert (TooFewFilled,
        ...) means "not now"."""
        batch: list[dict[str, Any]] = []
        whose: list[int] = []
        for order in orders:
            for data in self._calls(order):
                params = [{"from": self.me, "to": self.book.address, "data": data}, hex(number)]
                batch.append({"jsonrpc": "2.0", "id": len(batch), "method": "eth_call", "params": params})
                whose.append(order.order_id)
        if not batch:
            return set()
        answers = self.session.post(self.url, json=batch, timeout=30).json()
        if not isinstance(answers, list):
            raise RuntimeError(f"the node refused a batch of eth_calls: {answers}")
        return {whose[int(a["id"])] for a in answers if "result" in a}

    def _dust(self, order: TrackedOrder) -> bool:
        if order.remaining * DUST_DIVISOR >= order.amount_in:
            return False
        # A remainder worth less than any fill's gas: keepers rightly leave it.
        if order.order_id not in self.summary.dust:
            self.summary.dust.append(order.order_id)
        order.executable_since = None
        return True

    def _judge(self, order: TrackedOrder, number: int, executable: bool) -> None:
        if executable:
            if order.executable_since is None:
                order.executable_since = number
            order.checks_executable += 1
        elif order.executable_since is not None:
            self.summary.lapsed += 1  # out of reach again before anyone could fill it
            order.executable_since, order.checks_executable = None, 0

    def judge_from(self, block: int) -> None:
        """Restarts the clock of every executable open order at `block` (keepers restarted)."""
        for o in self.orders.values():
            if o.executable_since is not None and o.executable_since < block:
                o.executable_since = block

    def awaiting_verdict(self) -> bool:
        """Some open order is executable but not yet for UNFILLED_AFTER blocks."""
        return any(
            o.executable_since is not None and self.last_block - o.executable_since < UNFILLED_AFTER
            for o in self.orders.values()
        )

    def finish(self) -> Summary:
        """Orders executable for UNFILLED_AFTER blocks and still open are misses."""
        for order in self.orders.values():
            since = order.executable_since
            if since is not None and self.last_block - since >= UNFILLED_AFTER:
                self.summary.misses.append(
                    Miss(order.order_id, order.kind, since, None,
                         f"executable since block {since}, still open at {self.last_block}")
                )  # fmt: skip
        return self.summary
