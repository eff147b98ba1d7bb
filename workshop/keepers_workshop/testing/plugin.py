"""pytest plugin (entry point `pytest11` of keepers-workshop): the `keepers_devnet` fixture for
strategy tests.

pytest imports this module into every session wherever the workshop is installed, so it imports
nothing of keepers at module level: the harness (web3, the relay, the runtime) is imported
when a test first asks for the fixture.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from keepers_workshop.testing.devnet import Devnet


@pytest.fixture
def keepers_devnet(tmp_path: Path) -> Iterator[Devnet]:
    """A fresh anvil with the platform deployed, funded traders, blocks stepped by the test."""
    from keepers_workshop.testing.devnet import Devnet

    devnet = Devnet(tmp_path).start()
    try:
        yield devnet
    finally:
        devnet.stop()
