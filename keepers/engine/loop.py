"""The keeper loop: one process per keeper kind, the consumer of a BlockSource. On each new
head: the block (its logs fetched and stored), the transaction manager's settlement of what
it has in flight, the market at that block; then the candidates (in-memory indexes the
Block updates), the decision (`decide`, shared with replay), and the transaction manager,
which sends the block's actions together. Stopping (SIGTERM) closes intake and keeps
settling until nothing is in flight, up to the drain timeout.

The three reads run one after the other: run side by side they were measured slower on two
cores (reaction p50 61 ms against 49 ms at 10k orders, `bench/reaction.py`): each is mostly
Python work in one interpreter, and the node they would overlap with shares the machine.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio
import structlog

from keepers.chain.block import Block
from keepers.chain.source import BlockSource
from keepers.engine.candidates import CandidateSource, no_candidates, shard_key
from keepers.engine.decide import decide
from keepers.engine.market import MarketSnapshot, SnapshotReader
from keepers.engine.pauses import CollectBetweenBlocks
from keepers.engine.strategy import BlockContext, Strategy
from keepers.engine.views import OrderView
from keepers.ha.elector import LeaderElector
from keepers.ha.lease import NotLeader
from keepers.ha.shards import ShardSet
from keepers.obs import metrics
from keepers.store.engine import checkpoint_wal
from keepers.store.ledger import Ledger
from keepers.store.tables import Order
from keepers.tx.actions import Action
from keepers.tx.manager import Outcome, Status, TxManager
from keepers.tx.signer import SignerError

log = structlog.get_logger("keeper")


@dataclass
class KeeperState:
    """What health checks and tests read."""

    last_block: int = -1
    blocks: int = 0
    #: Actions sent and not ended yet.
    in_flight: int = 0
    #: How actions ended (and those refused before sending), newest last.
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
        source: BlockSource,
        txm: TxManager,
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
        name: str | None = None,
    ) -> None:
        self.kind = kind
        #: The keeper instance (`[keepers.<name>]`): its metrics' `keeper` label.
        self.name = name or kind
        # Every series an alert takes a rate of exists from the start, at 0.
        for error in ("exception", "timeout", "invalid", "sync_state"):
            metrics.STRATEGY_ERRORS.labels(self.name, strategy_name, error)
        metrics.BLOCK_ERRORS.labels(chain, self.name)
        metrics.FENCED.labels(chain, self.name)
        self.chain = chain
        self.chain_id = chain_id
        self.strategy = strategy
        self.strategy_name = strategy_name
        self.source = source
        self.txm = txm
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
        self._maintaining = False
        self._warmed = False
        self._head_seen_at = time.monotonic()
        self.state = KeeperState()
        self._tasks: anyio.abc.TaskGroup | None = None
        self.collector = CollectBetweenBlocks()

    async def run(self) -> None:
        """Runs until cancelled; on cancellation, keeps settling what is in flight first."""
        async with anyio.create_task_group() as tasks:
            self._tasks = tasks
            try:
                await self._warm_market()
                async for number in self.source.heads():
                    if number > self.state.last_block and not self.state.draining:
                        await self.step(number)
                        self.collector.after_block()
            finally:
                self.state.draining = True
                with anyio.CancelScope(shield=True), anyio.move_on_after(self.drain_timeout):
                    await self._drain()
                if self.state.in_flight:
                    log.warning("drain timed out", in_flight=self.state.in_flight, kind=self.kind)
                tasks.cancel_scope.cancel()

    async def _warm_market(self) -> None:
        """One market read before the first head: the pools' tokens and decimals, the markets'
        terms and the encoded per-block reads are fetched and built here, not in the first
        block's reaction (16 to 20 ms of it in the reaction bench). A failure only leaves that
        work to the first block."""
        if self.snapshots is None:
            return
        try:
            await self.snapshots.read(await self.source.follower.head())
        except Exception as exc:  # noqa: BLE001 - the first block reads it again
            log.info("market warm-up failed; the first block reads it", error=repr(exc)[:200])

    async def _drain(self) -> None:
        """Settles on every new head until nothing this process sent is in flight."""
        seen = self.state.last_block
        while self.txm.pending_actions:
            try:
                head = await self.source.follower.head()
                if head > seen:
                    seen = head
                    self._record(await self.txm.settle(head))
                    # A bundle that missed its block is carried into the next one: with no new
                    # actions coming, it goes again on its own (else it waits out its deadline).
                    self._record(await self.txm.submit([], head, 0))
            except Exception as exc:  # noqa: BLE001 - a node fault: drain_timeout bounds the wait
                log.warning("drain: a round failed; retrying", error=repr(exc)[:200])
            await anyio.sleep(self.source.poll_interval)
        self.state.in_flight = self.txm.pending_actions

    @property
    def leads(self) -> bool:
        if self.shards is not None:
            return self.shards.is_leader
        return self.leader is None or self.leader.is_leader

    async def step(self, number: int) -> None:
        """Block `number`: stored, settled and its market read; then decided and sent."""
        self._head_seen_at = self.source.follower.head_seen_at
        block = await self.source.block(number)
        if block is not None and block.fork_block is not None:
            # A reorg may have taken our transactions, finalized ones too (deeper than
            # `confirmations`, which settlement no longer watches): reconcile with the chain's
            # nonce first, so this settlement drops what it took and frees the nonces for this
            # block's actions (else they are refused for a nonce ahead of the chain).
            await self._maintain(number, after_reorg=True)
        await self._settle(number)  # receipts need no logs: settle whatever the sync did
        if block is None:
            return  # the chain moved under the reads, or the node failed them: the next head retries
        self.state.blocks += 1
        if (self.state.blocks - 1) % self.maintenance_every == 0 and not self._maintaining:
            assert self._tasks is not None
            self._tasks.start_soon(self._maintain, number)
        try:
            if self.leads:  # a standby only follows: synced, nothing to decide
                await self._decide(block)
        finally:
            self.state.last_block = number  # handled: decided and submitted

    async def _settle(self, number: int) -> None:
        """The confirmer's step: what the last blocks decided frees nonces for this one."""
        try:
            self._record(await self.txm.settle(number))
        except Exception as exc:  # noqa: BLE001 - settling retries at the next head
            log.warning("settling failed", block=number, error=repr(exc))

    async def _decide(self, block: Block) -> None:
        try:
            snapshot = await self.snapshots.read(block.number) if self.snapshots else None
            candidates = await self.candidates(block, snapshot)
        except Exception as exc:  # noqa: BLE001 - a failed read costs this block, not the keeper
            metrics.BLOCK_ERRORS.labels(self.chain, self.name).inc()
            log.error("block skipped: could not read the market", block=block.number, error=repr(exc))
            return
        await self.act(block, snapshot, candidates)

    async def act(self, block: Block, snapshot: MarketSnapshot | None, candidates: Sequence[object]) -> None:
        """The decision for a block and its submission."""
        shard_of: dict[int, int] = {}
        if self.shards is not None:
            candidates = [c for c in candidates if self.shards.owns(shard_key(c))]
            shard_of = {c.order_id: shard_key(c) for c in candidates if isinstance(c, OrderView | Order)}
        metrics.CANDIDATES.labels(self.chain, self.name).set(len(candidates))
        ctx = BlockContext(
            chain=self.chain,
            chain_id=self.chain_id,
            number=block.number,
            timestamp=block.timestamp,
            candidates=candidates,
            prices={t: p for t, (p, fresh) in snapshot.prices.items() if fresh} if snapshot else {},
            contracts=self.contracts,
            market=snapshot,
            reader=self.source.follower.w3,
            keeper_address=self.keeper_address,
        )
        if not self._warmed:
            self._warmed = True
            await self._warm(ctx)
        actions = await decide(
            self.strategy, ctx, kind=self.name, name=self.strategy_name, timeout=self.strategy_timeout
        )
        log.debug(
            "block",
            block=block.number,
            candidates=[getattr(c, "order_id", None) for c in candidates][:50],
            actions=[a.idempotency_key for a in actions],
        )
        await self._submit(actions, block.number, block.timestamp, shard_of)
        # Bookkeeping after the submissions are on their way, never before them.
        if self.ledger is not None:
            executable = [i for a in actions for i in a.order_ids]
            if executable:
                try:
                    await anyio.to_thread.run_sync(
                        self.ledger.mark_executable, self.chain_id, executable, block.number
                    )
                except Exception as exc:  # noqa: BLE001 - bookkeeping must not cost a fill
                    log.warning("could not record executable orders", error=repr(exc))

    async def _warm(self, ctx: BlockContext) -> None:
        """The strategy's sync_state, once, before its first block (a failure is logged: the
        strategy then starts cold)."""
        try:
            with anyio.fail_after(self.strategy_timeout * 5):
                await self.strategy.sync_state(ctx)
        except Exception as exc:  # noqa: BLE001 - a plugin's warm-up must not stop the keeper
            metrics.STRATEGY_ERRORS.labels(self.name, self.strategy_name, "sync_state").inc()
            log.warning("strategy sync_state failed", error=repr(exc))

    async def _submit(
        self, actions: Sequence[Action], head: int, timestamp: int, shard_of: dict[int, int]
    ) -> None:
        """This block's actions (and what the last block carried), sent together."""
        try:
            if self.shards is not None:
                keys = sorted({shard_of[i] for a in actions for i in a.order_ids if i in shard_of})
                with self.shards.acting_for(keys):
                    outcomes = await self.txm.submit(actions, head, timestamp)
            else:
                outcomes = await self.txm.submit(actions, head, timestamp)
        except NotLeader as exc:
            metrics.FENCED.labels(self.chain, self.name).inc()
            log.warning("submission fenced: the lease was lost", block=head, error=str(exc))
            return
        except Exception as exc:
            if _outside_fault(exc):  # the node or the signer: retried at the next head, no bug
                log.warning("submission waits: a node or signer fault", block=head, error=repr(exc)[:300])
            else:
                log.exception("submission failed", block=head, error=repr(exc))
            return
        if any(o.status is Status.SENT for o in outcomes):
            reaction = time.monotonic() - self._head_seen_at
            metrics.REACTION.labels(self.chain, self.name).observe(reaction)
        self._record(outcomes)

    def _record(self, outcomes: Sequence[Outcome]) -> None:
        """Ended (and refused) actions into the state and the economics metrics."""
        labels = (self.chain, self.name, self.strategy_name)
        for o in outcomes:
            if o.status is Status.SENT:
                continue
            self.state.outcomes.append(o)
            if o.status is Status.INCLUDED:
                metrics.EARNED_WEI.labels(*labels).inc(o.earned_wei)
                metrics.SPENT_WEI.labels(*labels).inc(o.gas_cost_wei + o.coinbase_paid_wei)
            log.info(
                "action", key=o.action_key, orders=list(o.order_ids) or None, status=o.status,
                block=o.block, reason=o.reason,
            )  # fmt: skip
        del self.state.outcomes[: -self.keep_outcomes]
        self.state.in_flight = self.txm.pending_actions

    async def _maintain(self, head: int, *, after_reorg: bool = False) -> None:
        """Reconcile nonces with the chain, fill gaps, observe, checkpoint the store's WAL (first
        block, then every few; and on a reorg, finalized records included)."""
        self._maintaining = True
        try:
            await self.txm.maintain(head, after_reorg=after_reorg)
            await anyio.to_thread.run_sync(checkpoint_wal, self.txm.records.engine)
        except Exception as exc:  # noqa: BLE001 - maintenance retries next round
            log.warning("maintenance failed", error=repr(exc))
        finally:
            self._maintaining = False


def _outside_fault(exc: BaseException) -> bool:
    """A fault of something outside the keeper (an RPC node, the signer), alone or grouped."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_outside_fault(e) for e in exc.exceptions)
    return isinstance(exc, (OSError, TimeoutError, SignerError))
