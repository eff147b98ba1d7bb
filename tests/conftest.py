"""Shared fixtures: a real anvil with the real compiled contracts deployed."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from web3 import Web3

from keepers_workshop.devnet.anvil import DEFAULT_KEYS, Anvil
from keepers_workshop.devnet.deploy import Deployment, deploy_platform


@pytest.fixture(scope="session")
def anvil() -> Iterator[Anvil]:
    with Anvil() as chain:
        yield chain


@pytest.fixture(scope="session")
def w3(anvil: Anvil) -> Web3:
    return Web3(Web3.HTTPProvider(anvil.url))


@pytest.fixture(scope="session")
def deployment(w3: Web3) -> Deployment:
    return deploy_platform(w3, DEFAULT_KEYS[0])


@pytest.fixture
def fresh_state(w3: Web3, deployment: Deployment) -> Iterator[None]:
    """Reverts the chain to the deployed state after the test."""
    snap = w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]
    yield
    w3.provider.make_request("evm_revert", [snap])  # type: ignore[arg-type]
