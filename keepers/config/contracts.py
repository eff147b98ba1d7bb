"""Where a chain's contracts are: the addresses in the config, or a deployment file."""

from __future__ import annotations

import json
from dataclasses import dataclass

from keepers.config.schema import ChainSettings


@dataclass(frozen=True)
class ContractAddresses:
    order_book: str | None
    oracle: str | None
    lending_market: str | None
    vault: str | None
    flash_liquidator: str | None
    pools: tuple[str, ...]
    builder_tip: str | None = None

    def as_dict(self) -> dict[str, str]:
        return {k: v for k, v in self.__dict__.items() if isinstance(v, str)}


def contract_addresses(chain: ChainSettings) -> ContractAddresses:
    c = chain.contracts
    if c.deployment_file is not None:
        dep = json.loads(c.deployment_file.read_text())
        return ContractAddresses(
            dep.get("order_book"),
            dep.get("oracle"),
            dep.get("lending_market"),
            dep.get("vault"),
            dep.get("flash_liquidator"),
            tuple(p["address"] for p in dep.get("pools", [])),
            dep.get("builder_tip") or None,
        )
    return ContractAddresses(
        c.order_book, c.oracle, c.lending_market, c.vault, c.flash_liquidator, tuple(c.pools), c.builder_tip
    )
