"""No config key that does nothing: every settings field is read by the code outside the schema
that declares it, and is in the configuration reference (docs/operate/configuration.md), which
tools/config_reference.py generates from the schema: the page must be current, and the
generator refuses a field that has nothing saying what it does."""

from __future__ import annotations

import importlib.util
import re
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest
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


@cache
def _generator() -> ModuleType:
    """tools/config_reference.py, which is a script, not a package's module."""
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "tools" / "config_reference.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass resolves its annotations through it
    spec.loader.exec_module(module)
    return module


def test_every_setting_is_read_by_the_code():
    code = _code()
    unread = [path for path, name in _fields(Settings) if not re.search(rf"\.{name}\b|\[\"{name}\"\]", code)]
    assert unread == [], f"settings nothing reads (wire them or delete them): {unread}"


def test_the_config_reference_is_generated_from_the_schema():
    generator = _generator()
    assert generator.PAGE == ROOT / "docs" / "operate" / "configuration.md"
    assert generator.PAGE.read_text() == generator.render(), "stale: run ./dev config-reference"


def test_every_setting_is_in_the_config_reference():
    # `chains.<name>.rpc[].url` documents the field chains.rpc.url
    documented = {
        row.key.replace(".<name>", "").replace("[]", ""): row.meaning for row in _generator().rows(Settings)
    }
    missing = [path for path, _ in _fields(Settings) if not documented.get(path)]
    assert missing == [], f"settings missing from the config reference: {missing}"


class _Documented(BaseModel):
    #: What the first one does.
    first: int = 1


class _Undocumented(_Documented):
    second: int = 2


def test_a_setting_nothing_describes_is_refused_by_the_generator():
    generator = _generator()
    assert [row.meaning for row in generator.rows(_Documented)] == ["What the first one does."]
    with pytest.raises(generator.Undocumented, match="second"):
        list(generator.rows(_Undocumented))
