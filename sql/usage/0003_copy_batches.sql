-- Batches loaded with COPY. The plugin gives each batch of records an id
-- and claims it here in the COPY's own transaction: a batch sent again (its
-- reply lost on the way, replayed from the journal after a crash, sent at
-- stop while the first try still runs) finds its claim and adds nothing.
-- This replaces the per-row ON CONFLICT of usage_insert_batch(), which
-- stays for records journaled as JSON by an llmgate before this migration.
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
