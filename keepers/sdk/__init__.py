"""The strategy author's one import: everything a strategy plugin needs, typed.

    from keepers.sdk import Action, BlockContext, OrderView, Strategy, batch_action, plan_groups

    class MyParams(BaseModel):
        min_fee_bps: int = 5

    class MyStrategy(Strategy[MyParams]):        # self.params is a MyParams
        kind = "limit-stop"

        async def on_block(self, ctx: BlockContext) -> Sequence[Action]: ...

- the plugin interface: `Strategy[ParamsT]`, `NoParams`, `BlockContext`;
- what a strategy returns: `Action`, `Call`;
- what it sees: `MarketSnapshot` (`PoolState`, `Route`) and the candidates as frozen views
  (`OrderView`, `PositionView`, `VaultView`);
- the planning helpers the built-in strategies use: OrderBook fills with the contract's own
  rules (`plan_group`, `plan_groups`, `batch_action`, `meets_limit`, `is_fair`, `tolerance_of`),
  calldata and values (`calldata`, `checksum`, `usd_to_wei`, `load_artifact`), the inclusion
  bid (`BidParams`, `with_bid`).

`keepers.sdk.testing` builds a `BlockContext` and a market without a chain, to unit-test a
strategy in microseconds, and names the `keepers_devnet` fixture's `Devnet` for tests on anvil.
The older paths (`keepers.engine.strategy`, `keepers.tx.actions`) keep working.
"""

from keepers.chain.artifacts import load_artifact
from keepers.engine.market import MarketSnapshot, PoolState, Route
from keepers.engine.strategy import BlockContext, NoParams, ParamsT, Strategy
from keepers.engine.views import Candidate, OrderView, PositionView, VaultView
from keepers.sdk.common import DEFAULT_NATIVE_USD, BidParams, calldata, checksum, usd_to_wei, with_bid
from keepers.sdk.fills import (
    BPS,
    DEFAULT_TOLERANCE_BPS,
    PlannedGroup,
    batch_action,
    is_fair,
    meets_limit,
    plan_group,
    plan_groups,
    tolerance_of,
)
from keepers.tx.actions import Action, Call

__all__ = [
    "BPS",
    "DEFAULT_NATIVE_USD",
    "DEFAULT_TOLERANCE_BPS",
    "Action",
    "BidParams",
    "BlockContext",
    "Call",
    "Candidate",
    "MarketSnapshot",
    "NoParams",
    "OrderView",
    "ParamsT",
    "PlannedGroup",
    "PoolState",
    "PositionView",
    "Route",
    "Strategy",
    "VaultView",
    "batch_action",
    "calldata",
    "checksum",
    "is_fair",
    "load_artifact",
    "meets_limit",
    "plan_group",
    "plan_groups",
    "tolerance_of",
    "usd_to_wei",
    "with_bid",
]
