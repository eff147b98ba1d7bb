"""The settings a deployment file describes. Unknown keys are errors, so a typo is caught."""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AnyUrl,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from keepers.config.secrets import SecretRef

_HEX_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


def _check_address(v: str) -> str:
    # The message never holds the value: a private key pasted here must not reach a log or a
    # terminal. Its length is enough to tell what went wrong.
    if not (v.startswith("0x") and len(v) == 42):
        raise ValueError(f"not a 0x-prefixed 20-byte address (got {len(v)} characters)")
    if not _HEX_ADDRESS.fullmatch(v):  # int(v, 16) would also take "_", spaces and Unicode digits
        raise ValueError("not a 0x-prefixed 20-byte address (not hexadecimal)")
    return v


#: A contract or account address (0x + 40 hex digits, any case).
Address = Annotated[str, AfterValidator(_check_address)]


def _check_signer_url(v: str) -> str:
    if not (v.startswith("unix:/") or v.startswith(("http://", "https://"))):
        raise ValueError("a signer URL is unix:/path/to.sock, http://... or https://...")
    return v


#: Where a running signer serves eth_signTransaction.
SignerUrl = Annotated[str, AfterValidator(_check_signer_url)]

KEEPER_KINDS = ("limit-stop", "twap", "iceberg", "rebalancer", "liquidation", "oracle")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SubmissionMode(StrEnum):
    FLASHBOTS = "flashbots"  # bundles to relays/builders (mainnet-like)
    PRIVATE = "private"  # a private-transaction endpoint (Polygon-, BSC-like)
    PUBLIC = "public"  # public mempool with EIP-1559 fee bumping


class FlashbotsSettings(Strict):
    """Relays and builders that speak the Flashbots protocol."""

    relays: list[AnyUrl] = Field(min_length=1)
    #: Signs the X-Flashbots-Signature header; must not be the funds key.
    reputation_key: SecretRef
    #: Most blocks an action's bundle is sent for, one block at a time (the next only after
    #: the last was built without it); a strategy's own deadline can only be shorter.
    target_blocks: int = Field(default=3, ge=1, le=25)
    #: Builders a relay should share each bundle with (eth_sendBundle's `builders`).
    builders: list[str] = Field(default_factory=list)
    #: Where actions go while no relay takes bundles: "none" (they wait for a relay), the
    #: chain's `private_rpc`, or its public mempool (fee bumping, no-op replacement; no builder
    #: payment and no atomicity: one call per action). The relays are tried again with a
    #: simulation every few blocks and take over once one answers.
    fallback: Literal["none", "private", "public"] = "none"
    #: Blocks in a row whose bundle no relay took before the fallback route is used.
    fallback_after_blocks: int = Field(default=2, ge=1, le=100)


class RpcEndpoint(Strict):
    url: str
    #: Requests per second this endpoint allows us (a JSON-RPC batch counts each request it carries).
    rate_limit: float = Field(default=50.0, gt=0)

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return v


class Contracts(Strict):
    """Where the platform lives on this chain; or a deployment file written by `keepers devnet`."""

    deployment_file: Path | None = None
    order_book: Address | None = None
    oracle: Address | None = None
    lending_market: Address | None = None
    vault: Address | None = None
    flash_liquidator: Address | None = None
    #: BuilderTip: lets strategies bid with a coinbase payment at the end of their bundle.
    builder_tip: Address | None = None
    pools: list[Address] = Field(default_factory=list)

    @model_validator(mode="after")
    def _some_source(self) -> Contracts:
        if self.deployment_file is None and self.order_book is None:
            raise ValueError("give deployment_file or the contract addresses (order_book at least)")
        return self


class ChainSettings(Strict):
    chain_id: int = Field(gt=0)
    rpc: list[RpcEndpoint] = Field(min_length=1)
    ws_url: str | None = None
    block_time: float = Field(default=12.0, gt=0)
    #: Seconds between polls for a new head (no ws_url, or while the WebSocket is down); by
    #: default a quarter of block_time, at least 0.05. Every poll is a request to the node.
    poll_interval: float | None = Field(default=None, gt=0)
    submission: SubmissionMode
    flashbots: FlashbotsSettings | None = None
    private_rpc: str | None = None
    #: Blocks after which a confirmed transaction is final (its record reaches `finalized`).
    confirmations: int = Field(default=12, ge=0)
    #: Hard cap on maxFeePerGas, whatever the market or the action's value says.
    max_fee_gwei: float = Field(default=500.0, gt=0)
    #: Blocks per eth_getLogs page during catch-up.
    log_page_size: int = Field(default=2000, ge=1, le=100_000)
    contracts: Contracts

    @model_validator(mode="after")
    def _route_settings(self) -> ChainSettings:
        if self.submission is SubmissionMode.FLASHBOTS and self.flashbots is None:
            raise ValueError(
                "submission = 'flashbots' needs a [flashbots] table with relays and reputation_key"
            )
        if self.submission is SubmissionMode.PRIVATE and not self.private_rpc:
            raise ValueError("submission = 'private' needs private_rpc")
        if self.flashbots is not None and self.flashbots.fallback == "private" and not self.private_rpc:
            raise ValueError("flashbots.fallback = 'private' needs private_rpc")
        return self


class KeeperSettings(Strict):
    """One keeper process. Its table name in `[keepers.<name>]` is its kind unless `kind` says
    otherwise, so one file can run the same kind on several chains (`[keepers.limit-stop-polygon]`
    with `kind = "limit-stop"`)."""

    chain: str
    strategy: str
    kind: str | None = None
    #: false: `keepers run` refuses to start it (and the chart renders no Deployment for it).
    enabled: bool = True
    params: dict[str, Any] = Field(default_factory=dict)
    #: Seconds a strategy may take per block before it is cut off and counted as failed.
    strategy_timeout: float = Field(default=2.0, gt=0)
    #: "process" runs the strategy in a worker process: a plugin that blocks or leaks loses its
    #: own blocks (killed past strategy_timeout, restarted) instead of stalling the keeper.
    isolation: Literal["in-process", "process"] = "in-process"
    #: Heap limit of the worker process (isolation = "process").
    memory_limit_mb: int = Field(default=1024, ge=64)
    #: 0: one replica (the lease holder) does all the work. N: the work is split into N shards
    #: spread over the live replicas (orders by market, positions by borrower, vaults by basket).
    shards: int = Field(default=0, ge=0, le=1024)
    #: This kind's own funds key (else the top-level signer). Kinds on separate keys never wait
    #: on each other's nonces: a bundle can only land after every lower nonce of its key.
    signer: SecretRef | None = None
    #: This kind's signer already running elsewhere (else the top-level one); see Settings.
    signer_url: SignerUrl | None = None

    @model_validator(mode="after")
    def _one_signer(self) -> KeeperSettings:
        if self.signer is not None and self.signer_url is not None:
            raise ValueError("give signer (a key reference) or signer_url, not both")
        return self


class HaSettings(Strict):
    """Leader election among the replicas of a keeper (always on; one replica simply leads)."""

    #: Seconds a lease lasts without renewal: a standby leads within this (plus one renewal
    #: interval) of a leader's death; at once after a clean stop.
    lease_seconds: float = Field(default=6.0, gt=0)
    renew_seconds: float = Field(default=2.0, gt=0)

    @model_validator(mode="after")
    def _renew_inside_lease(self) -> HaSettings:
        if self.renew_seconds >= self.lease_seconds * 0.8:
            raise ValueError("renew_seconds must be under 0.8 x lease_seconds")
        return self


_ORIGIN = re.compile(r"https?://[^/\s?#]+")


def _check_origin(v: str) -> str:
    if v != "*" and not _ORIGIN.fullmatch(v):
        raise ValueError("an origin is scheme://host[:port] with no path (or *)")
    return v


class OrderApiSettings(Strict):
    """The traders' read-only order API (/orders, /openapi.json), on a port of its own: never
    the /metrics and probes port."""

    #: 0: any free port (tests).
    port: int = Field(default=8081, ge=0, le=65535)
    #: Browser origins allowed to call the API (exact match; "*" for any). None by default.
    cors_origins: list[Annotated[str, AfterValidator(_check_origin)]] = Field(default_factory=list)
    #: Requests per second each client (IP address) may make, refilled continuously...
    rate_limit: float = Field(default=10.0, gt=0)
    #: ...and how many it may make at once.
    burst: int = Field(default=20, ge=1)
    #: Behind a proxy (the chart's Ingress): the client is the last X-Forwarded-For address.
    trust_forwarded_for: bool = False


class Settings(Strict):
    database_url: str = "sqlite:///keepers.sqlite"
    metrics_port: int = Field(default=9100, ge=0, le=65535)
    health_port: int | None = Field(default=None, ge=0, le=65535)
    log_level: str = Field(default="info", pattern="^(debug|info|warning|error)$")
    #: Seconds SIGTERM waits for in-flight work before exiting.
    drain_timeout: float = Field(default=20.0, ge=0)
    #: The funds key's reference. The keeper starts a signer process of its own from it and
    #: never reads the key itself: strategy code in the keeper cannot reach it.
    signer: SecretRef | None = None
    #: Or a signer already running: `unix:/path.sock` (the chart's sidecar, `keepers signer
    #: serve`) or `http(s)://` (Web3Signer, Clef): anything serving eth_signTransaction.
    signer_url: SignerUrl | None = None
    #: The signer process a keeper starts refuses signatures whose cost (gas x maxFeePerGas plus
    #: value, counted once per nonce) would pass this in any hour. A signer at signer_url has its own.
    signer_max_fees_per_hour_eth: float | None = Field(default=None, gt=0)
    #: The signer process a keeper starts signs only its kind's calls on the chain's contracts
    #: (and no-ops to itself), value only to the builder tip contract: a plugin that asks it to
    #: send the funds elsewhere is refused. To these addresses it signs anything, value included.
    signer_allowed_to: list[Address] = Field(default_factory=list)
    chains: dict[str, ChainSettings] = Field(min_length=1)
    keepers: dict[str, KeeperSettings] = Field(default_factory=dict)
    ha: HaSettings = Field(default_factory=HaSettings)
    order_api: OrderApiSettings = Field(default_factory=OrderApiSettings)

    @field_validator("database_url")
    @classmethod
    def _db(cls, v: str) -> str:
        if not v.startswith(("sqlite:///", "postgresql://", "postgresql+psycopg://")):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return v

    @field_validator("keepers")
    @classmethod
    def _kinds(cls, v: dict[str, KeeperSettings], info: ValidationInfo) -> dict[str, KeeperSettings]:
        chains = info.data.get("chains", {})
        for name, k in v.items():
            kind = k.kind or name
            if kind not in KEEPER_KINDS:
                what = f"keepers.{name}.kind = {kind!r}" if k.kind else f"unknown keeper kind {name!r}"
                raise ValueError(
                    f"{what}; kinds are {', '.join(KEEPER_KINDS)} (name a keeper freely with kind = ...)"
                )
            if chains and k.chain not in chains:
                raise ValueError(f"keepers.{name}.chain = {k.chain!r} is not a chain in [chains]")
            if k.shards and kind == "oracle":
                raise ValueError(f"keepers.{name}.shards: oracle updates are singleton work (leader only)")
        return v

    @model_validator(mode="after")
    def _api_port_of_its_own(self) -> Settings:
        port = self.order_api.port
        if port and port == (self.health_port or self.metrics_port):
            raise ValueError(
                f"order_api.port = {port} is the /metrics and health port: give it one of its own"
            )
        return self

    @model_validator(mode="after")
    def _every_keeper_signs(self) -> Settings:
        if self.signer is not None and self.signer_url is not None:
            raise ValueError("give signer (a key reference) or signer_url, not both")
        if self.signer is None and self.signer_url is None:
            unsigned = [n for n, k in self.keepers.items() if k.signer is None and k.signer_url is None]
            if unsigned or not self.keepers:
                raise ValueError(
                    f"no signer for {', '.join(unsigned) or 'the keepers'}: set signer or signer_url"
                )
        return self

    def signer_of(self, name: str) -> tuple[str | None, SecretRef | None]:
        """(signer URL, key reference) of `[keepers.<name>]`: its own, else the top-level one."""
        k = self.keepers[name]
        if k.signer_url is not None or k.signer is not None:
            return k.signer_url, k.signer
        return self.signer_url, self.signer

    def kind_of(self, name: str) -> str:
        """The kind of the keeper configured as `[keepers.<name>]`."""
        return self.keepers[name].kind or name
