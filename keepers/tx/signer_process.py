"""The keeper's own signer process: started from the key's reference (the keeper never reads
the key), restarted if it dies, stopped with the keeper."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path

import anyio
import structlog

from keepers.config.contracts import contract_addresses
from keepers.config.schema import Settings
from keepers.config.secrets import SecretRef
from keepers.tx import key_env
from keepers.tx.remote_signer import RemoteSigner
from keepers.tx.scrub import scrub_environment
from keepers.tx.signer import SignerError

log = structlog.get_logger("signer")

#: Seconds the child has to start serving (it imports eth-account: about a second).
START_TIMEOUT = 30.0
#: The forked signer's name in ps/top (/proc/PID/comm; its command line is the keeper's).
SIGNER_COMM = b"keepers-signer"
PR_SET_NAME = 15


def signer_args(
    key: SecretRef,
    socket: Path,
    chain_id: int,
    max_fees_per_hour_eth: float | None,
    allow_to: Sequence[str],
    value_to: Sequence[str] = (),
    kind: str | None = None,
    contracts: Mapping[str, str] | None = None,
) -> list[str]:
    """`keepers signer serve` arguments for a key reference: the reference, never the key."""
    args = ["--socket", str(socket), "--chain-id", str(chain_id), "--parent-pid", str(os.getpid())]
    if kind is not None:
        args += ["--kind", kind]
    for role, address in (contracts or {}).items():
        args += ["--contract", f"{role}={address}"]
    for address in allow_to:
        args += ["--allow-to", address]
    for address in value_to:
        args += ["--allow-value-to", address]
    for flag, value in (
        ("--key-env", key.env), ("--key-file", key.file), ("--keystore", key.keystore),
        ("--password-file", key.password_file), ("--password-env", key.password_env),
    ):  # fmt: skip
        if value is not None:
            args += [flag, str(value)]
    if max_fees_per_hour_eth is not None:
        args += ["--max-fees-per-hour-eth", repr(max_fees_per_hour_eth)]
    return args


class SignerProcess:
    def __init__(
        self,
        key: SecretRef,
        chain_id: int,
        max_fees_per_hour_eth: float | None,
        allow_to: Sequence[str],
        value_to: Sequence[str] = (),
        kind: str | None = None,
        contracts: Mapping[str, str] | None = None,
    ) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="keepers-signer-"))  # 0700: ours alone
        self.socket = self._dir / "signer.sock"
        self._args = signer_args(
            key, self.socket, chain_id, max_fees_per_hour_eth, allow_to, value_to, kind, contracts
        )
        # -P: never code from the cwd
        self._argv = [sys.executable, "-P", "-m", "keepers.tx.signer_service", *self._args]
        self._scrub = key.variables
        self._proc: subprocess.Popen[bytes] | Forked | None = None
        self.url = f"unix:{self.socket}"

    @classmethod
    def of_keeper(cls, settings: Settings, name: str) -> SignerProcess | None:
        """The signer process `[keepers.<name>]` starts for itself (None: it uses signer_url).
        It signs for the keeper's chain the calls of the keeper's kind on the chain's contracts
        (signer_service.KIND_CALLS), and anything to signer_allowed_to."""
        url, key = settings.signer_of(name)
        if url is not None or key is None:
            return None
        chain = settings.chains[settings.keepers[name].chain]
        contracts = contract_addresses(chain)
        extra = list(settings.signer_allowed_to)
        # Value goes to the builder tip contract and to what the operator allowed, nowhere else.
        value_to = ([contracts.builder_tip] if contracts.builder_tip else []) + extra
        return cls(
            key, chain.chain_id, settings.signer_max_fees_per_hour_eth, extra, value_to,
            settings.kind_of(name), contracts.as_dict(),
        )  # fmt: skip

    def spawn(self, fork: bool = False) -> None:
        """Starts the child, then takes the key's variables out of this process's environment:
        the child has them, and nothing here may read them again. With `fork` (`keepers run`,
        before any thread or event loop exists) the child is a fork of this process: it skips
        the second of imports a new interpreter pays, so a restarted keeper is ready sooner on
        a busy machine; the key is still read in the child only, after the fork."""
        # A thread would hold locks a forked child inherits held: then a new interpreter.
        fork = fork and threading.active_count() == 1
        try:
            if fork:
                # The held variables go back into the child's environment only.
                self._proc = _fork(self._args, self._scrub)
            else:
                key_env.restore(self._scrub)  # this signer's variables, no other keeper's
                self._proc = _popen(self._argv)
        finally:
            for variable in self._scrub:
                scrub_environment(variable)

    async def start(self, client: RemoteSigner) -> str:
        """Starts the child (unless spawned already) and waits until it answers; its address."""
        if self._proc is None:
            self.spawn()
        assert self._proc is not None
        deadline = anyio.current_time() + START_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                raise SignerError(f"the signer process exited with code {self._proc.returncode} at start")
            if self.socket.exists():
                try:
                    return await client.connect()
                except SignerError:
                    pass
            if anyio.current_time() > deadline:
                raise SignerError(f"the signer process did not serve within {START_TIMEOUT:.0f}s")
            await anyio.sleep(0.05)

    async def watch(self) -> None:
        """Returns never while the child lives; raises when it dies, which ends the keeper (its
        supervisor restarts both: a key in an environment variable is gone from this process,
        so only a fresh start can give the signer its key again)."""
        while self._proc is not None and self._proc.poll() is None:
            await anyio.sleep(1.0)
        code = self._proc.returncode if self._proc is not None else None
        raise SignerError(f"the signer process exited with code {code}")

    def close(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGUSR1)  # it ignores SIGTERM: see signer_service.serve
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self.socket.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # the signer removed it already
            self._dir.rmdir()


def _popen(argv: list[str]) -> subprocess.Popen[bytes]:
    # Its own session: a Ctrl-C meant for the keeper must not stop the signer while the keeper
    # drains; the keeper stops it after, and it stops by itself if the keeper is killed.
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)


class Forked:
    """The part of Popen's interface the keeper uses, for a child made by os.fork()."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere (as Popen.poll takes it)
                self.returncode = 0
                return 0
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while (code := self.poll()) is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"signer {self.pid}", timeout)
            time.sleep(0.02)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _fork(args: list[str], variables: list[str]) -> Forked:
    """signer_service.main(args) in a forked child, in its own session as _popen's. The child
    makes itself non-dumpable before anything else and the parent waits for that: a plugin
    the keeper loads next cannot attach to it before it holds the key. `variables` (held by
    keepers.tx.key_env) go back into the child's environment, and the rest it inherited of
    what key_env holds (other keepers' keys) is zeroed there."""
    # Imported once, here, for both processes, while no key is in the environment: its
    # imports decode every variable into a str (keepers.tx.key_env).
    from keepers.tx import signer_service

    sys.stdout.flush()
    sys.stderr.flush()
    ready, said = os.pipe()
    pid = os.fork()
    if pid:
        os.close(said)
        try:
            os.read(ready, 1)  # b"" if the child died first: poll() reports it
        finally:
            os.close(ready)
        return Forked(pid)
    code = 1
    try:
        signer_service.not_dumpable()
        key_env.restore(variables)
        key_env.release()
        os.close(ready)
        os.write(said, b"1")
        os.close(said)
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None).prctl(PR_SET_NAME, SIGNER_COMM, 0, 0, 0)
        code = signer_service.main(args)
    except SystemExit as exc:  # argparse
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 2
    except BaseException:  # noqa: BLE001 - the child must end here, never return into the keeper
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:  # even if a flush fails (a closed pipe): never back into the keeper's code
            os._exit(code)
