"""Submission routes: how signed transactions reach a builder or a mempool. A route builds and
sends attempts and nothing else; what to send, when, and what happened to it is the
transaction manager's (keepers.tx.manager).

- BundleRoute: Flashbots bundles (eth_callBundle, eth_sendBundle to every relay, with the
  configured builders). A bundle is sent for one block at a time; a missed one consumes no
  nonce.
- MempoolRoute: eth_sendRawTransaction to a public node or a private-transaction RPC; the
  manager bumps fees and replaces a stuck transaction with a no-op at its deadline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from web3 import AsyncWeb3
from web3.exceptions import Web3RPCError

from keepers.chain.http import redact
from keepers.tx.flashbots import FlashbotsClient, RelayError, RelayUnavailable, Simulation, without_url

log = structlog.get_logger("route")


@dataclass(frozen=True)
class Sent:
    """Where an attempt went: the bundle hash a relay gave (bundles), and whether anyone took it."""

    accepted: bool
    bundle_hash: str | None = None
    errors: tuple[str, ...] = ()
    #: Every relay that did not take it answered with a refusal (a JSON-RPC error): none was
    #: unreachable, so a send again is answered at once.
    refused: bool = False


class BundleRoute:
    """Flashbots bundles through one or more relays."""

    kind = "bundle"

    def __init__(self, client: FlashbotsClient, builders: Sequence[str] = ()) -> None:
        self.client = client
        self.builders = tuple(builders)

    async def simulate(self, raws: Sequence[bytes], target: int, timestamp: int) -> Simulation | None:
        """The relay's simulation at the target block's time, or None when it cannot simulate
        (a send is then decided on chain, as inclusion always is)."""
        try:
            return await self.client.call_bundle(raws, target, timestamp=timestamp)
        except (RelayError, RelayUnavailable) as exc:
            log.warning("simulation unavailable", error=str(exc))
            return None

    async def send(self, raws: Sequence[bytes], target: int, replacement_uuid: str) -> Sent:
        results = await self.client.send_bundle(
            raws, target, replacement_uuid=replacement_uuid, builders=self.builders
        )
        hashes = [r for r in results.values() if isinstance(r, str)]
        errors = tuple(
            f"{redact(u)}: {without_url(str(e), u)}" for u, e in results.items() if not isinstance(e, str)
        )
        failed = [e for e in results.values() if not isinstance(e, str)]
        refused = bool(failed) and all(isinstance(e, RelayError) for e in failed)
        return Sent(bool(hashes), hashes[0] if hashes else None, errors, refused)


class MempoolRoute:
    """A public node, or a private-transaction RPC that takes eth_sendRawTransaction."""

    def __init__(self, w3: AsyncWeb3[Any], *, private: bool = False, bump_after_blocks: int = 1) -> None:
        self.w3 = w3
        self.kind = "private" if private else "public"
        self.bump_after_blocks = bump_after_blocks

    async def send_raw(self, raw: bytes) -> Sent:
        try:
            await self.w3.eth.send_raw_transaction(raw)
        except (Web3RPCError, ValueError) as exc:
            # "already known", "nonce too low", "replacement underpriced": receipts decide.
            return Sent(False, errors=(str(exc),))
        return Sent(True)


Route = BundleRoute | MempoolRoute

#: Blocks between simulations that ask whether a relay is back, while the fallback is in use.
PROBE_EVERY_BLOCKS = 5


class RelayFallback:
    """When the relays stop taking bundles (down, slow past their timeout, answering errors):
    after `after` blocks in a row whose bundle no relay took, actions go by the fallback route;
    every PROBE_EVERY_BLOCKS blocks a simulation asks the first relay whether it is back, and
    bundles take over again once it answers. One per transaction manager: its submits are
    serialised, so this needs no lock."""

    def __init__(self, route: MempoolRoute, after: int) -> None:
        self.route = route
        self.after = max(1, after)
        self.refused = 0  # blocks in a row whose bundle no relay took
        self.probed_at = 0

    @property
    def active(self) -> bool:
        return self.refused >= self.after

    def sent(self, accepted: bool) -> None:
        """Whether a relay took this block's bundle."""
        self.refused = 0 if accepted else self.refused + 1

    def probe_due(self, head: int) -> bool:
        return self.active and head - self.probed_at >= PROBE_EVERY_BLOCKS

    def probed(self, head: int, answered: bool) -> None:
        self.probed_at = head
        if answered:
            self.refused = 0
