"""What a strategy asks for. Strategies never see keys: they return Actions, the runtime
simulates, signs and submits them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Call:
    """One transaction's worth of work."""

    to: str
    data: str = "0x"
    value: int = 0
    gas_limit: int = 500_000


@dataclass(frozen=True)
class Action:
    """Calls sent together (one bundle), with what they are worth.

    `idempotency_key` names the work (e.g. "fill:1:order-42:block-1200"): submitting the same
    key twice, from any process, reuses the first allocation instead of spending a new nonce.
    """

    idempotency_key: str
    calls: tuple[Call, ...]
    #: Expected value in wei to the keeper (fees earned minus what the calls cost besides gas).
    expected_value_wei: int
    #: Blocks after the first target during which the action is still worth landing.
    deadline_blocks: int = 3
    #: Public-good work (oracle heartbeat) may be sent at an expected loss.
    public_good: bool = False
    #: Wei paid to the block builder on top of priority fees (bundle routes only): a BuilderTip
    #: call appended to the bundle, paid only if the bundle lands.
    coinbase_payment_wei: int = 0
    #: The priority fee to bid, wei per gas; None takes the market's (median of recent blocks).
    priority_fee_per_gas: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    #: OrderBook orders this action fills (the runtime records where each became executable).
    order_ids: tuple[int, ...] = ()
