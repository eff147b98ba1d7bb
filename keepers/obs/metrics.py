"""Every Prometheus metric the runtime exports, in one place. Labels never carry secrets,
addresses of keys, or unbounded values (no order ids, no tx hashes)."""

from __future__ import annotations

import platform

from prometheus_client import Counter, Gauge, Histogram

from keepers import __version__

#: Labels, one name per concept: `chain` is the chain's name in the config, `keeper` the keeper
#: instance (`[keepers.<name>]`, its kind unless `kind` says otherwise), `strategy` the plugin,
#: `error` what went wrong. Latencies are in seconds (`_seconds`), from the head seen.

BUILD_INFO = Gauge("keepers_build_info", "1, labelled with the running release", ["version", "python"])
BUILD_INFO.labels(__version__, platform.python_version()).set(1)
#: Head seen -> this block's actions sent (bundle accepted by a relay, or sent to the mempool).
LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24)
REACTION = Histogram(
    "keepers_reaction_seconds",
    "From the head seen to this block's actions sent (simulation and signing included)",
    ["chain", "keeper"],
    buckets=LATENCY_BUCKETS,
)
STRATEGY_SECONDS = Histogram(
    "keepers_strategy_seconds",
    "A strategy's on_block per block",
    ["keeper", "strategy"],
    buckets=LATENCY_BUCKETS,
)
RPC_SECONDS = Histogram(
    "keepers_rpc_request_seconds",
    "One JSON-RPC request to a node",
    ["chain", "method"],
    buckets=LATENCY_BUCKETS,
)

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
BUNDLES = Counter(
    "keepers_bundles_total", "Bundles by event (sent, included, missed, late)", ["chain", "event"]
)
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
    "Strategy failures by error (exception, timeout, invalid, sync_state)",
    ["keeper", "strategy", "error"],
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
