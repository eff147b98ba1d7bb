"""A node's answer to a JSON-RPC batch is matched to the requests by id, or refused whole: an
answer never reaches the wrong call. A batch's rate-limit tokens count every request in it."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from web3.types import RPCEndpoint

from keepers.chain.http import SessionHTTPProvider
from keepers.chain.rpc_pool import _Bucket


class _Node(SessionHTTPProvider):
    """Answers a batch with whatever `answer(ids)` makes of the request ids it was sent."""

    def __init__(self, answer: Any) -> None:
        super().__init__("http://127.0.0.1:1")
        self.answer = answer

    async def _post(self, request_data: bytes) -> bytes:
        ids = [r["id"] for r in json.loads(request_data)]
        return json.dumps(self.answer(ids)).encode()


def _batch(node: _Node, n: int) -> Any:
    requests = [(RPCEndpoint("eth_call"), [{"data": hex(i)}, "latest"]) for i in range(n)]
    return anyio.run(node.make_batch_request, requests)


def test_answers_come_back_in_the_order_of_the_requests_whatever_order_the_node_sends() -> None:
    got = _batch(_Node(lambda ids: [{"id": i, "result": f"r{i}"} for i in reversed(ids)]), 3)
    assert [r["result"] for r in got] == [f"r{i}" for i in _ids(got)]
    assert _ids(got) == sorted(_ids(got))


def _ids(answers: list[dict[str, Any]]) -> list[int]:
    return [a["id"] for a in answers]


@given(
    mangle=st.sampled_from(["duplicate", "drop", "extra", "null-id", "string-id", "not-a-dict", "foreign-id"])
)
def test_an_answer_that_does_not_answer_each_id_once_is_refused_whole(mangle: str) -> None:
    def answer(ids: list[int]) -> list[Any]:
        out: list[Any] = [{"id": i, "result": "0x"} for i in ids]
        if mangle == "duplicate":
            out[1]["id"] = ids[0]
        elif mangle == "drop":
            out.pop()
        elif mangle == "extra":
            out.append({"id": ids[0], "result": "0x"})
        elif mangle == "null-id":
            out[1] = {"id": None, "error": {"code": -32603, "message": "internal"}}
        elif mangle == "string-id":
            out[1]["id"] = str(ids[1])
        elif mangle == "not-a-dict":
            out[1] = 1
        else:
            out[1]["id"] = max(ids) + 100
        return out

    with pytest.raises(ValueError, match="other ids or a different count"):
        _batch(_Node(answer), 3)


def test_one_error_object_for_the_whole_batch_is_returned_as_it_is() -> None:
    refused = {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32600, "message": "batch requests are not supported"},
    }
    assert _batch(_Node(lambda ids: refused), 3) == refused


def test_a_batch_counts_each_request_and_leaves_the_bucket_in_debt() -> None:
    bucket = _Bucket(10.0)
    assert bucket.take(25), "a batch larger than the bucket goes once a token is there"
    assert not bucket.take(), "and what follows waits out the 15 it borrowed"
    assert 1.5 < bucket.wait_time() <= 1.6
