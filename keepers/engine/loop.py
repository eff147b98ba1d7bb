"""The keeper loop: one process per keeper kind. On every synced head it gathers candidates,
asks the strategy (guarded), drops actions not worth sending, and submits the rest concurrently.
Stopping (SIGTERM) closes intake and lets in-flight submissions finish, up to the drain timeout.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
import structlog
from web3.exceptions import TransactionNotFound

from keepers.chain.follower import ChainFollower, SyncResult
from keepers.engine.candidates import CandidateSource, no_candidates, shard_key
from keepers.engine.guard import guarded_on_block
from keepers.engine.market import SnapshotReader
from keepers.engine.strategy import BlockContext, Strategy
from keepers.ha.elector import LeaderElector
from keepers.ha.lease import NotLeader
from keepers.ha.shards import ShardSet
from keepers.obs import metrics
from keepers.store.ledger import Ledger
from keepers.store.tables import ActionLedger, Order
from keepers.tx.actions import Action
from keepers.tx.submit import Outcome, Status, Submitter

log = structlog.get_logger("keeper")


@dataclass
class KeeperState:
    """What health checks and tests read."""

    last_block: int = -1
    blocks: int = 0
    in_flight: int = 0
    outcomes: list[Outcome] = field(default_factory=list)
    draining: bool = False


class KeeperLoop:
    def __init__(
        self,
        *,
        kind: str,
        chain: str,
        chain_id: int,
        strategy: Strategy,
        strategy_name: str,
        follower: ChainFollower,
        submitter: Submitter,
        candidates: CandidateSource = no_candidates,
        snapshots: SnapshotReader | None = None,
        keeper_address: str = "",
        contracts: dict[str, str] | None = None,
        strategy_timeout: float = 2.0,
        drain_timeout: float = 20.0,
        keep_outcomes: int = 1000,
        maintenance_every: int = 10,
        ledger: Ledger | None = None,
        leader: LeaderElector | None = None,
        shards: ShardSet | None = None,
    ) -> None:
        self.kind = kind
        self.chain = chain
        self.chain_id = chain_id
        self.strategy = strategy
        self.strategy_name = strategy_name
        self.follower = follower
        self.submitter = submitter
        self.candidates = candidates
        self.snapshots = snapshots
        self.keeper_address = keeper_address
        self.contracts = contracts or {}
        self.strategy_timeout = strategy_timeout
        self.drain_timeout = drain_timeout
        self.keep_outcomes = keep_outcomes
        self.maintenance_every = maintenance_every
        self.ledger = ledger
        #: With replicas, only the lease holder decides and submits; the others follow the
        #: chain so their store is warm when they take over.
        self.leader = leader
        #: Or, with shards, each replica decides and submits for the shards it holds only.
        self.shards = shards
        self._shard_of: dict[int, int] = {}  # order id -> shard key, from the block's candidates
        self._maintaining = False
        self.state = KeeperState()
        self._submissions: anyio.abc.TaskGroup | None = None
        self._in_flight_scopes: set[anyio.CancelScope] = set()

    async def run(self, *, ws_url: str | None = None, poll_interval: float = 1.0) -> None:
        """Runs until cancelled; on cancellation, drains in-flight submissions first."""
        async with anyio.create_task_group() as submissions:
            self._submissions = submissions
            try:
                await self.follower.run(self.on_synced, ws_url=ws_url, poll_interval=poll_interval)
            finally:
                # Submissions run shielded (a stop must not cut a bundle off between send and
                # bookkeeping); wait for them, and only past the drain timeout cancel the rest.
                self.state.draining = True
                with anyio.CancelScope(shield=True), anyio.move_on_after(self.drain_timeout):
                    while self.state.in_flight:
                        await anyio.sleep(0.05)
                if self.state.in_flight:
                    log.warning("drain timed out", in_flight=self.state.in_flight, kind=self.kind)
                for scope in list(self._in_flight_scopes):
                    scope.cancel()
                submissions.cancel_scope.cancel()

    @property
    def leads(self) -> bool:
        if self.shards is not None:
            return self.shards.is_leader
        return self.leader is None or self.leader.is_leader

    async def on_synced(self, result: SyncResult) -> None:
        if self.state.draining or result.head <= self.state.last_block:
            return
        self.state.last_block = result.head
        self.state.blocks += 1
        if (self.state.blocks - 1) % self.maintenance_every == 0 and not self._maintaining:
            assert self._submissions is not None
            self._submissions.start_soon(self._maintain)
        if not self.leads:
            return  # a standby: synced, nothing to decide
        try:
            snapshot = await self.snapshots.read(result.head) if self.snapshots else None
            candidates = await self.candidates(result, snapshot)
            block = await self.follower.w3.eth.get_block(result.head)
        except Exception as exc:  # noqa: BLE001 - a failed read costs this block, not the keeper
            metrics.BLOCK_ERRORS.labels(self.chain, self.kind).inc()
            log.error("block skipped: could not read the market", block=result.head, error=repr(exc))
            return
        if self.shards is not None:
            candidates = [c for c in candidates if self.shards.owns(shard_key(c))]
            self._shard_of = {c.order_id: shard_key(c) for c in candidates if isinstance(c, Order)}
        metrics.CANDIDATES.labels(self.chain, self.kind).set(len(candidates))
        ctx = BlockContext(
            chain=self.chain,
            chain_id=self.chain_id,
            number=result.head,
            timestamp=int(block["timestamp"]),
            candidates=candidates,
            contracts=self.contracts,
            market=snapshot,
            reader=self.follower.w3,
            keeper_address=self.keeper_address,
        )
        actions = await guarded_on_block(
            self.strategy, ctx, keeper=self.kind, name=self.strategy_name, timeout=self.strategy_timeout
        )
        log.debug(
            "block",
            block=result.head,
            candidates=[getattr(c, "order_id", None) for c in candidates][:50],
            actions=[a.idempotency_key for a in actions],
        )
        for action in actions:
            if action.expected_value_wei <= 0 and not action.public_good:
                metrics.ACTIONS.labels(self.chain, "unprofitable").inc()
                log.info("action dropped: not worth sending", key=action.idempotency_key)
                continue
            assert self._submissions is not None
            self._submissions.start_soon(self._submit, action, result.head)
        # Bookkeeping after the submissions are on their way, never before them.
        if self.ledger is not None:
            executable = [i for a in actions for i in a.order_ids]
            if executable:
                try:
                    await anyio.to_thread.run_sync(
                        self.ledger.mark_executable, self.chain_id, executable, result.head
                    )
                except Exception as exc:  # noqa: BLE001 - bookkeeping must not cost a fill
                    log.warning("could not record executable orders", error=repr(exc))

    async def _maintain(self) -> None:
        """Reconcile nonces with the chain (first block, then every few), fill gaps, observe."""
        self._maintaining = True
        try:
            report = await self.submitter.reconcile()
            if report.gaps and self.leads:
                filled = await self.submitter.fill_gaps()
                log.info("nonce gaps filled", gaps=report.gaps, sent=filled)
            await self.submitter.observe()
        except Exception as exc:  # noqa: BLE001 - maintenance retries next round
            log.warning("maintenance failed", error=repr(exc))
        finally:
            self._maintaining = False

    async def _submit(self, action: Action, decided_block: int) -> None:
        self.state.in_flight += 1
        # Shielded: a stop must not cut a bundle off between send and bookkeeping. run() cancels
        # this scope only once the drain timeout has passed.
        with anyio.CancelScope(shield=True) as scope:
            self._in_flight_scopes.add(scope)
            try:
                if self.shards is not None:
                    keys = [self._shard_of[i] for i in action.order_ids if i in self._shard_of]
                    with self.shards.acting_for(keys):
                        outcome = await self.submitter.submit(action)
                else:
                    outcome = await self.submitter.submit(action)
            except NotLeader as exc:
                metrics.FENCED.labels(self.chain, self.kind).inc()
                log.warning(
                    "submission fenced: the lease was lost", key=action.idempotency_key, error=str(exc)
                )
                return
            except Exception as exc:
                log.exception("submission failed", key=action.idempotency_key, error=repr(exc))
                return
            finally:
                self._in_flight_scopes.discard(scope)
                self.state.in_flight -= 1
        if scope.cancel_called:
            log.warning("submission cut off after the drain timeout", key=action.idempotency_key)
            return
        self.state.outcomes.append(outcome)
        del self.state.outcomes[: -self.keep_outcomes]
        await self._account(action, decided_block, outcome)
        log.info(
            "action",
            key=action.idempotency_key,
            orders=list(action.order_ids) or None,
            status=outcome.status,
            block=outcome.block,
            reason=outcome.reason,
        )

    async def _account(self, action: Action, decided_block: int, outcome: Outcome) -> None:
        """Books what the action earned and cost (ledger and metrics)."""
        gas_used = gas_cost = 0
        included = outcome.status is Status.INCLUDED
        if included:
            for h in outcome.tx_hashes:
                try:
                    receipt = await self.follower.w3.eth.get_transaction_receipt(h)  # type: ignore[arg-type]
                except TransactionNotFound:
                    continue  # a replaced attempt never landed
                if int(receipt["blockNumber"]) != outcome.block:
                    continue
                gas_used += int(receipt["gasUsed"])
                gas_cost += int(receipt["gasUsed"]) * int(receipt["effectiveGasPrice"])
        earned = action.expected_value_wei if included else 0
        coinbase = outcome.coinbase_paid_wei
        labels = (self.chain, self.kind, self.strategy_name)
        metrics.EARNED_WEI.labels(*labels).inc(earned)
        metrics.SPENT_WEI.labels(*labels).inc(gas_cost + coinbase)
        if self.ledger is None:
            return
        entry = ActionLedger(
            chain_id=self.chain_id,
            keeper=self.kind,
            strategy=self.strategy_name,
            idempotency_key=action.idempotency_key,
            decided_block=decided_block,
            status=str(outcome.status),
            included_block=outcome.block,
            tx_hashes=list(outcome.tx_hashes),
            order_ids=list(action.order_ids),
            earned_wei=earned,
            gas_used=gas_used,
            gas_cost_wei=gas_cost,
            coinbase_wei=coinbase,
        )
        try:
            await anyio.to_thread.run_sync(self.ledger.record, entry)
        except Exception as exc:  # noqa: BLE001 - bookkeeping must not stop the keeper
            log.warning("could not record the action in the ledger", error=repr(exc))
