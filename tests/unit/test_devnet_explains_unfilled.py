"""The devnet's summary says what the keepers did about an order it judged unfilled, from the
store (a failure seen once in CI must explain itself)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from sqlmodel import Session

from keepers.store.engine import make_engine
from keepers.store.migrations import migrate
from keepers.store.tables import ActionLedger, TxRecord
from keepers_workshop.devnet.run import _explain_unfilled


def test_an_unfilled_order_lists_the_keepers_actions_on_it_with_their_reasons(tmp_path):
    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    engine = make_engine(url)
    migrate(engine)
    with Session(engine) as s:
        for block, status in ((113, "missed"), (114, "rejected"), (115, "included")):
            key = f"limit-stop:31337:{block}"
            s.add(ActionLedger(chain_id=31337, keeper="limit-stop", strategy="s", idempotency_key=key,
                               decided_block=block, status=status, order_ids=[79, 80],
                               included_block=116 if status == "included" else None))  # fmt: skip
            s.add(TxRecord(idempotency_key=f"{key}#0", chain_id=31337, signer="0x1", nonce=block,
                           state="dropped", reason="bundle missed its blocks (settled at 114)"
                           if status == "missed" else ""))  # fmt: skip
        s.add(ActionLedger(chain_id=31337, keeper="limit-stop", strategy="s", idempotency_key="other",
                           decided_block=112, status="included", order_ids=[7]))  # fmt: skip
        s.commit()
    unfilled: list[dict[str, Any]] = [{"order_id": 79}, {"order_id": 81}]
    run: Any = SimpleNamespace(dep=SimpleNamespace(chain_id=31337))
    _explain_unfilled(unfilled, url, run)
    assert unfilled[0]["actions"] == [
        "limit-stop decided at 113: missed (bundle missed its blocks (settled at 114))",
        "limit-stop decided at 114: rejected",
        "limit-stop decided at 115: included at 116",
    ]
    assert unfilled[1]["actions"] == ["no keeper acted on it"]
