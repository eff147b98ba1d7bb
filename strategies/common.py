"""Moved to `keepers.sdk.common` (import from `keepers.sdk`); kept so existing imports work."""

from keepers.sdk.common import (
    DEFAULT_NATIVE_USD,
    BidParams,
    calldata,
    checksum,
    usd_to_wei,
    with_bid,
)

__all__ = ["DEFAULT_NATIVE_USD", "BidParams", "calldata", "checksum", "usd_to_wei", "with_bid"]
