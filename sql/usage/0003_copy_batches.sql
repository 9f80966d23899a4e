-- Batches loaded with COPY. The plugin gives each batch of records an id
-- and claims it here in the COPY's own transaction: a batch sent again (its
-- reply lost on the way, replayed from the journal after a crash, sent at
-- stop while the first try still runs) finds its claim and adds nothing.
-- This replaces the per-row ON CONFLICT of usage_insert_batch(), which
-- stays, rewritten below, for records journaled as JSON by llmgate 0.2.
CREATE TABLE usage_batches (
	batch_id text PRIMARY KEY,
	created timestamptz NOT NULL DEFAULT now(),
	rows int NOT NULL
);
-- Retention deletes claims with the rows they protected.
CREATE INDEX usage_batches_created ON usage_batches (created);

-- Returns the claimed id, or no row when the batch is in already. The lock
-- wait (milliseconds) is set for the transaction, so the COPY that follows
-- gives up after it too when usage is locked, and its batch goes to the
-- journal instead of waiting behind the lock.
CREATE FUNCTION usage_claim_batch(claim text, nrows int, lock_wait text) RETURNS SETOF text
LANGUAGE plpgsql AS $$
BEGIN
	PERFORM set_config('lock_timeout', lock_wait, true);
	RETURN QUERY INSERT INTO usage_batches AS b (batch_id, rows) VALUES (claim, nrows)
		ON CONFLICT DO NOTHING RETURNING b.batch_id;
END
$$;

-- Every index costs PostgreSQL CPU on every row (about a sixth of a row's
-- load each), so the ledger keeps those its queries use: (user_id,
-- created) and (organization_id, created). With each batch loaded once, a
-- row needs no unique check of its own (record ids stay unique: a random
-- prefix per gateway thread and a counter); every usage query filters on
-- the user or the organization before the key; nothing looks rows up by
-- request id (an operator who does often can add an index of their own).
DROP INDEX usage_record_id;
DROP INDEX usage_key_created;
DROP INDEX usage_request_id;

-- Records journaled as JSON by llmgate 0.2 (replayed once after an
-- upgrade): idempotent on record_id without the unique index, through the
-- user index (a record's user and time are known with it; the master key's
-- records have no user).
CREATE OR REPLACE FUNCTION usage_insert_batch(records json, lock_wait text) RETURNS bigint
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
	SELECT DISTINCT ON (r.record_id) r.record_id, r.request_id, r.created, r.endpoint,
		r.method, r.status, r.user_id, r.key_id, r.organization_id, r.user_name,
		r.key_name, r.model_id, r.model_name, r.provider_id, r.provider_type,
		r.provider_model, r.prompt_tokens, r.completion_tokens, r.total_tokens,
		r.usage_estimated, r.latency_ms, r.ttft_ms, r.cost, r.kwh, r.kgco2eq,
		r.client_gone, r.error
	FROM json_populate_recordset(NULL::usage, records) r
	WHERE NOT EXISTS (SELECT 1 FROM usage u WHERE u.user_id = r.user_id
			  AND u.created = r.created AND u.record_id = r.record_id)
	  AND NOT EXISTS (SELECT 1 FROM usage u WHERE r.user_id IS NULL AND u.user_id IS NULL
			  AND u.created = r.created AND u.record_id = r.record_id);
	GET DIAGNOSTICS n = ROW_COUNT;
	RETURN n;
END
$$;

-- Retention (0002's), now also forgetting the claims of batches that old.
CREATE OR REPLACE FUNCTION usage_drop_partitions(keep_days int, lock_wait text)
RETURNS SETOF text
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
	DELETE FROM usage_batches WHERE created < cutoff;
	GET DIAGNOSTICS n = ROW_COUNT;
	IF n > 0 THEN
		RETURN NEXT format('%s batch claims', n);
	END IF;
END
$$;
