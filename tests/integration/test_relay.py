"""The local relay in front of a real anvil, driven by our Flashbots client and by a client
written independently here (raw HTTP, its own JSON formatting)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import aiohttp
import pytest
import requests
from eth_account import Account
from eth_account.messages import encode_defunct
from eth_utils.crypto import keccak
from web3 import Web3

from keepers.tx.flashbots import FlashbotsClient, RelayError, bundle_hash
from keepers_workshop.devnet.anvil import DEFAULT_KEYS, Anvil, free_port
from keepers_workshop.relay.builder import COINBASE
from keepers_workshop.relay.server import RelayThread

pytestmark = pytest.mark.integration

REPUTATION = Account.create()  # a throwaway reputation key, as searchers use
ALICE, BOB, CAROL = (Account.from_key(k) for k in DEFAULT_KEYS[1:4])
SINK = "0x000000000000000000000000000000000000dEaD"
GWEI = 10**9


@pytest.fixture(scope="module")
def chain() -> Iterator[Anvil]:
    with Anvil(extra_args=("--order", "fifo", "--no-mining")) as a:
        yield a


@pytest.fixture
def relay(chain: Anvil) -> Iterator[RelayThread]:
    w3 = Web3(Web3.HTTPProvider(chain.url))
    snap = w3.provider.make_request("evm_snapshot", [])["result"]  # type: ignore[arg-type]
    with RelayThread(chain.url, free_port(), block_time=None) as r:
        yield r
    w3.provider.make_request("evm_revert", [snap])  # type: ignore[arg-type]


def _w3(relay: RelayThread) -> Web3:
    return Web3(Web3.HTTPProvider(relay.url))


def _tx(
    acct, nonce: int, *, to: str = SINK, value: int = 1, tip: int = GWEI, data: bytes = b"", gas=21_000
) -> bytes:
    return bytes(
        acct.sign_transaction(
            {
                "to": to,
                "value": value,
                "gas": gas,
                "maxFeePerGas": 100 * GWEI,
                "maxPriorityFeePerGas": tip,
                "nonce": nonce,
                "chainId": 31337,
                "data": data,
            }
        ).raw_transaction
    )


def _nonce(w3: Web3, acct) -> int:
    return w3.eth.get_transaction_count(acct.address)


def _build(relay: RelayThread) -> dict:
    return requests.post(
        relay.url, json={"jsonrpc": "2.0", "id": 1, "method": "relay_buildBlock"}, timeout=30
    ).json()["result"]


def _client_call(relay: RelayThread, fn):
    async def go():
        async with aiohttp.ClientSession() as session:
            return await fn(FlashbotsClient([relay.url], REPUTATION, session))

    return asyncio.run(go())


def _mined(w3: Web3, raw: bytes) -> bool:
    receipt = w3.provider.make_request("eth_getTransactionReceipt", ["0x" + keccak(raw).hex()])["result"]  # type: ignore[arg-type]
    return receipt is not None


def test_bundle_is_included_atomically_and_a_reverting_member_sinks_it(relay: RelayThread):
    w3 = _w3(relay)
    head = w3.eth.block_number
    # A contract whose every call reverts: init code copies and returns the runtime PUSH0 PUSH0 REVERT.
    init = bytes.fromhex("6003600a5f3960035ff3" + "5f5ffd")
    deploy = _tx(CAROL, _nonce(w3, CAROL), to=None, value=0, data=init, gas=100_000)  # type: ignore[arg-type]
    w3.eth.send_raw_transaction(deploy)
    _build(relay)
    receipt = w3.eth.get_transaction_receipt("0x" + keccak(deploy).hex())
    assert receipt["status"] == 1
    reverter = receipt["contractAddress"]
    assert w3.eth.get_code(reverter) == bytes.fromhex("5f5ffd")

    good = _tx(ALICE, _nonce(w3, ALICE))
    bad = _tx(BOB, _nonce(w3, BOB), to=reverter, value=0, gas=50_000)
    sent = _client_call(relay, lambda c: c.send_bundle([good, bad], head + 2))
    assert sent[relay.url] == bundle_hash([good, bad])
    built = _build(relay)
    assert built["bundles"] == []
    assert not _mined(w3, good), "the good member is not included without its partner"

    # The same pair with the reverting tx allowed to revert lands, both of them.
    good, bad = _tx(ALICE, _nonce(w3, ALICE)), _tx(BOB, _nonce(w3, BOB), to=reverter, value=0, gas=50_000)
    target = w3.eth.block_number + 1
    _client_call(
        relay, lambda c: c.send_bundle([good, bad], target, reverting_tx_hashes=["0x" + keccak(bad).hex()])
    )
    assert _build(relay)["bundles"] == [bundle_hash([good, bad])]
    assert _mined(w3, good)
    assert _mined(w3, bad)


def test_what_a_node_would_refuse_is_left_out_of_simulation_and_block(relay: RelayThread):
    """eth_simulateV1 does not check nonces and refuses a whole simulation for one unpayable
    transaction: the relay must still judge each transaction as a node's pool would."""
    w3 = _w3(relay)
    pauper = Account.create()  # no ETH: cannot pay for gas
    nonce = _nonce(w3, ALICE)
    gap = _tx(ALICE, nonce + 1)  # out of sequence: nonce is still free
    sim = _client_call(relay, lambda c: c.call_bundle([gap], w3.eth.block_number + 1))
    assert "not included" in (sim.results[0].error or "")

    paid, unpaid, after = _tx(BOB, _nonce(w3, BOB)), _tx(pauper, 0), _tx(ALICE, nonce)
    sim = _client_call(relay, lambda c: c.call_bundle([paid, unpaid, after], w3.eth.block_number + 1))
    assert [r.error is None for r in sim.results] == [True, False, True], "only the unpayable one is out"
    assert [r.gas_used for r in sim.results] == [21_000, 0, 21_000]

    too_big = _tx(ALICE, nonce, gas=10**9)  # more gas than a block holds
    sim = _client_call(relay, lambda c: c.call_bundle([too_big], w3.eth.block_number + 1))
    assert "not included" in (sim.results[0].error or "")

    target = w3.eth.block_number + 1
    _client_call(relay, lambda c: c.send_bundle([paid, unpaid], target))
    _client_call(relay, lambda c: c.send_bundle([gap], target))
    assert _build(relay)["bundles"] == [], "a bundle with a refused member is not included"
    assert not any(_mined(w3, t) for t in (paid, unpaid, gap))


def test_wrong_or_missing_signature_is_rejected(relay: RelayThread):
    head = _w3(relay).eth.block_number
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "eth_sendBundle",
            "params": [{"txs": ["0x00"], "blockNumber": hex(head + 1)}],
        }
    ).encode()
    missing = requests.post(relay.url, data=body, headers={"Content-Type": "application/json"}, timeout=10)
    assert missing.status_code == 403
    assert missing.json()["error"]["code"] == -32025

    signed_other_body = REPUTATION.sign_message(encode_defunct(text="0x" + keccak(body + b" ").hex()))
    header = f"{REPUTATION.address}:{signed_other_body.signature.to_0x_hex()}"
    wrong = requests.post(relay.url, data=body, headers={"X-Flashbots-Signature": header}, timeout=10)
    assert wrong.status_code == 403
    assert wrong.json()["error"]["code"] == -32025

    impostor = Account.create()
    good_sig = REPUTATION.sign_message(encode_defunct(text="0x" + keccak(body).hex()))
    claimed_other = f"{impostor.address}:{good_sig.signature.to_0x_hex()}"
    assert (
        requests.post(
            relay.url, data=body, headers={"X-Flashbots-Signature": claimed_other}, timeout=10
        ).status_code
        == 403
    )

    with pytest.raises(RelayError, match="not a valid signed transaction") as info:
        _client_call(relay, lambda c: c.call_bundle([b"\x00"], head + 1))
    assert info.value.code == -32602, "our client's signature is accepted; the error is about the tx"


def test_a_bundle_for_block_n_is_not_included_at_n_plus_1(relay: RelayThread):
    w3 = _w3(relay)
    head = w3.eth.block_number
    tx = _tx(ALICE, _nonce(w3, ALICE))
    _client_call(relay, lambda c: c.send_bundle([tx], head + 2))
    _build(relay)  # head + 1: not its block
    assert not _mined(w3, tx)
    _build(relay)  # head + 2
    assert _mined(w3, tx)

    tx2 = _tx(ALICE, _nonce(w3, ALICE))
    n = w3.eth.block_number + 1
    _client_call(relay, lambda c: c.send_bundle([tx2], n))
    _build(relay)  # block n: its block
    assert _mined(w3, tx2)

    tx3 = _tx(ALICE, _nonce(w3, ALICE))
    n = w3.eth.block_number + 1
    _client_call(relay, lambda c: c.send_bundle([tx3], n + 5))
    _build(relay)
    _client_call(relay, lambda c: c.cancel_bundle("none"))
    pending = requests.post(
        relay.url, json={"jsonrpc": "2.0", "id": 1, "method": "relay_pendingBundles"}, timeout=10
    )
    assert pending.json()["result"][0]["bundleHash"] == bundle_hash([tx3])


def test_the_bundle_paying_the_builder_more_wins(relay: RelayThread):
    w3 = _w3(relay)
    nonce = _nonce(w3, ALICE)
    target = w3.eth.block_number + 1
    cheap = _tx(ALICE, nonce, tip=2 * GWEI, value=2)
    # Same nonce (they conflict): a lower tip, but a direct payment to the builder on top.
    rich = [
        _tx(ALICE, nonce, tip=1 * GWEI, value=1),
        _tx(BOB, _nonce(w3, BOB), to=Web3.to_checksum_address(COINBASE), value=10**16),
    ]
    _client_call(relay, lambda c: c.send_bundle([cheap], target))
    _client_call(relay, lambda c: c.send_bundle(rich, target))
    sim = _client_call(relay, lambda c: c.call_bundle(rich, target))
    assert int(sim.results[1].coinbase_diff) >= 10**16
    assert _build(relay)["bundles"] == [bundle_hash(rich)]
    assert not _mined(w3, cheap)
    assert w3.eth.get_balance(Web3.to_checksum_address(COINBASE)) >= 10**16


def test_replacement_uuid_replaces_and_cancels(relay: RelayThread):
    w3 = _w3(relay)
    target = w3.eth.block_number + 1
    first = _tx(ALICE, _nonce(w3, ALICE), value=1)
    second = _tx(ALICE, _nonce(w3, ALICE), value=2)
    _client_call(relay, lambda c: c.send_bundle([first], target, replacement_uuid="u-1"))
    _client_call(relay, lambda c: c.send_bundle([second], target, replacement_uuid="u-1"))
    assert _build(relay)["bundles"] == [bundle_hash([second])]

    third = _tx(ALICE, _nonce(w3, ALICE))
    _client_call(relay, lambda c: c.send_bundle([third], w3.eth.block_number + 1, replacement_uuid="u-2"))
    _client_call(relay, lambda c: c.cancel_bundle("u-2"))
    assert _build(relay)["bundles"] == []
    assert not _mined(w3, third)


def test_private_transaction_lands_at_the_top_and_public_txs_after(relay: RelayThread):
    w3 = _w3(relay)
    private = _tx(ALICE, _nonce(w3, ALICE))
    h = _client_call(relay, lambda c: c.send_private_transaction(private, w3.eth.block_number + 3))
    assert h == "0x" + keccak(private).hex()
    public = _tx(BOB, _nonce(w3, BOB))
    w3.eth.send_raw_transaction(public)
    _build(relay)
    block = w3.eth.get_block("latest")
    assert ["0x" + t.hex() if not t.hex().startswith("0x") else t.hex() for t in block["transactions"]] == [
        "0x" + keccak(private).hex(),
        "0x" + keccak(public).hex(),
    ], "bundles and private transactions at the top of the block, the public mempool after"


def test_call_bundle_reports_in_the_flashbots_shape(relay: RelayThread):
    w3 = _w3(relay)
    txs = [_tx(ALICE, _nonce(w3, ALICE), tip=2 * GWEI)]
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "eth_callBundle",
            "params": [
                {
                    "txs": ["0x" + t.hex() for t in txs],
                    "blockNumber": hex(w3.eth.block_number + 1),
                    "stateBlockNumber": "latest",
                }
            ],
        },
        indent=2,  # a different client, a different serialisation: the signature covers these bytes
    ).encode()
    searcher = Account.create()
    sig = searcher.sign_message(encode_defunct(text="0x" + keccak(body).hex())).signature.hex()
    header = f"{searcher.address.lower()}:0x{sig}"
    resp = requests.post(relay.url, data=body, headers={"X-Flashbots-Signature": header}, timeout=30).json()
    result = resp["result"]
    assert set(result) >= {
        "bundleGasPrice", "bundleHash", "coinbaseDiff", "ethSentToCoinbase", "gasFees", "stateBlockNumber",
        "totalGasUsed", "results",
    }  # fmt: skip
    r0 = result["results"][0]
    assert r0["gasUsed"] == 21_000
    assert int(r0["gasFees"]) == 21_000 * 2 * GWEI
    assert r0["fromAddress"].lower() == ALICE.address.lower()
    assert isinstance(result["coinbaseDiff"], str), "wei amounts are decimal strings"
    assert not _mined(w3, txs[0]), "simulation leaves no trace"


def test_a_batch_of_node_reads_is_proxied_and_relay_methods_are_refused_in_one(relay: RelayThread):
    reads = [
        {"jsonrpc": "2.0", "id": 7, "method": "eth_chainId", "params": []},
        {"jsonrpc": "2.0", "id": 8, "method": "eth_getBalance", "params": [ALICE.address, "latest"]},
        {"jsonrpc": "2.0", "id": 9, "method": "eth_call", "params": [{"to": SINK, "data": "0x"}, "latest"]},
    ]
    answers = {a["id"]: a for a in requests.post(relay.url, json=reads, timeout=10).json()}
    assert answers[7]["result"] == hex(31337)
    assert int(answers[8]["result"], 16) == _w3(relay).eth.get_balance(ALICE.address)
    assert answers[9]["result"] == "0x"

    mixed = [*reads, {"jsonrpc": "2.0", "id": 10, "method": "eth_sendRawTransaction", "params": ["0x00"]}]
    refused = requests.post(relay.url, json=mixed, timeout=10).json()
    assert refused["error"]["code"] == -32600
    assert "eth_sendRawTransaction" in refused["error"]["message"]
