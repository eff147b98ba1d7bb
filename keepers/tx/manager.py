"""The transaction manager of one (chain, signer): the whole life of our transactions, in one
module (after Chainlink's txm, for several processes on one key).

Per block the keeper loop calls, in this order and never concurrently:

1. `settle(head)`, the confirmer: receipts (canonical blocks only) confirm what landed; what a
   reorg took is unconfirmed again; what is deep enough is finalized; a bundle whose block was
   built without it is dropped (its nonce freed) or, if this process sent it and its deadline
   allows, carried into this block's bundle; a public transaction is fee-bumped, and at its
   deadline replaced by a no-op that keeps its nonce; a record left unsent by a crash is
   dropped once its block has passed. Each action that reached an end is booked in the ledger
   in the same database transaction.
2. `submit(actions, head)`: this block's actions go out together, one bundle per signer per
   block (with the carried ones, in nonce order), so no bundle waits on another for a nonce.
   Records (with fees, so a transaction can be signed again identically after a crash) and
   the actions' ledger rows are written in one database transaction; after the send, one
   more records the attempt. A transaction the relay's simulation refuses is left out and the
   rest renumbered onto the batch's lowest nonces, so no hole is left in the run. A bundle
   whose block was built while it was prepared (a busy machine) goes for the next block
   ("late"); settle reads such records back, and the next submission for that block joins them.

Every state change is a compare-and-set (keepers.tx.records): a repeated one is a no-op, so
two processes settling the same record, or a restart redoing a step, cannot break anything.
On the happy path an action costs three database transactions: allocate, sent, settled.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import cache, partial
from typing import Any

import anyio
import structlog
from eth_utils.crypto import keccak
from web3 import AsyncWeb3
from web3.exceptions import ContractLogicError, Web3RPCError

from keepers.chain.artifacts import PROJECT_CONTRACTS, load_artifact
from keepers.chain.reverts import RevertDecoder
from keepers.obs import metrics
from keepers.store.tables import ActionLedger, TxAttempt, TxRecord
from keepers.tx.actions import Action, Call
from keepers.tx.chain import ChainReads, Web3Reads
from keepers.tx.crash import crash_point
from keepers.tx.fees import FeeEstimator, Fees, FeeTooHigh
from keepers.tx.flashbots import bundle_hash
from keepers.tx.records import (
    NO_OP_GAS,
    Intent,
    LedgerUpdate,
    Move,
    ReconcileReport,
    TxRecords,
    action_key_of,
)
from keepers.tx.routes import BundleRoute, MempoolRoute, RelayFallback, Route
from keepers.tx.signer import SignedTx, Signer, SignerError
from keepers.tx.states import MINED, PENDING, TxState

log = structlog.get_logger("txm")

#: BuilderTip.tip() and the gas its call needs (a value transfer to the coinbase, with margin).
TIP_SELECTOR = "0x" + keccak(text="tip()")[:4].hex()
TIP_GAS = 40_000
#: Simulation rounds per batch: each drops the first action the last one refused (the last
#: round drops every refused one).
SIM_ROUNDS = 4
#: Times one submission may move its bundle to a later block because the one it was made for
#: was built first (the machine was too slow for the block time).
MAX_LATE = 2


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


class Status(StrEnum):
    SENT = "sent"  # on its way; settled in a later block
    INCLUDED = "included"  # mined (final once `confirmations` deep; a reorg before that reopens it)
    REORGED = "reorged"  # included, then taken by a reorg: it ends again later
    MISSED = "missed"  # not included by its deadline; nonces freed or reclaimed
    REJECTED = "rejected"  # refused before sending (simulation failed, fee over the cap)


@dataclass
class Outcome:
    """Where an action is: sent, or how it ended."""

    action_key: str
    status: Status
    block: int | None = None
    tx_hashes: list[str] = field(default_factory=list)
    reason: str = ""
    #: Wei paid to the builder through BuilderTip (0 unless included with a payment).
    coinbase_paid_wei: int = 0
    earned_wei: int = 0
    gas_used: int = 0
    gas_cost_wei: int = 0
    #: The OrderBook orders the action fills (known to the process that decided it).
    order_ids: tuple[int, ...] = ()


def _as_sent(
    rec: TxRecord, signed: SignedTx, target: int, group: str, deadlines: dict[int | None, int]
) -> TxRecord:
    """The record as `_mark_sent` left it in the store (`deadlines`: the moved ones)."""
    return rec.model_copy(
        update={
            "state": TxState.UNCONFIRMED.value, "tx_hash": signed.tx_hash, "target_block": target,
            "bundle_hash": group, "deadline_block": deadlines.get(rec.id, rec.deadline_block),
        }
    )  # fmt: skip


def _out_of_gas(error: str | None, revert: str) -> bool:
    """A simulated transaction that failed for want of gas (the EVM's, or OrderBook.OutOfGas)."""
    return "out of gas" in (error or "").lower() or "OutOfGas" in revert


@dataclass
class _Mined:
    block: int
    tx_hash: str
    gas_used: int
    gas_cost: int


class TxManager:
    """Sends and tracks the transactions of one (chain, signer)."""

    def __init__(
        self,
        *,
        w3: AsyncWeb3[Any],
        records: TxRecords,
        signer: Signer,
        fees: FeeEstimator,
        route: Route,
        chain: str,
        confirmations: int = 0,
        max_target_blocks: int = 3,
        block_time: float = 12.0,
        builder_tip: str | None = None,
        keeper: str = "",
        strategy: str = "",
        reads: ChainReads | None = None,
        fallback: RelayFallback | None = None,
    ) -> None:
        self.w3 = w3
        self.chain_reads: ChainReads = reads or Web3Reads(w3)
        self.records = records
        self.signer = signer
        self.fees = fees
        self.route = route
        #: Where actions go while no relay takes bundles (a bundle route only).
        self.fallback = fallback if isinstance(route, BundleRoute) else None
        self.chain = chain
        metrics.RELAY_FALLBACK.labels(chain, keeper).set(0)
        for status in Status:  # every outcome's series exists from the start, at 0: an alert on
            metrics.ACTIONS.labels(chain, str(status))  # "none included" can see a fresh deployment
        self.confirmations = confirmations
        self.max_target_blocks = max(1, max_target_blocks)
        self.block_time = block_time
        self.builder_tip = builder_tip
        self.keeper = keeper
        self.strategy = strategy
        #: Bundle groups this process sent and may carry into its next bundle: their records.
        self._own: dict[str, list[int]] = {}
        #: Records to carry into this block's bundle, with the head settle decided it on.
        self._carry: list[tuple[TxRecord, int]] = []
        #: Records sent (late) for a block past the head settle saw, read from the store by
        #: settle: the next submission for that block sends them in its own bundle.
        self._ahead: list[TxRecord] = []
        #: What this process knows of its actions (value, builder payment) until they settle.
        self._actions: dict[str, Action] = {}
        #: The first block each of those was sent for (inclusion latency is counted from it).
        self._first_target: dict[str, int] = {}
        #: Actions this settlement replaced by a no-op (dropped outside its moves).
        self._superseded: set[str] = set()
        #: Actions that maintenance (reconciliation) ended, reported by the next settlement.
        self._ended_elsewhere: list[Outcome] = []
        self._lock = anyio.Lock()

    # ------------------------------------------------------------------ state

    @property
    def pending_actions(self) -> int:
        """Actions this process sent that have not ended yet."""
        return len(self._actions)

    async def _sign(self, records: Sequence[TxRecord]) -> list[SignedTx]:
        # The record holds the fees it was (or will be) sent with: the same signature again,
        # byte for byte, after a crash. One round trip to the signer for the whole batch.
        if not records:
            return []
        fees = [Fees(int(r.max_fee_per_gas), int(r.max_priority_fee_per_gas)) for r in records]
        return await self.signer.sign(list(zip(records, fees, strict=True)))

    @property
    def _mempool(self) -> MempoolRoute | None:
        """The route of transactions sent one by one (fee bumps, replacements, fallback)."""
        if isinstance(self.route, MempoolRoute):
            return self.route
        return self.fallback.route if self.fallback is not None else None

    def _bundles_now(self) -> bool:
        return isinstance(self.route, BundleRoute) and not (self.fallback and self.fallback.active)

    # --------------------------------------------------------------- submit

    async def submit(self, actions: Sequence[Action], head: int, timestamp: int) -> list[Outcome]:
        """Sends this block's actions of this signer (and what settle carried) together, for
        the block after the chain's latest (which may be past `head` by now)."""
        async with self._lock:
            head, timestamp = await self._latest(head, timestamp)
            route = self.route if self._bundles_now() else self._mempool
            assert route is not None
            prepared: list[tuple[Action, Fees]] = []
            outcomes: list[Outcome] = []
            rejected: list[ActionLedger] = []
            market: list[Fees] = []

            async def quote() -> Fees:
                """The market's fees, read once for all of this block's actions."""
                if not market:
                    market.append(await self.fees.estimate())
                return market[0]

            for action in actions:
                ready, reason = await self._prepare(action, route, quote)
                if ready is None:
                    outcomes.append(
                        Outcome(
                            action.idempotency_key, Status.REJECTED, reason=reason, order_ids=action.order_ids
                        )
                    )
                    rejected.append(self._ledger_row(action, head, "rejected"))
                    log.info("action rejected", key=action.idempotency_key, reason=reason)
                    continue
                prepared.append(ready)
            if rejected:
                await anyio.to_thread.run_sync(self.records.record_ledger, rejected)
                metrics.ACTIONS.labels(self.chain, "rejected").inc(len(rejected))
            if isinstance(route, BundleRoute):
                outcomes += await self._submit_bundle(prepared, head, timestamp)
            else:
                outcomes += await self._submit_mempool(prepared, head, route, timestamp)
            return outcomes

    async def _latest(self, head: int, timestamp: int) -> tuple[int, int]:
        """The chain's latest block and time, if it moved on since the keeper decided."""
        latest = await self.chain_reads.latest()
        if latest is None:
            return head, timestamp
        return max(head, latest[0]), max(timestamp, latest[1])

    async def _prepare(
        self, action: Action, route: Route, quote: Callable[[], Awaitable[Fees]]
    ) -> tuple[tuple[Action, Fees] | None, str]:
        if isinstance(route, MempoolRoute):
            if len(action.calls) != 1:
                return None, "the mempool route sends one call per action"
            # No bundle, so no atomic builder payment: here the priority fee is the whole bid.
            action = replace(action, coinbase_payment_wei=0)
            action, refusal = await self._estimate(action)
            if refusal:
                return None, refusal
        payment = action.coinbase_payment_wei
        if payment > 0:
            if not self.builder_tip:
                return None, "a coinbase payment needs contracts.builder_tip"
            # Last in the action's calls: paid only if everything before it lands.
            tip = Call(to=self.builder_tip, data=TIP_SELECTOR, value=payment, gas_limit=TIP_GAS)
            action = replace(action, calls=(*action.calls, tip))
        try:
            fees = self._priced(action, payment, await quote(), bundled=isinstance(route, BundleRoute))
        except FeeTooHigh as exc:
            return None, str(exc)
        return (action, fees), ""

    async def _estimate(self, action: Action) -> tuple[Action, str | None]:
        """The action with its call's gas from eth_estimateGas (x1.25, never below the
        strategy's own figure), or the reason it would revert (public and private routes: a
        bundle is simulated whole instead)."""
        calls = []
        for call in action.calls:
            tx = {"from": self.signer.address, "to": call.to, "data": call.data, "value": call.value}
            try:
                est = await self.chain_reads.estimate_gas(tx)
            except (Web3RPCError, ContractLogicError, ValueError) as exc:
                data = getattr(exc, "data", None)
                return action, f"would revert: {explain_revert(data if isinstance(data, str) else None)}"
            calls.append(replace(call, gas_limit=max(call.gas_limit, est * 5 // 4)))
        return replace(action, calls=tuple(calls)), None

    def _priced(self, action: Action, coinbase_payment: int, market: Fees, *, bundled: bool) -> Fees:
        """The market's fees, or the strategy's priority-fee bid on top of the same base fee
        headroom; capped by config and by what the action is worth after its builder payment."""
        gas = sum(c.gas_limit for c in action.calls)
        bid = action.priority_fee_per_gas
        if bid is not None:
            base_headroom = market.max_fee_per_gas - market.max_priority_fee_per_gas
            market = Fees(base_headroom + bid, bid)
        budget = None if action.public_good else action.expected_value_wei - coinbase_payment
        if budget is not None and budget <= 0:
            raise FeeTooHigh(f"the builder payment ({coinbase_payment} wei) leaves nothing for gas")
        # A strategy's own bid is kept as it is (sent or refused); the market's is lowered to
        # what the action is worth in a bundle only: a transaction in a mempool under the
        # market's tip waits to be bumped, and bumps answer to the market, not to its worth.
        return self.fees.capped(market, gas, budget, lower_tip=bid is None and bundled)

    def _ledger_row(self, action: Action, head: int, status: str) -> ActionLedger:
        return ActionLedger(
            chain_id=self.records.chain_id, keeper=self.keeper, strategy=self.strategy,
            idempotency_key=action.idempotency_key, decided_block=head, status=status,
            order_ids=list(action.order_ids),
            earned_wei=action.expected_value_wei if status == "pending" else 0,
            # What a bundle pays the builder if it lands: kept for a process that settles it
            # without the action in hand (a replica sharing the signer).
            coinbase_wei=action.coinbase_payment_wei if status == "pending" else 0,
        )  # fmt: skip

    def _intents(self, prepared: Sequence[tuple[Action, Fees]], head: int, route: str) -> list[Intent]:
        intents = []
        for action, fees in prepared:
            deadline = head + min(max(action.deadline_blocks, 1), self.max_target_blocks)
            for i, call in enumerate(action.calls):
                intents.append(
                    Intent(
                        idempotency_key=f"{action.idempotency_key}#{i}", to=call.to, data=call.data,
                        value=call.value, gas_limit=call.gas_limit, route=route,
                        max_fee_per_gas=fees.max_fee_per_gas,
                        max_priority_fee_per_gas=fees.max_priority_fee_per_gas,
                        target_block=head + 1, deadline_block=deadline,
                    )
                )  # fmt: skip
        return intents

    async def _allocate(
        self, prepared: Sequence[tuple[Action, Fees]], head: int, route: Route
    ) -> list[TxRecord]:
        intents = self._intents(prepared, head, route.kind)
        ledger = [self._ledger_row(a, head, "pending") for a, _ in prepared]
        records = await anyio.to_thread.run_sync(self.records.allocate, intents, ledger)
        metrics.NONCE_ALLOCATIONS.labels(self.chain).inc(len(records))
        crash_point("after-allocate")
        for action, _ in prepared:
            self._actions[action.idempotency_key] = action
            self._first_target.setdefault(action.idempotency_key, head + 1)
        # A key allocated before (a repeated submit) is not sent twice: only what is unsent goes.
        return [r for r in records if TxState(r.state) is TxState.UNSTARTED]

    async def _submit_bundle(
        self, prepared: Sequence[tuple[Action, Fees]], head: int, timestamp: int
    ) -> list[Outcome]:
        assert isinstance(self.route, BundleRoute)
        # What settle carried goes again only within its deadline (the head may have moved on);
        # so does what was sent late for the block this bundle is for (one bundle per signer
        # per block: this one replaces it at the relays).
        carry = [(r, at) for r, at in self._carry if (r.deadline_block or 0) > head]
        carry += [
            (r, r.target_block)
            for r in self._ahead
            if r.target_block is not None and r.target_block <= head + 1 and (r.deadline_block or 0) > head
        ]
        self._carry, self._ahead = [], []
        if not prepared and not carry:
            return []
        fresh = await self._allocate(prepared, head, self.route) if prepared else []
        outcomes: list[Outcome] = []
        target = first = head + 1
        carried_at: dict[int | None, int] = {r.id: at for r, at in carry}
        # Only this submission's own records have their deadlines moved when it is late: a
        # record late again in a later block keeps the deadline it got here.
        deadlines = {r.id: r.deadline_block for r in fresh}
        batch = sorted([r for r, _ in carry] + fresh, key=lambda r: r.nonce)
        signed = await self._sign(batch)
        late = 0
        while True:
            batch, signed, refused, built = await self._simulated(batch, signed, target, timestamp)
            outcomes += refused
            if not batch:
                return outcomes
            if built is not None and target <= built < target + MAX_LATE and late < MAX_LATE:
                # The target block was built while this bundle was prepared (a busy machine):
                # it never had its chance there, so it goes for the next one, simulated again.
                late += 1
                target, timestamp = self._late(target, built, timestamp)
                continue
            crash_point("after-sign")
            group = bundle_hash([s.raw for s in signed])
            later = self._shifted(deadlines, target - first)
            # Recorded as sent before the send: a record another process dropped meanwhile
            # (its block built) does not move, and is not sent.
            moved = await self._mark_sent(batch, signed, target, group, carried_at, later)
            if len(moved) < len(batch):
                log.info("bundle not sent: part of it was settled meanwhile", target=target)
                return outcomes
            batch = [_as_sent(r, s, target, group, later) for r, s in zip(batch, signed, strict=True)]
            replacement = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.records.signer}:{target}"))
            sent = await self.route.send([s.raw for s in signed], target, replacement)
            crash_point("after-send")
            past = None
            if not sent.accepted and sent.refused:  # a relay unreachable: again would only wait again
                past = await self._past(target)
            if past is None:
                break
            # Refused, and its block is built: it came too late for it (a relay refuses a past
            # block). What of it landed all the same (sent before, for that block) leaves the
            # batch, settlement confirms it; the rest goes for the next block.
            built, used = past
            keep = [i for i, r in enumerate(batch) if r.nonce >= used]
            if not keep or late >= MAX_LATE or built >= target + MAX_LATE:
                break
            batch, signed = [batch[i] for i in keep], [signed[i] for i in keep]
            late += 1
            carried_at = dict.fromkeys((r.id for r in batch), target)
            target, timestamp = self._late(target, built, timestamp)
        metrics.BUNDLES.labels(self.chain, "sent").inc()
        if not sent.accepted:
            log.warning("no relay took the bundle", target=target, errors=list(sent.errors))
        if self.fallback is not None:
            # A bundle refused for a block built before it came is the machine's lateness,
            # not the relays' failure: it does not count toward sending by the fallback route.
            self.fallback.sent(sent.accepted or past is not None)
            if self.fallback.active and self.fallback.refused == self.fallback.after:
                log.warning(
                    "relays refuse bundles; sending by the fallback route",
                    route=self.fallback.route.kind, blocks=self.fallback.refused,
                )  # fmt: skip
                metrics.RELAY_FALLBACK.labels(self.chain, self.keeper).set(1)
        self._own[group] = [r.id or 0 for r in batch]
        for key in {action_key_of(r) for r in batch}:
            action = self._actions.get(key)
            orders = action.order_ids if action else ()
            outcomes.append(
                Outcome(key, Status.SENT, tx_hashes=[s.tx_hash for s in signed], order_ids=orders)
            )
        return outcomes

    async def _past(self, target: int) -> tuple[int, int] | None:
        """The chain's latest block and the signer's used nonce count, if block `target` is
        built (a bundle refused for it came too late); else None."""
        latest = await self.chain_reads.latest()
        if latest is None or latest[0] < target:
            return None
        return latest[0], await self.chain_reads.nonce(self.signer.address)

    async def _simulated(
        self, batch: list[TxRecord], signed: list[SignedTx], target: int, timestamp: int
    ) -> tuple[list[TxRecord], list[SignedTx], list[Outcome], int | None]:
        """The batch the relay's simulation for `target` accepts (refused actions left out,
        starved gas limits raised), the refusals, and the block the simulation ran on (None
        when the relay could not simulate)."""
        assert isinstance(self.route, BundleRoute)
        outcomes: list[Outcome] = []
        built = None
        for _round in range(SIM_ROUNDS):
            sim = await self.route.simulate(
                [s.raw for s in signed], target, timestamp + max(1, int(self.block_time))
            )
            built = sim.state_block if sim is not None else None
            if sim is None or sim.ok:
                break
            by_hash = {r.tx_hash.lower(): r for r in sim.results if r.error}
            failed_actions: dict[str, str] = {}
            starved: list[TxRecord] = []
            for rec, s in zip(batch, signed, strict=True):
                r = by_hash.get(s.tx_hash.lower())
                if r is None:
                    continue
                why = explain_revert(r.revert)
                if _out_of_gas(r.error, why) and TxState(rec.state) is TxState.UNSTARTED:
                    starved.append(rec)  # the strategy's gas figure was short: more, not a refusal
                    continue
                failed_actions.setdefault(action_key_of(rec), f"simulation failed: {r.error} ({why})")
            if starved and not failed_actions:
                batch = await self._more_gas(batch, starved)
                signed = await self._sign(batch)
                continue
            if not failed_actions:
                break
            if _round < SIM_ROUNDS - 1:
                # Only the first refusal is surely its own: the ones after it may follow from it
                # (a transaction the node refused leaves the next nonce invalid).
                first = next(iter(failed_actions))
                failed_actions = {first: failed_actions[first]}
            batch, signed, refused = await self._leave_out(batch, failed_actions, target)
            outcomes += refused
            if not batch:
                break
        return batch, signed, outcomes, built

    def _late(self, target: int, built: int, timestamp: int) -> tuple[int, int]:
        """The block after `built` (and its expected time) for a bundle made for `target`."""
        later = built + 1
        metrics.BUNDLES.labels(self.chain, "late").inc()
        log.info("bundle late for its block; sent for the next", target=target, now_for=later)
        return later, timestamp + (later - target) * max(1, int(self.block_time))

    @staticmethod
    def _shifted(deadlines: dict[int | None, int | None], shift: int) -> dict[int | None, int]:
        """The records' deadlines moved `shift` blocks later: blocks a bundle reached too late
        to be in do not count against its deadline."""
        if not shift:
            return {}
        return {i: d + shift for i, d in deadlines.items() if d is not None}

    async def _more_gas(self, batch: list[TxRecord], starved: Sequence[TxRecord]) -> list[TxRecord]:
        """The batch with twice the gas limit on the records the simulation ran out of gas."""
        limits = {r.id or 0: r.gas_limit * 2 for r in starved}
        await anyio.to_thread.run_sync(self.records.set_gas, limits)
        return [
            r.model_copy(update={"gas_limit": limits[r.id or 0]}) if (r.id or 0) in limits else r
            for r in batch
        ]

    async def _leave_out(
        self, batch: list[TxRecord], failed: dict[str, str], target: int
    ) -> tuple[list[TxRecord], list[SignedTx], list[Outcome]]:
        """The batch without the actions the simulation refused: unsent records of those are
        dropped and the rest renumbered onto the batch's lowest nonces; carried ones (sent
        before, whose block has passed) are dropped the same way, unless the chain has used
        their nonce: one sent before may have landed (a late bundle, in the block built while
        this one was prepared). Those leave the batch unreported: settlement finds them."""
        unsent = [r for r in batch if TxState(r.state) is TxState.UNSTARTED]
        keep = [r for r in unsent if action_key_of(r) not in failed]
        drop = [r for r in unsent if action_key_of(r) in failed]
        carried_bad = [r for r in batch if r not in unsent and action_key_of(r) in failed]
        carried_ok = [r for r in batch if r not in unsent and action_key_of(r) not in failed]
        if carried_bad:
            used = await self.chain_reads.nonce(self.signer.address)
            landed = {action_key_of(r) for r in carried_bad if r.nonce < used}
            carried_bad = [r for r in carried_bad if action_key_of(r) not in landed]
            carried_ok = [r for r in carried_ok if action_key_of(r) not in landed]
            failed = {k: why for k, why in failed.items() if k not in landed}
        updates = [LedgerUpdate(k, "rejected", earned_wei=0) for k in failed]
        if carried_bad:
            await anyio.to_thread.run_sync(
                lambda: self.records.apply(
                    [
                        Move(r.id or 0, TxState.DROPPED, "carried bundle refused by simulation")
                        for r in carried_bad
                    ]
                )
            )
        kept = (
            await anyio.to_thread.run_sync(
                self.records.renumber,
                [r.id or 0 for r in keep],
                [r.id or 0 for r in drop],
                "refused by simulation",
            )
            if drop
            else keep
        )
        await anyio.to_thread.run_sync(lambda: self.records.apply([], updates))
        outcomes = []
        for key, reason in failed.items():
            action = self._actions.pop(key, None)
            self._first_target.pop(key, None)
            orders = action.order_ids if action else ()
            outcomes.append(Outcome(key, Status.REJECTED, reason=reason, order_ids=orders))
            log.info("action refused by simulation", key=key, reason=reason, target=target)
        metrics.ACTIONS.labels(self.chain, "rejected").inc(len(failed))
        batch = sorted(carried_ok + list(kept), key=lambda r: r.nonce)
        return batch, await self._sign(batch), outcomes

    async def _mark_sent(
        self,
        batch: Sequence[TxRecord],
        signed: Sequence[SignedTx],
        target: int,
        group: str | None,
        carried_at: dict[int | None, int] | None = None,
        deadlines: dict[int | None, int] | None = None,
    ) -> set[int]:
        """Records the batch as sent for `target` (one transaction, with its attempts); the
        ids that moved. A carried record moves only if no process settled it since the head
        it was carried on. `deadlines`: new deadline blocks of records sent late."""
        carried_at, deadlines = carried_at or {}, deadlines or {}
        moves = [
            Move(
                r.id or 0,
                TxState.UNCONFIRMED,
                "sent",
                {"tx_hash": s.tx_hash, "target_block": target, "bundle_hash": group}
                | ({"deadline_block": deadlines[r.id]} if r.id in deadlines else {}),
                target_at_most=carried_at.get(r.id),
                only_from=PENDING,
            )
            for r, s in zip(batch, signed, strict=True)
        ]
        attempts = [
            TxAttempt(
                tx_id=r.id or 0, tx_hash=s.tx_hash, max_fee_per_gas=s.fees.max_fee_per_gas,
                max_priority_fee_per_gas=s.fees.max_priority_fee_per_gas, target_block=target,
            )
            for r, s in zip(batch, signed, strict=True)
        ]  # fmt: skip
        return set(await anyio.to_thread.run_sync(lambda: self.records.apply(moves, attempts=attempts)))

    async def _submit_mempool(
        self, prepared: Sequence[tuple[Action, Fees]], head: int, route: MempoolRoute, timestamp: int
    ) -> list[Outcome]:
        if not prepared:
            return []
        batch = sorted(await self._allocate(prepared, head, route), key=lambda r: r.nonce)
        signed = await self._sign(batch)
        crash_point("after-sign")
        moved = await self._mark_sent(batch, signed, head + 1, None)
        for r, s in zip(batch, signed, strict=True):
            if r.id not in moved:
                continue
            sent = await route.send_raw(s.raw)
            if not sent.accepted:
                log.info("node refused a send", tx_hash=s.tx_hash, errors=list(sent.errors))
        crash_point("after-send")
        if self.fallback is not None and self.fallback.probe_due(head):  # after the sends: never delays them
            await self._probe_relay([s.raw for s in signed], head, timestamp)
        return [
            Outcome(action_key_of(r), Status.SENT, tx_hashes=[s.tx_hash])
            for r, s in zip(batch, signed, strict=True)
        ]

    async def _probe_relay(self, raws: list[bytes], head: int, timestamp: int) -> None:
        """Asks the first relay to simulate what goes by the fallback now: if it answers,
        bundles take over from the next block (this block's transactions go as they are)."""
        assert self.fallback is not None
        assert isinstance(self.route, BundleRoute)
        sim = await self.route.simulate(raws, head + 1, timestamp + max(1, int(self.block_time)))
        self.fallback.probed(head, sim is not None)
        if sim is not None:
            log.warning("a relay answers again; bundles from the next block", head=head)
            metrics.RELAY_FALLBACK.labels(self.chain, self.keeper).set(0)

    # ---------------------------------------------------------------- settle

    async def settle(self, head: int) -> list[Outcome]:
        """The confirmer's step at a new head; returns the actions that ended."""
        async with self._lock:
            records = await anyio.to_thread.run_sync(self.records.open_records)
            self._forget_ended_elsewhere(records)
            # Sent (late) for a block not built yet: the next submission for it joins them.
            self._ahead = [
                r for r in records
                if r.route == "bundle" and TxState(r.state) is TxState.UNCONFIRMED
                and r.target_block is not None and r.target_block > head
            ]  # fmt: skip
            if not records:
                return self._reported([])
            watch = [r for r in records if self._due(r, head)]
            mined = await self._mined(watch)
            crash_point("after-receipt")
            moves: list[Move] = []
            for rec in records:
                moves += await self._decide(rec, mined.get(rec.id or 0), head)
            moves = await self._unless_used(moves, records)
            outcomes, ledger = self._ended(records, moves, mined)
            live_groups = {r.bundle_hash for r in records if TxState(r.state) in PENDING}
            self._own = {g: ids for g, ids in self._own.items() if g in live_groups}
            crash_point("before-commit")
            moved = set(await anyio.to_thread.run_sync(lambda: self.records.apply(moves, ledger)))
            # Only what this settlement moved is reported: another process (or an earlier round)
            # that made the same move reports it itself.
            mine = {action_key_of(r) for r in records if r.id in moved} | self._superseded
            self._superseded = set()
            return self._reported(await self._as_decided([o for o in outcomes if o.action_key in mine]))

    def _forget_ended_elsewhere(self, open_records: Sequence[TxRecord]) -> None:
        """Actions of this process whose records another process sharing the signer settled
        (it reports them): off this process's books, or they would stay in flight forever."""
        still_open = {action_key_of(r) for r in open_records}
        for key in [k for k in self._actions if k not in still_open]:
            del self._actions[key]
            self._first_target.pop(key, None)

    async def _as_decided(self, outcomes: list[Outcome]) -> list[Outcome]:
        """Outcomes of actions this process did not send (a replica sharing the signer did,
        or it ended here before a reorg) with the orders their ledger rows hold: the action
        log names the orders filled whoever settled them. The economics metrics count only
        what the sender valued (a re-inclusion after a reorg must not count twice)."""
        foreign = [o.action_key for o in outcomes if o.action_key not in self._actions]
        if not foreign:
            return outcomes
        try:
            orders = await anyio.to_thread.run_sync(lambda: self.records.orders_of(foreign))
        except Exception as exc:  # noqa: BLE001 - the moves are committed: reported as they are
            log.warning("the orders of actions settled here were not read", error=repr(exc)[:300])
            return outcomes
        known = {key: tuple(ids) for key, ids in orders.items()}
        return [o if o.order_ids else replace(o, order_ids=known.get(o.action_key, ())) for o in outcomes]

    def _reported(self, outcomes: list[Outcome]) -> list[Outcome]:
        """A settlement's outcomes, with what maintenance ended since the last one: their
        actions leave this process's books and are counted."""
        outcomes, self._ended_elsewhere = outcomes + self._ended_elsewhere, []
        for o in outcomes:
            first = None
            if o.status is not Status.REORGED:
                self._actions.pop(o.action_key, None)
                first = self._first_target.pop(o.action_key, None)
            metrics.ACTIONS.labels(self.chain, str(o.status)).inc()
            if o.status is Status.INCLUDED:
                metrics.BUNDLES.labels(self.chain, "included").inc()
                if first is not None and o.block is not None:
                    metrics.INCLUSION_BLOCKS.labels(self.chain).observe(o.block - first + 1)
            elif o.status is Status.MISSED:
                metrics.BUNDLES.labels(self.chain, "missed").inc()
        return outcomes

    async def _unless_used(self, moves: list[Move], records: Sequence[TxRecord]) -> list[Move]:
        """The moves, less those that free or unconfirm a nonce the chain has used: a receipt
        not found (a node that lags, a lookup that failed) must not free a nonce a mined
        transaction holds. Reconciliation decides those, with the chain's count in hand."""
        risky = {m.tx_id for m in moves if m.target is TxState.DROPPED or m.reason == "reorged out"}
        if not risky:
            return moves
        used = await self.chain_reads.nonce(self.signer.address)
        nonce_of = {r.id: r.nonce for r in records}
        return [m for m in moves if m.tx_id not in risky or nonce_of.get(m.tx_id, used) >= used]

    @staticmethod
    def _due(rec: TxRecord, head: int) -> bool:
        """Whether the chain may have news of this record at `head`."""
        state = TxState(rec.state)
        if state is TxState.CONFIRMED:
            return True  # a reorg may have taken it
        return rec.target_block is None or rec.target_block <= head

    async def _mined(self, records: Sequence[TxRecord]) -> dict[int, _Mined]:
        """The canonical inclusion of each record, by any hash it was sent under (or would have
        been: an unsent record is signed again, identically)."""
        hashes: dict[int, list[str]] = {}
        mempool_ids = [r.id or 0 for r in records if r.route in ("public", "private", "gap-fill")]
        attempts = (
            await anyio.to_thread.run_sync(self.records.attempt_hashes, mempool_ids) if mempool_ids else {}
        )
        unsent = [rec for rec in records if not rec.tx_hash]
        try:
            resigned = {r.id: s.tx_hash for r, s in zip(unsent, await self._sign(unsent), strict=True)}
        except SignerError as exc:  # a signer that refuses them now never signed them before
            log.warning("cannot sign unsent records to look for them", error=str(exc), count=len(unsent))
            resigned = {}
        for rec in records:
            known = [h for h in (rec.tx_hash or resigned.get(rec.id),) if h]
            hashes[rec.id or 0] = list(dict.fromkeys(known + attempts.get(rec.id or 0, [])))
        receipts = await self.chain_reads.receipts(h for hs in hashes.values() for h in hs)
        canonical = await self.chain_reads.canonical({r.block_number for r in receipts.values()})
        out: dict[int, _Mined] = {}
        for tx_id, hs in hashes.items():
            for h in hs:
                r = receipts.get(h)
                if r is None or canonical.get(r.block_number) != r.block_hash:
                    continue  # not mined, or served from a block a reorg took
                out[tx_id] = _Mined(r.block_number, h, r.gas_used, r.gas_used * r.effective_gas_price)
        return out

    async def _decide(self, rec: TxRecord, mined: _Mined | None, head: int) -> list[Move]:
        tx_id, state = rec.id or 0, TxState(rec.state)
        if mined is not None:
            if state is TxState.CONFIRMED:
                if mined.block <= head - self.confirmations:
                    return [Move(tx_id, TxState.FINALIZED, f"{self.confirmations} confirmations")]
                return []
            final = mined.block <= head - self.confirmations
            fields = {"included_block": mined.block, "tx_hash": mined.tx_hash}
            moves = [Move(tx_id, TxState.CONFIRMED, "mined", fields)]
            if final:
                moves.append(Move(tx_id, TxState.FINALIZED, f"{self.confirmations} confirmations"))
            return moves
        if state is TxState.CONFIRMED:
            return [Move(tx_id, TxState.UNCONFIRMED, "reorged out", {"included_block": None}, reopen=True)]
        if rec.target_block is not None and rec.target_block > head:
            return []  # its block is not built yet
        deadline = rec.deadline_block if rec.deadline_block is not None else head
        if state is TxState.UNSTARTED:
            # Never sent (its process died before the send) and its block has passed.
            return [Move(tx_id, TxState.DROPPED, "never sent; its block has passed", target_at_most=head)]
        if rec.route in ("bundle", "gap-fill") and rec.bundle_hash is not None:
            # A bundle (a gap fill sent by a mempool route has no bundle hash: it is bumped).
            if deadline > head and rec.bundle_hash in self._own and self._bundles_now():
                self._carry.append((rec, head))  # sent again with this block's bundle
                return []
            reason = f"bundle missed its blocks (settled at {head})"
            return [Move(tx_id, TxState.DROPPED, reason, target_at_most=head)]
        return await self._public(rec, head, deadline)

    async def _public(self, rec: TxRecord, head: int, deadline: int) -> list[Move]:
        """A public or private transaction not mined yet: bump its fees, or at its deadline
        replace it with a no-op that keeps the nonce (so it can neither land late nor leave a
        gap)."""
        route = self._mempool
        if route is None:  # sent by a fallback this process was not configured with: the
            # transaction may still land, so its nonce stays held; reconciliation decides it
            log.warning("a mempool transaction this process cannot follow", tx=rec.id, nonce=rec.nonce)
            return []
        fees = Fees(int(rec.max_fee_per_gas), int(rec.max_priority_fee_per_gas))
        market = await self.fees.estimate()
        if head >= deadline and rec.route != "gap-fill":
            # Replacing needs +12.5% on both fields; never past the configured maximum fee. A
            # replacement the node refuses at the cap waits, bumped later, as a gap fill.
            bumped = fees.bumped(market)
            cap = self.fees.max_fee
            if bumped.max_fee_per_gas > cap:
                bumped = Fees(cap, min(bumped.max_priority_fee_per_gas, cap))
            cancel = await anyio.to_thread.run_sync(
                lambda: self.records.supersede(
                    rec.id or 0, "replaced by a no-op after the deadline",
                    (bumped.max_fee_per_gas, bumped.max_priority_fee_per_gas), head + 50,
                )
            )  # fmt: skip
            if cancel is not None:  # by the mempool: it must replace the transaction there
                await self._send_now(cancel, head, mempool=route)
                self._superseded.add(action_key_of(rec))
            # Already dropped by supersede: the move only tells the settlement it ended here.
            return [Move(rec.id or 0, TxState.DROPPED, "replaced by a no-op after the deadline")]
        if head - (rec.target_block or head) < route.bump_after_blocks:
            return []
        try:
            bumped = self.fees.capped(fees.bumped(market), rec.gas_limit, None)
        except FeeTooHigh as exc:
            log.warning("fee bump capped", error=str(exc))
            return []
        rec = rec.model_copy(
            update={
                "max_fee_per_gas": bumped.max_fee_per_gas,
                "max_priority_fee_per_gas": bumped.max_priority_fee_per_gas,
            }
        )
        try:
            (signed,) = await self._sign([rec])
        except SignerError as exc:  # refused (its budget) or away: no bump this round, retried next
            log.warning("fee bump not signed", tx=rec.id, error=str(exc))
            return []
        await route.send_raw(signed.raw)
        fields = {
            "tx_hash": signed.tx_hash, "target_block": head + 1, "max_fee_per_gas": bumped.max_fee_per_gas,
            "max_priority_fee_per_gas": bumped.max_priority_fee_per_gas,
        }  # fmt: skip
        attempt = TxAttempt(
            tx_id=rec.id or 0, tx_hash=signed.tx_hash, max_fee_per_gas=bumped.max_fee_per_gas,
            max_priority_fee_per_gas=bumped.max_priority_fee_per_gas, target_block=head + 1,
        )  # fmt: skip
        await anyio.to_thread.run_sync(lambda: self.records.apply([], attempts=[attempt]))
        return [Move(rec.id or 0, TxState.UNCONFIRMED, "fee bumped", fields, only_from=PENDING)]

    def _ended(
        self, records: Sequence[TxRecord], moves: Sequence[Move], mined: dict[int, _Mined]
    ) -> tuple[list[Outcome], list[LedgerUpdate]]:
        """The actions whose every record is decided after `moves` (or that a reorg reopened),
        with their ledger updates."""
        after = {r.id: TxState(r.state) for r in records}
        reorged: set[int] = set()
        for m in moves:
            if after.get(m.tx_id) in m.from_states or m.target is TxState.DROPPED:
                if after.get(m.tx_id) in MINED and m.target is TxState.UNCONFIRMED:
                    reorged.add(m.tx_id)
                after[m.tx_id] = m.target
        by_action: dict[str, list[TxRecord]] = defaultdict(list)
        for r in records:
            if r.route != "gap-fill":
                by_action[action_key_of(r)].append(r)
        outcomes, ledger = [], []
        for key, recs in by_action.items():
            action = self._actions.get(key)
            orders = action.order_ids if action else ()
            if any(r.id in reorged for r in recs):
                outcomes.append(Outcome(key, Status.REORGED, reason="reorged out", order_ids=orders))
                ledger.append(LedgerUpdate(key, "pending"))
                continue
            states = {after[r.id] for r in recs}
            if states & PENDING or not any(TxState(r.state) in PENDING for r in recs):
                continue  # still undecided, or decided in an earlier settlement
            hashes = [r.tx_hash for r in recs if r.tx_hash]
            if states <= MINED:
                got = [mined[r.id or 0] for r in recs if (r.id or 0) in mined]
                block = max(m.block for m in got)
                gas_used, gas_cost = sum(m.gas_used for m in got), sum(m.gas_cost for m in got)
                coinbase = action.coinbase_payment_wei if action else None  # None: the row's
                earned = action.expected_value_wei if action else None
                outcomes.append(
                    Outcome(key, Status.INCLUDED, block, hashes, coinbase_paid_wei=coinbase or 0,
                            earned_wei=earned or 0, gas_used=gas_used, gas_cost_wei=gas_cost,
                            order_ids=orders)
                )  # fmt: skip
                ledger.append(
                    LedgerUpdate(key, "included", block, tuple(hashes), earned, gas_used, gas_cost, coinbase)
                )
            else:
                ids = {r.id for r in recs}
                reason = next(
                    (m.reason for m in moves if m.tx_id in ids and m.target is TxState.DROPPED), "dropped"
                )
                outcomes.append(
                    Outcome(key, Status.MISSED, tx_hashes=hashes, reason=reason, order_ids=orders)
                )
                ledger.append(LedgerUpdate(key, "missed", None, tuple(hashes), 0))
        return outcomes, ledger

    # ----------------------------------------------------------- maintenance

    async def maintain(self, head: int, *, after_reorg: bool = False) -> ReconcileReport:
        """Reconciles the records with the chain, fills nonce gaps, and observes."""
        async with self._lock:
            # The count first, receipts after: whatever the count includes is mined, and its
            # receipt is there to be read (the other order calls a transaction mined between
            # the two reads "nonce used by another transaction").
            chain_nonce = await self.chain_reads.nonce(self.signer.address)
            finalized_from = chain_nonce if after_reorg else None
            records = await anyio.to_thread.run_sync(lambda: self.records.open_records(finalized_from))
            mined = await self._mined(records)
            lookup = {tx_id: m.block for tx_id, m in mined.items()}
            ended: list[tuple[Sequence[TxRecord], list[Outcome]]] = []

            def ledger_of(recs: Sequence[TxRecord], moves: Sequence[Move]) -> list[LedgerUpdate]:
                outcomes, ledger = self._ended(recs, moves, mined)
                ended.append((recs, outcomes))
                return ledger

            report = await anyio.to_thread.run_sync(
                lambda: self.records.reconcile(
                    chain_nonce, lambda rec: lookup.get(rec.id or 0), ledger_of, after_reorg=after_reorg
                )
            )
            # What reconciliation ended is this process's to report, as a settlement's would be
            # (else an action it sent would stay in flight: settlement reports what it moves).
            for recs, outcomes in ended:
                mine = {action_key_of(r) for r in recs if r.id in report.moved}
                self._ended_elsewhere += await self._as_decided([o for o in outcomes if o.action_key in mine])
            metrics.NONCE_GAPS.labels(self.chain).set(len(report.gaps))
            if report.consumed or report.reorged or report.recovered:
                log.warning(
                    "nonce reconcile", consumed=report.consumed, reorged=report.reorged,
                    recovered=report.recovered, gaps=report.gaps,
                )  # fmt: skip
            if report.gaps:
                await self._fill_gaps(report.gaps, head)
            metrics.SIGNER_BALANCE.labels(self.chain).set(await self.chain_reads.balance(self.signer.address))
            for state, n in (await anyio.to_thread.run_sync(self.records.state_counts)).items():
                metrics.TX_STATE.labels(self.chain, state).set(n)
            return report

    async def _fill_gaps(self, gaps: Sequence[int], head: int) -> None:
        """A no-op self-transfer on every gap nonce, sent at once (a bundle of its own for the
        next block; if it misses, its nonce is freed again and the next round retries)."""
        try:
            fees = self.fees.capped(await self.fees.estimate(), NO_OP_GAS, None)
        except FeeTooHigh as exc:  # a base-fee spike: the gap waits for fees under the cap
            log.warning("gap fill waits", error=str(exc), nonces=gaps)
            return
        for nonce in gaps:
            key = f"gap:{self.chain}:{nonce}:{uuid.uuid4().hex[:8]}"
            claim = partial(
                self.records.claim_gap, nonce, key, (fees.max_fee_per_gas, fees.max_priority_fee_per_gas),
                head + self.max_target_blocks,
            )  # fmt: skip
            rec = await anyio.to_thread.run_sync(claim)
            if rec is not None:
                await self._send_now(rec, head)

    async def _send_now(self, rec: TxRecord, head: int, mempool: MempoolRoute | None = None) -> None:
        """Sends one record by itself (gap fills, no-op replacements): by `mempool` when given,
        else by the route in use."""
        try:
            (signed,) = await self._sign([rec])
        except SignerError as exc:  # one refusal must not end the settlement of every other record
            log.warning("not signed; left for the next round", tx=rec.id, nonce=rec.nonce, error=str(exc))
            return
        mempool = mempool or (None if self._bundles_now() else self._mempool)
        group = bundle_hash([signed.raw]) if mempool is None else None
        if not await self._mark_sent([rec], [signed], head + 1, group):
            return
        if mempool is not None:
            await mempool.send_raw(signed.raw)
        elif isinstance(self.route, BundleRoute):
            await self.route.send([signed.raw], head + 1, str(uuid.uuid4()))
