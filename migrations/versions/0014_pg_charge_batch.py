"""PostgreSQL: a whole chargeBatch as one server-side function, meterkit_charge_batch (one round trip)

The items come sorted by tenant (the lock order of service.charge_batch) and each is charged by
meterkit_charge (0012) in turn, inside this one statement's transaction: a refusal writes nothing
of its own, accepted items commit together. A repeated key in the batch meets the event its first
item wrote (a replay) or differs from it (a conflict), as Meter.charge_many answers. If any item
is uncommon (meterkit_charge answers 'fallback') the block's subtransaction is rolled back, the
function answers 'fallback' having written nothing, and Python runs the batch. SQLite: nothing.

Revision ID: 0014_pg_charge_batch
Revises: 0013_policy_nulls
Create Date: 2026-11-28
"""

from alembic import op

revision = "0014_pg_charge_batch"
down_revision = "0013_policy_nulls"
branch_labels = None
depends_on = None

BATCH_FUNCTION = r"""
CREATE OR REPLACE FUNCTION meterkit_charge_batch(
    p_tids text[], p_keys text[], p_hashes text[], p_primitives text[], p_qtys bigint[], p_refs text[],
    p_conns text[], p_api_key_ids text[], p_now timestamptz, p_floor bigint,
    OUT o_outcome text[], OUT o_event_id bigint[], OUT o_credits bigint[], OUT o_remaining bigint[],
    OUT o_used bigint[], OUT o_quota bigint[], OUT o_overage bigint[], OUT o_detail json[])
LANGUAGE plpgsql AS $fn$
DECLARE
    r record; i int;
BEGIN
    BEGIN
        FOR i IN 1 .. COALESCE(array_length(p_tids, 1), 0) LOOP
            SELECT * INTO r FROM meterkit_charge(p_tids[i], p_keys[i], p_hashes[i], p_primitives[i], p_qtys[i],
                                                 p_refs[i], p_conns[i], p_api_key_ids[i], p_now, p_floor, false);
            IF r.o_outcome = 'fallback' THEN
                RAISE EXCEPTION USING ERRCODE = 'MKFB1', MESSAGE = 'meterkit batch fallback';
            END IF;
            o_outcome := array_append(o_outcome, r.o_outcome);
            o_event_id := array_append(o_event_id, r.o_event_id);
            o_credits := array_append(o_credits, r.o_credits);
            o_remaining := array_append(o_remaining, r.o_remaining);
            o_used := array_append(o_used, r.o_used);
            o_quota := array_append(o_quota, r.o_quota);
            o_overage := array_append(o_overage, r.o_overage);
            o_detail := array_append(o_detail, r.o_detail);
        END LOOP;
    EXCEPTION WHEN SQLSTATE 'MKFB1' THEN
        -- Everything the items wrote is rolled back with the block: Python runs the batch.
        o_outcome := ARRAY['fallback']; o_event_id := NULL; o_credits := NULL; o_remaining := NULL;
        o_used := NULL; o_quota := NULL; o_overage := NULL; o_detail := NULL;
    END;
END
$fn$;
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(BATCH_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "DROP FUNCTION IF EXISTS meterkit_charge_batch(text[], text[], text[], text[], bigint[], text[], text[], "
            "text[], timestamptz, bigint)"
        )
