"""Test harness for strategy authors: `Devnet` (anvil with the platform deployed, blocks stepped
by the test through the local relay) and `KeeperHarness` (a real keeper loop in the background),
served to tests by the `keepers_devnet` fixture of the pytest plugin
(`keepers_workshop.testing.plugin`).

The harness lives in `keepers_workshop.testing.devnet`; this package names it lazily (PEP 562),
because pytest imports the plugin, and so this package, into every session wherever
keepers-workshop is installed: importing web3, the relay and the runtime is for the tests that
ask for a devnet.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keepers_workshop.testing.devnet import (
        KEEPER_KEY_INDEX,
        ORDER_KINDS,
        TRADER_KEY_INDEXES,
        Devnet,
        KeeperHarness,
        keeper_settings,
    )

__all__ = [
    "KEEPER_KEY_INDEX",
    "ORDER_KINDS",
    "TRADER_KEY_INDEXES",
    "Devnet",
    "KeeperHarness",
    "keeper_settings",
]


def __getattr__(name: str) -> Any:
    """The harness's names, imported from keepers_workshop.testing.devnet on first use."""
    if name in __all__:
        return getattr(importlib.import_module("keepers_workshop.testing.devnet"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
