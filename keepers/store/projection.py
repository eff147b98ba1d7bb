"""Chain events -> orders, fills, positions and vaults. The rows are a fold over the events, so a
reorg rolls back by deleting the orphaned events and re-folding what they touched."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete
from sqlmodel import Session, col, select

from keepers.chain.events import Event
from keepers.store.tables import BlockHash, ChainEvent, Fill, Order, Position, Vault

#: Projection keys an event touches: ("order", id) / ("position", market, borrower) / ("vault", addr, id).
Key = tuple[Any, ...]


def key_of(contract: str, address: str, name: str, args: dict[str, Any]) -> Key | None:
    if contract == "OrderBook" and "id" in args and name.startswith("Order"):
        return ("order", int(args["id"]))
    if contract == "LendingMarket" and "borrower" in args:
        return ("position", address.lower(), str(args["borrower"]).lower())
    if contract == "RebalancingVault" and "id" in args and name in ("BasketCreated", "TargetsSet"):
        return ("vault", address.lower(), int(args["id"]))
    return None


def apply(session: Session, chain_id: int, ev: ChainEvent) -> None:
    """Folds one stored event into the projection rows."""
    a = ev.args
    if ev.name == "OrderPlaced":
        p = a["params"]
        session.merge(
            Order(
                chain_id=chain_id,
                order_id=int(a["id"]),
                book=ev.address.lower(),
                owner=str(a["owner"]).lower(),
                market=int(a["market"]),
                kind=int(p["kind"]),
                amount_in=int(p["amountIn"]),
                min_amount_out=int(p["minAmountOut"]),
                remaining=int(p["amountIn"]),
                expiry=int(p["expiry"]) or 2**32 - 1,
                keeper_fee_bps=int(p["keeperFeeBps"]),
                trigger_or_clip=int(p["triggerOrClip"]),
                start=int(p["start"]),
                interval=int(p["interval"]),
                slices=int(p["slices"]),
                status="open",
                placed_block=ev.block_number,
                updated_block=ev.block_number,
            )
        )
        return
    if ev.name in ("OrderArmed", "OrderFilled", "OrderCancelled", "OrderExpired"):
        order = session.get(Order, (chain_id, int(a["id"])))
        if order is None:
            return  # placed before the follower's start block
        order.updated_block = ev.block_number
        if ev.name == "OrderArmed":
            order.status = "armed"
            order.executable_block = order.executable_block or ev.block_number
        elif ev.name == "OrderFilled":
            session.merge(
                Fill(
                    chain_id=chain_id,
                    tx_hash=ev.tx_hash,
                    log_index=ev.log_index,
                    order_id=order.order_id,
                    keeper=str(a["keeper"]).lower(),
                    amount_in=int(a["amountIn"]),
                    amount_out=int(a["amountOut"]),
                    keeper_fee=int(a["keeperFee"]),
                    block_number=ev.block_number,
                )
            )
            order.remaining = int(a["remaining"])
            order.status = "filled" if order.remaining == 0 else "partially_filled"
        else:
            order.remaining = 0
            order.status = "cancelled" if ev.name == "OrderCancelled" else "expired"
        session.add(order)
        return
    if _is_market_event(ev.name):
        _apply_position(session, chain_id, ev)
        return
    if ev.name == "BasketCreated":
        session.merge(
            Vault(
                chain_id=chain_id,
                vault=ev.address.lower(),
                basket_id=int(a["id"]),
                owner=str(a["owner"]).lower(),
                tokens=[str(t).lower() for t in a["tokens"]],
                weights_bps=[int(w) for w in a["weightsBps"]],
                drift_threshold_bps=int(a["driftThresholdBps"]),
                max_slippage_bps=int(a["maxSlippageBps"]),
                reward_bps=int(a["rewardBps"]),
                updated_block=ev.block_number,
            )
        )
    elif ev.name == "TargetsSet":
        vault = session.get(Vault, (chain_id, ev.address.lower(), int(a["id"])))
        if vault is not None:
            vault.weights_bps = [int(w) for w in a["weightsBps"]]
            vault.updated_block = ev.block_number
            session.add(vault)


def _is_market_event(name: str) -> bool:
    return name in (
        "CollateralDeposited", "CollateralWithdrawn", "Borrowed", "Repaid", "Liquidated", "BadDebtWrittenOff",
    )  # fmt: skip


def _apply_position(session: Session, chain_id: int, ev: ChainEvent) -> None:
    a = ev.args
    key = (chain_id, ev.address.lower(), str(a["borrower"]).lower())
    pos = session.get(Position, key) or Position(
        chain_id=key[0], market=key[1], borrower=key[2], updated_block=ev.block_number
    )
    if ev.name == "CollateralDeposited":
        pos.collateral += int(a["amount"])
    elif ev.name == "CollateralWithdrawn":
        pos.collateral -= int(a["amount"])
    elif ev.name == "Borrowed":
        pos.borrowed += int(a["amount"])
    elif ev.name == "Repaid":
        pos.repaid += int(a["amount"])
    elif ev.name == "Liquidated":
        pos.repaid += int(a["repaid"])
        pos.collateral -= int(a["collateralSeized"])
    elif ev.name == "BadDebtWrittenOff":
        pos.repaid += int(a["amount"])
    pos.updated_block = ev.block_number
    session.add(pos)


def store_events(session: Session, chain_id: int, events: Iterable[Event]) -> int:
    """Inserts new events and folds them; events already stored are skipped. Returns how many were new."""
    new = 0
    for e in events:
        if session.get(ChainEvent, (chain_id, e.tx_hash, e.log_index)) is not None:
            continue
        row = ChainEvent(
            chain_id=chain_id,
            tx_hash=e.tx_hash,
            log_index=e.log_index,
            block_number=e.block_number,
            block_hash=e.block_hash,
            address=e.address.lower(),
            name=e.name,
            args=e.args,
        )
        session.add(row)
        apply(session, chain_id, row)
        new += 1
    return new


def rollback_after(session: Session, chain_id: int, fork_block: int, contracts: dict[str, str]) -> int:
    """Removes everything above `fork_block` and re-folds what it touched. Returns events removed."""
    orphans = session.exec(
        select(ChainEvent).where(ChainEvent.chain_id == chain_id, ChainEvent.block_number > fork_block)
    ).all()
    touched: set[Key] = set()
    unfilled: set[int] = set()  # orders a reorg took a fill from
    for ev in orphans:
        k = key_of(contracts.get(ev.address.lower(), ""), ev.address, ev.name, ev.args)
        if k:
            touched.add(k)
            if ev.name == "OrderFilled":
                unfilled.add(int(k[1]))
        session.delete(ev)
    session.exec(
        delete(BlockHash).where(col(BlockHash.chain_id) == chain_id, col(BlockHash.number) > fork_block)
    )
    session.flush()
    for k in touched:
        _refold(session, chain_id, k, contracts)
    for order_id in unfilled:
        order = session.get(Order, (chain_id, order_id))
        if order is not None:
            order.reorged_block = fork_block + 1
            session.add(order)
    return len(orphans)


def _refold(session: Session, chain_id: int, key: Key, contracts: dict[str, str]) -> None:
    since = 0  # an order's events start at its placement: scan only from there
    row: Order | Position | Vault | None
    kept: dict[str, int | None] = {}  # what a keeper learned about the order, not the chain
    if key[0] == "order":
        session.exec(delete(Fill).where(col(Fill.chain_id) == chain_id, col(Fill.order_id) == key[1]))
        row = session.get(Order, (chain_id, key[1]))
        since = row.placed_block if row is not None else 0
        if row is not None:
            kept = {"executable_block": row.executable_block, "reorged_block": row.reorged_block}
    elif key[0] == "position":
        row = session.get(Position, (chain_id, key[1], key[2]))
    else:
        row = session.get(Vault, (chain_id, key[1], key[2]))
    if row is not None:
        session.delete(row)
    session.flush()
    remaining = session.exec(
        select(ChainEvent)
        .where(ChainEvent.chain_id == chain_id, ChainEvent.block_number >= since)
        .order_by(col(ChainEvent.block_number), col(ChainEvent.log_index))
    ).all()
    for ev in remaining:
        if key_of(contracts.get(ev.address.lower(), ""), ev.address, ev.name, ev.args) == key:
            apply(session, chain_id, ev)
    if kept:
        order = session.get(Order, (chain_id, key[1]))
        if order is not None:
            order.executable_block = order.executable_block or kept["executable_block"]
            order.reorged_block = kept["reorged_block"]
            session.add(order)
