"""plan versions: a change of a plan's Stripe price, quotas or included credits makes a new version;
subscribers stay on theirs until renewal or an explicit migration (migratePlanSubscribers), as a
Stripe subscription keeps its price.

plan gains `version` (the newest, 1 for every existing plan); plan_quota gains `version` in its
primary key, so every version keeps its own quotas (existing rows are version 1); plan_version
records each version's Stripe price and included credits (backfilled with every plan's version 1);
tenant gains `plan_version`, the version a subscriber is on (backfilled to 1 for every tenant with
a subscription; NULL: the plan's newest, a tenant on the default plan without a subscription). Both
PostgreSQL charge functions read the tenant's version's quota (frozen copies below). Plain ADD
COLUMN except plan_quota's primary key: SQLite rebuilds that table (batch), PostgreSQL swaps the
constraint in place. No ledger entry, event or counter is touched.

Revision ID: 0021_plan_versions
Revises: 0020_organization_holds
Create Date: 2026-12-08
"""

from alembic import op
import sqlalchemy as sa

import app.core.types

revision = "0021_plan_versions"
down_revision = "0020_organization_holds"
branch_labels = None
depends_on = None

# The two PostgreSQL charge functions (app/metering/pg_charge.sql, pg_charge_batch.sql), frozen here:
# they read the quota of the tenant's plan version.
CHARGE_FUNCTION = r"""
CREATE OR REPLACE FUNCTION meterkit_charge(
    p_tid text, p_key text, p_hash text, p_primitive text, p_qty bigint, p_reference text,
    p_connection text, p_api_key_id text, p_now timestamptz, p_floor bigint, p_precheck boolean,
    OUT o_outcome text, OUT o_event_id bigint, OUT o_credits bigint, OUT o_remaining bigint,
    OUT o_used bigint, OUT o_quota bigint, OUT o_overage bigint, OUT o_detail json)
LANGUAGE plpgsql AS $fn$
DECLARE
    v_balance bigint; v_reserved bigint; v_plan text; v_overage text; v_kit text;
    v_allowed json; v_limits json; v_conns json; v_budget boolean; v_percents json; v_low bigint;
    v_ps timestamptz; v_pe timestamptz; v_org boolean; v_org_id text; v_ver int;
    v_id bigint; v_hash text; v_result json;
    v_per_call bigint; v_per_minute bigint; v_window timestamptz;
    v_quota bigint; v_used bigint; v_calls bigint; v_price bigint; v_rule text; v_active boolean;
    v_total numeric; v_amount bigint; v_available bigint; v_after bigint; v_now_used bigint;
    v_ids text[]; v_rems bigint[]; v_expired boolean; v_left bigint; v_take bigint; i int;
BEGIN
    o_outcome := 'fallback';
    -- 1. Lock the account and read the terms (service._LOCK_TERMS).
    SELECT a.balance, a.reserved, t.plan_key, COALESCE(NULLIF(p.overage, ''), 'refuse'), k.key,
           k.allowed_primitives, k.limits, k.allowed_connections, kb.api_key_id IS NOT NULL,
           COALESCE(pt.quota_percents, pp.quota_percents), COALESCE(pt.low_balance, pp.low_balance),
           bp.start_at, bp.end_at,
           (t.kind <> 'end_user' OR NOT COALESCE(o.end_user_wallets, true)
               OR NOT COALESCE(o.platform_credits_exempt, true)),
           t.organization_id, COALESCE(t.plan_version, p.version)
      INTO v_balance, v_reserved, v_plan, v_overage, v_kit, v_allowed, v_limits, v_conns, v_budget,
           v_percents, v_low, v_ps, v_pe, v_org, v_org_id, v_ver
      FROM credit_account a JOIN tenant t ON t.id = a.tenant_id
      LEFT JOIN organization o ON o.id = t.organization_id
      LEFT JOIN plan p ON p.organization_id = t.organization_id AND p.key = t.plan_key
      LEFT JOIN account_kit k ON k.organization_id = t.organization_id
                               AND k.key = COALESCE(t.account_kit_key, p.account_kit_key)
      LEFT JOIN key_budget kb ON kb.api_key_id = p_api_key_id AND kb.tenant_id = a.tenant_id
      LEFT JOIN alert_policy pp ON pp.organization_id = t.organization_id AND pp.plan_key = t.plan_key
      LEFT JOIN alert_policy pt ON pt.tenant_id = t.id
      LEFT JOIN billing_period bp ON bp.tenant_id = a.tenant_id AND bp.start_at <= p_now AND bp.end_at > p_now
     WHERE a.tenant_id = p_tid
       FOR UPDATE OF a;
    IF NOT FOUND THEN
        RETURN;  -- no such tenant: Python answers NotFound
    END IF;
    -- An open hold past its expiry is freed (and alerted) by Python first.
    IF v_reserved <> 0 AND EXISTS (SELECT 1 FROM credit_hold h WHERE h.tenant_id = p_tid AND h.status = 'open'
                                   AND h.expires_at <= p_now) THEN
        RETURN;
    END IF;
    -- 2. The idempotency key: a replay answers the stored result, other parameters are a conflict.
    SELECT e.id, e.request_hash, e.result INTO v_id, v_hash, v_result
      FROM usage_event e WHERE e.tenant_id = p_tid AND e.idempotency_key = p_key;
    IF FOUND THEN
        IF v_hash <> p_hash THEN
            o_outcome := 'conflict';
        ELSE
            o_outcome := 'replay'; o_event_id := v_id; o_detail := v_result;
        END IF;
        RETURN;
    END IF;
    -- A key budget (its spend is read and written by Python), or no recorded period yet (the roll).
    IF v_budget OR v_ps IS NULL OR v_org THEN
        RETURN;
    END IF;
    -- 3. Catalog, kit, per-call, connection, quota, per-minute, price (service.Meter.decide).
    v_per_minute := (v_limits -> p_primitive ->> 'calls_per_minute')::bigint;
    v_per_call := (v_limits -> p_primitive ->> 'max_quantity_per_call')::bigint;
    IF v_per_minute IS NOT NULL THEN
        v_window := date_trunc('minute', p_now, 'UTC');
    END IF;
    SELECT (SELECT q.quota FROM plan_quota q WHERE q.organization_id = v_org_id AND q.plan_key = v_plan AND q.version = v_ver AND q.primitive = p_primitive),
           (SELECT c.used FROM usage_counter c
             WHERE c.tenant_id = p_tid AND c.period_start = v_ps AND c.primitive = p_primitive),
           (SELECT w.calls FROM rate_window w
             WHERE w.tenant_id = p_tid AND w.primitive = p_primitive AND w.window_start = v_window),
           (SELECT pr.credits FROM price pr WHERE pr.primitive = p_primitive),
           pm.pricing_rule, pm.active
      INTO v_quota, v_used, v_calls, v_price, v_rule, v_active
      FROM (SELECT 1) one LEFT JOIN primitive pm ON pm.key = p_primitive;
    IF v_rule IS NULL THEN
        o_outcome := 'unknown'; RETURN;
    END IF;
    IF NOT v_active THEN
        o_outcome := 'retired'; RETURN;
    END IF;
    IF v_kit IS NULL OR NOT EXISTS (
        SELECT 1 FROM json_array_elements_text(v_allowed) AS pat(x)
         WHERE x = '*' OR x = p_primitive OR (x LIKE '%.*' AND starts_with(p_primitive, left(x, -1)))) THEN
        o_outcome := 'not_entitled'; o_detail := json_build_object('kit', v_kit); RETURN;
    END IF;
    IF v_per_call IS NOT NULL AND p_qty > v_per_call THEN
        o_outcome := 'per_call'; o_quota := v_per_call; RETURN;
    END IF;
    IF p_connection IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM json_array_elements_text(v_conns) AS c(x) WHERE x = p_connection) THEN
        o_outcome := 'not_entitled_connection'; o_detail := json_build_object('kit', v_kit); RETURN;
    END IF;
    v_used := COALESCE(v_used, 0);
    IF v_quota IS NOT NULL AND v_used + p_qty > v_quota AND v_overage <> 'allow' THEN
        o_outcome := 'quota'; o_quota := v_quota; o_used := v_used;
        o_detail := json_build_object('periodEnd', v_pe); RETURN;
    END IF;
    IF v_per_minute IS NOT NULL AND COALESCE(v_calls, 0) + 1 > v_per_minute THEN
        o_outcome := 'per_minute'; o_quota := v_per_minute; o_used := COALESCE(v_calls, 0) + 1; RETURN;
    END IF;
    IF v_price IS NULL OR v_rule <> 'fixed' THEN
        RETURN;  -- a priced rule (tokens, tiers...): Python quotes it
    END IF;
    v_total := v_price::numeric * p_qty;
    IF v_total > 1000000000000000000 THEN
        RETURN;  -- out of range: Python refuses it
    END IF;
    v_amount := v_total::bigint;
    -- 4. The live buckets in burn order (ledger.sweep); one that ran out is expired by Python.
    SELECT array_agg(b.id ORDER BY b.expires_at IS NULL, b.expires_at, b.created_at, b.id),
           array_agg(b.remaining ORDER BY b.expires_at IS NULL, b.expires_at, b.created_at, b.id),
           COALESCE(bool_or(b.expires_at <= p_now), false)
      INTO v_ids, v_rems, v_expired
      FROM credit_bucket b WHERE b.tenant_id = p_tid AND b.remaining > 0;
    IF v_expired THEN
        RETURN;
    END IF;
    -- The balance floor (or precheck): a refusal for credits lists the packs, which Python reads.
    v_available := v_balance - v_reserved;
    IF v_available - v_amount < p_floor OR (p_precheck AND v_available <= 0) THEN
        RETURN;
    END IF;
    -- An alert threshold this charge crosses (app/alerts/emit.py crossed, balance_low): Python emits it.
    v_now_used := v_used + p_qty;
    IF v_quota IS NOT NULL AND v_quota <> 0 AND EXISTS (
        SELECT 1 FROM json_array_elements_text(COALESCE(v_percents, '[50, 75, 90, 100]'::json)) AS pc(x)
         WHERE v_used * 100 < x::numeric * v_quota AND x::numeric * v_quota <= v_now_used * 100) THEN
        RETURN;
    END IF;
    IF v_low IS NOT NULL AND v_available >= v_low AND v_low > v_available - v_amount THEN
        RETURN;
    END IF;
    -- 5. Write (ledger.debit, service.Meter.record).
    v_left := v_amount;
    FOR i IN 1 .. COALESCE(array_length(v_ids, 1), 0) LOOP
        EXIT WHEN v_left = 0;
        v_take := LEAST(v_left, v_rems[i]);
        UPDATE credit_bucket SET remaining = v_rems[i] - v_take WHERE id = v_ids[i];
        v_left := v_left - v_take;
    END LOOP;
    v_after := v_balance - v_amount;
    IF v_amount <> 0 THEN
        INSERT INTO ledger_entry (tenant_id, kind, action, amount, balance_after, bucket_id, reference, created_at)
        VALUES (p_tid, 'debit', p_primitive, -v_amount, v_after, NULL, p_reference, p_now);
    END IF;
    UPDATE credit_account SET balance = v_after, updated_at = p_now WHERE tenant_id = p_tid;
    o_credits := v_amount;
    o_remaining := v_after - v_reserved;
    o_used := v_now_used;
    o_quota := v_quota;
    o_overage := CASE WHEN v_quota IS NULL THEN 0 ELSE GREATEST(v_now_used - v_quota, 0) END;
    -- The stored result, byte for byte as Python's to_json(Charged.stored()) writes it.
    INSERT INTO usage_event (tenant_id, idempotency_key, request_hash, kind, primitive, quantity, credits,
                             period_start, reference, connection, result, created_at, api_key_id)
    VALUES (p_tid, p_key, p_hash, 'charge', p_primitive, p_qty, v_amount, v_ps, p_reference, p_connection,
            format('{"creditsUsed":%s,"creditsRemaining":%s,"usage":{"primitive":%s,"used":%s,"quota":%s,"overage":%s}}',
                   v_amount, o_remaining, to_json(p_primitive), o_used, COALESCE(v_quota::text, 'null'),
                   o_overage)::json,
            p_now, p_api_key_id)
    RETURNING id INTO o_event_id;
    INSERT INTO usage_counter (tenant_id, period_start, primitive, period_end, used, overage, credits)
    VALUES (p_tid, v_ps, p_primitive, v_pe, p_qty, o_overage, v_amount)
    ON CONFLICT (tenant_id, period_start, primitive)
    DO UPDATE SET used = usage_counter.used + p_qty, overage = o_overage,
                  credits = usage_counter.credits + v_amount;
    INSERT INTO usage_rollup (tenant_id, hour_start, primitive, api_key_id, quantity, credits, events)
    VALUES (p_tid, date_trunc('hour', p_now, 'UTC'), p_primitive, COALESCE(p_api_key_id, ''), p_qty, v_amount, 1)
    ON CONFLICT (tenant_id, hour_start, primitive, api_key_id)
    DO UPDATE SET quantity = usage_rollup.quantity + p_qty, credits = usage_rollup.credits + v_amount,
                  events = usage_rollup.events + 1;
    IF v_window IS NOT NULL THEN
        INSERT INTO rate_window (tenant_id, primitive, window_start, calls) VALUES (p_tid, p_primitive, v_window, 1)
        ON CONFLICT (tenant_id, primitive, window_start) DO UPDATE SET calls = rate_window.calls + 1;
    END IF;
    o_outcome := 'charged';
END
$fn$;
"""

BATCH_FUNCTION = r"""
CREATE OR REPLACE FUNCTION meterkit_charge_batch(
    p_tids text[], p_keys text[], p_hashes text[], p_primitives text[], p_qtys bigint[], p_refs text[],
    p_conns text[], p_api_key_ids text[], p_now timestamptz, p_floor bigint,
    OUT o_outcome text[], OUT o_event_id bigint[], OUT o_credits bigint[], OUT o_remaining bigint[],
    OUT o_used bigint[], OUT o_quota bigint[], OUT o_overage bigint[], OUT o_detail json[])
LANGUAGE plpgsql AS $fn$
DECLARE
    v_n int := COALESCE(array_length(p_tids, 1), 0);
    v_s int := 1; v_e int; v_i int; v_j int; v_k int;
    v_tid text; v_done text[] := '{}';
    v_balance bigint; v_reserved bigint; v_plan text; v_overage text; v_kit text;
    v_allowed json; v_limits json; v_conns json; v_budget boolean; v_percents json; v_low bigint;
    v_ps timestamptz; v_pe timestamptz; v_org boolean; v_org_id text; v_ver int; v_stale boolean; v_end json; v_window timestamptz;
    v_start bigint; v_available bigint; v_spent bigint; v_taken boolean; v_any boolean := false;
    v_total numeric; v_amount bigint; v_used bigint; v_over bigint;
    s_keys text[]; s_ids bigint[]; s_hashes text[]; s_results json[];
    m_prims text[]; m_quota bigint[]; m_used0 bigint[]; m_used bigint[]; m_calls bigint[];
    m_price bigint[]; m_rule text[]; m_active boolean[]; m_entitled boolean[]; m_per_call bigint[];
    m_per_minute bigint[]; m_qty bigint[]; m_credits bigint[]; m_count bigint[];
    a_keys text[]; a_first int[];
    x_acc boolean[]; x_amount bigint[]; x_after bigint[]; x_ps timestamptz[]; x_result text[]; x_first int[];
    t_tids text[] := '{}'; t_totals bigint[] := '{}'; t_balances bigint[] := '{}';
    c_tids text[] := '{}'; c_prims text[] := '{}'; c_ps timestamptz[] := '{}'; c_pe timestamptz[] := '{}';
    c_qty bigint[] := '{}'; c_over bigint[] := '{}'; c_credits bigint[] := '{}'; c_count bigint[] := '{}';
    c_win timestamptz[] := '{}';
    r_ids bigint[]; r_ords bigint[];
BEGIN
    o_outcome := array_fill(NULL::text, ARRAY[v_n]); o_event_id := array_fill(NULL::bigint, ARRAY[v_n]);
    o_credits := array_fill(NULL::bigint, ARRAY[v_n]); o_remaining := array_fill(NULL::bigint, ARRAY[v_n]);
    o_used := array_fill(NULL::bigint, ARRAY[v_n]); o_quota := array_fill(NULL::bigint, ARRAY[v_n]);
    o_overage := array_fill(NULL::bigint, ARRAY[v_n]); o_detail := array_fill(NULL::json, ARRAY[v_n]);
    x_acc := array_fill(false, ARRAY[v_n]); x_amount := array_fill(NULL::bigint, ARRAY[v_n]);
    x_after := array_fill(NULL::bigint, ARRAY[v_n]); x_ps := array_fill(NULL::timestamptz, ARRAY[v_n]);
    x_result := array_fill(NULL::text, ARRAY[v_n]); x_first := array_fill(NULL::int, ARRAY[v_n]);
    v_window := date_trunc('minute', p_now, 'UTC');
    -- ---- 1. Decide, tenant by tenant, writing nothing. ----
    WHILE v_s <= v_n LOOP
        v_tid := p_tids[v_s];
        v_e := v_s;
        WHILE v_e < v_n AND p_tids[v_e + 1] = v_tid LOOP
            v_e := v_e + 1;
        END LOOP;
        IF v_tid = ANY(v_done) THEN  -- the caller sorts by tenant; a tenant's items must be together
            RAISE EXCEPTION 'meterkit_charge_batch: the items of tenant % are not together', v_tid;
        END IF;
        v_done := v_done || v_tid;
        -- The lock and the terms, as meterkit_charge (0012) reads them; the key is the first item's
        -- (service.charge_batch: one request, one caller).
        SELECT a.balance, a.reserved, t.plan_key, COALESCE(NULLIF(p.overage, ''), 'refuse'), k.key,
               k.allowed_primitives, k.limits, k.allowed_connections, kb.api_key_id IS NOT NULL,
               COALESCE(pt.quota_percents, pp.quota_percents), COALESCE(pt.low_balance, pp.low_balance),
               bp.start_at, bp.end_at,
               (t.kind <> 'end_user' OR NOT COALESCE(o.end_user_wallets, true)
                   OR NOT COALESCE(o.platform_credits_exempt, true)),
               t.organization_id, COALESCE(t.plan_version, p.version)
          INTO v_balance, v_reserved, v_plan, v_overage, v_kit, v_allowed, v_limits, v_conns, v_budget,
               v_percents, v_low, v_ps, v_pe, v_org, v_org_id, v_ver
          FROM credit_account a JOIN tenant t ON t.id = a.tenant_id
          LEFT JOIN organization o ON o.id = t.organization_id
          LEFT JOIN plan p ON p.organization_id = t.organization_id AND p.key = t.plan_key
          LEFT JOIN account_kit k ON k.organization_id = t.organization_id
                                   AND k.key = COALESCE(t.account_kit_key, p.account_kit_key)
          LEFT JOIN key_budget kb ON kb.api_key_id = p_api_key_ids[v_s] AND kb.tenant_id = a.tenant_id
          LEFT JOIN alert_policy pp ON pp.organization_id = t.organization_id AND pp.plan_key = t.plan_key
          LEFT JOIN alert_policy pt ON pt.tenant_id = t.id
          LEFT JOIN billing_period bp ON bp.tenant_id = a.tenant_id AND bp.start_at <= p_now AND bp.end_at > p_now
         WHERE a.tenant_id = v_tid
           FOR UPDATE OF a;
        -- No tenant (NotFound), a key budget (Python reads and writes its spend), no recorded period
        -- (the roll): Python.
        IF NOT FOUND OR v_budget OR v_ps IS NULL OR v_org THEN
            o_outcome := ARRAY['fallback']; o_event_id := NULL; o_credits := NULL; o_remaining := NULL;
            o_used := NULL; o_quota := NULL; o_overage := NULL; o_detail := NULL;
            RETURN;
        END IF;
        -- Under the lock: an open hold past its expiry or a bucket that ran out (Python frees and
        -- sweeps them first), and the events already stored under the batch's keys.
        -- One probe of the unique (tenant_id, idempotency_key) index per key, planned for this
        -- call (EXECUTE) and kept a nested loop (OFFSET 0). Written as `= ANY(keys)`, or as a plain
        -- statement whose plan is cached while usage_event is small (a pooled backend lives on
        -- while the table grows; its statistics lag), the planner read all the tenant's events
        -- through the (tenant_id, id) index and filtered them by key: slower with every event.
        EXECUTE $q$
            SELECT ($2 <> 0 AND EXISTS (
                        SELECT 1 FROM credit_hold h WHERE h.tenant_id = $1 AND h.status = 'open'
                           AND h.expires_at <= $3))
                   OR EXISTS (SELECT 1 FROM credit_bucket b WHERE b.tenant_id = $1 AND b.remaining > 0
                                 AND b.expires_at <= $3),
                   ev.keys, ev.ids, ev.hashes, ev.results
              FROM (SELECT array_agg(se.ikey) AS keys, array_agg(se.id) AS ids,
                           array_agg(se.request_hash) AS hashes, array_agg(se.result) AS results
                      FROM (SELECT DISTINCT u.x AS ikey FROM unnest($4) AS u(x)) kk
                      CROSS JOIN LATERAL (SELECT kk.ikey, ue.id, ue.request_hash, ue.result FROM usage_event ue
                                           WHERE ue.tenant_id = $1 AND ue.idempotency_key = kk.ikey OFFSET 0) se) ev
        $q$ INTO v_stale, s_keys, s_ids, s_hashes, s_results USING v_tid, v_reserved, p_now, p_keys[v_s:v_e];
        IF v_stale THEN
            o_outcome := ARRAY['fallback']; o_event_id := NULL; o_credits := NULL; o_remaining := NULL;
            o_used := NULL; o_quota := NULL; o_overage := NULL; o_detail := NULL;
            RETURN;
        END IF;
        -- Each distinct primitive of the tenant's items: catalog, price, the plan's quota, this
        -- period's count, this minute's calls, the kit's word on it (service.Meter._running, entitle).
        SELECT array_agg(mm.prim ORDER BY mm.prim), array_agg(mm.quota ORDER BY mm.prim),
               array_agg(COALESCE(mm.used, 0) ORDER BY mm.prim), array_agg(COALESCE(mm.calls, 0) ORDER BY mm.prim),
               array_agg(mm.price ORDER BY mm.prim), array_agg(mm.rule ORDER BY mm.prim),
               array_agg(mm.active ORDER BY mm.prim), array_agg(mm.entitled ORDER BY mm.prim),
               array_agg(mm.per_call ORDER BY mm.prim), array_agg(mm.per_minute ORDER BY mm.prim)
          INTO m_prims, m_quota, m_used, m_calls, m_price, m_rule, m_active, m_entitled, m_per_call, m_per_minute
          FROM (SELECT d.prim,
                       (SELECT q.quota FROM plan_quota q WHERE q.organization_id = v_org_id AND q.plan_key = v_plan AND q.version = v_ver AND q.primitive = d.prim) AS quota,
                       (SELECT uc.used FROM usage_counter uc
                         WHERE uc.tenant_id = v_tid AND uc.period_start = v_ps AND uc.primitive = d.prim) AS used,
                       (SELECT w.calls FROM rate_window w
                         WHERE w.tenant_id = v_tid AND w.primitive = d.prim AND w.window_start = v_window) AS calls,
                       (SELECT pr.credits FROM price pr WHERE pr.primitive = d.prim) AS price,
                       pm.pricing_rule AS rule, pm.active AS active,
                       v_kit IS NOT NULL AND EXISTS (
                           SELECT 1 FROM json_array_elements_text(v_allowed) AS pat(x)
                            WHERE x = '*' OR x = d.prim OR (x LIKE '%.*' AND starts_with(d.prim, left(x, -1))))
                           AS entitled,
                       (v_limits -> d.prim ->> 'max_quantity_per_call')::bigint AS per_call,
                       (v_limits -> d.prim ->> 'calls_per_minute')::bigint AS per_minute
                  FROM (SELECT DISTINCT u.x AS prim FROM unnest(p_primitives[v_s:v_e]) AS u(x)) d
                  LEFT JOIN primitive pm ON pm.key = d.prim) mm;
        m_used0 := m_used;
        m_qty := array_fill(0::bigint, ARRAY[array_length(m_prims, 1)]);
        m_credits := m_qty; m_count := m_qty;
        v_end := json_build_object('periodEnd', v_pe);
        v_start := v_balance - v_reserved;
        v_available := v_start;
        v_spent := 0;
        v_taken := false;
        a_keys := '{}'; a_first := '{}';
        FOR v_i IN v_s .. v_e LOOP
            -- The idempotency key: stored (replay or conflict), or accepted earlier in this batch.
            v_k := array_position(s_keys, p_keys[v_i]);
            IF v_k IS NOT NULL THEN
                IF s_hashes[v_k] <> p_hashes[v_i] THEN
                    o_outcome[v_i] := 'conflict';
                ELSE
                    o_outcome[v_i] := 'replay'; o_event_id[v_i] := s_ids[v_k]; o_detail[v_i] := s_results[v_k];
                END IF;
                CONTINUE;
            END IF;
            v_k := array_position(a_keys, p_keys[v_i]);
            IF v_k IS NOT NULL THEN
                v_j := a_first[v_k];
                IF p_hashes[v_j] <> p_hashes[v_i] THEN
                    o_outcome[v_i] := 'conflict';
                ELSE  -- its event id once written (phase 2)
                    o_outcome[v_i] := 'replay'; x_first[v_i] := v_j; o_detail[v_i] := x_result[v_j]::json;
                END IF;
                CONTINUE;
            END IF;
            -- The rules, in service.Meter's order.
            v_j := array_position(m_prims, p_primitives[v_i]);
            IF m_rule[v_j] IS NULL THEN
                o_outcome[v_i] := 'unknown'; CONTINUE;
            END IF;
            IF NOT m_active[v_j] THEN
                o_outcome[v_i] := 'retired'; CONTINUE;
            END IF;
            IF NOT m_entitled[v_j] THEN
                o_outcome[v_i] := 'not_entitled'; o_detail[v_i] := json_build_object('kit', v_kit); CONTINUE;
            END IF;
            IF m_per_call[v_j] IS NOT NULL AND p_qtys[v_i] > m_per_call[v_j] THEN
                o_outcome[v_i] := 'per_call'; o_quota[v_i] := m_per_call[v_j]; CONTINUE;
            END IF;
            IF p_conns[v_i] IS NOT NULL THEN  -- nested: the common item runs no subquery here
                IF NOT EXISTS (SELECT 1 FROM json_array_elements_text(v_conns) AS cn(x) WHERE x = p_conns[v_i]) THEN
                    o_outcome[v_i] := 'not_entitled_connection'; o_detail[v_i] := json_build_object('kit', v_kit);
                    CONTINUE;
                END IF;
            END IF;
            IF m_quota[v_j] IS NOT NULL AND m_used[v_j] + p_qtys[v_i] > m_quota[v_j] AND v_overage <> 'allow' THEN
                o_outcome[v_i] := 'quota'; o_quota[v_i] := m_quota[v_j]; o_used[v_i] := m_used[v_j];
                o_detail[v_i] := v_end; CONTINUE;
            END IF;
            IF m_per_minute[v_j] IS NOT NULL AND m_calls[v_j] + 1 > m_per_minute[v_j] THEN
                o_outcome[v_i] := 'per_minute'; o_quota[v_i] := m_per_minute[v_j]; o_used[v_i] := m_calls[v_j] + 1;
                CONTINUE;
            END IF;
            IF m_price[v_j] IS NULL OR m_rule[v_j] <> 'fixed' THEN
                v_taken := NULL; EXIT;  -- a priced rule (tokens, tiers...): Python quotes it
            END IF;
            v_total := m_price[v_j]::numeric * p_qtys[v_i];
            IF v_total > 1000000000000000000 THEN
                v_taken := NULL; EXIT;  -- out of range: Python refuses it
            END IF;
            v_amount := v_total::bigint;
            IF v_available - v_amount < p_floor THEN
                v_taken := NULL; EXIT;  -- a refusal for credits lists the packs, which Python reads
            END IF;
            -- Accepted: the running balance and counts move; written in phase 2.
            v_available := v_available - v_amount;
            v_spent := v_spent + v_amount;
            v_used := m_used[v_j] + p_qtys[v_i];
            m_used[v_j] := v_used;
            m_calls[v_j] := m_calls[v_j] + 1;
            m_qty[v_j] := m_qty[v_j] + p_qtys[v_i];
            m_credits[v_j] := m_credits[v_j] + v_amount;
            m_count[v_j] := m_count[v_j] + 1;
            v_over := CASE WHEN m_quota[v_j] IS NULL THEN 0 ELSE GREATEST(v_used - m_quota[v_j], 0) END;
            x_acc[v_i] := true; x_amount[v_i] := v_amount; x_after[v_i] := v_balance - v_spent; x_ps[v_i] := v_ps;
            o_outcome[v_i] := 'charged'; o_credits[v_i] := v_amount; o_remaining[v_i] := v_available;
            o_used[v_i] := v_used; o_quota[v_i] := m_quota[v_j]; o_overage[v_i] := v_over;
            -- The stored result, byte for byte as Python's to_json(Charged.stored()) writes it.
            x_result[v_i] := format(
                '{"creditsUsed":%s,"creditsRemaining":%s,"usage":{"primitive":%s,"used":%s,"quota":%s,"overage":%s}}',
                v_amount, v_available, to_json(p_primitives[v_i]), v_used, COALESCE(m_quota[v_j]::text, 'null'),
                v_over);
            a_keys := a_keys || p_keys[v_i]; a_first := a_first || v_i;
            v_taken := true;
        END LOOP;
        IF v_taken IS NULL THEN
            o_outcome := ARRAY['fallback']; o_event_id := NULL; o_credits := NULL; o_remaining := NULL;
            o_used := NULL; o_quota := NULL; o_overage := NULL; o_detail := NULL;
            RETURN;
        END IF;
        IF v_taken THEN
            -- An alert threshold the tenant's part crosses (app/alerts/emit.py crossed, balance_low;
            -- the batch's whole move, as _record_many checks it): Python emits it.
            IF (v_low IS NOT NULL AND v_start >= v_low AND v_low > v_available) OR EXISTS (
                SELECT 1 FROM unnest(m_quota, m_used0, m_used) AS mv(quota, used_before, used_after),
                              json_array_elements_text(COALESCE(v_percents, '[50, 75, 90, 100]'::json)) AS pc(x)
                 WHERE mv.quota IS NOT NULL AND mv.quota <> 0 AND mv.used_before * 100 < x::numeric * mv.quota
                   AND x::numeric * mv.quota <= mv.used_after * 100) THEN
                o_outcome := ARRAY['fallback']; o_event_id := NULL; o_credits := NULL; o_remaining := NULL;
                o_used := NULL; o_quota := NULL; o_overage := NULL; o_detail := NULL;
                RETURN;
            END IF;
            v_any := true;
            t_tids := t_tids || v_tid; t_totals := t_totals || v_spent;
            t_balances := t_balances || (v_balance - v_spent);
            FOR v_j IN 1 .. array_length(m_prims, 1) LOOP
                CONTINUE WHEN m_count[v_j] = 0;
                c_tids := c_tids || v_tid; c_prims := c_prims || m_prims[v_j];
                c_ps := c_ps || v_ps; c_pe := c_pe || v_pe;
                c_qty := c_qty || m_qty[v_j]; c_credits := c_credits || m_credits[v_j];
                c_count := c_count || m_count[v_j];
                c_over := c_over || CASE WHEN m_quota[v_j] IS NULL THEN 0
                                         ELSE GREATEST(m_used[v_j] - m_quota[v_j], 0) END;
                c_win := c_win || CASE WHEN m_per_minute[v_j] IS NULL THEN NULL ELSE v_window END;
            END LOOP;
        END IF;
        v_s := v_e + 1;
    END LOOP;
    IF NOT v_any THEN
        RETURN;  -- replays and refusals only: nothing to write
    END IF;
    -- ---- 2. Write, once for the batch (ledger.debit_many, service.Meter._record_many). ----
    -- Events in item order; ids matched by (tenant, key), unique among accepted items.
    WITH src AS MATERIALIZED (
        SELECT u.* FROM unnest(p_tids, p_keys, p_hashes, p_primitives, p_qtys, x_amount, x_ps, p_refs, p_conns,
                               x_result, p_api_key_ids, x_acc)
                        WITH ORDINALITY AS u(tid, ikey, rhash, prim, qty, amount, ps, ref, conn, res, kid, acc, ord)
         WHERE u.acc
    ), ins AS (
        INSERT INTO usage_event (tenant_id, idempotency_key, request_hash, kind, primitive, quantity, credits,
                                 period_start, reference, connection, result, created_at, api_key_id)
        SELECT src.tid, src.ikey, src.rhash, 'charge', src.prim, src.qty, src.amount, src.ps, src.ref, src.conn,
               src.res::json, p_now, src.kid
          FROM src ORDER BY src.ord
        RETURNING id, tenant_id, idempotency_key
    )
    SELECT array_agg(ins.id), array_agg(src.ord) INTO r_ids, r_ords
      FROM ins JOIN src ON src.tid = ins.tenant_id AND src.ikey = ins.idempotency_key;
    FOR v_k IN 1 .. array_length(r_ids, 1) LOOP
        o_event_id[r_ords[v_k]] := r_ids[v_k];
    END LOOP;
    FOR v_i IN 1 .. v_n LOOP
        IF x_first[v_i] IS NOT NULL THEN
            o_event_id[v_i] := o_event_id[x_first[v_i]];
        END IF;
    END LOOP;
    -- One ledger entry per non-zero debit, in order, each with the balance after it.
    INSERT INTO ledger_entry (tenant_id, kind, action, amount, balance_after, bucket_id, reference, created_at)
    SELECT u.tid, 'debit', u.prim, -u.amount, u.balance_after, NULL, u.ref, p_now
      FROM unnest(p_tids, p_primitives, x_amount, x_after, p_refs, x_acc)
           WITH ORDINALITY AS u(tid, prim, amount, balance_after, ref, acc, ord)
     WHERE u.acc AND u.amount <> 0
     ORDER BY u.ord;
    -- Each tenant's total burns its live buckets in order (ledger.sweep's order); each written once.
    UPDATE credit_bucket cb SET remaining = cb.remaining - z.take
      FROM (SELECT bb.id,
                   LEAST(bb.remaining, GREATEST(tt.total - (sum(bb.remaining) OVER w - bb.remaining), 0)) AS take
              FROM unnest(t_tids, t_totals) AS tt(tid, total)
              JOIN credit_bucket bb ON bb.tenant_id = tt.tid AND bb.remaining > 0
             WHERE tt.total > 0
            WINDOW w AS (PARTITION BY bb.tenant_id
                         ORDER BY bb.expires_at IS NULL, bb.expires_at, bb.created_at, bb.id
                         ROWS UNBOUNDED PRECEDING)) z
     WHERE cb.id = z.id AND z.take > 0;
    UPDATE credit_account ca SET balance = tb.balance, updated_at = p_now
      FROM unnest(t_tids, t_balances) AS tb(tid, balance)
     WHERE ca.tenant_id = tb.tid;
    INSERT INTO usage_counter (tenant_id, period_start, primitive, period_end, used, overage, credits)
    SELECT * FROM unnest(c_tids, c_ps, c_prims, c_pe, c_qty, c_over, c_credits)
    ON CONFLICT (tenant_id, period_start, primitive)
    DO UPDATE SET used = usage_counter.used + EXCLUDED.used, overage = EXCLUDED.overage,
                  credits = usage_counter.credits + EXCLUDED.credits;
    INSERT INTO usage_rollup (tenant_id, hour_start, primitive, api_key_id, quantity, credits, events)
    SELECT u.tid, date_trunc('hour', p_now, 'UTC'), u.prim, COALESCE(u.kid, ''), sum(u.qty), sum(u.amount), count(*)
      FROM unnest(p_tids, p_primitives, p_api_key_ids, p_qtys, x_amount, x_acc) AS u(tid, prim, kid, qty, amount, acc)
     WHERE u.acc
     GROUP BY u.tid, u.prim, COALESCE(u.kid, '')
    ON CONFLICT (tenant_id, hour_start, primitive, api_key_id)
    DO UPDATE SET quantity = usage_rollup.quantity + EXCLUDED.quantity,
                  credits = usage_rollup.credits + EXCLUDED.credits, events = usage_rollup.events + EXCLUDED.events;
    INSERT INTO rate_window (tenant_id, primitive, window_start, calls)
    SELECT u.tid, u.prim, u.win, u.calls FROM unnest(c_tids, c_prims, c_win, c_count) AS u(tid, prim, win, calls)
     WHERE u.win IS NOT NULL
    ON CONFLICT (tenant_id, primitive, window_start) DO UPDATE SET calls = rate_window.calls + EXCLUDED.calls;
END
$fn$;
"""


def _pk_name(conn: sa.engine.Connection) -> str | None:
    return sa.inspect(conn).get_pk_constraint("plan_quota").get("name")


def _set_quota_pk(conn: sa.engine.Connection, columns: list[str]) -> None:
    if conn.dialect.name == "postgresql":
        name = _pk_name(conn)
        if name:
            op.drop_constraint(name, "plan_quota", type_="primary")
        op.create_primary_key("plan_quota_pkey", "plan_quota", columns)
    else:
        with op.batch_alter_table("plan_quota", recreate="always") as batch:
            batch.create_primary_key("pk_plan_quota", columns)


def upgrade() -> None:
    conn = op.get_bind()
    op.add_column("plan", sa.Column("version", sa.Integer(), server_default="1", nullable=False))
    op.add_column("tenant", sa.Column("plan_version", sa.Integer(), nullable=True))
    conn.execute(sa.text("UPDATE tenant SET plan_version = 1 WHERE id IN (SELECT tenant_id FROM subscription)"))
    op.add_column("plan_quota", sa.Column("version", sa.Integer(), server_default="1", nullable=False))
    _set_quota_pk(conn, ["organization_id", "plan_key", "version", "primitive"])
    op.create_table(
        "plan_version",
        sa.Column("organization_id", sa.String(length=40), nullable=False),
        sa.Column("plan_key", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("stripe_price_id", sa.String(length=255), nullable=True),
        sa.Column("included_credits", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("created_at", app.core.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("organization_id", "plan_key", "version"),
        sa.ForeignKeyConstraint(
            ["organization_id", "plan_key"], ["plan.organization_id", "plan.key"], name="fk_plan_version_plan"
        ),
    )
    conn.execute(
        sa.text(
            "INSERT INTO plan_version (organization_id, plan_key, version, stripe_price_id, included_credits, "
            "created_at) SELECT organization_id, key, 1, stripe_price_id, included_credits, created_at FROM plan"
        )
    )
    if conn.dialect.name == "postgresql":
        op.execute(CHARGE_FUNCTION)
        op.execute(BATCH_FUNCTION)


def downgrade() -> None:
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        op.execute(_frozen("0019_org_scoped_keys", "CHARGE_FUNCTION"))
        op.execute(_frozen("0019_org_scoped_keys", "BATCH_FUNCTION"))
    op.drop_table("plan_version")
    # Only the newest version's quotas stay: the plan as it is now.
    conn.execute(
        sa.text(
            "DELETE FROM plan_quota WHERE version <> (SELECT p.version FROM plan p "
            "WHERE p.organization_id = plan_quota.organization_id AND p.key = plan_quota.plan_key)"
        )
    )
    _set_quota_pk(conn, ["organization_id", "plan_key", "primitive"])
    with op.batch_alter_table("plan_quota") as batch:
        batch.drop_column("version")
    with op.batch_alter_table("tenant") as batch:
        batch.drop_column("plan_version")
    with op.batch_alter_table("plan") as batch:
        batch.drop_column("version")


def _frozen(migration: str, name: str) -> str:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).with_name(f"{migration}.py")
    spec = importlib.util.spec_from_file_location(f"meterkit_migration_{migration}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(getattr(module, name))
