"""Submission routes. Each chain gets one adapter, chosen in config, with declared capabilities:

- BundleSubmitter: Flashbots bundles (simulate, send for each block until the deadline,
  replacement by uuid, inclusion from receipts). A bundle that misses consumes no nonce, so
  its records are dropped and their nonces freed for the next allocation.
- MempoolSubmitter: one transaction at a time to a public or private RPC, with EIP-1559
  replacement bumps; past the deadline the nonce is taken back by a no-op replacement, so no
  gap is left behind.

Both draw nonces from the one NonceManager, so they cannot collide.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import cache
from typing import Any, Protocol

import anyio
import structlog
from eth_utils.crypto import keccak
from web3 import AsyncWeb3
from web3.exceptions import ContractLogicError, TransactionNotFound, Web3RPCError

from keepers.chain.artifacts import PROJECT_CONTRACTS, load_artifact
from keepers.chain.reverts import RevertDecoder
from keepers.ha.lease import NotLeader
from keepers.obs import metrics
from keepers.store.tables import TxRecord
from keepers.tx.actions import Action, Call
from keepers.tx.fees import FeeEstimator, Fees, FeeTooHigh
from keepers.tx.flashbots import FlashbotsClient, RelayError, RelayUnavailable, Simulation
from keepers.tx.nonces import Intent, NonceManager, ReconcileReport
from keepers.tx.signer import SignedTx, TxSigner
from keepers.tx.states import TxState

log = structlog.get_logger("submit")

#: BuilderTip.tip() and the gas its call needs (a value transfer to the coinbase, with margin).
TIP_SELECTOR = "0x" + keccak(text="tip()")[:4].hex()
TIP_GAS = 40_000


@cache
def _decoder() -> RevertDecoder:
    return RevertDecoder(load_artifact(n) for n in PROJECT_CONTRACTS)


def explain_revert(data: str | None) -> str:
    """The named custom error for revert data, else the data as given."""
    if data and data.startswith("0x") and len(data) >= 10:
        decoded = _decoder().decode(bytes.fromhex(data[2:]))
        if decoded is not None:
            return str(decoded)
    return data or "no revert data"


class Capability(StrEnum):
    BUNDLES = "bundles"
    PRIVATE_TX = "private-tx"
    PUBLIC_MEMPOOL = "public-mempool"


class Status(StrEnum):
    INCLUDED = "included"
    MISSED = "missed"  # not included by the deadline; nonces freed or reclaimed
    REJECTED = "rejected"  # refused before sending (simulation failed, fee over the cap)


@dataclass
class Outcome:
    status: Status
    block: int | None = None
    tx_hashes: list[str] = field(default_factory=list)
    reason: str = ""
    targets: list[int] = field(default_factory=list)
    #: Wei paid to the builder through BuilderTip (0 unless included with a payment).
    coinbase_paid_wei: int = 0


class Submitter(Protocol):
    capabilities: frozenset[Capability]

    async def submit(self, action: Action) -> Outcome: ...

    async def reconcile(self) -> ReconcileReport: ...

    async def fill_gaps(self) -> int: ...

    async def observe(self) -> None: ...


@dataclass
class _Common:
    w3: AsyncWeb3[Any]
    nonces: NonceManager
    signer: TxSigner
    fees: FeeEstimator
    chain: str
    poll_interval: float = 0.25

    async def _estimate(self, action: Action) -> tuple[Action, str | None]:
        """The action with each call's gas set from eth_estimateGas (x1.25, never below the
        strategy's own figure), or the reason it would revert."""
        calls = []
        for call in action.calls:
            tx = {"from": self.signer.address, "to": call.to, "data": call.data, "value": call.value}
            try:
                est = int(await self.w3.eth.estimate_gas(tx))  # type: ignore[arg-type]
            except (Web3RPCError, ContractLogicError, ValueError) as exc:
                data = getattr(exc, "data", None)
                return action, f"would revert: {explain_revert(data if isinstance(data, str) else None)}"
            calls.append(replace(call, gas_limit=max(call.gas_limit, est * 5 // 4)))
        return replace(action, calls=tuple(calls)), None

    async def _allocate(
        self, action: Action, route: str, deadline_block: int | None = None
    ) -> list[TxRecord]:
        records = []
        for i, call in enumerate(action.calls):
            intent = Intent(
                idempotency_key=f"{action.idempotency_key}#{i}",
                to=call.to,
                data=call.data,
                value=call.value,
                gas_limit=call.gas_limit,
                route=route,
                deadline_block=deadline_block,
            )
            try:
                records.append(await anyio.to_thread.run_sync(self.nonces.allocate, intent))
            except NotLeader:
                # Fenced part way through: the nonces already taken go back, none is left held.
                for r in records:
                    await anyio.to_thread.run_sync(self.nonces.release, r.id or 0, "fenced: lease lost")
                raise
            metrics.NONCE_ALLOCATIONS.labels(self.chain).inc()
        return records

    async def _attempt(self, record: TxRecord, signed: SignedTx, target: int | None) -> None:
        await anyio.to_thread.run_sync(
            lambda: self.nonces.record_attempt(
                record.id or 0,
                signed.tx_hash,
                signed.fees.max_fee_per_gas,
                signed.fees.max_priority_fee_per_gas,
                target,
            )
        )

    async def reconcile(self) -> ReconcileReport:
        """Aligns the nonce records with the chain (at start and after misses)."""
        hashes = await anyio.to_thread.run_sync(self.nonces.live_hashes)
        mined = {h: b for h in hashes if (b := await self._mined_block(h)) is not None}
        chain_nonce = int(await self.w3.eth.get_transaction_count(self.signer.address, "latest"))
        report = await anyio.to_thread.run_sync(self.nonces.reconcile, chain_nonce, mined.get)
        metrics.NONCE_GAPS.labels(self.chain).set(len(report.gaps))
        if report.consumed or report.reorged or report.recovered:
            log.warning(
                "nonce reconcile",
                consumed=report.consumed,
                reorged=report.reorged,
                recovered=report.recovered,
                gaps=report.gaps,
            )
        return report

    async def fill_gaps(self) -> int:
        """Sends a no-op self-transfer on every gap nonce; returns how many were sent."""
        sent = 0
        for nonce in await anyio.to_thread.run_sync(self.nonces.gaps):
            key = f"gap:{self.chain}:{nonce}:{uuid.uuid4().hex[:8]}"
            record = await anyio.to_thread.run_sync(self.nonces.claim_gap, nonce, key)
            if record is None:
                continue
            fees = await self.fees.estimate()
            signed = self.signer.sign(record, fees)
            await self._send_gap_fill(record, signed)
            sent += 1
        return sent

    async def _send_gap_fill(self, record: TxRecord, signed: SignedTx) -> None:
        raise NotImplementedError

    async def observe(self) -> None:
        """Signer balance and transactions by state, for the metrics."""
        balance = await self.w3.eth.get_balance(self.signer.address)
        metrics.SIGNER_BALANCE.labels(self.chain).set(int(balance))
        for state, n in (await anyio.to_thread.run_sync(self.nonces.state_counts)).items():
            metrics.TX_STATE.labels(self.chain, state).set(n)

    async def _move(self, record: TxRecord, state: TxState, reason: str = "", **fields: object) -> TxRecord:
        assert record.id is not None
        return await anyio.to_thread.run_sync(
            lambda: self.nonces.transition(record.id or 0, state, reason, **fields)
        )

    async def _wait_for_head(self, at_least: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            head = await self.w3.eth.block_number
            if head >= at_least or time.monotonic() > deadline:
                return int(head)
            await anyio.sleep(self.poll_interval)

    async def _mined_block(self, tx_hash: str) -> int | None:
        """The block that includes the tx, if that block is canonical. A node can still serve a
        receipt from a block that was reorged out (anvil does after evm_revert), so the receipt's
        block hash must match the chain's block at that height."""
        try:
            receipt = await self.w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
        except TransactionNotFound:
            return None
        number = int(receipt["blockNumber"])
        block = await self.w3.eth.get_block(number)
        return number if block["hash"] == receipt["blockHash"] else None

    async def _priced(self, action: Action, coinbase_payment: int = 0) -> Fees:
        """The market's fees, or the strategy's priority-fee bid on top of the same base fee
        headroom; capped by config and by what the action is worth after its builder payment."""
        gas = sum(c.gas_limit for c in action.calls)
        market = await self.fees.estimate()
        if action.priority_fee_per_gas is not None:
            base_headroom = market.max_fee_per_gas - market.max_priority_fee_per_gas
            market = Fees(base_headroom + action.priority_fee_per_gas, action.priority_fee_per_gas)
        budget = None if action.public_good else action.expected_value_wei - coinbase_payment
        if budget is not None and budget <= 0:
            raise FeeTooHigh(f"the builder payment ({coinbase_payment} wei) leaves nothing for gas")
        return self.fees.capped(market, gas, budget)


class BundleSubmitter(_Common):
    """Flashbots bundles through one or more relays."""

    capabilities = frozenset({Capability.BUNDLES, Capability.PRIVATE_TX})

    def __init__(
        self,
        *,
        client: FlashbotsClient,
        block_time: float,
        builders: Sequence[str] = (),
        builder_tip: str | None = None,
        **common: object,
    ) -> None:
        super().__init__(**common)  # type: ignore[arg-type]
        self.client = client
        self.block_time = block_time
        self.builders = tuple(builders)
        self.builder_tip = builder_tip

    async def submit(self, action: Action) -> Outcome:
        if len(action.calls) == 1:
            # Multi-call bundles depend on each other's effects; only a lone call estimates alone.
            # The estimate runs on the latest block's time, the bundle on the next block's: what
            # is due by time (a TWAP slice) may revert here and succeed there. So a failed
            # estimate keeps the strategy's gas limit, and the bundle simulation decides.
            estimated, refusal = await self._estimate(action)
            if refusal is None:
                action = estimated
        payment = action.coinbase_payment_wei
        if payment > 0:
            if not self.builder_tip:
                metrics.ACTIONS.labels(self.chain, "rejected").inc()
                return Outcome(Status.REJECTED, reason="a coinbase payment needs contracts.builder_tip")
            # Last in the bundle: paid only if everything before it lands.
            tip = Call(to=self.builder_tip, data=TIP_SELECTOR, value=payment, gas_limit=TIP_GAS)
            action = replace(action, calls=(*action.calls, tip))
        try:
            fees = await self._priced(action, payment)
        except FeeTooHigh as exc:
            metrics.ACTIONS.labels(self.chain, "rejected").inc()
            return Outcome(Status.REJECTED, reason=str(exc))
        head = int(await self.w3.eth.block_number)
        # Bundles whose blocks are built are settled first, so a missed one's nonce is free for
        # this action instead of holding every later bundle of this key back.
        await self._settle(head)
        last_target = head + max(action.deadline_blocks, 1)
        records = await self._allocate(action, "bundle", last_target)
        signed = [self.signer.sign(r, fees) for r in records]
        for rec, s in zip(records, signed, strict=True):
            if TxState(rec.state) is TxState.UNSTARTED:
                await self._move(rec, TxState.IN_FLIGHT, tx_hash=s.tx_hash)
                await self._attempt(rec, s, head + 1)
        first = head + 1
        last = first + max(action.deadline_blocks, 1) - 1

        latest = await self.w3.eth.get_block("latest")
        sim = await self._simulate(signed, first, int(latest["timestamp"]) + max(1, int(self.block_time)))
        if sim is not None and not sim.ok:
            failed = next(r for r in sim.results if r.error)
            reason = f"simulation failed: {failed.error} ({explain_revert(failed.revert)})"
            await self._drop_all(records, reason)
            metrics.ACTIONS.labels(self.chain, "rejected").inc()
            return Outcome(Status.REJECTED, reason=reason)

        replacement = str(uuid.uuid5(uuid.NAMESPACE_URL, action.idempotency_key))
        outcome = Outcome(Status.MISSED, tx_hashes=[s.tx_hash for s in signed])
        for target in range(first, last + 1):
            current = int(await self.w3.eth.block_number)
            if current >= target:
                continue  # that block is already built
            mine = await anyio.to_thread.run_sync(self.nonces.get, records[0].id or 0)
            if mine is None or TxState(mine.state) is TxState.DROPPED:
                break  # settled as missed by a newer action, which may hold the nonce now
            sent = await self.client.send_bundle(
                [s.raw for s in signed], target, replacement_uuid=replacement
            )
            ok = [u for u, r in sent.items() if isinstance(r, str)]
            metrics.BUNDLES.labels(self.chain, "sent").inc(len(ok))
            outcome.targets.append(target)
            if not ok:
                log.warning(
                    "no relay took the bundle", target=target, errors={u: str(e) for u, e in sent.items()}
                )
            hashes = {r for r in sent.values() if isinstance(r, str)}
            for rec in records:
                current_rec = await anyio.to_thread.run_sync(self.nonces.get, rec.id or 0)
                if current_rec and TxState(current_rec.state) is TxState.IN_FLIGHT:
                    await self._move(
                        rec, TxState.UNCONFIRMED, target_block=target, bundle_hash=next(iter(hashes), None)
                    )
            await self._wait_for_head(target, timeout=self.block_time * 3 + 5)
            block = await self._mined_block(signed[0].tx_hash)
            if block is not None:
                for rec in records:
                    await self._confirm(rec, block)
                metrics.BUNDLES.labels(self.chain, "included").inc()
                metrics.INCLUSION_BLOCKS.labels(self.chain).observe(block - head)
                metrics.ACTIONS.labels(self.chain, "included").inc()
                outcome.status, outcome.block = Status.INCLUDED, block
                outcome.coinbase_paid_wei = payment
                log.info("bundle included", block=block, target=target, key=action.idempotency_key)
                return outcome
            metrics.BUNDLES.labels(self.chain, "missed").inc()
            # Re-sign only if the market moved past our fee cap; same nonce, new attempt.
        await self._drop_all(records, f"bundle missed blocks {first}..{last}")
        metrics.ACTIONS.labels(self.chain, "missed").inc()
        outcome.reason = f"not included in blocks {first}..{last}"
        return outcome

    async def _settle(self, head: int) -> None:
        """Confirms or releases this key's bundle records whose last target block is built."""
        for rec in await anyio.to_thread.run_sync(self.nonces.decided_bundles, head):
            block = await self._mined_block(rec.tx_hash) if rec.tx_hash else None
            if block is not None:
                await self._confirm(rec, block)
            else:
                await self._drop_all([rec], f"bundle missed its blocks (settled at head {head})")

    async def _confirm(self, rec: TxRecord, block: int) -> None:
        """CONFIRMED, unless another path (settlement, a second process) already decided it."""
        cur = await anyio.to_thread.run_sync(self.nonces.get, rec.id or 0)
        if cur is not None and TxState(cur.state) in (TxState.IN_FLIGHT, TxState.UNCONFIRMED):
            await self._move(rec, TxState.CONFIRMED, included_block=block)

    async def _simulate(self, signed: Sequence[SignedTx], block: int, timestamp: int) -> Simulation | None:
        try:
            return await self.client.call_bundle([s.raw for s in signed], block, timestamp=timestamp)
        except (RelayError, RelayUnavailable) as exc:
            # A relay that cannot simulate should not stop a send; inclusion is checked on chain.
            log.warning("simulation unavailable", error=str(exc))
            return None

    async def _send_gap_fill(self, record: TxRecord, signed: SignedTx) -> None:
        """A one-transaction bundle for the next few blocks; if it misses, the nonce is freed
        again and the next maintenance round retries."""
        await self._move(record, TxState.IN_FLIGHT, tx_hash=signed.tx_hash)
        head = int(await self.w3.eth.block_number)
        for target in range(head + 1, head + 4):
            await self.client.send_bundle([signed.raw], target)
        await self._move(record, TxState.UNCONFIRMED, target_block=head + 1)
        await self._attempt(record, signed, head + 1)
        await self._wait_for_head(head + 3, timeout=self.block_time * 6 + 5)
        block = await self._mined_block(signed.tx_hash)
        if block is not None:
            await self._move(record, TxState.CONFIRMED, included_block=block)
        else:
            await self._drop_all([record], "gap fill missed its blocks")

    async def _drop_all(self, records: list[TxRecord], reason: str) -> None:
        for rec in records:
            cur = await anyio.to_thread.run_sync(self.nonces.get, rec.id or 0)
            if cur is not None and TxState(cur.state) in (
                TxState.UNSTARTED,
                TxState.IN_FLIGHT,
                TxState.UNCONFIRMED,
            ):
                await anyio.to_thread.run_sync(self.nonces.release, rec.id or 0, reason)


class MempoolSubmitter(_Common):
    """A public mempool (or a private RPC that accepts eth_sendRawTransaction), with fee bumps."""

    def __init__(
        self,
        *,
        send_w3: AsyncWeb3[Any] | None = None,
        bump_after_blocks: int = 1,
        private: bool = False,
        **common: object,
    ) -> None:
        super().__init__(**common)  # type: ignore[arg-type]
        self.send_w3 = send_w3 or self.w3
        self.bump_after_blocks = bump_after_blocks
        self.capabilities = frozenset({Capability.PRIVATE_TX if private else Capability.PUBLIC_MEMPOOL})

    async def submit(self, action: Action) -> Outcome:
        if len(action.calls) != 1:
            return Outcome(Status.REJECTED, reason="the mempool route sends one call per action")
        if action.coinbase_payment_wei:
            # No bundle, so no atomic builder payment: here the priority fee is the whole bid.
            action = replace(action, coinbase_payment_wei=0)
        action, refusal = await self._estimate(action)
        if refusal:
            return Outcome(Status.REJECTED, reason=refusal)
        try:
            fees = await self._priced(action)
        except FeeTooHigh as exc:
            return Outcome(Status.REJECTED, reason=str(exc))
        (record,) = await self._allocate(action, "public")
        head = int(await self.w3.eth.block_number)
        deadline = head + max(action.deadline_blocks, 1)
        hashes: list[str] = []
        signed = self.signer.sign(record, fees)
        await self._send(signed)
        hashes.append(signed.tx_hash)
        await self._move(record, TxState.IN_FLIGHT, tx_hash=signed.tx_hash)
        await self._attempt(record, signed, head + 1)
        record = await self._move(record, TxState.UNCONFIRMED, target_block=head + 1)
        last_send = head
        while True:
            now = await self._wait_for_head(last_send + 1, timeout=30)
            for h in hashes:
                block = await self._mined_block(h)
                if block is not None:
                    await self._move(record, TxState.CONFIRMED, included_block=block, tx_hash=h)
                    metrics.ACTIONS.labels(self.chain, "included").inc()
                    return Outcome(Status.INCLUDED, block, hashes)
            if now >= deadline:
                break
            if now - last_send >= self.bump_after_blocks:
                market = await self.fees.estimate()
                try:
                    bumped = self.fees.capped(fees.bumped(market), record.gas_limit, None)
                except FeeTooHigh as exc:
                    log.warning("fee bump capped", error=str(exc))
                    continue
                fees = bumped
                signed = self.signer.sign(record, fees)
                await self._send(signed)
                await self._attempt(record, signed, now + 1)
                hashes.append(signed.tx_hash)
                last_send = now
        # Past the deadline the transaction may still be in mempools: take the nonce back with a
        # no-op at a higher fee rather than leaving it to land late or leave a gap.
        await self._reclaim(record, fees, hashes)
        metrics.ACTIONS.labels(self.chain, "missed").inc()
        return Outcome(Status.MISSED, tx_hashes=hashes, reason=f"not included by block {deadline}")

    async def _send(self, signed: SignedTx) -> None:
        try:
            await self.send_w3.eth.send_raw_transaction(signed.raw)
        except (Web3RPCError, ValueError) as exc:
            # "already known", "nonce too low", "fee below base fee": receipts and bumps decide.
            log.info("node refused a send", tx_hash=signed.tx_hash, error=str(exc))

    async def _send_gap_fill(self, record: TxRecord, signed: SignedTx) -> None:
        """Broadcast and leave it to reconciliation: a public no-op lands or is replaced later."""
        await self._send(signed)
        await self._move(record, TxState.IN_FLIGHT, tx_hash=signed.tx_hash)
        await self._move(record, TxState.UNCONFIRMED)
        await self._attempt(record, signed, None)

    async def _reclaim(self, record: TxRecord, fees: Fees, hashes: list[str]) -> None:
        assert record.id is not None
        cancel = await anyio.to_thread.run_sync(
            self.nonces.supersede, record.id, "replaced by a no-op after the deadline"
        )
        cancel_fees = fees.bumped(await self.fees.estimate())
        signed = self.signer.sign(cancel, cancel_fees)
        await self._send(signed)
        await self._move(cancel, TxState.IN_FLIGHT, tx_hash=signed.tx_hash)
        await self._move(cancel, TxState.UNCONFIRMED)
        hashes.append(signed.tx_hash)
