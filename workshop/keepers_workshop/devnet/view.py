"""What `keepers devnet` shows: a live terminal view (rich) on a TTY, one plain line per block
otherwise, and the summary table at the end."""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from keepers_workshop.devnet.cluster import ChainPlan, KeeperHealth
from keepers_workshop.devnet.monitor import KIND_NAMES, BlockStats, FillMonitor, Summary


def _fmt(v: float | None, digits: int = 0) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


@dataclass
class ChainView:
    """What the live view shows of one chain."""

    plan: ChainPlan
    monitor: FillMonitor
    health: list[KeeperHealth]
    #: Reorgs the devnet made on this chain (`--reorg-every`).
    reorgs_done: int = 0


def _sum_samples(metrics: Mapping[str, Mapping[str, float]], family: str, label: str, value: str) -> float:
    return sum(
        v
        for samples in metrics.values()
        for k, v in samples.items()
        if k.startswith(family + "{") and f'{label}="{value}"' in k
    )


def submission_totals(submission: str, metrics: Mapping[str, Mapping[str, float]]) -> tuple[int, int, int]:
    """Sent, included and missed, summed over a chain's keepers: bundles on a Flashbots chain
    (one per relay and target block), transactions on a mempool chain (one per action; its
    fee bumps are replacements of the same transaction)."""
    if submission == "flashbots":
        family, label, events = "keepers_bundles_total", "event", ("sent", "included", "missed")
        sent, included, missed = (int(_sum_samples(metrics, family, label, e)) for e in events)
        return sent, included, missed
    included = int(_sum_samples(metrics, "keepers_actions_total", "outcome", "included"))
    missed = int(_sum_samples(metrics, "keepers_actions_total", "outcome", "missed"))
    return included + missed, included, missed


def _unit(submission: str) -> str:
    return "bundles" if submission == "flashbots" else "transactions"


def strategy_errors(samples: Mapping[str, float]) -> int:
    return int(sum(v for k, v in samples.items() if k.startswith("keepers_strategy_errors_total{")))


class LiveView:
    def __init__(self, console: Console, started: float, target_blocks: int | None) -> None:
        self.console = console
        self.started = started
        self.target = target_blocks
        self.live = Live(console=console, refresh_per_second=4, transient=False)

    def __enter__(self) -> LiveView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.__exit__(None, None, None)

    def update(self, chains: list[ChainView], metrics: Mapping[str, Mapping[str, float]]) -> None:
        one = len(chains) == 1
        panels = [self._chain(c, metrics, recent=one) for c in chains]
        title = "keepers devnet" if one else f"keepers devnet: {len(chains)} chains"
        uptime = f"uptime {time.monotonic() - self.started:,.0f}s"
        self.live.update(Panel(Group(*panels), title=title, subtitle=uptime))

    def _chain(self, c: ChainView, metrics: Mapping[str, Mapping[str, float]], recent: bool) -> Group | Panel:
        mon = c.monitor
        s = mon.summary
        ours = {h.name: metrics.get(h.name, {}) for h in c.health}
        sent, included, missed = submission_totals(c.plan.submission, ours)
        head = Table.grid(padding=(0, 3))
        progress = f"{s.blocks}/{self.target}" if self.target else str(s.blocks)
        head.add_row(
            f"[b]{c.plan.name}[/b] (chain {c.plan.chain_id})", f"[b]block[/b] {mon.last_block}",
            f"[b]blocks run[/b] {progress}",
            f"[b]{_unit(c.plan.submission)}[/b] {sent} sent / {included} included / {missed} missed",
        )  # fmt: skip
        orders = Table(title="orders", expand=True)
        for col in ("", *KIND_NAMES):
            orders.add_column(col, justify="right")
        open_now = mon.open_by_kind()
        orders.add_row("placed", *(str(s.placed[k]) for k in KIND_NAMES))
        orders.add_row("open", *(str(open_now[k]) for k in KIND_NAMES))
        fills = Table(title="fills", expand=True)
        for col in ("filled orders", "fills", "latency p50 / worst (blocks)", "gas per fill (p50)",
                    "below limit", "late / unfilled"):  # fmt: skip
            fills.add_column(col, justify="right")
        late = sum(1 for m in s.misses if m.filled_block is not None)
        fills.add_row(
            str(len(s.orders_filled)), str(s.fills), f"{_fmt(s.median_latency, 1)} / {_fmt(s.worst_latency)}",
            _fmt(s.median_gas_per_fill), str(len(s.below_limit)), f"{late} / -",
        )  # fmt: skip
        other = Table.grid(padding=(0, 3))
        other.add_row(
            f"liquidations {s.liquidations}", f"rebalances {s.rebalances}",
            f"oracle updates {s.oracle_updates}", f"cancelled {s.cancelled}", f"lapsed {s.lapsed}",
        )  # fmt: skip
        reorgs = Table.grid(padding=(0, 3))  # its own grid: a wide cell would widen the row above
        summary_rows: list[Table] = [other]
        if c.reorgs_done or s.reorgs:
            summary_rows.append(reorgs)
            reorgs.add_row(
                f"[b]reorgs[/b] {c.reorgs_done} made / {len(s.reorgs)} followed by the referee",
                f"fills reorged out {sum(r.fills_undone for r in s.reorgs)}",
                f"last: block {s.reorgs[-1].head}, depth {s.reorgs[-1].depth}" if s.reorgs else "",
            )
        keepers = Table(title="keepers", expand=True)
        for col in ("keeper", "state", "strategy errors", "note"):
            keepers.add_column(col)
        for h in c.health:
            state = (
                "[green]ready[/green]"
                if h.ready
                else ("[yellow]alive[/yellow]" if h.alive else "[red]down[/red]")
            )
            keepers.add_row(h.name, state, str(strategy_errors(ours[h.name])), h.reason)
        if not recent:  # several chains: one compact panel each
            return Panel(Group(head, orders, fills, *summary_rows, keepers))
        blocks = Table(title="last blocks", expand=True)
        for col in ("block", "fills", "open"):
            blocks.add_column(col, justify="right")
        for b in mon.recent[-8:]:
            blocks.add_row(str(b.number), str(b.fills) if b.fills else "", str(sum(b.open_by_kind.values())))
        return Group(head, orders, fills, *summary_rows, blocks, keepers)


def plain_line(b: BlockStats, mon: FillMonitor) -> str:
    s = mon.summary
    return (
        f"block {b.number}: fills {b.fills}, open {sum(b.open_by_kind.values())}, "
        f"filled orders {len(s.orders_filled)}, latency p50 {_fmt(s.median_latency, 1)} worst "
        f"{_fmt(s.worst_latency)}, liquidations {s.liquidations}, rebalances {s.rebalances}"
    )


def summary_table(s: Summary, exit_codes: Mapping[str, int | None], nonce_gaps: Mapping[str, list[int]],
                  submitted: tuple[int, int, int], *, submission: str = "flashbots",
                  title: str = "devnet summary", supervised: tuple[int, int] = (0, 0),
                  ready_after: Sequence[float] = (), reorgs_done: int = 0) -> Table:  # fmt: skip
    t = Table(title=title, show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    placed = ", ".join(f"{k} {s.placed[k]}" for k in KIND_NAMES)
    t.add_row("blocks", str(s.blocks))
    t.add_row("orders placed", f"{sum(s.placed.values())} ({placed})")
    t.add_row("orders filled (fills)", f"{len(s.orders_filled)} ({s.fills})")
    t.add_row("latency, blocks: median / worst", f"{_fmt(s.median_latency, 1)} / {_fmt(s.worst_latency)}")
    t.add_row("fills due in their own block (TWAP slices)", str(s.unseen_fills))
    t.add_row("gas per fill (median)", _fmt(s.median_gas_per_fill))
    t.add_row("fills below the trader's limit", str(len(s.below_limit)))
    t.add_row("executable, then out of reach before a fill", str(s.lapsed))
    t.add_row("dust remainders left (< 0.01% of the order)", str(len(s.dust)))
    late = [m for m in s.misses if m.filled_block is not None]
    unfilled = [m for m in s.misses if m.filled_block is None]
    t.add_row("filled later than the next block", str(len(late)))
    t.add_row("unfilled executable orders", str(len(unfilled)))
    t.add_row(
        "liquidations / rebalances / oracle updates",
        f"{s.liquidations} / {s.rebalances} / {s.oracle_updates}",
    )
    t.add_row(f"{_unit(submission)} sent / included / missed", " / ".join(map(str, submitted)))
    t.add_row("nonce gaps", str(sum(len(g) for g in nonce_gaps.values())))
    t.add_row("keepers killed / restarted by the supervisor", " / ".join(map(str, supervised)))
    if ready_after:
        t.add_row("restart to ready, s: median / worst",
                  f"{statistics.median(ready_after):.1f} / {max(ready_after):.1f}")  # fmt: skip
    undone = sum(r.fills_undone for r in s.reorgs)
    t.add_row("reorgs made / followed by the referee (fills reorged out)",
              f"{reorgs_done} / {len(s.reorgs)} ({undone})")  # fmt: skip
    t.add_row("keeper exit codes", ", ".join(f"{k} {c}" for k, c in exit_codes.items()))
    return t
