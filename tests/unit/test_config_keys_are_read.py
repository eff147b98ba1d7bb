"""No config key that does nothing: every settings field is in the README's config reference
and read by the code outside the schema that declares it."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from keepers.config.schema import Settings

ROOT = Path(__file__).resolve().parents[2]


def _fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str]]:
    """(dotted path, field name) of every field, nested models included."""
    out = []
    for name, info in model.model_fields.items():
        out.append((f"{prefix}{name}", name))
        for arg in (info.annotation, *getattr(info.annotation, "__args__", ())):
            if isinstance(arg, type) and issubclass(arg, BaseModel) and arg.__module__ == Settings.__module__:
                out += _fields(arg, f"{prefix}{name}.")
    return out


def _code() -> str:
    schema = ROOT / "keepers" / "config" / "schema.py"
    return "\n".join(p.read_text() for p in (ROOT / "keepers").rglob("*.py") if p != schema)


def _reference() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme[readme.index("### Configuration") : readme.index("### Metrics")]


def test_every_setting_is_read_by_the_code():
    code = _code()
    unread = [path for path, name in _fields(Settings) if not re.search(rf"\.{name}\b|\[\"{name}\"\]", code)]
    assert unread == [], f"settings nothing reads (wire them or delete them): {unread}"


def test_every_setting_is_in_the_config_reference():
    # Names inside the reference's code spans: `chains.<name>.rpc`, `[{ url, rate_limit }]`, ...
    spans = re.findall(r"`([^`]+)`", _reference())
    documented = {word for span in spans for word in re.findall(r"[a-z_]+", span)}
    missing = [path for path, name in _fields(Settings) if name not in documented]
    assert missing == [], f"settings missing from the README's config reference: {missing}"
