"""A deployed platform with a large book of resting orders, built fast: a BulkPlacer contract
places a thousand orders per transaction (one signed transaction per order took ~2 ms each,
minutes for 100k orders).

Resting orders are of every kind and out of reach of any price a bench run makes: limits at
ten times the price, stops below a 90% fall, take-profits above a tenfold rise, TWAPs starting
in ten days, icebergs at ten times the price.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account import Account
from web3 import Web3
from web3.contract import Contract

from keepers_workshop.devnet.anvil import Anvil, anvil_key
from keepers_workshop.devnet.cluster import ACCOUNTS, CHAINS, ChainEndpoint, Cluster, write_config
from keepers_workshop.devnet.deploy import Deployment, Sender, bind, deploy_platform, write_deployment

PER_TX = 1000
#: anvil's block gas limit for these chains: a 1000-order transaction uses ~100M gas.
GAS_LIMIT = 2_000_000_000
RATE = 2_000 * 10**18  # the devnet oracle's USDC per WETH, 18 decimals


def resting_terms(market: int) -> list[tuple[int, ...]]:
    """PlaceParams of each kind that no price of a bench run reaches."""
    far = int(time.time()) + 10 * 86_400
    return [
        (market, 0, 10**15, 20 * 10**6, 0, 10, 0, 0, 0, 0, 0),  # limit: 0.001 WETH for 20 USDC
        (market, 1, 10**15, 1, 0, 10, RATE // 10, 0, 0, 0, 0),  # stop-loss below a 90% fall
        (market, 2, 10**15, 1, 0, 10, RATE * 10, 0, 0, 0, 0),  # take-profit above a tenfold rise
        (market, 3, 4 * 10**15, 1, 0, 10, 0, far, 60, 4, 0),  # TWAP starting in ten days
        (market, 4, 4 * 10**15, 80 * 10**6, 0, 10, 10**15, 0, 0, 0, 0),  # iceberg at 10x the price
    ]


@dataclass
class Book:
    """anvil with the platform deployed and `open_orders` resting orders (plus `cancelled`
    placed and cancelled again: order events that leave no open order)."""

    open_orders: int
    cancelled: int = 0
    anvil_args: tuple[str, ...] = ()
    anvil: Anvil = field(init=False)
    placer: Contract = field(init=False)
    w3: Web3 = field(init=False)
    dep: Deployment = field(init=False)
    setup_seconds: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        # --order fifo: a relay in front of this chain orders bundles itself (as the devnet's).
        args = (
            "--gas-limit",
            str(GAS_LIMIT),
            "--order",
            "fifo",
            "--accounts",
            str(ACCOUNTS),
            *self.anvil_args,
        )
        self.anvil = Anvil(extra_args=args).start()
        try:
            self.w3 = Web3(Web3.HTTPProvider(self.anvil.url, request_kwargs={"timeout": 300}))
            self.dep = deploy_platform(self.w3, anvil_key(0))
            t = time.perf_counter()
            self._fill()
            self.setup_seconds = time.perf_counter() - t
        except BaseException:
            self.anvil.stop()
            raise

    @property
    def events(self) -> int:
        """Order events the book's building emitted (placements and cancellations)."""
        return self.open_orders + 2 * self.cancelled

    def _fill(self) -> None:
        s = Sender(self.w3, anvil_key(0))
        self.placer = s.deploy("BulkPlacer", self.dep.order_book)
        weth = bind(self.w3, "DevnetToken", self.dep.tokens["WETH"])
        s.call(weth, "mint", self.placer.address, 10**27)
        s.call(self.placer, "approve", weth.address)
        terms = resting_terms(self.dep.markets["WETH/USDC"])
        total = self.open_orders + self.cancelled
        first_id: int | None = None
        for i in range(0, total, PER_TX):
            first = self.place(terms[(i // PER_TX) % len(terms)], min(PER_TX, total - i))
            first_id = first if first_id is None else first_id
        # Cancel every other order of the first 2 * cancelled, so open ones stay of every kind.
        ids = [first_id + 2 * i for i in range(self.cancelled)] if first_id is not None else []
        for i in range(0, len(ids), PER_TX):
            part = ids[i : i + PER_TX]
            self._send(self.placer.address, self.placer.encode_abi("cancel", [part]), len(part))

    def place(self, terms: tuple[int, ...], count: int) -> int:
        """Places `count` orders with `terms` (PlaceParams) in one transaction; returns the first id."""
        call = bind(self.w3, "OrderBook", self.dep.order_book).encode_abi("placeOrder", [terms])
        receipt = self._send(self.placer.address, self.placer.encode_abi("place", [call, count]), count)
        return _first_order_id(receipt)

    def set_gas_limit(self, gas: int) -> None:
        """The block gas limit from now on (the book is built under a huge one)."""
        self.w3.provider.make_request("anvil_setBlockGasLimit", [hex(gas)])  # type: ignore[arg-type]

    def _send(self, to: str, data: str, orders: int) -> Any:
        """A fixed gas limit: estimating a 1000-order transaction re-runs it ~20 times."""
        account = Account.from_key(anvil_key(0))
        tx = {"to": to, "data": data, "gas": 30_000 + 150_000 * orders, "chainId": self.dep.chain_id,
              "nonce": self.w3.eth.get_transaction_count(account.address), "value": 0,
              "maxFeePerGas": 10**11, "maxPriorityFeePerGas": 10**9}  # fmt: skip
        tx_hash = self.w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=300)
        if receipt["status"] != 1:
            raise RuntimeError(f"bulk order transaction reverted: {tx_hash.to_0x_hex()}")
        return receipt

    def hand_to_relay(self) -> None:
        """Stops automine: from now on only the local relay mines, as on the devnet."""
        self.w3.provider.make_request("evm_setAutomine", [False])  # type: ignore[arg-type]

    def stop(self) -> None:
        self.anvil.stop()


#: topic0 of OrderPlaced (its last field is PlaceParams)
_PLACED = Web3.keccak(
    text="OrderPlaced(uint256,address,uint16,"
    "(uint16,uint8,uint96,uint96,uint32,uint8,uint128,uint32,uint32,uint16,uint16))"
)


def _first_order_id(receipt: Any) -> int:
    for log in receipt["logs"]:
        if log["topics"] and log["topics"][0] == _PLACED:
            return int.from_bytes(log["topics"][1], "big")
    raise RuntimeError("the bulk placement emitted no OrderPlaced")


@contextmanager
def behind_relay(
    book: Book, work: Path, block_time: float, params: dict[str, dict[str, int]] | None = None
) -> Iterator[tuple[Cluster, str, Path]]:
    """The local relay in front of the book's chain (which stops automining) and a keepers
    config for it, as the devnet writes one: (cluster to start keepers in, relay URL, config)."""
    cluster = Cluster(work)
    try:
        book.hand_to_relay()
        relay = cluster.start_relay(book.anvil.url, block_time)
        deployment = work / "deployment.json"
        write_deployment(book.dep, deployment)
        config = work / "keepers.toml"
        endpoint = ChainEndpoint(CHAINS[0], relay, deployment, book.dep.tokens["WETH"])
        write_config(
            config,
            chains=[endpoint],
            database_url=f"sqlite:///{work / 'k.sqlite'}",
            block_time=block_time,
            params=params,
        )
        yield cluster, relay, config
    finally:
        cluster.stop()
