"""Every Prometheus metric the runtime exports, in one place. Labels never carry secrets,
addresses of keys, or unbounded values (no order ids, no tx hashes)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

BLOCKS_BEHIND = Gauge("keepers_blocks_behind_head", "Chain head minus the last applied block", ["chain"])
HEAD = Gauge("keepers_head_block", "Latest head seen", ["chain"])
EVENTS_APPLIED = Counter(
    "keepers_events_applied_total", "Chain events applied to the store", ["chain", "event"]
)
REORGS = Counter("keepers_reorgs_total", "Reorgs handled", ["chain"])
REORG_DEPTH = Histogram(
    "keepers_reorg_depth_blocks",
    "Blocks rolled back per reorg",
    ["chain"],
    buckets=(1, 2, 3, 5, 8, 13, 21, 64),
)
HEAD_AGE = Gauge(
    "keepers_head_age_seconds", "Seconds since the keeper saw a new head (a stalled node grows it)", ["chain"]
)
HEAD_POLL_FAILURES = Counter(
    "keepers_head_poll_failures_total",
    "Polls for the head that failed (the keeper backs off and retries)",
    ["chain"],
)
BLOCK_ERRORS = Counter(
    "keepers_block_errors_total", "Blocks skipped because a read failed", ["chain", "keeper"]
)
CANDIDATES = Gauge(
    "keepers_candidates", "Orders/positions a keeper considered this block", ["chain", "keeper"]
)
ACTIONS = Counter("keepers_actions_total", "Actions by outcome", ["chain", "outcome"])
BUNDLES = Counter("keepers_bundles_total", "Bundles by event (sent, included, missed)", ["chain", "event"])
INCLUSION_BLOCKS = Histogram(
    "keepers_inclusion_latency_blocks",
    "Blocks from first target to inclusion",
    ["chain"],
    buckets=(1, 2, 3, 4, 6, 10),
)
SIGNER_BALANCE = Gauge("keepers_signer_balance_wei", "Balance of the funds key", ["chain"])
NONCE_ALLOCATIONS = Counter("keepers_nonce_allocations_total", "Nonces allocated", ["chain"])
RELAY_FALLBACK = Gauge(
    "keepers_relay_fallback",
    "1 while actions go by the fallback route: no relay takes bundles",
    ["chain", "keeper"],
)
NONCE_GAPS = Gauge("keepers_nonce_gaps", "Free nonces below the highest pending one", ["chain"])
TX_STATE = Gauge("keepers_transactions", "Our transactions by state", ["chain", "state"])
STRATEGY_ERRORS = Counter(
    "keepers_strategy_errors_total",
    "Strategy failures by kind (exception, timeout, invalid)",
    ["keeper", "strategy", "kind"],
)
RPC_ERRORS = Counter(
    "keepers_rpc_errors_total", "RPC errors by endpoint index and method", ["chain", "endpoint", "method"]
)
RPC_ENDPOINT_HEALTHY = Gauge(
    "keepers_rpc_endpoint_healthy", "1 if the endpoint is in rotation", ["chain", "endpoint"]
)
EARNED_WEI = Counter(
    "keepers_earned_wei_total",
    "Fees, rewards and bonuses of included actions (strategy valuation, in wei)",
    ["chain", "keeper", "strategy"],
)
SPENT_WEI = Counter(
    "keepers_spent_wei_total",
    "Gas (from receipts) and builder payments of included actions, in wei",
    ["chain", "keeper", "strategy"],
)
LEADER = Gauge("keepers_leader", "1 while this replica holds the keeper's lease", ["chain", "keeper"])
LEADER_CHANGES = Counter(
    "keepers_leader_changes_total", "Times this replica gained or lost the lease", ["chain", "keeper"]
)
FENCED = Counter(
    "keepers_fenced_total", "Submissions refused because the lease was lost", ["chain", "keeper"]
)
SHARDS_HELD = Gauge(
    "keepers_shards_held", "Shards of the keeper's work this replica holds", ["chain", "keeper"]
)
