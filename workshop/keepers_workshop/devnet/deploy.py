"""Deploys the whole platform to a chain: tokens, oracle, pools, order book, lending market,
vault and flash liquidator, seeded so that orders can fill from the first block.

Transactions are signed locally (as a keeper signs) and sent one after another; on anvil in
auto-mine mode each is mined at once, so a full deployment takes about a second.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.contract import Contract
from web3.types import TxReceipt

from keepers.chain.artifacts import PROJECT_CONTRACTS, load_artifact
from keepers.chain.reverts import RevertDecoder


@dataclass(frozen=True)
class TokenSpec:
    symbol: str
    decimals: int
    usd_price: Decimal


@dataclass(frozen=True)
class PoolSpec:
    base: str
    quote: str
    base_liquidity: Decimal  # whole base tokens; quote side follows the oracle price


#: What the devnet trades: several pools per pair so routing and aggregation have work.
TOKENS = (
    TokenSpec("WETH", 18, Decimal(2000)),
    TokenSpec("WBTC", 8, Decimal(60000)),
    TokenSpec("USDC", 6, Decimal(1)),
    TokenSpec("DAI", 18, Decimal(1)),
)
POOLS = (
    PoolSpec("WETH", "USDC", Decimal(1000)),
    PoolSpec("WETH", "USDC", Decimal(200)),
    PoolSpec("WBTC", "USDC", Decimal(50)),
    PoolSpec("DAI", "USDC", Decimal(2_000_000)),
    PoolSpec("WETH", "DAI", Decimal(500)),
)
POOL_FEES = {"base_fee": 3000, "max_fee": 10_000, "fee_per_volatility_bps": 50, "volatility_half_life": 60}


class DeployError(RuntimeError):
    """A deployment transaction failed; the message names the contract error."""


@dataclass
class Deployment:
    """Addresses of one deployment, as written to deployment.json."""

    chain_id: int
    deployer: str
    tokens: dict[str, str] = field(default_factory=dict)
    decimals: dict[str, int] = field(default_factory=dict)
    oracle: str = ""
    pools: list[dict[str, str]] = field(default_factory=list)
    order_book: str = ""
    markets: dict[str, int] = field(default_factory=dict)
    lending_market: str = ""
    vault: str = ""
    flash_liquidator: str = ""
    builder_tip: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Deployment:
        return cls(**json.loads(text))


class Sender:
    """Signs and sends transactions from one key, one at a time, waiting for each receipt.

    For deployment, tests and demos only: it reads the pending nonce before every send so
    several Senders on one key stay correct when used one after another. Keepers use the
    shared NonceManager instead."""

    def __init__(self, w3: Web3, key: str) -> None:
        self.w3 = w3
        self.account: LocalAccount = Account.from_key(key)
        self.chain_id = w3.eth.chain_id
        self.decoder = RevertDecoder(load_artifact(n) for n in PROJECT_CONTRACTS)

    def _send(self, tx: dict[str, Any], what: str) -> TxReceipt:
        tx.update(
            {
                "from": self.account.address,
                "nonce": self.w3.eth.get_transaction_count(self.account.address, "pending"),
                "chainId": self.chain_id,
                "maxFeePerGas": 100 * 10**9,
                "maxPriorityFeePerGas": 10**9,
            }
        )
        try:
            # Headroom: the estimate runs at the pending block's timestamp, and time-dependent
            # paths (accumulators, interest, decay) can cost more once mined.
            tx["gas"] = int(self.w3.eth.estimate_gas(tx) * 13 // 10) + 30_000  # type: ignore[arg-type]
        except Exception as exc:
            raise DeployError(f"{what}: {self._explain(exc)}") from exc
        signed = self.account.sign_transaction(tx)
        tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60)
        if receipt["status"] != 1:
            raise DeployError(f"{what}: reverted in {tx_hash.to_0x_hex()}")
        return receipt

    def _explain(self, exc: Exception) -> str:
        data = getattr(exc, "data", None)
        if isinstance(data, str) and data.startswith("0x"):
            decoded = self.decoder.decode(bytes.fromhex(data[2:]))
            if decoded is not None:
                return str(decoded)
        return str(exc)

    def deploy(self, name: str, *args: Any) -> Contract:
        """Deploys a project contract from forge's build output."""
        art = load_artifact(name)
        return self.deploy_code(art.abi, art.bytecode, *args, what=f"deploy {name}")

    def deploy_code(self, abi: list[dict[str, Any]], bytecode: str, *args: Any, what: str) -> Contract:
        """Deploys any compiled contract (the benchmarks deploy Uniswap V2's with this)."""
        factory = self.w3.eth.contract(abi=abi, bytecode=bytecode)
        tx = factory.constructor(*args).build_transaction({"from": self.account.address, "gas": 0})
        address = self._send({"data": tx["data"]}, what)["contractAddress"]
        assert address is not None
        return self.w3.eth.contract(address=address, abi=abi)

    def call(self, contract: Contract, fn: str, *args: Any) -> TxReceipt:
        tx = getattr(contract.functions, fn)(*args).build_transaction(
            {"from": self.account.address, "gas": 0}
        )
        return self._send({"to": tx["to"], "data": tx["data"], "value": tx.get("value", 0)}, fn)


def bind(w3: Web3, name: str, address: str) -> Contract:
    """A web3 contract object for a deployed project contract."""
    return w3.eth.contract(address=Web3.to_checksum_address(address), abi=load_artifact(name).abi)


def units(amount: Decimal, decimals: int) -> int:
    return int(amount * (10**decimals))


def deploy_platform(w3: Web3, deployer_key: str, updaters: tuple[str, ...] = ()) -> Deployment:
    """Deploys and seeds everything; returns the addresses. `updaters` may push oracle prices."""
    s = Sender(w3, deployer_key)
    me = s.account.address
    dep = Deployment(chain_id=s.chain_id, deployer=me)
    tokens: dict[str, Contract] = {}
    for t in TOKENS:
        tokens[t.symbol] = s.deploy("DevnetToken", f"Devnet {t.symbol}", t.symbol, t.decimals)
        dep.tokens[t.symbol] = tokens[t.symbol].address
        dep.decimals[t.symbol] = t.decimals
    prices = {t.symbol: t.usd_price for t in TOKENS}

    oracle = s.deploy("PriceOracle", me, 600)
    dep.oracle = oracle.address
    for updater in (me, *updaters):
        s.call(oracle, "setUpdater", Web3.to_checksum_address(updater), True)
    for t in TOKENS:
        stable = t.usd_price == 1
        s.call(oracle, "configureAsset", tokens[t.symbol].address, 10 if stable else 50, 2000, 3600)
        s.call(oracle, "updatePrice", tokens[t.symbol].address, units(t.usd_price, 18))

    for spec in POOLS:
        a, b = tokens[spec.base], tokens[spec.quote]
        t0, t1 = sorted([a.address, b.address], key=lambda x: int(x, 16))
        pool = s.deploy(
            "LiquidityPool",
            t0,
            t1,
            POOL_FEES["base_fee"],
            POOL_FEES["max_fee"],
            POOL_FEES["fee_per_volatility_bps"],
            POOL_FEES["volatility_half_life"],
        )
        quote_amount = spec.base_liquidity * prices[spec.base] / prices[spec.quote]
        s.call(a, "mint", pool.address, units(spec.base_liquidity, dep.decimals[spec.base]))
        s.call(b, "mint", pool.address, units(quote_amount, dep.decimals[spec.quote]))
        s.call(pool, "mint", me)
        dep.pools.append({"address": pool.address, "base": spec.base, "quote": spec.quote})

    book = s.deploy("OrderBook", me, oracle.address)
    dep.order_book = book.address
    for p in dep.pools:
        s.call(book, "setPool", p["address"], True)
    for spec in POOLS:
        for tin, tout in ((spec.base, spec.quote), (spec.quote, spec.base)):
            key = f"{tin}/{tout}"
            if key not in dep.markets:
                s.call(book, "registerMarket", tokens[tin].address, tokens[tout].address)
                dep.markets[key] = book.functions.marketOf(tokens[tin].address, tokens[tout].address).call()

    lending = s.deploy(
        "LendingMarket",
        tokens["WETH"].address,
        tokens["USDC"].address,
        oracle.address,
        # Borrow up to 79% of the collateral's value, liquidatable past 80%: a devnet market where
        # positions opened at the limit become liquidatable on a move of a few percent.
        (7_900, 8_000, 5_000, 500, 0, 3_000_000_000),
    )
    dep.lending_market = lending.address
    s.call(tokens["USDC"], "mint", me, units(Decimal(5_000_000), 6))
    s.call(tokens["USDC"], "approve", lending.address, 2**256 - 1)
    s.call(lending, "supply", units(Decimal(5_000_000), 6))

    vault = s.deploy("RebalancingVault", me, oracle.address)
    dep.vault = vault.address
    for p in dep.pools:
        s.call(vault, "setPool", p["address"], True)

    dep.flash_liquidator = s.deploy("FlashLiquidator").address
    dep.builder_tip = s.deploy("BuilderTip").address
    return dep


def write_deployment(dep: Deployment, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dep.to_json())
