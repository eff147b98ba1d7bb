"""Property tests (hypothesis) on the pure parts strategies rely on: the trigger index against a
brute-force scan, fill planning and clip sizing against the contract's own rules (mirrored from
OrderBook._distribute, _meetsLimit and the TWAP slice arithmetic), on random pools and orders."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from keepers.engine.market import MarketSnapshot, PoolState
from keepers.engine.trigger_index import LIMIT, RATE_SCALE, STOP_LOSS, TAKE_PROFIT, TriggerIndex, limit_rate
from keepers.sdk import BPS, plan_groups
from keepers.store.tables import Order
from keepers.strategies.iceberg import clip_size
from keepers.strategies.twap import slice_size

WETH, USDC, DAI = "0x" + "11" * 20, "0x" + "22" * 20, "0x" + "33" * 20
MARKET = 1


def _order(order_id: int, amount: int, min_out: int, fee_bps: int, kind: int = LIMIT, clip: int = 0) -> Order:
    return Order(
        chain_id=1, order_id=order_id, book="0xbook", owner="0xowner", market=MARKET, kind=kind,
        amount_in=amount, min_amount_out=min_out, remaining=amount, expiry=2**32 - 1,
        keeper_fee_bps=fee_bps, trigger_or_clip=clip, status="open", placed_block=1, updated_block=1,
    )  # fmt: skip


reserve = st.integers(min_value=10**20, max_value=10**27)
fee_pips = st.integers(min_value=0, max_value=10_000)


@st.composite
def snapshots(draw: st.DrawFn) -> MarketSnapshot:
    pools = [PoolState("0xp0", WETH, USDC, draw(reserve), draw(reserve), draw(fee_pips))]
    if draw(st.booleans()):  # a second direct pool
        pools.append(PoolState("0xp1", WETH, USDC, draw(reserve), draw(reserve), draw(fee_pips)))
    if draw(st.booleans()):  # a two-hop route through DAI
        pools.append(PoolState("0xp2", WETH, DAI, draw(reserve), draw(reserve), draw(fee_pips)))
        pools.append(PoolState("0xp3", DAI, USDC, draw(reserve), draw(reserve), draw(fee_pips)))
    # The oracle, somewhere near or far from the pools (fills must stay within tolerance of
    # it), and the market's tolerance: anything from tight to limit-only.
    weth_usd = draw(st.integers(min_value=10**17, max_value=10**22))
    prices = {WETH: (weth_usd, True), USDC: (10**18, True), DAI: (10**18, True)}
    tolerance = draw(st.sampled_from([1, 50, 300, 2_000, 10_000]))
    return MarketSnapshot(
        block=1, pools=pools, markets={MARKET: (WETH, USDC)}, prices=prices,
        decimals={WETH: 18, USDC: 18, DAI: 18}, tolerance={MARKET: tolerance},
    )  # fmt: skip


def _contract_is_fair(snap: MarketSnapshot, order: Order, total_in: int, quoted: int) -> bool:
    """OrderBook._dropUnfit's tolerance rule, on the group's quote."""
    tol = order.tolerance_bps or snap.tolerance[order.market]
    if tol >= BPS:
        return True
    (p_in, _), (p_out, _) = snap.prices[WETH], snap.prices[USDC]
    fair = total_in * p_in // p_out  # both 18 decimals here
    return quoted * BPS >= fair * (BPS - tol)


def _contract_distribution(received: int, fills: list[int]) -> list[int]:
    """OrderBook._distribute: pro rata, the last included order takes the rounding remainder."""
    total, paid, out = sum(fills), 0, []
    for i, f in enumerate(fills):
        share = received - paid if i == len(fills) - 1 else received * f // total
        paid += share
        out.append(share)
    return out


def _contract_meets_limit(order: Order, fill_in: int, out: int) -> bool:
    net = out - out * order.keeper_fee_bps // BPS
    return net * order.amount_in >= fill_in * order.min_amount_out


orders = st.lists(
    st.tuples(
        st.integers(min_value=10**15, max_value=10**21),  # amount in
        st.integers(min_value=1, max_value=4_000),  # limit price (USDC-ish units per unit)
        st.integers(min_value=0, max_value=100),  # keeper fee bps (the contract caps at 100)
        st.sampled_from([0, 0, 100, 1_000, 10_000]),  # the order's own tolerance (0: the market's)
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=300, deadline=None)
@given(snapshots(), orders)
def test_a_planned_batch_never_fills_an_order_below_its_limit(
    snap: MarketSnapshot, raw: list[tuple[int, int, int, int]]
):
    book = [_order(i + 1, a, a * p // 1_000, fee) for i, (a, p, fee, _) in enumerate(raw)]
    for o, (*_, tol) in zip(book, raw, strict=True):
        o.tolerance_bps = tol
    groups = plan_groups(snap, {MARKET: [(o, o.remaining) for o in book]})
    by_id = {o.order_id: o for o in book}
    state = snap  # the pools as each group finds them: after the groups before it
    filled: set[int] = set()
    for group in groups:
        assert not filled & set(group.order_ids), "an order in one group only"
        filled.update(group.order_ids)
        assert all(amt <= by_id[i].remaining for i, amt in zip(group.order_ids, group.amounts, strict=True))
        # The route the planner chose, quoted with the pools' exact math, as the swap will pay.
        pools = {p.address: p for p in state.pools}
        received = state.quote_path(tuple(pools[a] for a in group.path), WETH, sum(group.amounts))
        state = state.after_swap(group.path, WETH, sum(group.amounts))
        shares = _contract_distribution(received, list(group.amounts))
        for oid, amt, out in zip(group.order_ids, group.amounts, shares, strict=True):
            assert _contract_meets_limit(by_id[oid], amt, out), f"order {oid} would revert LimitViolated"
            assert _contract_is_fair(snap, by_id[oid], sum(group.amounts), received), (
                f"order {oid}: UnfairPrice"
            )
        fees = sum(
            out * by_id[oid].keeper_fee_bps // BPS for oid, out in zip(group.order_ids, shares, strict=True)
        )
        assert group.keeper_fee_out <= fees, "the strategy never counts on more fee than the contract pays"


@settings(max_examples=300, deadline=None)
@given(
    snapshots(),
    st.integers(10**15, 10**21),
    st.integers(1, 4_000),
    st.integers(0, 100),
    st.integers(1, 10**21),
)
def test_an_iceberg_clip_never_exceeds_its_size_or_its_limit(
    snap: MarketSnapshot, amount: int, price: int, fee: int, clip: int
):
    order = _order(1, amount, amount * price // 1_000, fee, kind=4, clip=clip)
    size = clip_size(snap, order)
    assert 0 <= size <= min(clip, amount)
    if size:
        route = snap.best_route(WETH, USDC, size)
        assert route is not None
        assert _contract_meets_limit(order, size, route.amount_out)
        assert _contract_is_fair(snap, order, size, route.amount_out)
    if size < min(clip, amount):
        bigger = snap.best_route(WETH, USDC, size + 1)
        assert (
            bigger is None
            or not _contract_meets_limit(order, size + 1, bigger.amount_out)
            or not _contract_is_fair(snap, order, size + 1, bigger.amount_out)
        ), "largest clip"


@given(st.integers(min_value=2, max_value=1_000), st.integers(min_value=1, max_value=2**96))
def test_twap_runs_exactly_its_slices_and_matches_the_contract(slices: int, amount: int):
    if amount // slices == 0:
        return  # the contract refuses such an order (InvalidTwap)
    remaining, left, taken = amount, slices, []
    while remaining:
        s = slice_size(remaining, left)
        # OrderBook: slice = remaining / slices left; the last takes what is left.
        assert s == (remaining // left if left > 1 else remaining)
        taken.append(s)
        remaining -= s
        left -= 1
    assert sum(taken) == amount
    assert len(taken) == slices, "exactly the slice count"
    assert max(taken) - min(taken) <= 1, "slices even to one unit"


entries = st.lists(
    st.tuples(
        st.sampled_from([LIMIT, STOP_LOSS, TAKE_PROFIT]),
        st.integers(1, 10**24),  # min out
        st.integers(1, 10**24),  # amount in
        st.integers(1, 10**22),  # trigger (oracle rate, 1e18)
        st.booleans(),  # armed
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(
    entries, st.sets(st.integers(0, 59)), st.fractions(min_value=0, max_value=10**6), st.integers(1, 10**22)
)
def test_the_trigger_index_returns_exactly_the_crossed_orders(
    raw: list[tuple[int, int, int, int, bool]], removed: set[int], pool_rate: Fraction, oracle_rate: int
):
    index = TriggerIndex()
    for i, (kind, min_out, amount, trigger, armed) in enumerate(raw):
        index.upsert(i, MARKET, kind, min_out=min_out, amount_in=amount, trigger=trigger, armed=armed)
    for i in removed:
        index.remove(i)
    expected = set()
    for i, (kind, min_out, amount, trigger, armed) in enumerate(raw):
        if i in removed:
            continue
        if kind == LIMIT:
            hit = limit_rate(min_out, amount) <= int(pool_rate * RATE_SCALE)
        elif armed:
            hit = True
        else:
            hit = oracle_rate <= trigger if kind == STOP_LOSS else oracle_rate >= trigger
        if hit:
            expected.add(i)
    got = index.crossed(MARKET, pool_rate, oracle_rate)
    assert len(got) == len(set(got)), "no order twice"
    assert set(got) == expected
    assert len(index) == len(raw) - len(removed & set(range(len(raw))))
