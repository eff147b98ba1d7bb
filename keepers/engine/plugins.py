"""Discovers strategies through the `keepers.strategies` entry point group, exactly as
third-party plugins are discovered, and builds them with validated parameters."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from pydantic import ValidationError

from keepers.engine.strategy import Strategy

GROUP = "keepers.strategies"


class PluginError(RuntimeError):
    """A strategy could not be found, loaded or configured; the message says which and why."""


@dataclass(frozen=True)
class PluginInfo:
    name: str
    kind: str
    target: str  # module:attribute
    distribution: str
    version: str


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def _load(ep: EntryPoint) -> type[Strategy[Any]]:
    try:
        obj = ep.load()
    except Exception as exc:
        raise PluginError(f"strategy {ep.name!r} ({ep.value}) failed to import: {exc!r}") from exc
    if not (isinstance(obj, type) and issubclass(obj, Strategy)):
        raise PluginError(
            f"strategy {ep.name!r} ({ep.value}) is not a keepers.engine.strategy.Strategy subclass"
        )
    if not isinstance(getattr(obj, "kind", None), str):
        raise PluginError(f"strategy {ep.name!r} ({ep.value}) does not declare its keeper kind")
    return obj


def list_plugins() -> list[PluginInfo | PluginError]:
    """Every registered strategy, or the error that stops it loading."""
    out: list[PluginInfo | PluginError] = []
    for name, ep in sorted(_entry_points().items()):
        dist = ep.dist
        try:
            cls = _load(ep)
        except PluginError as exc:
            out.append(exc)
            continue
        out.append(
            PluginInfo(
                name=name,
                kind=cls.kind,
                target=ep.value,
                distribution=dist.name if dist else "?",
                version=dist.version if dist else "?",
            )
        )
    return out


def strategy_class(name: str) -> type[Strategy[Any]]:
    """The registered class for a strategy name."""
    eps = _entry_points()
    if name not in eps:
        raise PluginError(f"no strategy named {name!r} (registered: {', '.join(sorted(eps)) or 'none'})")
    return _load(eps[name])


def build_strategy(name: str, kind: str, params: dict[str, Any]) -> Strategy[Any]:
    """The named strategy for `kind`, with `params` validated by its Params model."""
    eps = _entry_points()
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none"
        raise PluginError(f"no strategy named {name!r} (registered: {known})")
    cls = _load(eps[name])
    if cls.kind != kind:
        raise PluginError(f"strategy {name!r} serves {cls.kind!r}, not {kind!r}")
    try:
        validated = cls.Params.model_validate(params)
    except ValidationError as exc:
        problems = "; ".join(f"params.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise PluginError(f"strategy {name!r}: {problems}") from None
    return cls(validated)


def describe_strategy(name: str) -> dict[str, Any]:
    """A registered strategy's kind, source and its params' JSON schema (from its Params model):
    what `keepers strategies show` prints."""
    eps = _entry_points()
    if name not in eps:
        raise PluginError(f"no strategy named {name!r} (registered: {', '.join(sorted(eps)) or 'none'})")
    ep = eps[name]
    cls = _load(ep)
    return {
        "name": name,
        "kind": cls.kind,
        "target": ep.value,
        "distribution": ep.dist.name if ep.dist else "?",
        "version": ep.dist.version if ep.dist else "?",
        "doc": (cls.__doc__ or "").strip(),
        "params_schema": cls.Params.model_json_schema(),
    }
