"""Crash loop (issue: reliability). The main job while the devnet kill -9s a random keeper every
few seconds, at whatever point of its cycle it is (deciding, signing, sending, committing,
catching up), and restarts it with backoff as a supervisor would. Must hold after every
restart: nothing filled below its limit, no executable order left unfilled, no nonce gap, the
store equal to the chain (every order against getOrder), every death one of ours (SIGKILL,
never a crash of its own), every keeper drains and exits 0 at the end. KEEPERS_DEEP=1 runs it
long enough for 100+ kills."""

from __future__ import annotations

import os
import signal

import pytest

from keepers.config.schema import KEEPER_KINDS
from tests.integration.test_devnet_main_job import _devnet

pytestmark = pytest.mark.integration

DEEP = bool(os.environ.get("KEEPERS_DEEP"))


def test_keepers_killed_at_random_lose_nothing(tmp_path, db_url: str):
    """On SQLite and on PostgreSQL (a fresh database, the `db_url` fixture)."""
    blocks, every = (240, 2.0) if DEEP else (40, 3.0)
    result, tail, code = _devnet(
        tmp_path, "--blocks", str(blocks), "--kill-every", str(every), "--database-url", db_url
    )
    s = result["chains"]["devnet"]
    kills = sum(s["keeper_kills"].values())
    assert kills >= (100 if DEEP else 8), s["keeper_kills"]
    assert sum(s["keeper_restarts"].values()) >= kills, "every killed keeper came back"
    deaths = [c for codes in s["keeper_deaths"].values() for c in codes]
    assert deaths, "the keepers were killed"
    assert set(deaths) == {-signal.SIGKILL}, f"a keeper died on its own: {s['keeper_deaths']}"
    assert s["unfilled_executable"] == [], s["unfilled_executable"]
    assert s["fills_below_limit"] == []
    assert s["nonce_gaps"] == {k: [] for k in KEEPER_KINDS}, s["nonce_gaps"]
    assert s["store_mismatches"] == [], "the store equals the chain after every restart"
    assert s["keeper_exit_codes"] == dict.fromkeys(KEEPER_KINDS, 0), tail
    assert s["fills"] > 0
    assert result["ok"], tail
    assert code == 0, tail
