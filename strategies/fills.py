"""Moved to `keepers.sdk.fills` (import from `keepers.sdk`); kept so existing imports work."""

from keepers.sdk.fills import (
    BPS,
    DEFAULT_TOLERANCE_BPS,
    GAS_BASE,
    GAS_PER_GROUP,
    GAS_PER_ORDER,
    PlannedGroup,
    batch_action,
    is_fair,
    meets_limit,
    plan_group,
    plan_groups,
    tolerance_of,
)

__all__ = [
    "BPS",
    "DEFAULT_TOLERANCE_BPS",
    "GAS_BASE",
    "GAS_PER_GROUP",
    "GAS_PER_ORDER",
    "PlannedGroup",
    "batch_action",
    "is_fair",
    "meets_limit",
    "plan_group",
    "plan_groups",
    "tolerance_of",
]
