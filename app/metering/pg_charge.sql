-- meterkit_charge: one charge in one statement (app/metering/pg_charge.py). Installed by migration 0012_pg_charge,
-- now by 0021_plan_versions, which keeps its own frozen copy: a change here ships as a new migration that
-- copies this text (tests/test_pg_charge.py checks the newest migration's copy equals this file).
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
