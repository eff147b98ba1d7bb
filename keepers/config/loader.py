"""TOML file + environment overrides -> Settings, with errors that name the file, line and key.

Environment overrides use the key path joined by double underscores after `KEEPERS__`:
`KEEPERS__DATABASE_URL=postgresql://...`, `KEEPERS__CHAINS__MAINNET__MAX_FEE_GWEI=200`.
Values are parsed as TOML values when they can be (numbers, booleans, arrays), else strings.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from keepers.config.schema import Settings
from keepers.env_overrides import ENV_PREFIX, OverrideError, apply_env

_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-\"'.]+)\s*=")


@dataclass(frozen=True)
class Problem:
    """One bad key."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.key}: {self.message}"


class ConfigError(ValueError):
    """The config is invalid; `problems` lists every bad key."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def _unquote(part: str) -> str:
    return part.strip().strip("\"'")


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Maps each dotted key path (tables included) to the line that sets it (1-based)."""
    found: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    for lineno, line in enumerate(text.splitlines(), start=1):
        if m := _HEADER.match(line):
            table = tuple(_unquote(p) for p in m.group(2).split("."))
            for i in range(1, len(table) + 1):
                found.setdefault(table[:i], lineno)
            continue
        if m := _KEY.match(line):
            path = table + tuple(_unquote(p) for p in m.group(1).split("."))
            for i in range(len(table) + 1, len(path) + 1):
                found.setdefault(path[:i], lineno)
    return found


def _line_for(loc: tuple[str | int, ...], lines: Mapping[tuple[str, ...], int]) -> int | None:
    parts = tuple(str(p) for p in loc if not isinstance(p, int))
    while parts:
        if parts in lines:
            return lines[parts]
        parts = parts[:-1]
    return None


def _without_value(message: str, value: Any) -> str:
    """`message` without the value it is about, should a validator echo it (ours do not).
    Values under 8 characters are left alone: they hide nothing and would match plain words."""
    for v in value if isinstance(value, list) else [value]:
        if not isinstance(v, str):
            continue
        for text in (v, v[2:] if v[:2].lower() == "0x" else v):
            if len(text) >= 8:
                message = re.sub(re.escape(text), "<value hidden>", message, flags=re.IGNORECASE)
    return message


def load_config(path: Path | str, environ: Mapping[str, str] | None = None) -> Settings:
    """Reads, overrides from the environment, and validates. Raises ConfigError."""
    path = Path(path)
    env = os.environ if environ is None else environ
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError([Problem(str(path), None, "(file)", exc.strerror or "cannot read")]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # Python < 3.14 has the position only in the message.
        pos = re.search(r"at line (\d+)", str(exc))
        line = getattr(exc, "lineno", None) or (int(pos.group(1)) if pos else None)
        raise ConfigError([Problem(str(path), line, "(syntax)", str(exc))]) from None
    except RecursionError:
        raise ConfigError([Problem(str(path), None, "(syntax)", "values nested too deeply")]) from None
    try:
        applied = apply_env(data, env)
    except OverrideError as exc:
        raise ConfigError(
            [Problem(exc.variable, None, exc.key, "sets a key inside a value that is not a table")]
        ) from None
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        lines = key_lines(text)
        problems = []
        # Built from the key and pydantic's reason only: never str(exc), which prints each
        # input_value, and a value may be a secret (a private key pasted as an address).
        for err in exc.errors(include_url=False):
            loc = tuple(err["loc"])
            key = ".".join(str(p) for p in loc) or "(top level)"
            source = str(path)
            env_key = next((a for a in applied if key.replace("-", "_").startswith(a)), None)
            if env_key:
                source = f"{ENV_PREFIX}{env_key.upper().replace('.', '__')}"
            message = _without_value(err["msg"].removeprefix("Value error, "), err["input"])
            if err["type"] == "extra_forbidden":
                message = "unknown key"
            problems.append(Problem(source, None if env_key else _line_for(loc, lines), key, message))
        raise ConfigError(problems) from None
    # Relative paths in the file are relative to the file, as an operator would expect.
    return _rebase_paths(settings, path.parent)


def _rebase_paths(settings: Settings, base: Path) -> Settings:
    chains = {}
    for name, chain in settings.chains.items():
        dep = chain.contracts.deployment_file
        if dep is not None and not dep.is_absolute():
            contracts = chain.contracts.model_copy(update={"deployment_file": base / dep})
            chain = chain.model_copy(update={"contracts": contracts})
        chains[name] = chain
    return settings.model_copy(update={"chains": chains})
