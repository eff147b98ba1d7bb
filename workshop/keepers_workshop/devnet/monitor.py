"""The devnet's referee: follows every block on its own, independent of the keepers, and
judges them. For each open order it asks the chain itself whether the order could be filled
on this block's state (an eth_call of executeBatchAtLeast for that order alone, through each
direct pool: the checker-per-order design, used here as ground truth), and when the order is
filled it measures the delay in blocks and checks the trader's limit.

Latency: an order executable on the state of block E can be filled at best in block E+1, so
latency = fill block - E, and 1 is the best there is. An order executable at E that the market
takes out of reach again before any fill is "lapsed", not missed; one that stays executable
and is not filled in the next block is late (or, at the end, unfilled).

Reorgs: every read of a block is tied to its hash, and the referee keeps its state after each
of the last REORG_WINDOW blocks. When a block it judged is no longer on the chain (a reorg, or
a node rolled back to a shorter chain), it goes back to the fork point and judges the new
branch from there: fills reorged out no longer count, and an order executable on the new
branch has UNFILLED_AFTER blocks from the head the keepers first see it at (the replaced
blocks were mined at once, with no chance to fill in them).
"""

from __future__ import annotations

import copy
import statistics
from collections import Counter, deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, fields, replace
from typing import Any

import requests
from web3 import Web3
from web3.exceptions import Web3RPCError

from keepers.chain.artifacts import load_artifact
from keepers.chain.events import EventDecoder
from keepers_workshop.devnet.deploy import Deployment, bind
from keepers_workshop.devnet.public import chain_id_cached

KIND_NAMES = ("limit", "stop-loss", "take-profit", "twap", "iceberg")
#: A remainder under 1/DUST_DIVISOR of the order is dust: not judged (no fee on it pays a fill).
DUST_DIVISOR = 10_000
#: An order still open this many blocks after it became executable is left unfilled: a busy
#: machine may make a fill late (judged as such), but four blocks is not late, it is lost.
UNFILLED_AFTER = 4
#: Blocks whose judged state the referee keeps: the deepest reorg it can follow.
REORG_WINDOW = 128


class ChainMoved(Exception):
    """A block being read left the chain (reorg or rollback): its reads are undone."""


@dataclass(frozen=True)
class Reorg:
    """A reorg the referee followed: judged blocks after `fork` were replaced; seen at `head`."""

    head: int
    fork: int
    depth: int
    fills_undone: int


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
    placed_by_block: Counter[int] = field(default_factory=Counter)
    #: WETH's price in USDC on the first WETH/USDC pool after each block: the market moving.
    prices: dict[int, float] = field(default_factory=dict)
    reorgs: list[Reorg] = field(default_factory=list)

    def copy(self) -> Summary:
        """A copy to go back to after a reorg: each container copied, its items never
        change once added (shallow copies keep a per-block snapshot cheap on a long run)."""
        return replace(self, **{f.name: copy.copy(getattr(self, f.name)) for f in fields(self)})

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
            "orders_placed_by_block": {str(b): n for b, n in sorted(self.placed_by_block.items())},
            "price_by_block": {str(b): p for b, p in sorted(self.prices.items())},
            "reorgs_seen": len(self.reorgs),
            "reorgs": [r.__dict__ for r in self.reorgs],
            "fills_reorged_out": sum(r.fills_undone for r in self.reorgs),
        }


@dataclass
class _Judged:
    """A block the referee judged: its hash, and the referee's state after it."""

    number: int
    hash: str
    orders: dict[int, TrackedOrder]
    summary: Summary
    pair_fills: Counter[tuple[frozenset[str], int]]


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
        price_pool = next((p for p in dep.pools if (p["base"], p["quote"]) == ("WETH", "USDC")), None)
        #: (pool, WETH is its token0, raw reserve ratio -> USDC per WETH) for Summary.prices
        self._price_pool: tuple[str, bool, float] | None = None
        if price_pool is not None:
            pool = bind(w3, "LiquidityPool", price_pool["address"])
            weth_first = str(pool.functions.token0().call()).lower() == dep.tokens["WETH"].lower()
            scale = 10.0 ** (dep.decimals["WETH"] - dep.decimals["USDC"])
            self._price_pool = (pool.address, weth_first, scale)
        self.orders: dict[int, TrackedOrder] = {}
        self.summary = Summary()
        self.last_block = int(w3.eth.block_number)
        self.recent: list[BlockStats] = []
        self._gas: dict[str, tuple[int, int]] = {}  # tx hash -> (gas used, fills in it)
        self._pair_fills: Counter[tuple[frozenset[str], int]] = Counter()  # (pair, block) -> fills
        start = w3.eth.get_block(self.last_block)["hash"].to_0x_hex()
        self._judged: deque[_Judged] = deque([self._snapshot(self.last_block, start)], maxlen=REORG_WINDOW)
        #: After a reorg: the head it was seen at, from which executable orders are judged.
        self._rejudge_at: int | None = None
        #: Called with each reorg followed (the devnet's users re-read their nonces).
        self.on_reorg: list[Callable[[Reorg], None]] = []

    def open_orders(self) -> dict[int, str]:
        # Called from the scheduler's threads: list() copies the values in one step.
        return {o.order_id: o.owner for o in list(self.orders.values())}

    def open_by_kind(self) -> Counter[str]:
        return Counter(o.kind for o in self.orders.values())

    def poll(self) -> list[BlockStats]:
        """Processes every block mined since the last call, first going back to the fork
        point if a block it judged was replaced."""
        head = int(self.w3.eth.block_number)
        out = []
        try:
            self._follow_reorg(head)
            while self.last_block < head:
                out.append(self._block(self.last_block + 1))
        except ChainMoved:
            pass  # the chain changed while a block was read; the next poll finds the fork
        self.recent = (self.recent + out)[-30:]
        return out

    def _snapshot(self, number: int, block_hash: str) -> _Judged:
        orders = {k: copy.copy(o) for k, o in self.orders.items()}
        return _Judged(number, block_hash, orders, self.summary.copy(), self._pair_fills.copy())

    def _restore(self, judged: _Judged) -> None:
        self.orders = {k: copy.copy(o) for k, o in judged.orders.items()}
        self.summary = judged.summary.copy()
        self._pair_fills = judged.pair_fills.copy()
        self.last_block = judged.number

    def _hash_at(self, number: int) -> str | None:
        """The canonical block's hash at `number`; None past the head (a shortened chain)."""
        answer = self.w3.provider.make_request("eth_getBlockByNumber", [hex(number), False])  # type: ignore[arg-type]
        if "error" in answer:
            raise Web3RPCError(f"eth_getBlockByNumber {number}: {answer['error']}")
        block = answer.get("result")
        return str(block["hash"]) if block else None

    def _follow_reorg(self, head: int) -> None:
        """If the last judged block left the chain, goes back to the newest judged block still
        on it (the fork point); the blocks after it are judged again as the new branch."""
        last = self._judged[-1]
        if self._hash_at(last.number) == last.hash:
            return
        fork = next((j for j in list(self._judged)[-2::-1] if self._hash_at(j.number) == j.hash), None)
        if fork is None:
            raise RuntimeError(f"a reorg deeper than the {REORG_WINDOW} blocks the referee keeps")
        reorg = Reorg(head, fork.number, last.number - fork.number, self.summary.fills - fork.summary.fills)
        reorgs = [*self.summary.reorgs, reorg]  # not undone by going back
        while self._judged[-1] is not fork:
            self._judged.pop()
        self._restore(fork)
        self.summary.reorgs = reorgs
        self._rejudge_at = head
        self.recent = [b for b in self.recent if b.number <= fork.number]
        self._gas.clear()  # a transaction mined again on the new branch may use other gas
        for callback in self.on_reorg:
            callback(reorg)

    def _block(self, number: int) -> BlockStats:
        """Judges block `number` on top of the last judged block; ChainMoved (its reads
        undone) if that block or this one left the chain meanwhile."""
        answer = self.w3.provider.make_request("eth_getBlockByNumber", [hex(number), False])  # type: ignore[arg-type]
        header = answer.get("result")
        if not header or header["parentHash"] != self._judged[-1].hash:
            raise ChainMoved(f"block {number - 1} or {number} was replaced")
        block_hash = str(header["hash"])
        try:
            stats = self._judge_block(number, block_hash)
        except (ChainMoved, Web3RPCError):
            self._restore(self._judged[-1])
            if self._hash_at(number) == block_hash:
                raise  # the block is still there: a real error, not a reorg
            raise ChainMoved(f"block {number} was replaced while it was read") from None
        if self._rejudge_at is not None and number >= self._rejudge_at:
            # Blocks up to the reorg's head were mined at once: the keepers had no block to
            # fill in, so the clock of an order executable on the new branch starts here.
            self.judge_from(number)
            self._rejudge_at = None
        self.last_block = number
        self._judged.append(self._snapshot(number, block_hash))
        return stats

    def _judge_block(self, number: int, block_hash: str) -> BlockStats:
        """Every read is of the block with this hash: logs, receipts and the checks."""
        stats = BlockStats(number)
        self.summary.blocks += 1
        logs = self.w3.eth.get_logs(
            {
                "blockHash": block_hash,  # type: ignore[typeddict-item]
                "address": [Web3.to_checksum_address(a) for a in self.decoder.addresses],
            }
        )
        for lg in logs:
            ev = self.decoder.decode(dict(lg))
            if ev is None:
                continue
            self._event(ev.name, ev.args, number, ev.tx_hash, stats, block_hash)
        judged = [o for o in self.orders.values() if not self._dust(o)]
        executable = self._executable(judged, block_hash)
        for order in judged:
            self._judge(order, number, order.order_id in executable)
        stats.open_by_kind = self.open_by_kind()
        self._price(number, block_hash)
        return stats

    def _price(self, number: int, block_hash: str) -> None:
        if self._price_pool is None:
            return
        pool, weth_first, scale = self._price_pool
        call = {"to": pool, "data": "0x0902f1ac"}  # getReserves()
        answer = self.w3.provider.make_request("eth_call", [call, {"blockHash": block_hash}])  # type: ignore[arg-type]
        if "error" in answer:
            raise Web3RPCError(f"getReserves at block {number}: {answer['error']}")
        r0, r1, _ts = self.w3.codec.decode(
            ["uint256", "uint256", "uint32"], bytes.fromhex(answer["result"][2:])
        )
        weth, usdc = (r0, r1) if weth_first else (r1, r0)
        self.summary.prices[number] = usdc / weth * scale if weth else 0.0

    def _event(self, name: str, a: dict[str, Any], number: int, tx_hash: str, stats: BlockStats,
               block_hash: str) -> None:  # fmt: skip
        s = self.summary
        if name == "OrderPlaced":
            p = a["params"]
            kind = KIND_NAMES[int(p["kind"])]
            self.orders[int(a["id"])] = TrackedOrder(
                int(a["id"]), str(a["owner"]).lower(), kind, int(a["market"]), int(p["amountIn"]),
                int(p["minAmountOut"]), number, int(p["amountIn"]),
            )  # fmt: skip
            s.placed[kind] += 1
            s.placed_by_block[number] += 1
        elif name == "OrderFilled":
            self._fill(int(a["id"]), a, number, tx_hash, block_hash)
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

    def _fill(self, order_id: int, a: dict[str, Any], number: int, tx_hash: str, block_hash: str) -> None:
        s = self.summary
        order = self.orders.get(order_id)
        s.fills += 1
        s.orders_filled.add(order_id)
        if tx_hash not in self._gas:
            receipt = self.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
            if receipt["blockHash"].to_0x_hex() != block_hash:
                raise ChainMoved(f"{tx_hash} is no longer in block {number}")
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
                reorged = [r for r in s.reorgs if since < r.head and r.fork < number]
                if reorged:
                    why += f"; the chain was reorged at block {reorged[-1].head} (fork at {reorged[-1].fork})"
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

    def _executable(self, orders: list[TrackedOrder], block_hash: str) -> set[int]:
        """The orders that could be filled alone on this block's state through some pool:
        one eth_call per order and pool, all in one JSON-RPC batch. A revert (TooFewFilled,
        ...) means "not now"; any other error, that the block may be gone (the caller checks)."""
        batch: list[dict[str, Any]] = []
        whose: list[int] = []
        for order in orders:
            for data in self._calls(order):
                params = [{"from": self.me, "to": self.book.address, "data": data}, {"blockHash": block_hash}]
                batch.append({"jsonrpc": "2.0", "id": len(batch), "method": "eth_call", "params": params})
                whose.append(order.order_id)
        if not batch:
            return set()
        answers = self.session.post(self.url, json=batch, timeout=30).json()
        if not isinstance(answers, list):
            raise RuntimeError(f"the node refused a batch of eth_calls: {answers}")
        errors = [a["error"] for a in answers if "error" in a]
        if any(e.get("code") != 3 and "revert" not in str(e.get("message", "")).lower() for e in errors):
            raise Web3RPCError(f"eth_call at block {block_hash} failed: {errors[0]}")
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

    def judge_from(self, block: int, kinds: Collection[str] | None = None) -> None:
        """Restarts the clock of every executable open order (of `kinds`, else all) at `block`:
        the keepers that fill them were restarted."""
        for o in self.orders.values():
            if kinds is not None and o.kind not in kinds:
                continue
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
