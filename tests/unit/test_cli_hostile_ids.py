"""`keepers orders show <id>` under hostile ids, in process against a real SQLite store: a
malformed id is a one-line argparse error (exit 2), a valid uint256 the store lacks is the CLI's
one-line "keepers: error: no order ..." (exit 1), and nothing raises."""

from __future__ import annotations

import io
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlmodel import Session

from keepers.cli import main
from keepers.store.engine import make_engine
from keepers.store.migrations import migrate
from keepers.store.projection import store_events
from tests.helpers.order_events import BOOK, placed

#: A small id, and the largest one SQLite's INTEGER column holds.
STORED = (7, 2**63 - 1)
ID_ERROR = "keepers orders show: error: argument order_id: "

CONFIG = """\
database_url = "sqlite:///{db}"
signer = {{ env = "SIGNER" }}

[chains.main]
chain_id = 1
rpc = [{{ url = "http://127.0.0.1:8545" }}]
submission = "public"
contracts = {{ order_book = "{book}" }}
"""


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("cli")
    db = tmp / "store.sqlite"
    engine = make_engine(f"sqlite:///{db}")
    migrate(engine)
    with Session(engine) as s, s.begin():
        store_events(s, 1, [placed(order_id, 10 + i) for i, order_id in enumerate(STORED)])
    engine.dispose()
    path = tmp / "keepers.toml"
    path.write_text(CONFIG.format(db=db, book=BOOK))
    return path


def _show(config: Path, *argv: str) -> tuple[int, str, str]:
    """Runs `keepers orders show` in process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(["orders", "show", "--config", str(config), *argv])
        except SystemExit as exc:  # argparse's way out
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue()


def _check(code: int, out: str, err: str) -> None:
    assert "Traceback" not in out + err
    if code == 2:
        errors = [line for line in err.splitlines() if "error:" in line]
        assert len(errors) == 1, err
        assert errors[0].startswith(ID_ERROR), err
        assert len(errors[0]) < 200, "the id is shown shortened"
    elif code == 1:
        assert err.startswith("keepers: error: no order "), err
        assert err.endswith(" on main (chain 1) in the store\n"), err
        assert err.count("\n") == 1
    else:
        assert code == 0, (code, out, err)
        assert out.startswith("order ")


ids = st.one_of(
    st.text(max_size=100),
    st.text(alphabet=st.characters(categories=["Nd", "No"]), min_size=1, max_size=6),
    st.integers(min_value=-(2**300), max_value=2**300).map(str),
    st.integers(min_value=0, max_value=6_000).map(lambda n: "9" * n),
    st.sampled_from([str(i) for i in STORED]),
)


@settings(max_examples=200, deadline=None)
@given(order_id=ids)
def test_any_id_argument_is_an_answer_or_a_one_line_error(config: Path, order_id: str) -> None:
    # After "--" every text is the id, even "-h" or "--json".
    code, out, err = _show(config, "--", order_id)
    _check(code, out, err)
    digits = order_id.isascii() and order_id.isdigit() and len(order_id) <= 78
    if digits and int(order_id) < 2**256:
        assert code == (0 if int(order_id) in STORED else 1), (order_id, err)
    else:
        assert code == 2, (order_id, out, err)


@pytest.mark.parametrize(
    ("order_id", "code"),
    [
        ("99999999999999999999999", 1),  # past SQLite's INTEGER: binding it raised OverflowError
        (str(2**63), 1),
        (str(2**256 - 1), 1),
        ("8", 1),
        ("7", 0),
        (str(2**63 - 1), 0),
        (str(2**256), 2),
        ("9" * 5_000, 2),  # int() refused it with a ValueError and argparse echoed all 5,000 digits
        ("²", 2),  # str.isdigit() says yes, int() says no
        ("٣", 2),  # Arabic-Indic three: int() reads it as 3
        ("-1", 2),
        ("0x10", 2),
        (" 1", 2),
        ("1_0", 2),
        ("+1", 2),
        ("", 2),
    ],
)
def test_hostile_ids(config: Path, order_id: str, code: int) -> None:
    got, out, err = _show(config, order_id)
    _check(got, out, err)
    assert got == code, (out, err)
    if code == 1:
        assert err == f"keepers: error: no order {int(order_id)} on main (chain 1) in the store\n"
