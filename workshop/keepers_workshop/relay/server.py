"""The relay's HTTP JSON-RPC server. It speaks the Flashbots methods (signature checked on
each), holds the public mempool (eth_sendRawTransaction), proxies every other method to anvil,
and builds a block every `block_time` seconds (or on `relay_buildBlock`, a devnet-only method
tests use to step blocks by hand).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from itertools import count
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils.crypto import keccak

from keepers.engine.pauses import CollectBetweenBlocks
from keepers.tx.flashbots import BAD_SIGNATURE, SIGNATURE_HEADER
from keepers_workshop.relay.builder import BlockBuilder, Bundle, tx_hash
from keepers_workshop.relay.gate import ReadWriteGate
from keepers_workshop.relay.jsonrpc import JsonRpc, RpcError
from keepers_workshop.relay.signed import decode

log = structlog.get_logger("relay")

SIGNED_METHODS = frozenset(
    {
        "eth_sendBundle",
        "eth_callBundle",
        "eth_cancelBundle",
        "eth_sendPrivateTransaction",
        "eth_cancelPrivateTransaction",
    }
)


class RpcFault(Exception):
    def __init__(self, code: int, message: str, status: int = 200) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def recover_signer(body: bytes, header: str | None) -> str:
    """The address that signed `body`, checked against the one the header names."""
    if not header or ":" not in header:
        raise RpcFault(BAD_SIGNATURE, f"missing or malformed {SIGNATURE_HEADER} header", 403)
    claimed, signature = header.split(":", 1)
    try:
        recovered = Account.recover_message(
            encode_defunct(text="0x" + keccak(body).hex()),
            signature=bytes.fromhex(signature.removeprefix("0x")),
        )
    except Exception as exc:  # noqa: BLE001 - any decoding failure is a bad signature
        raise RpcFault(BAD_SIGNATURE, f"invalid signature: {exc.__class__.__name__}", 403) from None
    if recovered.lower() != claimed.lower():
        raise RpcFault(BAD_SIGNATURE, "signature does not match the address in the header", 403)
    return str(recovered)


def _hex_bytes(value: Any, what: str) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise RpcFault(-32602, f"{what} must be 0x-prefixed hex")
    try:
        return bytes.fromhex(value[2:])
    except ValueError:
        raise RpcFault(-32602, f"{what} is not hex") from None


def _raw_tx(value: Any, what: str) -> bytes:
    """A signed transaction's bytes; refuses what does not decode or recover a sender."""
    raw = _hex_bytes(value, what)
    try:
        decode(raw)
    except ValueError:
        raise RpcFault(-32602, f"{what} is not a valid signed transaction") from None
    return raw


def _block_number(value: Any, what: str = "blockNumber") -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.startswith("0x"):
        return int(value, 16)
    raise RpcFault(-32602, f"{what} must be a hex quantity")


@dataclass
class RelayState:
    bundles: list[Bundle] = field(default_factory=list)
    included: dict[str, int] = field(default_factory=dict)  # bundle hash -> block
    seq: count[int] = field(default_factory=count)


class Relay:
    """The relay's logic, independent of HTTP (the server below is a thin shell)."""

    def __init__(self, anvil_url: str, block_time: float | None) -> None:
        self.anvil_url = anvil_url
        self.block_time = block_time
        self.state = RelayState()
        self.lock = asyncio.Lock()  # the bundle list
        self.gate = ReadWriteGate()  # the node: a build excludes every reader
        self.session: aiohttp.ClientSession | None = None
        self.rpc: JsonRpc | None = None
        self.builder: BlockBuilder | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self.collector = CollectBetweenBlocks()

    async def start(self) -> None:
        self.session = aiohttp.ClientSession()
        self.rpc = JsonRpc(self.anvil_url, self.session)
        self.builder = BlockBuilder(self.rpc)
        await self.builder.setup()
        if self.block_time:
            self._loop_task = asyncio.create_task(self._block_loop())

    async def stop(self) -> None:
        if self._loop_task:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        if self.session:
            await self.session.close()

    async def _block_loop(self) -> None:
        assert self.block_time
        while True:
            await asyncio.sleep(self.block_time)
            try:
                await self.build_block()
            except Exception:
                log.exception("block build failed")

    async def build_block(self) -> dict[str, Any]:
        assert self.builder is not None
        async with self.gate.write(), self.lock:
            block, chosen = await self.builder.build(list(self.state.bundles))
            for b in chosen:
                self.state.included[b.hash] = block
            chosen_ids = {id(b) for b in chosen}
            # A bundle is for one block: past it, it is gone unless resent. Private txs live until
            # their max block or inclusion.
            self.state.bundles = [
                b for b in self.state.bundles if id(b) not in chosen_ids and (b.block > block)
            ]
        log.info("block built", block=block, bundles=[b.hash for b in chosen])
        self.collector.after_block()  # a full collection here, not inside a simulation
        return {"blockNumber": hex(block), "bundles": [b.hash for b in chosen]}

    async def dispatch(
        self, method: str, params: list[Any], signer: str | None, payload: dict[str, Any]
    ) -> Any:
        assert self.rpc is not None
        assert self.builder is not None
        if method == "eth_sendBundle":
            return await self._send_bundle(params, signer or "")
        if method == "eth_callBundle":
            return await self._call_bundle(params)
        if method == "eth_cancelBundle":
            uuid = (params[0] or {}).get("replacementUuid") if params else None
            if not uuid:
                raise RpcFault(-32602, "replacementUuid required")
            async with self.lock:
                self.state.bundles = [
                    b for b in self.state.bundles if not (b.replacement_uuid == uuid and b.signer == signer)
                ]
            return True
        if method == "eth_sendPrivateTransaction":
            p = params[0] if params else {}
            raw = _raw_tx(p.get("tx"), "tx")
            async with self.gate.read():
                head = await self.builder.head()
            max_block = _block_number(p.get("maxBlockNumber", hex(head + 25)), "maxBlockNumber")
            async with self.lock:
                self.state.bundles.append(
                    Bundle([raw], max_block, signer or "", next(self.state.seq), private=True)
                )
            return tx_hash(raw)
        if method == "eth_cancelPrivateTransaction":
            h = ((params[0] or {}) if params else {}).get("txHash", "").lower()
            async with self.lock:
                before = len(self.state.bundles)
                self.state.bundles = [
                    b
                    for b in self.state.bundles
                    if not (b.private and tx_hash(b.txs[0]) == h and b.signer == signer)
                ]
                return len(self.state.bundles) < before
        if method == "eth_sendRawTransaction":
            raw = _raw_tx(params[0] if params else None, "transaction")
            async with self.lock:
                self.builder.public.append(raw)
            return tx_hash(raw)
        if method == "relay_buildBlock":
            return await self.build_block()
        if method == "relay_advanceTime":
            # Devnet only: the next blocks' timestamps jump ahead (TWAP intervals, heartbeats).
            self.builder.last_timestamp = max(self.builder.last_timestamp, int(time.time()))
            self.builder.last_timestamp += int(params[0]) if params else 0
            return hex(self.builder.last_timestamp)
        if method in CHAIN_REWRITES:
            # A reorg or rollback replaces blocks: never beside a build or a reader (a reader
            # would see a chain that is half gone, a build would mine on it).
            async with self.gate.write(), self.lock:
                answer = await self.rpc.raw(payload)
                latest = await self.rpc("eth_getBlockByNumber", "latest", False)
                self.builder.last_timestamp = max(self.builder.last_timestamp, int(latest["timestamp"], 16))
                await self.rpc("anvil_dropAllTransactions")  # the pool is empty outside a build
            log.info("chain rewritten", method=method, head=int(latest["number"], 16))
            return answer
        if method == "relay_pendingBundles":
            return [{"bundleHash": b.hash, "blockNumber": hex(b.block)} for b in self.state.bundles]
        # Everything else is the node's business.
        async with self.gate.read():
            return await self.rpc.raw(payload)

    async def _send_bundle(self, params: list[Any], signer: str) -> dict[str, str]:
        assert self.builder is not None
        p = params[0] if params else None
        if not isinstance(p, dict) or not p.get("txs"):
            raise RpcFault(-32602, "txs required")
        txs = [_raw_tx(t, "txs[]") for t in p["txs"]]
        block = _block_number(p.get("blockNumber"))
        async with self.gate.read():
            head = await self.builder.head()
        if block <= head:
            raise RpcFault(-32602, f"blockNumber {block} is not in the future (head {head})")
        bundle = Bundle(
            txs=txs,
            block=block,
            signer=signer,
            seq=next(self.state.seq),
            min_timestamp=int(p.get("minTimestamp") or 0),
            max_timestamp=int(p.get("maxTimestamp") or 0),
            reverting=frozenset(h.lower() for h in p.get("revertingTxHashes", [])),
            replacement_uuid=p.get("replacementUuid"),
        )
        async with self.lock:
            if bundle.replacement_uuid:
                self.state.bundles = [
                    b
                    for b in self.state.bundles
                    if not (b.replacement_uuid == bundle.replacement_uuid and b.signer == signer)
                ]
            self.state.bundles.append(bundle)
        return {"bundleHash": bundle.hash}

    async def _call_bundle(self, params: list[Any]) -> dict[str, Any]:
        assert self.builder is not None
        p = params[0] if params else None
        if not isinstance(p, dict) or not p.get("txs"):
            raise RpcFault(-32602, "txs required")
        txs = [_raw_tx(t, "txs[]") for t in p["txs"]]
        async with self.gate.read():
            head = await self.builder.head()
            state = p.get("stateBlockNumber", "latest")
            if state not in ("latest", hex(head), head):
                raise RpcFault(-32602, "this relay simulates on the latest state only")
            timestamp = int(p.get("timestamp") or self.builder.next_timestamp())
            sim = await self.builder.simulate([], txs, timestamp)
        results = []
        for r in sim.results:
            item: dict[str, Any] = {
                "txHash": r.tx_hash,
                "gasUsed": r.gas_used,
                "gasPrice": str(r.coinbase_diff // r.gas_used if r.gas_used else 0),
                "gasFees": str(r.gas_fees),
                "coinbaseDiff": str(r.coinbase_diff),
                "ethSentToCoinbase": str(r.eth_sent_to_coinbase),
                "fromAddress": r.from_address,
                "toAddress": r.to_address,
            }
            if r.status is None:
                item["error"] = "not included: rejected by the node (nonce, balance or fee)"
            elif r.status == 0:
                item["error"] = "execution reverted"
                item["revert"] = r.revert
            else:
                item["value"] = "0x"
            results.append(item)
        return {
            "bundleGasPrice": str(sim.gas_price),
            "bundleHash": "0x" + keccak(b"".join(keccak(t) for t in txs)).hex(),
            "coinbaseDiff": str(sim.coinbase_diff),
            "ethSentToCoinbase": str(sum(r.eth_sent_to_coinbase for r in sim.results)),
            "gasFees": str(sum(r.gas_fees for r in sim.results)),
            "stateBlockNumber": head,
            "totalGasUsed": sim.gas_used,
            "results": results,
        }


#: Devnet methods that replace blocks: run alone, under the node's write gate.
CHAIN_REWRITES = frozenset({"anvil_reorg", "anvil_rollback"})

#: Methods the relay answers itself; everything else is proxied to the node.
OWN_METHODS = SIGNED_METHODS | {"eth_sendRawTransaction", "relay_buildBlock", "relay_advanceTime",
                                "relay_pendingBundles"} | CHAIN_REWRITES  # fmt: skip


def make_app(relay: Relay) -> web.Application:
    async def batch(items: list[Any]) -> web.Response:
        """A JSON-RPC batch of node reads, proxied as one batch under one read of the gate
        (a referee checking every open order each block sends hundreds of eth_calls). Relay
        methods are refused in a batch: a signature covers one request body."""
        if not items or not all(isinstance(i, dict) and "method" in i for i in items):
            raise RpcFault(-32600, "invalid batch")
        own = sorted({str(i["method"]) for i in items} & OWN_METHODS)
        if own:
            raise RpcFault(-32600, f"a batch may carry node reads only, not {', '.join(own)}")
        assert relay.rpc is not None
        async with relay.gate.read():
            return web.json_response(await relay.rpc.raw_batch(items))

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        req_id: Any = None
        try:
            try:
                payload = json.loads(body)
            except ValueError:
                raise RpcFault(-32700, "parse error") from None
            if isinstance(payload, list):
                return await batch(payload)
            if not isinstance(payload, dict) or "method" not in payload:
                raise RpcFault(-32600, "invalid request")
            req_id = payload.get("id")
            method = str(payload["method"])
            params = payload.get("params") or []
            signer = None
            if method in SIGNED_METHODS:
                signer = recover_signer(body, request.headers.get(SIGNATURE_HEADER))
            result = await relay.dispatch(method, params, signer, payload)
            if method not in SIGNED_METHODS and isinstance(result, dict) and "jsonrpc" in result:
                return web.json_response(result)  # proxied as is
            return web.json_response({"jsonrpc": "2.0", "id": req_id, "result": result})
        except RpcFault as fault:
            return web.json_response(
                {"jsonrpc": "2.0", "id": req_id, "error": {"code": fault.code, "message": fault.message}},
                status=fault.status,
            )
        except RpcError as exc:
            return web.json_response(
                {"jsonrpc": "2.0", "id": req_id, "error": {"code": exc.code, "message": str(exc)}}
            )

    async def on_startup(_app: web.Application) -> None:
        await relay.start()

    async def on_cleanup(_app: web.Application) -> None:
        await relay.stop()

    app = web.Application()
    app.router.add_post("/", handle)
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


class RelayThread:
    """Runs a relay on its own event loop in a background thread (for tests and the devnet)."""

    def __init__(self, anvil_url: str, port: int, block_time: float | None = None) -> None:
        self.relay = Relay(anvil_url, block_time)
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True, name="relay")
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._runner = web.AppRunner(make_app(self.relay), access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        self._loop.run_until_complete(site.start())
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> RelayThread:
        self._thread.start()
        if not self._ready.wait(20):
            raise RuntimeError("relay did not start")
        return self

    def stop(self) -> None:
        async def _shutdown() -> None:
            if self._runner:
                await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(_shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> RelayThread:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
