"""The nonce allocation as one PostgreSQL function: a keeper's allocation is one statement and
one round trip, so the (chain, signer) row lock is held only while the server runs it, never
across the network or a client that the scheduler paused (on a busy machine the lock holder
is often the process waiting for a core).

`keepers_allocate` does in one transaction what `TxRecords.allocate` does on SQLite: returns the
records of keys already allocated; for the rest locks the counter row (creating it), checks
every lease of the fence (SQLSTATE KP001 when one is no longer held with its token), takes the
lowest freed nonces then never-used ones, inserts the records in the intents' order, and the
actions' ledger rows that are not there yet.
"""

from __future__ import annotations

#: Record columns the caller provides (the rest are the function's: nonce, fence token, state).
RECORD_COLUMNS = (
    "chain_id", "signer", "idempotency_key", "route", "to", "data", "value", "gas_limit",
    "max_fee_per_gas", "max_priority_fee_per_gas", "target_block", "deadline_block", "reason",
    "created_at", "updated_at",
)  # fmt: skip
LEDGER_COLUMNS = (
    "chain_id", "keeper", "strategy", "idempotency_key", "decided_block", "status", "included_block",
    "tx_hashes", "order_ids", "earned_wei", "gas_used", "gas_cost_wei", "coinbase_wei", "day", "created_at",
)  # fmt: skip
NOT_LEADER = "KP001"


def _cols(names: tuple[str, ...], prefix: str = "") -> str:
    return ", ".join(f'{prefix}"{n}"' for n in names)


# Built from the constant column lists above, never from input.
CREATE = f"""
CREATE OR REPLACE FUNCTION keepers_allocate(
    p_chain bigint, p_signer text, p_holder text, p_terms jsonb, p_token bigint,
    p_records jsonb, p_ledger jsonb
) RETURNS SETOF txrecord LANGUAGE plpgsql AS $fn$
DECLARE
    v_next bigint;
    v_fresh int;
    v_nonces bigint[];
BEGIN
    RETURN QUERY SELECT t.* FROM txrecord t
        WHERE t.idempotency_key IN (SELECT e->>'idempotency_key' FROM jsonb_array_elements(p_records) e);
    SELECT count(*) INTO v_fresh FROM jsonb_array_elements(p_records) e
        WHERE NOT EXISTS (SELECT 1 FROM txrecord t WHERE t.idempotency_key = e->>'idempotency_key');
    IF v_fresh = 0 THEN
        RETURN;
    END IF;
    SELECT c.next_nonce INTO v_next FROM noncecounter c
        WHERE c.chain_id = p_chain AND c.signer = p_signer FOR UPDATE;
    IF v_next IS NULL THEN
        -- Racing creators: the loser's insert does nothing and it waits on the winner's row.
        INSERT INTO noncecounter (chain_id, signer, next_nonce) VALUES (p_chain, p_signer, 0)
            ON CONFLICT DO NOTHING;
        SELECT c.next_nonce INTO STRICT v_next FROM noncecounter c
            WHERE c.chain_id = p_chain AND c.signer = p_signer FOR UPDATE;
    END IF;
    IF EXISTS (
        SELECT 1 FROM jsonb_array_elements(p_terms) f WHERE NOT EXISTS (
            SELECT 1 FROM lease l WHERE l.scope = f->>0 AND l.holder = p_holder
                AND l.token = (f->>1)::bigint AND l.expires_at > extract(epoch from clock_timestamp()))
    ) THEN
        RAISE EXCEPTION USING ERRCODE = '{NOT_LEADER}',
            MESSAGE = 'a lease of ' || p_holder || ' is no longer held with its token';
    END IF;
    WITH taken AS (
        DELETE FROM freenonce f WHERE f.chain_id = p_chain AND f.signer = p_signer AND f.nonce IN (
            SELECT g.nonce FROM freenonce g WHERE g.chain_id = p_chain AND g.signer = p_signer
            ORDER BY g.nonce LIMIT v_fresh)
        RETURNING f.nonce
    ) SELECT coalesce(array_agg(taken.nonce ORDER BY taken.nonce), '{{}}') INTO v_nonces FROM taken;
    IF v_fresh > cardinality(v_nonces) THEN
        UPDATE noncecounter SET next_nonce = v_next + v_fresh - cardinality(v_nonces)
            WHERE chain_id = p_chain AND signer = p_signer;
        v_nonces := v_nonces
            || ARRAY(SELECT generate_series(v_next, v_next + v_fresh - cardinality(v_nonces) - 1));
    END IF;
    INSERT INTO actionledger ({_cols(LEDGER_COLUMNS)})
        SELECT {_cols(LEDGER_COLUMNS, "l.")} FROM jsonb_populate_recordset(null::actionledger, p_ledger) l
        WHERE NOT EXISTS (SELECT 1 FROM actionledger a WHERE a.idempotency_key = l.idempotency_key);
    RETURN QUERY WITH fresh AS (
        SELECT e.r, row_number() OVER (ORDER BY e.o) AS i
        FROM jsonb_array_elements(p_records) WITH ORDINALITY AS e(r, o)
        WHERE NOT EXISTS (SELECT 1 FROM txrecord t WHERE t.idempotency_key = e.r->>'idempotency_key')
    ), inserted AS (
        INSERT INTO txrecord ({_cols(RECORD_COLUMNS)}, "nonce", "fence_token", "state")
        SELECT {_cols(RECORD_COLUMNS, "x.")}, v_nonces[fresh.i], p_token, 'unstarted'
        FROM fresh, jsonb_populate_record(null::txrecord, fresh.r) x
        ORDER BY fresh.i
        RETURNING *
    ) SELECT * FROM inserted;
END
$fn$
"""  # noqa: S608
