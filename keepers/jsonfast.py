"""JSON through orjson where it can, the standard library where it cannot.

orjson parses and writes several times faster than `json`, which matters for catch-up (a page
of logs is megabytes of JSON, and every stored event's args are written as JSON), but it
refuses integers beyond 64 bits, which uint256 values are: those fall back to `json`.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(raw: bytes | str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)  # big integers, or a real error that json then names


def dumps(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value)
