"""The strategy worker process (see keepers.engine.isolation): loads one plugin, then answers
one frame per block until its stdin closes."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import resource
from dataclasses import replace
from typing import BinaryIO

from keepers.engine.isolation import HEADER, SPEC_ENV, SYNC, encode_actions

OUT_OF_MEMORY = 3


def _write(out: BinaryIO, body: bytes) -> None:
    out.write(HEADER.pack(len(body)) + body)
    out.flush()


def _read(inp: BinaryIO) -> bytes | None:
    header = inp.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (size,) = HEADER.unpack(header)
    return inp.read(size)


async def _serve(spec: dict[str, object], inp: BinaryIO, out: BinaryIO) -> None:
    from web3 import AsyncWeb3

    from keepers.chain.http import SessionHTTPProvider
    from keepers.engine.plugins import build_strategy
    from keepers.tx.actions import Action

    strategy = build_strategy(str(spec["name"]), str(spec["kind"]), dict(spec["params"]))  # type: ignore[call-overload]
    reader = AsyncWeb3(SessionHTTPProvider(str(spec["rpc_url"]))) if spec.get("rpc_url") else None
    _write(out, b"ready")
    while (frame := _read(inp)) is not None:
        op, ctx = pickle.loads(frame)  # noqa: S301 - from the keeper that started us
        ctx = replace(ctx, reader=reader)
        try:
            if op == SYNC:
                try:
                    await asyncio.wait_for(strategy.sync_state(ctx), float(spec["sync_timeout"]))  # type: ignore[arg-type]
                except TimeoutError:
                    raise TimeoutError(f"sync_state took over {spec['sync_timeout']} s") from None
                _write(out, encode_actions([]))
                continue
            actions = await strategy.on_block(ctx)
            if not isinstance(actions, list | tuple) or not all(isinstance(a, Action) for a in actions):
                body = json.dumps({"invalid": type(actions).__name__}).encode()
            else:
                body = encode_actions(actions)
        except MemoryError:
            os._exit(OUT_OF_MEMORY)  # nothing can be trusted to allocate now
        except Exception as exc:  # noqa: BLE001 - reported to the keeper, which counts it
            body = json.dumps({"error": repr(exc)}).encode()
        _write(out, body)


def main() -> None:
    spec = json.loads(os.environ.pop(SPEC_ENV))
    limit = int(spec["memory_limit_mb"]) * 2**20
    # Heap and anonymous mappings (what a leak grows); address space would also count shared
    # libraries and thread stacks the plugin never touches.
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    # The protocol owns the real stdout; whatever the plugin prints goes to stderr.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    inp = os.fdopen(os.dup(0), "rb")
    try:
        asyncio.run(_serve(spec, inp, out))
    except MemoryError:
        os._exit(OUT_OF_MEMORY)


if __name__ == "__main__":
    main()
