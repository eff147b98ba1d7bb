"""Runs anvil as a child process on a free local port."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from web3 import Web3

from keepers.toolchain import ToolchainError, find_tool

#: anvil's default mnemonic accounts (test only, publicly known keys).
DEFAULT_KEYS = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a",
    "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6",
    "0x47e179ec197488593b187f80a00eb0da91f1b9d0b13f8733639f19c30a34926a",
)


ANVIL_MNEMONIC = "test test test test test test test test test test test junk"


def anvil_key(index: int) -> str:
    """Private key of anvil's default account `index` (test only: the mnemonic is public)."""
    from eth_account import Account

    Account.enable_unaudited_hdwallet_features()
    acct = Account.from_mnemonic(ANVIL_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
    return "0x" + bytes(acct.key).hex()


#: Ports `free_port` handed out lately on this machine, to this user: "port time" lines, read
#: and rewritten under an exclusive lock (fcntl) so concurrent callers see each other's claims.
_PORT_LEDGER = Path(tempfile.gettempdir()) / f"keepers-ports-{os.getuid()}"
#: A claim older than this is forgotten: its owner has bound the port or given it up by now.
_CLAIM_SECONDS = 120.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now and no other caller was just given.

    The kernel may hand a port it just gave another process (which has not bound it yet) to a
    second caller; several devnets or test workers starting side by side would then collide.
    """
    fd = os.open(_PORT_LEDGER, os.O_RDWR | os.O_CREAT, 0o600)
    with os.fdopen(fd, "r+") as ledger:
        fcntl.flock(ledger, fcntl.LOCK_EX)  # released when the file closes
        now = time.time()
        claims: dict[int, float] = {}
        for line in ledger.read().splitlines():
            with contextlib.suppress(ValueError):
                port_text, at = line.split()
                if now - float(at) < _CLAIM_SECONDS:
                    claims[int(port_text)] = float(at)
        for _ in range(64):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            if port not in claims:
                break
        else:
            raise ToolchainError("no free local TCP port found in 64 tries")
        claims[port] = now
        ledger.seek(0)
        ledger.truncate()
        ledger.write("".join(f"{p} {at}\n" for p, at in claims.items()))
    return port


@dataclass
class Anvil:
    """A local anvil chain. Use as a context manager; it is killed on exit."""

    block_time: float | None = None
    chain_id: int = 31337
    port: int = field(default_factory=free_port)
    extra_args: tuple[str, ...] = ()
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> Anvil:
        args = [
            str(find_tool("anvil")),
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--chain-id", str(self.chain_id),
            "--silent",
            *self.extra_args,
        ]  # fmt: skip
        if self.block_time is not None:
            args += ["--block-time", str(self.block_time)]
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        w3 = Web3(Web3.HTTPProvider(self.url))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                raise ToolchainError(f"anvil exited with {self._proc.returncode}: {err.strip()}")
            try:
                if w3.is_connected():
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise ToolchainError(f"anvil did not answer on {self.url} within {timeout}s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def __enter__(self) -> Anvil:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
