"""The process-isolation codec carries every field of an Action, typed as the dataclass says."""

from __future__ import annotations

import dataclasses
import json

import pytest

from keepers.engine.isolation import decode_actions, encode_actions
from keepers.tx.actions import Action, Call

#: Every field away from its default: a field added to Action and not carried fails the test.
FULL = Action(
    idempotency_key="fill:1:42",
    calls=(Call(to="0x" + "ab" * 20, data="0x1234", value=7, gas_limit=99_000), Call(to="0x" + "cd" * 20)),
    expected_value_wei=10**18,
    deadline_blocks=2,
    public_good=True,
    coinbase_payment_wei=123,
    priority_fee_per_gas=2 * 10**9,
    labels={"orders": "3"},
    order_ids=(4, 5, 6),
)


def test_the_sample_sets_every_field():
    for f in dataclasses.fields(Action):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        assert getattr(FULL, f.name) != default, f"the sample leaves {f.name} at its default"


def test_every_field_round_trips():
    assert decode_actions(encode_actions([FULL])) == [FULL]
    assert decode_actions(encode_actions([dataclasses.replace(FULL, priority_fee_per_gas=None)])) == [
        dataclasses.replace(FULL, priority_fee_per_gas=None)
    ]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("expected_value_wei", "1000"),
        ("expected_value_wei", True),
        ("public_good", 1),
        ("order_ids", [1, "2"]),
        ("calls", [{"to": "0x00", "data": "0x", "value": 1.5, "gas_limit": 1}]),
        ("idempotency_key", None),
    ],
)
def test_a_wrongly_typed_field_is_refused_not_coerced(field: str, value: object):
    body = json.loads(encode_actions([FULL]))
    body["actions"][0][field] = value
    decoded = decode_actions(json.dumps(body).encode())
    assert not isinstance(decoded, list), "handed back as is, for the guard to count as invalid"
