-- The energy and carbon estimate of each call and the provider's type;
-- the indexes of GET /v1/usage and /v1/me/usage; the functions through
-- which the plugin writes batches and keeps monthly partitions.

-- NULL for rows written before the gateway computed impacts.
ALTER TABLE usage
	ADD COLUMN provider_type text,
	ADD COLUMN kwh double precision,
	ADD COLUMN kgco2eq double precision;

-- usage_user_created (user_id, created) already serves a user's rows.
CREATE INDEX usage_key_created ON usage (key_id, created);
CREATE INDEX usage_organization_created ON usage (organization_id, created);

-- One batch of records (a JSON array of objects named like the columns),
-- idempotent on record_id. The lock timeout is set here, inside the
-- function, because the INSERT takes its lock on usage only when it runs:
-- a LOCK TABLE held by someone else then fails the batch after lock_wait
-- (milliseconds) and the plugin journals it, instead of waiting behind the
-- lock. set_config(..., true) lasts until the end of this statement's
-- transaction, so the pooled connection keeps its own settings.
CREATE FUNCTION usage_insert_batch(records json, lock_wait text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
	n bigint;
BEGIN
	PERFORM set_config('lock_timeout', lock_wait, true);
	INSERT INTO usage (record_id, request_id, created, endpoint, method, status,
		user_id, key_id, organization_id, user_name, key_name, model_id, model_name,
		provider_id, provider_type, provider_model, prompt_tokens, completion_tokens,
		total_tokens, usage_estimated, latency_ms, ttft_ms, cost, kwh, kgco2eq,
		client_gone, error)
	SELECT record_id, request_id, created, endpoint, method, status,
		user_id, key_id, organization_id, user_name, key_name, model_id, model_name,
		provider_id, provider_type, provider_model, prompt_tokens, completion_tokens,
		total_tokens, usage_estimated, latency_ms, ttft_ms, cost, kwh, kgco2eq,
		client_gone, error
	FROM json_populate_recordset(NULL::usage, records)
	ON CONFLICT DO NOTHING;
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;

-- This month's partition and the next @months_ahead ones (UTC months),
-- those missing; returns the names created. A month whose rows already sit
-- in usage_default cannot get its partition (PostgreSQL refuses): the
-- error names it and the rows stay where they are.
CREATE FUNCTION usage_create_partitions(months_ahead int, lock_wait text) RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
	first date := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
	m date;
	part text;
BEGIN
	PERFORM set_config('lock_timeout', lock_wait, true);
	FOR k IN 0..months_ahead LOOP
		m := (first + make_interval(months => k))::date;
		part := 'usage_p' || to_char(m, 'YYYYMM');
		CONTINUE WHEN to_regclass(part) IS NOT NULL;
		EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF usage '
			       'FOR VALUES FROM (%L) TO (%L)', part,
			       m::text || ' 00:00:00+00',
			       (m + interval '1 month')::date::text || ' 00:00:00+00');
		RETURN NEXT part;
	END LOOP;
END
$$;

-- Retention: drops the monthly partitions whose whole month ended more
-- than @keep_days days ago, and deletes the rows of usage_default that old;
-- returns what it removed.
CREATE FUNCTION usage_drop_partitions(keep_days int, lock_wait text) RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
	cutoff timestamptz := now() - make_interval(days => keep_days);
	part text;
	n bigint;
BEGIN
	IF keep_days < 1 THEN
		RAISE EXCEPTION 'usage_drop_partitions: keep_days must be at least 1';
	END IF;
	PERFORM set_config('lock_timeout', lock_wait, true);
	FOR part IN
		SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		WHERE i.inhparent = 'usage'::regclass
		  AND c.relname ~ '^usage_p[0-9]{4}(0[1-9]|1[0-2])$'
		  AND ((to_date(substr(c.relname, 8, 6), 'YYYYMM') + interval '1 month')
		       AT TIME ZONE 'UTC') <= cutoff
		ORDER BY c.relname
	LOOP
		EXECUTE format('DROP TABLE IF EXISTS %I', part);
		RETURN NEXT part;
	END LOOP;
	DELETE FROM usage_default WHERE created < cutoff;
	GET DIAGNOSTICS n = ROW_COUNT;
	IF n > 0 THEN
		RETURN NEXT format('%s rows of usage_default', n);
	END IF;
END
$$;
