"""pytest plugin (entry point `pytest11`): the `keepers_devnet` fixture for strategy tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from keepers.testing import Devnet


@pytest.fixture
def keepers_devnet(tmp_path: Path) -> Iterator[Devnet]:
    """A fresh anvil with the platform deployed, funded traders, blocks stepped by the test."""
    devnet = Devnet(tmp_path).start()
    try:
        yield devnet
    finally:
        devnet.stop()
