"""The plugin interface. A strategy turns one block's candidates into Actions; the runtime does
everything else (simulation, nonces, signing, submission). Strategies never see a key.

A plugin is a class registered under the `keepers.strategies` entry point group:

    [project.entry-points."keepers.strategies"]
    my-limit = "my_package.strategy:MyLimitStrategy"

Strategy authors import all of this from `keepers.sdk`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, get_args

from pydantic import BaseModel, ConfigDict
from typing_extensions import TypeVar
from web3 import AsyncWeb3

from keepers.engine.market import MarketSnapshot
from keepers.tx.actions import Action


class NoParams(BaseModel):
    """For strategies without parameters: any key given in config is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


#: A strategy's parameters model (`Strategy[MyParams]` types `self.params` as `MyParams`).
ParamsT = TypeVar("ParamsT", bound=BaseModel, default=NoParams)


@dataclass(frozen=True)
class BlockContext:
    """What a strategy sees for one block."""

    chain: str
    chain_id: int
    number: int
    timestamp: int
    #: Kind-specific candidates, frozen views (`keepers.engine.views`): `OrderView`s for the
    #: order kinds, `PositionView`s for liquidation, `VaultView`s for the rebalancer.
    candidates: Sequence[Any] = ()
    #: Fresh oracle prices, USD per whole token with 18 decimals, by token address (lowercase).
    prices: dict[str, int] = field(default_factory=dict)
    #: Contract addresses on this chain by name.
    contracts: dict[str, str] = field(default_factory=dict)
    #: Pools, oracle prices and exact quotes at this block (None when the chain has no venues).
    market: MarketSnapshot | None = None
    #: For reads (eth_call) only; it holds no key, and submission goes through Actions.
    reader: AsyncWeb3[Any] | None = None
    #: The keeper's public address (fee recipient, liquidation profit receiver).
    keeper_address: str = ""


class Strategy(ABC, Generic[ParamsT]):
    """Base class of every strategy plugin, generic in its parameters:

    class MyStrategy(Strategy[MyParams]):
        kind = "limit-stop"
        Params = MyParams  # may be left out: taken from Strategy[MyParams]
    """

    #: The keeper kind this strategy serves (limit-stop, twap, iceberg, rebalancer, liquidation, oracle).
    kind: ClassVar[str]
    #: Parameters, validated from the keeper's `params` table in config.
    Params: ClassVar[type[BaseModel]] = NoParams

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "Params" not in cls.__dict__:
            # `class S(Strategy[MyParams])` without `Params = MyParams`: the model is the argument.
            for base in getattr(cls, "__orig_bases__", ()):
                args = get_args(base)
                if args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
                    cls.Params = args[0]
                    break

    def __init__(self, params: ParamsT) -> None:
        self.params: ParamsT = params

    async def sync_state(self, ctx: BlockContext) -> None:
        """Called once before the first block, to warm up caches."""

    @abstractmethod
    async def on_block(self, ctx: BlockContext) -> Sequence[Action]:
        """The actions worth taking at this block (possibly none)."""
