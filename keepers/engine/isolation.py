"""Out-of-process strategies: the plugin runs in a worker process under a memory limit, and the
keeper kills the worker when a block's answer is late.

In-process, a plugin that blocks the event loop (a busy loop, a sync network call) or leaks
memory takes the keeper down with it; a timeout cannot interrupt code that never yields. In a
worker it can only lose its own blocks: the keeper waits `strategy_timeout`, kills the worker,
counts the failure and starts a fresh one for the next block (as Keep3r jobs and MakerDAO's
auction-keeper models run apart from the keeper that signs).

The protocol is one frame each way per call over the worker's pipes, a 4-byte length and a
body. Keeper -> worker: the call (`sync_state` once, then `on_block`) and the block's context,
pickled (the keeper is trusted). Worker -> keeper: JSON, never pickle, so a hostile plugin
cannot run code in the keeper by what it returns.

A worker still importing is not late: a block's timeout that falls while it starts leaves it
starting (up to `startup_timeout`), or on a busy machine every block would kill a worker that
needs a little longer than one block to start and start another one cold.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import struct
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import MISSING, asdict, fields, is_dataclass, replace
from types import UnionType
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

import anyio
import anyio.lowlevel
import structlog
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from keepers.engine.strategy import BlockContext, Strategy
from keepers.obs import metrics
from keepers.tx.actions import Action

log = structlog.get_logger("isolation")

HEADER = struct.Struct(">I")
SPEC_ENV = "KEEPERS_WORKER_SPEC"
#: The calls a keeper makes of its worker (the first item of every frame it sends).
SYNC, BLOCK = "sync_state", "on_block"
#: A worker's phases: importing; said "ready" (its sync_state not sent yet); in its
#: sync_state; answering blocks.
STARTING, READY, WARMING, UP = "starting", "ready", "warming", "up"
#: The biggest answer a worker may send (a garbage flood is cut off, not buffered).
MAX_FRAME = 16 * 2**20
_T = TypeVar("_T")


class WorkerFailed(RuntimeError):
    """The worker died, answered out of protocol, or its strategy raised."""


def encode_actions(actions: Sequence[Action]) -> bytes:
    return json.dumps({"actions": [asdict(a) for a in actions]}).encode()


def decode_actions(body: bytes) -> list[Action] | object:
    """Actions from a worker's JSON; anything else is returned as is (the guard counts it)."""
    try:
        msg: object = json.loads(body)
    except ValueError:
        return body
    if not isinstance(msg, dict):
        return msg
    if "error" in msg:
        raise WorkerFailed(f"strategy raised in its worker: {str(msg['error'])[:500]}")
    try:
        return [_from_json(Action, a) for a in msg["actions"]]
    except (KeyError, TypeError, ValueError):
        return msg


def _from_json(cls: type[_T], data: object) -> _T:
    """An instance of dataclass `cls` from its `asdict` JSON, field by field from the class's
    own type hints: a field added to Action travels without touching this codec, and a value
    of the wrong type is refused (ValueError), never coerced."""
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__}: expected an object")
    hints = get_type_hints(cls)
    values = {}
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name in data:
            values[f.name] = _value(hints[f.name], data[f.name])
        elif f.default is MISSING and f.default_factory is MISSING:
            raise KeyError(f.name)
    return cls(**values)


def _value(hint: Any, value: object) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (UnionType, Union):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _value(inner, value)
    if origin is tuple:
        if not isinstance(value, list):
            raise TypeError("expected a list")
        return tuple(_value(args[0], v) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise TypeError("expected an object")
        return {_value(args[0], k): _value(args[1], v) for k, v in value.items()}
    if isinstance(hint, type) and is_dataclass(hint):
        return _from_json(hint, value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError("expected a boolean")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("expected an integer")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ValueError("expected a string")
        return value
    raise TypeError(f"no codec for {hint!r}")


class IsolatedStrategy(Strategy):
    """Runs the named plugin in a worker process; sync_state and on_block are round trips to it."""

    def __init__(
        self,
        name: str,
        kind: str,
        params: dict[str, Any],
        *,
        rpc_url: str | None,
        memory_limit_mb: int,
        keeper: str,
        sync_timeout: float = 10.0,
        startup_timeout: float = 30.0,
    ) -> None:
        super().__init__(params=None)  # type: ignore[arg-type]
        self.kind = kind  # type: ignore[misc]
        self.name = name
        self.plugin_params = params
        #: The keeper's name, for the strategy-error metric of a replacement's failed warm-up.
        self.keeper = keeper
        #: Inside sync_state(), whose caller counts a failed warm-up itself; and this worker's
        #: warm-up counted so already (sync_state() raised to its caller).
        self._in_sync_state = False
        self._warm_counted = False
        self.rpc_url = rpc_url
        self.memory_limit_mb = memory_limit_mb
        #: The plugin's sync_state is cut off after this in its worker (it then starts cold, as
        #: in-process); a worker not up after `startup_timeout` is replaced.
        self.sync_timeout = sync_timeout
        self.startup_timeout = max(startup_timeout, sync_timeout + 10.0)
        #: Workers replaced because they failed (died, were late, answered out of protocol).
        self.restarts = 0
        self._proc: Process | None = None
        self._out: BufferedByteReceiveStream | None = None
        #: Where the worker is: STARTING (until "ready"), WARMING (its sync_state), UP.
        self._phase = UP
        #: The context its sync_state gets, sent once it reads (a big one would fill the pipe).
        self._warm_ctx: BlockContext | None = None
        self._sync_error: str | None = None
        self._spawned_at = 0.0
        #: Answers asked for and not read yet: a call that ran out of time leaves one.
        self._unread = 0
        #: The current call spent time waiting for the worker to start: being late then is
        #: not the worker's failure.
        self._waited_for_start = False
        #: The size from a frame header read whose body is not read yet.
        self._frame_size: int | None = None
        self._closed = False

    async def _spawn(self, ctx: BlockContext) -> None:
        """Starts a worker without waiting for it, to run its sync_state with `ctx` once up: it
        imports and warms up (about 2 s cold) while the keeper goes on, instead of inside one
        block's timeout. Every worker is warmed so: a replacement is a fresh plugin instance."""
        spec = json.dumps(
            {
                "name": self.name,
                "kind": self.kind,
                "params": self.plugin_params,
                "rpc_url": self.rpc_url,
                "memory_limit_mb": self.memory_limit_mb,
                "sync_timeout": self.sync_timeout,
            }
        )
        # The worker sees the plugins the keeper sees. The spec goes by environment, not argv:
        # an RPC URL may carry credentials, and argv is readable by every user on the host.
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
            SPEC_ENV: spec,
        }
        argv = [sys.executable, "-P", "-m", "keepers.engine.worker"]  # -P: never code from the cwd
        proc = await anyio.open_process(argv, env=env, stderr=None)
        assert proc.stdout is not None
        self._proc, self._out = proc, BufferedByteReceiveStream(proc.stdout)
        self._phase, self._warm_ctx, self._sync_error = STARTING, ctx, None
        self._warm_counted = False
        self._frame_size, self._unread = None, 0
        self._spawned_at = time.monotonic()

    def _starting(self) -> bool:
        """A live worker that has not finished starting and is still within its startup time."""
        return (
            self._proc is not None
            and self._proc.returncode is None
            and self._phase != UP
            and time.monotonic() - self._spawned_at < self.startup_timeout
        )

    async def _send(self, op: str, ctx: BlockContext, phase_after: str | None = None) -> None:
        """Sends one frame, counting its answer as owed (and moving to `phase_after`) before the
        write: past the check, the frame is written whole before the first yield (asyncio
        buffers it), so a cancellation never leaves one half sent, or sent and not counted."""
        proc = self._proc
        assert proc is not None
        assert proc.stdin is not None
        frame = _frame(op, ctx)
        await anyio.lowlevel.checkpoint_if_cancelled()
        self._unread += 1
        if phase_after is not None:
            self._phase = phase_after
        await proc.stdin.send(frame)

    async def _await_ready(self) -> None:
        """Waits for the worker's "ready" and its sync_state's answer (at most `startup_timeout`
        from its start, across however many calls that takes). Each step is recorded as soon as
        it is done, so a call cancelled between two leaves the next call where it stopped."""
        if self._phase == UP:
            return
        self._waited_for_start = True
        left = self.startup_timeout - (time.monotonic() - self._spawned_at)
        with anyio.fail_after(max(left, 0.0)):
            if self._phase == STARTING:
                frame = await self._read_frame()
                if frame != b"ready":
                    raise WorkerFailed(f"strategy worker did not start: {frame[:500]!r}")
                self._phase = READY
            if self._phase == READY:
                assert self._warm_ctx is not None
                await self._send(SYNC, self._warm_ctx, phase_after=WARMING)
                self._warm_ctx = None
            frame = await self._answer()
            try:
                answer = decode_actions(frame)
            except WorkerFailed as exc:
                answer = str(exc)
            if not isinstance(answer, list):
                # As in-process: a failed warm-up is reported, and the strategy starts cold.
                self._sync_error = f"sync_state failed in the worker: {str(answer)[:500]}"
                log.warning("strategy sync_state failed", strategy=self.name, error=self._sync_error)
                if not self._in_sync_state and not self._warm_counted:
                    # A replacement's warm-up, or one that outlasted sync_state(): no caller saw it.
                    metrics.STRATEGY_ERRORS.labels(self.keeper, self.name, "sync_state").inc()
            self._phase = UP

    async def _answer(self) -> bytes:
        """The answer to the last frame sent; answers to earlier calls that ran out of time
        first come off the pipe and are dropped."""
        while self._unread > 1:
            await self._read_frame()
            self._unread -= 1
        frame = await self._read_frame()
        self._unread -= 1
        return frame

    async def _read_frame(self) -> bytes:
        """The next frame; cancel-safe (a header already read is kept for the next call, and the
        stream keeps a partly read body), as a starting worker outlives a cancelled wait."""
        assert self._out is not None
        try:
            if self._frame_size is None:
                (self._frame_size,) = HEADER.unpack(await self._out.receive_exactly(HEADER.size))
            size = self._frame_size
            if size > MAX_FRAME:
                raise WorkerFailed(f"strategy worker sent a {size}-byte answer (limit {MAX_FRAME})")
            body = await self._out.receive_exactly(size)
            self._frame_size = None
            return body
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError):
            code = await self._exit_code()
            raise WorkerFailed(f"strategy worker exited ({self._describe(code)})") from None

    async def _exit_code(self) -> int | None:
        if self._proc is None:
            return None
        with anyio.move_on_after(2):
            return await self._proc.wait()
        return None

    def _describe(self, code: int | None) -> str:
        if code is not None and code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:  # a real-time signal has no name
                return f"killed by signal {-code}"
        if code == 3:
            return f"out of memory: limit {self.memory_limit_mb} MB"
        return f"exit code {code}"

    async def _kill(self) -> None:
        proc, self._proc, self._out = self._proc, None, None
        if proc is None:
            return
        with anyio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.kill()
            await proc.aclose()

    async def _started(self, ctx: BlockContext) -> Process:
        """The worker, started (with `ctx` for its warm-up) if there is none or it died."""
        if self._proc is not None and self._proc.returncode is not None:
            self.restarts += 1
            await self._kill()
        if self._proc is None:
            await self._spawn(ctx)
        assert self._proc is not None
        return self._proc

    async def _guarded(self, ctx: BlockContext, call: Callable[[], Awaitable[_T]]) -> _T:
        """Runs `call` against the worker; a worker that fails it is replaced."""
        deadline = anyio.current_effective_deadline()
        self._waited_for_start = False
        try:
            return await call()
        except anyio.get_cancelled_exc_class():
            if self._starting():
                raise  # only slow to start: it stays, and answers a later block
            # -inf: the call began with its scope cancelled already, so no deadline of its own.
            late = math.isfinite(deadline) and anyio.current_time() >= deadline
            if self._closed or not late:
                # Cancelled from outside (the keeper stopping), not late: the worker goes
                # (its state is unknown) and no replacement is started for a keeper that stops.
                await self._kill()
                raise
            if self._waited_for_start:
                # It came up within this call, but too late to answer in it: it is not at
                # fault, and its answer is dropped by the next call.
                raise
            await self._replace(ctx)
            raise
        except BaseException:
            # Late, dead or out of protocol: the worker's state is unknown, so it goes, and its
            # replacement starts now to be warm by the next block.
            await self._replace(ctx)
            raise

    async def _replace(self, ctx: BlockContext) -> None:
        with anyio.CancelScope(shield=True):
            self.restarts += 1
            await self._kill()
            if not self._closed:
                await self._spawn(ctx)

    async def sync_state(self, ctx: BlockContext) -> None:
        """Starts the worker, whose plugin runs its sync_state there before its first block.
        Waits for it while the caller's time lasts; a worker still starting then is not a
        failure (the first block waits for it)."""
        self._in_sync_state = True
        try:
            await self._started(ctx)
            deadline = anyio.current_effective_deadline()
            budget = self.startup_timeout
            if math.isfinite(deadline):
                budget = min(budget, deadline - anyio.current_time() - 0.1)
            with anyio.move_on_after(max(budget, 0.0)):
                await self._guarded(ctx, self._await_ready)
        except BaseException:
            # The caller counts this warm-up as failed (its own timeout included, on a machine
            # too busy for the margin above): the worker's later answer is not counted again.
            self._warm_counted = True
            raise
        finally:
            self._in_sync_state = False
        if self._sync_error is not None:
            raise WorkerFailed(self._sync_error)

    async def on_block(self, ctx: BlockContext) -> Sequence[Action]:
        await self._started(ctx)

        async def round_trip() -> bytes:
            await self._await_ready()
            await self._send(BLOCK, ctx)
            return await self._answer()

        return decode_actions(await self._guarded(ctx, round_trip))  # type: ignore[return-value]

    async def close(self) -> None:
        self._closed = True
        await self._kill()


def _frame(op: str, ctx: BlockContext) -> bytes:
    body = pickle.dumps((op, replace(ctx, reader=None)), protocol=pickle.HIGHEST_PROTOCOL)
    return HEADER.pack(len(body)) + body
