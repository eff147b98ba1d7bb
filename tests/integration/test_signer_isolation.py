"""The funds key never lives in the keeper process (issue: key isolation).

Who attacks: a strategy plugin (third-party code loaded into the keeper) that wants the key;
a caller of the signer's socket that wants it to sign something else or spend without bound.
What must hold: nothing in the keeper's memory signs for its address, whatever the plugin
tries; the signer signs only its own address's type-2 transactions on its chains, within its
hourly fee budget, and answers any input with a JSON-RPC error, never by dying."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
from pathlib import Path

import anyio
import pytest
from eth_account import Account
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from web3 import Web3

from keepers.chain.artifacts import load_artifact
from keepers.config.secrets import SecretRef
from keepers.store.tables import TxRecord
from keepers.tx.fee_budget import FeeBudget
from keepers.tx.fees import Fees
from keepers.tx.remote_signer import RemoteSigner
from keepers.tx.signer import SignerError, TxSigner
from keepers.tx.signer_process import SignerProcess
from keepers.tx.signer_service import Policy, SignerService
from keepers_workshop.devnet.anvil import free_port
from tests.helpers.keeper_process import (
    KEEPER,
    KEEPER_KEY,
    PLUGINS,
    keeper_config,
    relayed_chain,
    start_keeper,
)

pytestmark = pytest.mark.integration

GWEI = 10**9
SINK = "0x" + "11" * 20
BOOK = "0x" + "b0" * 20


def _key_file(tmp_path: Path, key: str = KEEPER_KEY, mode: int = 0o600) -> Path:
    path = tmp_path / "funds.key"
    path.write_text(key)
    path.chmod(mode)
    return path


def _record(nonce: int, gas: int = 21_000, chain_id: int = 31337) -> TxRecord:
    return TxRecord(
        idempotency_key=f"t{nonce}", chain_id=chain_id, signer=KEEPER.address.lower(), nonce=nonce,
        state="unstarted", to=SINK, data="0x", value=0, gas_limit=gas,
    )  # fmt: skip


def _memory_holds(pid: int, needles: list[bytes]) -> list[str]:
    """Which needles occur anywhere in the readable memory of process `pid` (the plugin has its
    own reader: it is third-party code and imports nothing of the tests)."""
    hits = set()
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            span, perms = line.split()[:2]
            if "r" not in perms:
                continue
            start, end = (int(x, 16) for x in span.split("-"))
            try:
                mem.seek(start)
                chunk = mem.read(end - start)
            except (OSError, OverflowError, ValueError):
                continue
            hits |= {n.hex() for n in needles if n in chunk}
    return sorted(hits)


def _key_needles(key: str) -> list[bytes]:
    raw = bytes.fromhex(key.removeprefix("0x"))
    hexed = raw.hex().encode()
    return [raw, hexed, hexed.upper()]


def _stderr(proc: subprocess.Popen[str]) -> str:
    return proc.stderr.read()[-3000:] if proc.stderr and proc.poll() is not None else "still running"


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


@pytest.mark.parametrize("reference", ["env", "file"])
def test_a_hostile_plugin_finds_no_key_in_the_keeper(tmp_path: Path, reference: str) -> None:
    """`keepers run` with a plugin that searches its own process for anything that signs for the
    keeper's address (objects, strings, bytes, the environment, every readable page); the test
    then reads the keeper's whole memory for the key itself, and, as a control that the scan
    can see a key, finds it in the signer process."""
    report = tmp_path / "snoop.json"
    # A fresh key: anvil's default keys are literals in keepers_workshop.devnet, which the CLI imports.
    funds = Account.create()
    key = funds.key.to_0x_hex()
    with relayed_chain(tmp_path) as (anvil, relay):
        Web3(Web3.HTTPProvider(anvil.url)).provider.make_request(
            "anvil_setBalance",  # type: ignore[arg-type]
            [funds.address, hex(10**20)],
        )
        cfg = keeper_config(tmp_path, relay.url, health_port=free_port(), strategy="test-key-snooper")
        if reference == "file":
            text = cfg.read_text().replace(
                '{ env = "TEST_SIGNER" }', f'{{ file = "{_key_file(tmp_path, key)}" }}'
            )
            cfg.write_text(text)
        # With a key file the key must not be in the environment either: libraries read every
        # variable (proxy settings), so an unscrubbed one ends up in the heap.
        keeper = start_keeper(cfg, SNOOP_REPORT=str(report), TEST_SIGNER=key if reference == "env" else "")
        try:
            deadline = time.monotonic() + 120
            while not report.exists() and keeper.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert report.exists(), _stderr(keeper)
            time.sleep(0.5)  # the report is written in one call; let it land
            snooped = json.loads(report.read_text())
            assert snooped["address"] == funds.address
            assert snooped["found"] == [], "the plugin reached the key"
            assert _memory_holds(keeper.pid, _key_needles(key)) == []
            assert b"TEST_SIGNER=0x" not in Path(f"/proc/{keeper.pid}/environ").read_bytes()
            # `keepers run` forks its signer: named keepers-signer, with the keeper's command line.
            signers = [
                p
                for p in _children(keeper.pid)
                if Path(f"/proc/{p}/comm").read_bytes() == b"keepers-signer\n"
            ]
            assert len(signers) == 1
            assert _memory_holds(signers[0], _key_needles(key)[:1]), "control: the signer holds it"
            if reference == "env":  # killed: its signer must not outlive it
                keeper.kill()
                keeper.wait(timeout=30)
                deadline = time.monotonic() + 15
                while _alive(signers[0]) and time.monotonic() < deadline:
                    time.sleep(0.2)
                assert not _alive(signers[0]), "the signer outlived its keeper"
        finally:
            keeper.terminate()
            keeper.wait(timeout=30)
        if reference == "file":
            assert keeper.returncode == 0, _stderr(keeper)
            assert not _alive(signers[0])


#: Installed in the keeper's interpreter: records which process decodes a variable's value
#: into a str, with the key's value (a str copy stays in the heap after it is freed).
#: The key is known by its digest only (in the environment it would be one more copy).
DECODE_RECORDER = """
import hashlib, os, sys
if any(m in a for a in sys.orig_argv for m in ("keepers.cli", "keepers.tx.signer_service")):
    _decode, _key = os.environ.decodevalue, os.environ["KEY_SHA256"]
    def _recorded(value, _decode=_decode):
        if hashlib.sha256(value).hexdigest() == _key:
            with open(os.environ["DECODES"], "a") as f:
                f.write(f"{os.getpid()}\\n")
        return _decode(value)
    os.environ.decodevalue = _recorded
"""


def test_the_keeper_never_decodes_its_key_variable(tmp_path: Path) -> None:
    """Deterministic where the plugin's scan is not (a freed copy may be overwritten before it
    looks): libraries decode every variable on import (eth_account's pycryptodome through
    platform.architecture(), wsgiref.handlers), so `keepers run` takes the key's variable out of
    the environment before importing any; only the forked signer reads it."""
    recorder = tmp_path / "recorder"
    recorder.mkdir()
    (recorder / "sitecustomize.py").write_text(DECODE_RECORDER)
    decodes, report = tmp_path / "decodes", tmp_path / "snoop.json"
    with relayed_chain(tmp_path) as (_anvil, relay):
        cfg = keeper_config(tmp_path, relay.url, health_port=free_port(), strategy="test-key-snooper")
        keeper = start_keeper(
            cfg, SNOOP_REPORT=str(report), DECODES=str(decodes),
            KEY_SHA256=hashlib.sha256(KEEPER_KEY.encode()).hexdigest(),
            PYTHONPATH=os.pathsep.join([str(recorder), str(PLUGINS)]),
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while not report.exists() and keeper.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert report.exists(), _stderr(keeper)
            signers = [p for p in _children(keeper.pid) if _comm(p) == b"keepers-signer\n"]
        finally:
            keeper.terminate()
            keeper.wait(timeout=30)
    readers = {int(line) for line in decodes.read_text().split()} if decodes.exists() else set()
    assert len(signers) == 1
    assert readers, "control: the signer read it"
    assert keeper.pid not in readers, "the keeper decoded its key variable"
    assert readers == set(signers), "only the signer decodes it"


def _comm(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/comm").read_bytes()
    except OSError:  # gone
        return b""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_the_signer_signs_its_own_transactions_within_its_budget(tmp_path: Path) -> None:
    """A real signer process: the raw transactions it returns recover to its address with the
    fields asked for; another sender or chain is refused; the hourly budget counts a nonce
    once however often it is signed, and refuses the signature that would pass it."""
    budget_eth = 21_000 * 20 * GWEI * 2.5 / 10**18  # room for two nonces at 20 gwei, not three

    async def run() -> None:
        child = SignerProcess(
            SecretRef(file=_key_file(tmp_path)), 31337, budget_eth, [SINK], kind="limit-stop",
            contracts={"order_book": BOOK},
        )  # fmt: skip
        signer = RemoteSigner(child.url, 31337)
        try:
            assert await child.start(signer) == KEEPER.address
            fees = Fees(20 * GWEI, GWEI)
            first = await signer.sign([(_record(0), fees), (_record(0), fees), (_record(1), fees)])
            assert first[0].raw == first[1].raw, "deterministic: the same bytes again after a crash"
            assert Account.recover_transaction(first[2].raw) == KEEPER.address
            local = await TxSigner(Account.from_key(KEEPER_KEY), 31337).sign([(_record(1), fees)])
            assert first[2].raw == local[0].raw
            assert first[2].tx_hash == local[0].tx_hash
            with pytest.raises(SignerError, match="spend limit"):
                await signer.sign([(_record(2), fees)])
            await signer.sign([(_record(1), fees)])  # a nonce already counted still signs
            elsewhere = _record(2).model_copy(update={"to": "0x" + "22" * 20})
            with pytest.raises(SignerError, match="does not sign 0x"):
                await signer.sign([(elsewhere, fees)])  # a plugin sending the funds away
            # On the order book, the calls of a limit-stop keeper only: a fill, not a claim of the
            # keeper's balances to the plugin's address.
            book = Web3().eth.contract(abi=load_artifact("OrderBook").abi)
            fill = book.encode_abi("executeBatchAtLeast", [[], SINK, 1])
            claim = book.encode_abi("claim", [SINK, "0x" + "33" * 20])
            call = _record(2).model_copy(update={"to": BOOK, "data": fill})
            with pytest.raises(SignerError, match="does not sign 0x"):
                await signer.sign([(call.model_copy(update={"data": claim}), fees)])
            with pytest.raises(SignerError, match="spend limit"):  # the fill's shape passes the policy
                await signer.sign([(call, fees)])
            with pytest.raises(SignerError, match="sends value only to"):
                await signer.sign([(_record(2).model_copy(update={"value": 10**18}), fees)])
            with pytest.raises(SignerError, match="not one this signer signs for"):
                await RemoteSigner(child.url, 1).sign([(_record(5, chain_id=1), fees)])
            other = RemoteSigner(child.url, 31337)
            other.address = Account.create().address
            with pytest.raises(SignerError, match="from must be"):
                await other.sign([(_record(5), fees)])
            await other.close()
            # Odd bodies get JSON-RPC errors and the signer goes on serving.
            for body in (b"not json", b"[]", json.dumps([{}] * 300).encode(), b'{"method": 5}'):
                async with signer._client().post("http://signer/", data=body) as resp:
                    assert resp.status == 200
                    assert "error" in json.dumps(await resp.json())
            assert await signer.connect() == KEEPER.address
        finally:
            await signer.close()
            child.close()

    anyio.run(run)


def test_a_world_readable_key_file_is_refused(tmp_path: Path) -> None:
    async def run() -> None:
        child = SignerProcess(SecretRef(file=_key_file(tmp_path, mode=0o644)), 31337, None, [])
        signer = RemoteSigner(child.url, 31337)
        try:
            with pytest.raises(SignerError, match="exited with code 2"):
                await child.start(signer)
        finally:
            await signer.close()
            child.close()

    anyio.run(run)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=80),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)
_TX_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        k: st.one_of(
            st.text(max_size=70), st.integers(), st.none(), st.sampled_from(["0x", "0x1", "0x" + "f" * 80])
        )
        for k in (
            "from",
            "to",
            "gas",
            "nonce",
            "chainId",
            "value",
            "data",
            "maxFeePerGas",
            "maxPriorityFeePerGas",
        )
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    request=_JSON
    | st.fixed_dictionaries(
        {
            "jsonrpc": st.just("2.0"),
            "id": _JSON,
            "method": st.just("eth_signTransaction"),
            "params": st.lists(_TX_FIELDS, max_size=2),
        }
    )
)
def test_the_signer_answers_any_request_with_a_result_or_an_error(request: object) -> None:
    policy = Policy(chain_ids=frozenset({31337}), allowed_to=None)
    service = SignerService(TxSigner(Account.from_key(KEEPER_KEY), 0), policy, FeeBudget(10**18))
    answer = service.handle(request)
    assert set(answer) == {"jsonrpc", "id", "error"} or set(answer) == {"jsonrpc", "id", "result"}
    if "result" in answer and isinstance(request, dict) and request.get("method") == "eth_signTransaction":
        assert Account.recover_transaction(answer["result"]) == KEEPER.address
    assert not re.search(KEEPER_KEY.removeprefix("0x"), json.dumps(answer), re.I)


def test_the_fee_budget_counts_each_nonce_once_for_an_hour() -> None:
    now = [0.0]
    budget = FeeBudget(100, clock=lambda: now[0])
    budget.charge(1, 0, 40)
    budget.charge(1, 0, 60)  # a bump of the same nonce: its worst case, not the sum
    budget.charge(1, 1, 40)
    assert budget.spent() == 100
    with pytest.raises(Exception, match="spend limit"):
        budget.charge(1, 2, 1)
    now[0] = 3601.0
    budget.charge(1, 2, 100)
    assert budget.spent() == 100
