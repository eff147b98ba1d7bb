"""Secrets by reference only: an environment variable, a file, or a keystore with a password
file. The value is resolved when needed and never kept in the settings, logs or errors."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from eth_account import Account
from pydantic import BaseModel, ConfigDict, model_validator


class SecretError(ValueError):
    """A secret could not be resolved; the message names the reference, never the value."""


class SecretRef(BaseModel):
    """Exactly one of `env`, `file`, or `keystore` (+ `password_file` or `password_env`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    env: str | None = None
    file: Path | None = None
    keystore: Path | None = None
    password_file: Path | None = None
    password_env: str | None = None

    @property
    def variables(self) -> list[str]:
        """The environment variables this reference reads (the key's, a keystore's password)."""
        return [v for v in (self.env, self.password_env) if v is not None]

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        sources = [s for s in (self.env, self.file, self.keystore) if s is not None]
        if len(sources) != 1:
            raise ValueError("give exactly one of env, file or keystore")
        if self.keystore is not None and (self.password_file is None) == (self.password_env is None):
            raise ValueError("a keystore needs exactly one of password_file or password_env")
        if self.keystore is None and (self.password_file or self.password_env):
            raise ValueError("password_file/password_env go with keystore only")
        return self

    def describe(self) -> str:
        if self.env:
            return f"env:{self.env}"
        if self.file:
            return f"file:{self.file}"
        return f"keystore:{self.keystore}"

    def resolve(self, environ: Mapping[str, str] | None = None) -> str:
        """The secret's value (a private key for signer references). Variables are read from
        `environ` (default: this process's environment)."""
        env = os.environ if environ is None else environ
        if self.env is not None:
            value = env.get(self.env)
            if not value:
                raise SecretError(f"environment variable {self.env} is not set")
            return value.strip()
        if self.file is not None:
            return _read(self.file).strip()
        assert self.keystore is not None
        if self.password_file is not None:
            password = _read(self.password_file).rstrip("\n")
        elif not (password := env.get(self.password_env or "", "")):
            raise SecretError(f"environment variable {self.password_env} is not set")
        keystore = _read(self.keystore)  # its own error: not "wrong password" for a missing file
        try:
            key = Account.decrypt(json.loads(keystore), password)
        except ValueError as exc:
            raise SecretError(
                f"cannot decrypt keystore {self.keystore}: wrong password or corrupt file"
            ) from exc
        return "0x" + bytes(key).hex()


def _read(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        if mode & stat.S_IROTH:
            # Anyone on the machine can read it: the key is already shared, and the operator
            # should learn that before it is used (chmod 600, or 440 with a group).
            raise SecretError(f"{path} is world-readable (mode {stat.S_IMODE(mode):o}): chmod o-r it")
        return path.read_text()
    except OSError as exc:
        raise SecretError(f"cannot read {path}: {exc.strerror}") from None
